"""Training regimes: each says how one step becomes a loss. Read each `loss` top to bottom.

Every regime has the same interface, used by the shared trainer:
    loss(model, step, generator) -> (loss tensor, metrics dict, tokens processed)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instrumentality.envs.tokens import OBS_PER_STEP, STEP_LEN
from instrumentality.model import device_of
from instrumentality.world import ConfigError, World


def _positive(key: str, value, allowed: str = "a positive integer"):
    if not value or value <= 0:
        raise ConfigError(f"{key} must be {allowed}; got {value!r}")


class Supervised:
    """Next-token supervised learning: teacher-forced cross-entropy on world text.

        L = - mean_t log pi(x_t | x_<t)
    With quest_fraction > 0, that share of each batch is quest transcripts (the explorer's episodes,
    envs/tokens.py) instead of world text, and L is the row-weighted mean of the two (pads excluded):
    the model becomes a simulator of the explorer.
    """

    name = "supervised"

    def __init__(self, world: World, batch_size: int = 64, seq_len: int | None = None, quest: dict | None = None,
                 quest_fraction: float = 0.0, quest_corpus: int = 4096, corpus_seed: int = 0,
                 corpus_cache: str | None = None):
        _positive("regime.batch_size", batch_size)
        if not 0.0 <= quest_fraction <= 1.0:
            raise ConfigError(f"regime.quest_fraction must be in [0, 1]; got {quest_fraction!r}")
        if quest_fraction > 0 and quest is None:
            raise ConfigError("regime.quest_fraction > 0 needs a quest env: add `/quest: small` to the experiment")
        self.world, self.batch_size = world, batch_size
        self.seq_len = seq_len or world.cfg.seq_len
        self.n_quest = round(quest_fraction * batch_size)
        self.corpus = None
        if self.n_quest:
            from instrumentality.envs.tokens import QuestCorpus, quest_tokens

            _positive("regime.quest_corpus", quest_corpus)
            self.corpus = QuestCorpus(quest_tokens(quest, world.vocab_size), quest_corpus, seed=corpus_seed,
                                      cache=corpus_cache)

    def loss(self, model, step: int, gen: torch.Generator):
        device, n_world, cpu_gen = device_of(model), self.batch_size - self.n_quest, _cpu(gen)
        loss, metrics, n_tokens = 0.0, {}, 0
        if n_world:
            x = self.world.sample(n_world, self.seq_len, generator=cpu_gen).to(device)
            nll = F.cross_entropy(model(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten())
            loss, metrics["nll"], n_tokens = nll * n_world / self.batch_size, nll.detach(), x[:, 1:].numel()
        if self.n_quest:
            x = self.corpus.sample(self.n_quest, cpu_gen)
            n_tokens += int((x[:, 1:] != self.corpus.tokens.pad).sum())  # counted on the CPU: no device sync
            x = x.to(device)
            nll = F.cross_entropy(model(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten(),
                                  ignore_index=self.corpus.tokens.pad)
            loss = loss + nll * self.n_quest / self.batch_size
            metrics["quest_nll"] = nll.detach()
        return loss, metrics, n_tokens


def _cpu(gen: torch.Generator) -> torch.Generator:
    """World sampling runs on the CPU. On another device, a CPU generator with the device generator's seed
    (the trainer seeds one per step): no draw on the device, so no host sync. Call it once per step."""
    if gen.device.type == "cpu":
        return gen
    return torch.Generator().manual_seed(gen.initial_seed())


class _EntropyCollapse:
    """Ends a run (status `collapsed`) when the logged policy entropy falls below collapse_entropy."""

    collapse_entropy: float

    def collapsed(self, metrics) -> str | None:
        h = float(metrics["entropy"])
        return f"policy entropy {h:.4f} below {self.collapse_entropy}" if h < self.collapse_entropy else None


def action_log_probs(logits: torch.Tensor, actions: torch.Tensor, start: int):
    """log pi over the vocabulary at the positions where actions [N, H] were taken (logits from
    position start - 1 on), and log pi of the actions themselves: ([N, H, V], [N, H])."""
    logp = F.log_softmax(logits[:, start - 1:].float(), -1)
    return logp, logp.gather(-1, actions[..., None]).squeeze(-1)


class Reinforce(_EntropyCollapse):
    """REINFORCE that approximates the supervised gradient (docs/design.md section 3, regime 2).

    At every position t of world text, sample a ~ pi(.|x_<t) (K samples per position):
        reward=likelihood:  r = 1[a = x_t] / pi(a|x_<t)      (no gradient through r; E[r] = 1)
        reward=indicator:   r = 1[a = x_t]                   (accuracy, not likelihood: mode seeking)
        loss = - mean (r - b) log pi(a|x_<t)
    With reward=likelihood, E_a[r grad log pi(a)] = grad log pi(x_t): an unbiased estimate of the
    supervised gradient. With reward=indicator it estimates grad pi(x_t). b: `one` (the natural
    baseline, E[r] = 1), `none`, or `mean` (a running mean of r).
    """

    name = "reinforce"

    def __init__(self, world: World, batch_size: int = 64, seq_len: int | None = None, reward: str = "likelihood",
                 baseline: str = "one", samples_per_position: int = 1, baseline_momentum: float = 0.99,
                 collapse_entropy: float = 0.02):
        _positive("regime.batch_size", batch_size)
        _positive("regime.samples_per_position", samples_per_position)
        if reward not in ("likelihood", "indicator"):
            raise ConfigError(f"regime.reward must be one of: likelihood, indicator; got {reward!r}")
        if baseline not in ("one", "none", "mean"):
            raise ConfigError(f"regime.baseline must be one of: one, none, mean; got {baseline!r}")
        self.world, self.batch_size = world, batch_size
        self.seq_len = seq_len or world.cfg.seq_len
        self.reward, self.baseline, self.K = reward, baseline, samples_per_position
        self.momentum, self.collapse_entropy = baseline_momentum, collapse_entropy
        self.running_mean = 1.0 if reward == "likelihood" else 0.0

    def state_dict(self):
        return {"running_mean": float(self.running_mean)}

    def load_state_dict(self, d):
        self.running_mean = d["running_mean"]

    def loss(self, model, step: int, gen: torch.Generator):
        x = self.world.sample(self.batch_size, self.seq_len, generator=_cpu(gen)).to(device_of(model))
        return self.loss_on(model, x, gen)

    def loss_on(self, model, x: torch.Tensor, gen: torch.Generator):
        logp = F.log_softmax(model(x[:, :-1])["logits"].float(), -1)  # [B, T, V]
        target = x[:, 1:]
        B, T, V = logp.shape
        probs = logp.detach().exp().reshape(B * T, V)
        a = torch.multinomial(probs, self.K, replacement=True, generator=gen).view(B, T, self.K)
        logp_a = logp.gather(-1, a)  # [B, T, K]
        hit = (a == target[..., None]).float()
        r = hit / logp_a.detach().exp() if self.reward == "likelihood" else hit
        if self.baseline == "one":
            b = 1.0 if self.reward == "likelihood" else 0.0
        elif self.baseline == "mean":
            b = torch.as_tensor(self.running_mean, dtype=torch.float64, device=r.device)  # kept on the device
            self.running_mean = self.momentum * b + (1 - self.momentum) * r.mean().double()
        else:
            b = 0.0
        loss = -((r - b) * logp_a).mean()
        entropy = -(logp.detach().exp() * logp.detach()).sum(-1).mean()
        nll = -logp.detach().gather(-1, target[..., None]).mean()
        return loss, {"reward": r.mean(), "entropy": entropy, "nll": nll}, target.numel()



class Critic(_EntropyCollapse):
    """Multi-token generation graded by a critic, later rewards credited to earlier tokens (regime 3).

    From P prompts (mostly contexts ending at a fork marker), K samples each of H tokens:
        rollout=free:            the policy's own samples are fed back (KV cache)
        rollout=teacher_forced:  world text is fed back; the policy's samples are graded, not followed
        r_t = c(ctx_t, a_t) - beta * log(pi / pi_ref)(a_t | ctx_t)           (no gradient through r)
    algo=reinforce:
        G_t = sum_{k=0}^{H-1-t} gamma^k r_{t+k}                               (inside the H window)
        b_t = mean of G_t over the other K - 1 samples of the same prompt     (leave-one-out baseline)
        loss = - mean (G_t - b_t) log pi(a_t | ctx_t)
    algo=ppo (value head V; one rollout serves ppo_epochs optimizer steps):
        delta_t = r_t + gamma V(ctx_{t+1}) - V(ctx_t),  V after the window = 0
        A_t = sum_k (gamma lambda)^k delta_{t+k}  (GAE, normalised),  R_t = A_t + V(ctx_t)
        rho_t = pi(a_t|ctx_t) / pi_old(a_t|ctx_t)
        loss = mean max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)) + vf_coef * mean (V - R_t)^2 / 2
    pi_ref is the frozen supervised checkpoint, also the initialisation (init=scratch starts afresh);
    ref=truth uses the exact p* as pi_ref instead (the setting of the exact optimum).
    """

    name = "critic"

    def __init__(self, world: World, critic: str = "truth", critic_kwargs: dict | None = None, horizon: int = 8,
                 gamma: float = 1.0, beta: float = 1.0, k_samples: int = 4, n_prompts: int = 32,
                 rollout: str = "free", fork_fraction: float = 0.75, prompt_lengths=(8, 24, 40),
                 ref_checkpoint: str | None = None, ref: str = "checkpoint", init: str = "reference",
                 collapse_entropy: float = 0.01, algo: str = "reinforce", ppo_epochs: int = 4, clip: float = 0.2,
                 gae_lambda: float = 0.95, vf_coef: float = 0.5):
        from instrumentality.critics import make_critic

        self.critic = make_critic(critic, world, **(critic_kwargs or {}))
        _positive("regime.horizon", horizon)
        _positive("regime.n_prompts", n_prompts)
        if k_samples < 2:
            raise ConfigError(f"regime.k_samples must be >= 2 (leave-one-out baseline); got {k_samples!r}")
        if beta <= 0:
            raise ConfigError(f"regime.beta must be > 0; got {beta!r}")
        if not 0 <= gamma <= 1:
            raise ConfigError(f"regime.gamma must be in [0, 1]; got {gamma!r}")
        if rollout not in ("free", "teacher_forced"):
            raise ConfigError(f"regime.rollout must be one of: free, teacher_forced; got {rollout!r}")
        if algo not in ("reinforce", "ppo"):
            raise ConfigError(f"regime.algo must be one of: reinforce, ppo; got {algo!r}")
        _positive("regime.ppo_epochs", ppo_epochs)
        if ref not in ("checkpoint", "truth"):
            raise ConfigError(f"regime.ref must be one of: checkpoint, truth; got {ref!r}")
        if init not in ("reference", "scratch"):
            raise ConfigError(f"regime.init must be one of: reference, scratch; got {init!r}")
        if (ref == "checkpoint" or init == "reference") and not ref_checkpoint:
            raise ConfigError("regime.ref_checkpoint must name a supervised checkpoint.pt (pi_ref and the "
                              "initialisation); or set regime.ref=truth and regime.init=scratch")
        if max(prompt_lengths) + horizon > world.cfg.seq_len:
            raise ConfigError(f"regime.prompt_lengths (max {max(prompt_lengths)}) + regime.horizon ({horizon}) "
                              f"exceeds world.seq_len={world.cfg.seq_len}")
        self.world = world
        self.H, self.gamma, self.beta, self.K, self.n_prompts = horizon, gamma, beta, k_samples, n_prompts
        self.rollout, self.fork_fraction, self.prompt_lengths = rollout, fork_fraction, list(prompt_lengths)
        self.ref_checkpoint, self.ref_kind, self.init = ref_checkpoint, ref, init
        self.collapse_entropy = collapse_entropy
        self.algo, self.ppo_epochs, self.clip = algo, ppo_epochs, clip
        self.gae_lambda, self.vf_coef = gae_lambda, vf_coef
        self.ref_model = None
        self.buffer: dict | None = None  # PPO: the rollout reused for ppo_epochs steps
        # G = r @ discount, discount[j, t] = gamma^(j - t) for j >= t
        j = torch.arange(horizon)
        self.discount = torch.where(j[:, None] >= j[None, :], float(gamma) ** (j[:, None] - j[None, :]).float(),
                                    torch.zeros(()))
        self.first_token_of_marker = torch.full((world.vocab_size,), -1, dtype=torch.long)
        for f in world.forks:
            self.first_token_of_marker[f.marker] = f.first_token

    def setup(self, model, device):
        import copy

        from instrumentality.planted import TruthModel
        from instrumentality.trainer import load_checkpoint

        if self.ref_checkpoint:
            ck = load_checkpoint(self.ref_checkpoint, map_location=device)
            if self.init == "reference":
                model.load_state_dict(ck["model"])
        if self.ref_kind == "truth":
            self.ref_model = TruthModel(self.world).to(device)
        else:
            self.ref_model = copy.deepcopy(model)
            self.ref_model.load_state_dict(ck["model"])
        self.ref_model.eval().requires_grad_(False)
        self.discount = self.discount.to(device)
        self.first_token_of_marker = self.first_token_of_marker.to(device)
        self.marker_tokens = torch.tensor(self.world.marker_tokens, device=device)
        if self.algo == "ppo" and model.value_head is None:  # added before the optimizer is built
            model.value_head = torch.nn.Linear(model.cfg.n_embd, 1).to(device)
            model.cfg.value_head = True
        if hasattr(self.critic, "to"):
            self.critic.to(device)

    def state_dict(self):
        d = {"buffer": self.buffer}
        if hasattr(self.critic, "state_dict"):
            d["critic"] = self.critic.state_dict()
        return d

    def load_state_dict(self, d):
        self.buffer = d.get("buffer")
        if "critic" in d:
            self.critic.load_state_dict(d["critic"])

    def prompts(self, gen: torch.Generator) -> torch.Tensor:
        """n_prompts world contexts of one length: a share end at a fork marker, the rest anywhere."""
        L = self.prompt_lengths[int(torch.randint(len(self.prompt_lengths), (1,), generator=gen))]
        n_fork = round(self.fork_fraction * self.n_prompts)
        out = [self.world.sample(self.n_prompts - n_fork, L, generator=gen)]
        if n_fork:
            prefix = self.world.prose_prefixes(n_fork, L - 1, gen, batch=2 * n_fork)
            markers = torch.tensor(self.world.marker_tokens)[torch.randint(len(self.world.forks), (n_fork, 1),
                                                                           generator=gen)]
            out.append(torch.cat([prefix, markers], 1))
        return torch.cat(out)

    def loss(self, model, step: int, gen: torch.Generator):
        if self.algo == "ppo":
            return self._ppo_loss(model, step, gen)
        H, K = self.H, self.K
        cpu_gen = _cpu(gen)
        prompts, fed, actions, host_prompts = self.rollout_batch(model, gen, cpu_gen)
        N, L = prompts.shape
        contexts = torch.cat([prompts, fed[:, :H - 1]], 1)  # action t was taken after contexts[:, :L + t]
        logp, logp_a = action_log_probs(model(contexts)["logits"], actions, L)  # [N, H, V], [N, H]
        with torch.no_grad():
            ref_logp_a = action_log_probs(self.ref_model(contexts)["logits"], actions, L)[1]
            if hasattr(self.critic, "update"):  # a learned critic learns world text vs these samples
                world_text = self.world_continuation(host_prompts, cpu_gen, prompts.device)
                self.critic.update(prompts, world_text, actions)
            c = self.critic(contexts, actions)                        # c(ctx_t, a_t)      [N, H]
            kl = logp_a.detach() - ref_logp_a                          # log pi/pi_ref (a_t)
            r = c - self.beta * kl                                     # r_t
            G = r @ self.discount                                      # G_t = sum_k gamma^k r_{t+k}
            Gk = G.view(-1, K, H)
            b = ((Gk.sum(1, keepdim=True) - Gk) / (K - 1)).view(N, H)  # leave-one-out baseline
        loss = -((G - b) * logp_a).mean()
        entropy = -(logp.detach().exp() * logp.detach()).sum(-1).mean()
        at_fork = torch.isin(prompts[:, -1], self.marker_tokens)
        first = self.first_token_of_marker[prompts[:, -1]]
        metrics = {"critic_reward": c.mean(), "kl": kl.mean(), "return": G[:, 0].mean(), "entropy": entropy,
                   # share of fork prompts whose first token opens the first branch (NaN if none: 0/0, no sync)
                   "first_branch_rate": ((actions[:, 0] == first) & at_fork).sum() / at_fork.sum()}
        return loss, metrics, N * H

    def world_continuation(self, host_prompts: torch.Tensor, cpu_gen: torch.Generator, device) -> torch.Tensor:
        """H tokens of world text after each prompt, sampled on the CPU from the prompts' CPU copy (no copy
        back from the device), then sent to `device`."""
        states = self.world.states_of(host_prompts)[:, -1]
        return self.world.continue_from(states, self.H, cpu_gen).to(device)

    @torch.no_grad()
    def rollout_batch(self, model, gen: torch.Generator, cpu_gen: torch.Generator):
        """Prompts [N, L], the tokens fed back [N, H], the policy's actions [N, H], and the prompts' CPU copy."""
        device, H, K = device_of(model), self.H, self.K
        host_prompts = self.prompts(cpu_gen).repeat_interleave(K, 0)  # [N = P*K, L]
        prompts = host_prompts.to(device)
        N, L = prompts.shape
        if self.rollout == "free":
            actions = model.generate(prompts, H, generator=gen)[0]
            fed = actions
        else:  # world text fed back; the policy's actions at each step are sampled, graded, not followed
            fed = self.world_continuation(host_prompts, cpu_gen, device)
            logits = model(torch.cat([prompts, fed[:, :H - 1]], 1))["logits"][:, L - 1:].float()
            actions = torch.multinomial(F.softmax(logits, -1).flatten(0, 1), 1, generator=gen).view(N, H)
        return prompts, fed, actions, host_prompts

    def _ppo_loss(self, model, step: int, gen: torch.Generator):
        if self.buffer is None or step % self.ppo_epochs == 0:  # a fresh rollout every ppo_epochs steps
            self.buffer = self._ppo_rollout(model, gen)
        b = self.buffer
        contexts, actions, L = b["contexts"], b["actions"], b["prompt_len"]
        out = model(contexts)
        logp, logp_a = action_log_probs(out["logits"], actions, L)
        value = out["value"][:, L - 1:].float()
        ratio = torch.exp(logp_a - b["old_logp_a"])                                  # rho_t
        adv = b["advantages"]
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip)).mean()
        v_loss = 0.5 * ((value - b["returns"]) ** 2).mean()
        loss = pg + self.vf_coef * v_loss
        entropy = -(logp.detach().exp() * logp.detach()).sum(-1).mean()
        metrics = {**b["metrics"], "entropy": entropy, "value_loss": v_loss.detach(),
                   "clip_fraction": ((ratio.detach() - 1).abs() > self.clip).float().mean()}
        return loss, metrics, actions.numel() if step % self.ppo_epochs == 0 else 0

    @torch.no_grad()
    def _ppo_rollout(self, model, gen: torch.Generator) -> dict:
        cpu_gen = _cpu(gen)
        prompts, fed, actions, host_prompts = self.rollout_batch(model, gen, cpu_gen)
        N, L = prompts.shape
        contexts = torch.cat([prompts, fed[:, :self.H - 1]], 1)
        if hasattr(self.critic, "update"):
            self.critic.update(prompts, self.world_continuation(host_prompts, cpu_gen, prompts.device), actions)
        out = model(contexts)
        old_logp_a = action_log_probs(out["logits"], actions, L)[1]
        values = out["value"][:, L - 1:].float()
        ref_logp_a = action_log_probs(self.ref_model(contexts)["logits"], actions, L)[1]
        c = self.critic(contexts, actions)
        r = c - self.beta * (old_logp_a - ref_logp_a)
        adv = gae(r, values, self.gamma, self.gae_lambda)
        returns = adv + values
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return {"contexts": contexts, "actions": actions, "prompt_len": L, "old_logp_a": old_logp_a,
                "advantages": adv, "returns": returns,
                "metrics": {"critic_reward": c.mean(), "kl": (old_logp_a - ref_logp_a).mean(),
                            "return": returns[:, 0].mean()}}


class Quest(_EntropyCollapse):
    """PPO on ClueQuest in the shared trainer, through the token interface (docs/design.md section 5; envs/tokens.py).

    A rollout plays n_envs episodes at once on the batched env: after each step's observation tokens the
    policy pi picks one of the 8 action tokens, the value head reads V(s_t) at the same position, and a
    `predict` is scored with the model's distribution q over the K answer tokens. Each rollout then
    serves ppo_epochs x n_minibatches optimizer steps (one per trainer step), on minibatches of episodes:
        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)       (V after the episode's end = 0)
        A_t = sum_k (gamma lambda)^k delta_{t+k}  (GAE),  R_t = A_t + V(s_t);  A normalised per rollout
        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        L_pg = mean max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))
        L_v = mean (V(s_t) - R_t)^2 / 2
        L_forecast = - mean over scored predictions of log q(y)   (the reward log q(y) - log prior(y) is
                                                                  differentiable in q: this is its gradient)
        loss = L_pg + vf_coef L_v - ent_coef H[pi] + forecast_coef L_forecast
    init=simulator starts from a supervised checkpoint trained on explorer transcripts (init_checkpoint);
    init=scratch from a fresh model.
    """

    name = "quest"

    def __init__(self, world: World, env: dict | None = None, n_envs: int = 128, gamma: float = 0.99,
                 gae_lambda: float = 0.95, clip: float = 0.2, ppo_epochs: int = 4, n_minibatches: int = 2,
                 vf_coef: float = 0.5, ent_coef: float = 0.01, forecast_coef: float = 1.0, init: str = "simulator",
                 init_checkpoint: str | None = None, collapse_entropy: float = 0.01):
        from instrumentality.envs.tokens import quest_tokens

        if env is None:
            raise ConfigError("regime=quest needs a quest env: add `/quest: small` to the experiment")
        _positive("regime.n_envs", n_envs)
        _positive("regime.ppo_epochs", ppo_epochs)
        _positive("regime.n_minibatches", n_minibatches)
        if n_envs % n_minibatches:
            raise ConfigError(f"regime.n_envs ({n_envs}) must be a multiple of regime.n_minibatches ({n_minibatches})")
        if not 0 <= gamma <= 1:
            raise ConfigError(f"regime.gamma must be in [0, 1]; got {gamma!r}")
        if init not in ("simulator", "scratch"):
            raise ConfigError(f"regime.init must be one of: simulator, scratch; got {init!r}")
        if init == "simulator" and not init_checkpoint:
            raise ConfigError("regime.init=simulator needs regime.init_checkpoint (a supervised checkpoint.pt "
                              "trained on quest transcripts); or set regime.init=scratch")
        self.world, self.tokens = world, quest_tokens(env, world.vocab_size)
        self.n_envs, self.gamma, self.gae_lambda, self.clip = n_envs, gamma, gae_lambda, clip
        self.ppo_epochs, self.n_minibatches = ppo_epochs, n_minibatches
        self.vf_coef, self.ent_coef, self.forecast_coef = vf_coef, ent_coef, forecast_coef
        self.init, self.init_checkpoint, self.collapse_entropy = init, init_checkpoint, collapse_entropy
        self.buffer: dict | None = None

    def setup(self, model, device):
        from instrumentality.trainer import load_checkpoint

        if self.init == "simulator":
            ck = load_checkpoint(self.init_checkpoint, map_location=device)
            state = {k: v for k, v in ck["model"].items() if not k.startswith("value_head.")}
            model.load_state_dict(state, strict=False)
        if model.value_head is None:  # added before the optimizer is built
            model.value_head = torch.nn.Linear(model.cfg.n_embd, 1).to(device)
            model.cfg.value_head = True

    def state_dict(self):
        return {"buffer": self.buffer}

    def load_state_dict(self, d):
        self.buffer = d.get("buffer")

    def loss(self, model, step: int, gen: torch.Generator):
        k = step % (self.ppo_epochs * self.n_minibatches)
        fresh = self.buffer is None or k == 0
        if fresh:
            self.buffer = self.rollout(model, gen)
        b = self.buffer
        rows = b["order"][k // self.n_minibatches].view(self.n_minibatches, -1)[k % self.n_minibatches]
        seq, live, P = b["seq"][rows], b["live"][rows], b["prefix_len"]
        out = model(seq)
        T = live.shape[1]
        obs_end = P + STEP_LEN * torch.arange(T, device=seq.device) + OBS_PER_STEP - 1  # where a_t is chosen
        logits = out["logits"][:, obs_end][..., self.tokens.action_ids.to(seq.device)].float()  # [n, T, 8]
        logp = F.log_softmax(logits, -1)
        logp_a = logp.gather(-1, b["actions"][rows, :, None]).squeeze(-1)
        value = out["value"][:, obs_end].float()
        ratio = torch.exp(logp_a - b["logp"][rows])                                          # rho_t
        adv, n = b["advantages"][rows], live.sum().clamp(min=1)
        pg = (torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip)) * live).sum() / n
        v_loss = 0.5 * (((value - b["returns"][rows]) ** 2) * live).sum() / n
        entropy = (-(logp.exp() * logp).sum(-1) * live).sum() / n
        # the forecast: the answer-token distribution at the `predict` token's position
        scored = b["scored_predict"][rows]
        answer_logits = out["logits"][:, obs_end + 1][..., self.tokens.answer_ids.to(seq.device)].float()
        log_q = F.log_softmax(answer_logits, -1).gather(-1, b["y"][rows, None, None].expand(-1, T, 1)).squeeze(-1)
        forecast_loss = -(log_q * scored).sum() / scored.sum().clamp(min=1)
        loss = pg + self.vf_coef * v_loss - self.ent_coef * entropy + self.forecast_coef * forecast_loss
        metrics = {**b["metrics"], "entropy": entropy.detach(), "value_loss": v_loss.detach(),
                   "forecast_nll": forecast_loss.detach(),
                   "clip_fraction": ((((ratio.detach() - 1).abs() > self.clip).float() * live).sum() / n)}
        if fresh:
            metrics["env_steps"] = b["env_steps"]
        return loss, metrics, live.sum().long() * STEP_LEN  # a device tensor: the trainer reads it when it logs

    @torch.no_grad()
    def rollout(self, model, gen: torch.Generator) -> dict:
        from instrumentality.envs.agents import QUEST_METRICS
        from instrumentality.envs.tokens import play

        cpu_gen = _cpu(gen)
        seeds = torch.randint(0, 2**31 - 1, (self.n_envs,), generator=cpu_gen).numpy()
        was_training = model.training
        model.eval()
        p = play(model, self.tokens, seeds, generator=gen)
        model.train(was_training)
        live = p["live"].float()
        adv = gae(p["rewards"], p["values"] * live, self.gamma, self.gae_lambda, live)
        returns = adv + p["values"] * live
        n = live.sum()  # mean and (unbiased) std of A over the steps that happened, without boolean indexing
        mean = (adv * live).sum() / n
        std = ((((adv - mean) * live) ** 2).sum() / (n - 1)).sqrt()
        order = torch.stack([torch.randperm(self.n_envs, generator=cpu_gen) for _ in range(self.ppo_epochs)])
        m = p["metrics"].mean(0)
        metrics = {f"env/{name}": m[i] for i, name in enumerate(QUEST_METRICS)}
        metrics["env/episode_len"] = live.sum(1).mean()
        return {"seq": p["seq"], "actions": p["actions"], "logp": p["logp"], "live": live,
                "advantages": (adv - mean) / (std + 1e-8) * live, "returns": returns, "y": p["y"],
                "scored_predict": p["scored_predict"].float(), "prefix_len": p["prefix_len"],
                "order": order.to(p["seq"].device), "env_steps": p["live"].sum(), "metrics": metrics}


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float,
        live: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised advantage estimates inside a window [N, H]; the value after the window is 0, and after
    an episode's end (live [N, H]: 1 while the episode runs).
    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}."""
    H = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(H)):
        next_v = values[:, t + 1] if t + 1 < H else torch.zeros_like(last)
        if live is not None:  # past the end nothing flows back
            next_v = next_v * (live[:, t + 1] if t + 1 < H else 0)
            last = last * (live[:, t + 1] if t + 1 < H else 0)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv
