"""Training regimes: each says how one step becomes a loss. Read each `loss` top to bottom.

Every regime has the same interface, used by the shared trainer:
    loss(model, step, generator) -> (loss tensor, metrics dict, tokens processed)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instrumentality.model import device_of
from instrumentality.world import ConfigError, World


def _positive(key: str, value, allowed: str = "a positive integer"):
    if not value or value <= 0:
        raise ConfigError(f"{key} must be {allowed}; got {value!r}")


class Supervised:
    """Next-token supervised learning: teacher-forced cross-entropy on world text.

        L = - mean_t log pi(x_t | x_<t)
    """

    name = "supervised"

    def __init__(self, world: World, batch_size: int = 64, seq_len: int | None = None):
        _positive("regime.batch_size", batch_size)
        self.world, self.batch_size = world, batch_size
        self.seq_len = seq_len or world.cfg.seq_len

    def loss(self, model, step: int, gen: torch.Generator):
        x = self.world.sample(self.batch_size, self.seq_len, generator=_cpu(gen)).to(device_of(model))
        logits = model(x[:, :-1])["logits"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        return loss, {"nll": loss.detach()}, x[:, 1:].numel()


def _cpu(gen: torch.Generator) -> torch.Generator:
    """World sampling runs on the CPU; derive a CPU generator from a device generator deterministically."""
    if gen.device.type == "cpu":
        return gen
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device)))


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
    """REINFORCE that approximates the supervised gradient (DESIGN section 3, regime 2).

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
        return {"running_mean": self.running_mean}

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
            b = self.running_mean
            self.running_mean = self.momentum * b + (1 - self.momentum) * float(r.mean())
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
        device, H, K = device_of(model), self.H, self.K
        cpu_gen = _cpu(gen)
        prompts, fed, actions = self.rollout_batch(model, gen, cpu_gen)
        N, L = prompts.shape
        contexts = torch.cat([prompts, fed[:, :H - 1]], 1)  # action t was taken after contexts[:, :L + t]
        logp, logp_a = action_log_probs(model(contexts)["logits"], actions, L)  # [N, H, V], [N, H]
        with torch.no_grad():
            ref_logp_a = action_log_probs(self.ref_model(contexts)["logits"], actions, L)[1]
            if hasattr(self.critic, "update"):  # a learned critic learns world text vs these samples
                self.critic.update(prompts, self.world_continuation(prompts, cpu_gen), actions)
            c = self.critic(contexts, actions)                        # c(ctx_t, a_t)      [N, H]
            kl = logp_a.detach() - ref_logp_a                          # log pi/pi_ref (a_t)
            r = c - self.beta * kl                                     # r_t
            G = r @ self.discount                                      # G_t = sum_k gamma^k r_{t+k}
            Gk = G.view(-1, K, H)
            b = ((Gk.sum(1, keepdim=True) - Gk) / (K - 1)).view(N, H)  # leave-one-out baseline
        loss = -((G - b) * logp_a).mean()
        entropy = -(logp.detach().exp() * logp.detach()).sum(-1).mean()
        at_fork = torch.isin(prompts[:, -1], torch.tensor(self.world.marker_tokens, device=device))
        first = self.first_token_of_marker.to(device)[prompts[:, -1]]
        metrics = {"critic_reward": c.mean(), "kl": kl.mean(), "return": G[:, 0].mean(), "entropy": entropy,
                   "first_branch_rate": (actions[at_fork, 0] == first[at_fork]).float().mean()
                   if at_fork.any() else torch.tensor(float("nan"))}
        return loss, metrics, N * H

    def world_continuation(self, prompts: torch.Tensor, cpu_gen: torch.Generator) -> torch.Tensor:
        states = self.world.states_of(prompts.cpu())[:, -1]
        return self.world.continue_from(states, self.H, cpu_gen).to(prompts.device)

    @torch.no_grad()
    def rollout_batch(self, model, gen: torch.Generator, cpu_gen: torch.Generator):
        """Prompts [N, L], the tokens fed back [N, H], and the policy's actions [N, H]."""
        device, H, K = device_of(model), self.H, self.K
        prompts = self.prompts(cpu_gen).repeat_interleave(K, 0).to(device)  # [N = P*K, L]
        N, L = prompts.shape
        if self.rollout == "free":
            actions = model.generate(prompts, H, generator=gen)[0]
            fed = actions
        else:  # world text fed back; the policy's actions at each step are sampled, graded, not followed
            fed = self.world_continuation(prompts, cpu_gen)
            logits = model(torch.cat([prompts, fed[:, :H - 1]], 1))["logits"][:, L - 1:].float()
            actions = torch.multinomial(F.softmax(logits, -1).flatten(0, 1), 1, generator=gen).view(N, H)
        return prompts, fed, actions

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
        prompts, fed, actions = self.rollout_batch(model, gen, cpu_gen)
        N, L = prompts.shape
        contexts = torch.cat([prompts, fed[:, :self.H - 1]], 1)
        if hasattr(self.critic, "update"):
            self.critic.update(prompts, self.world_continuation(prompts, cpu_gen), actions)
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


    def theory_reward(self) -> torch.Tensor | None:
        """c(s, x) as a table when the critic is a function of state and token (for the exact optimum)."""
        return self.critic.table(self.world) if hasattr(self.critic, "table") else None


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates inside a window [N, H]; the value after the window is 0.
    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}."""
    H = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(H)):
        next_v = values[:, t + 1] if t + 1 < H else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv
