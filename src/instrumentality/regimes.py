"""Training regimes: each says how one step becomes a loss. Read each `loss` top to bottom.

Every regime has the same interface, used by the shared trainer:
    loss(model, step, generator) -> (loss tensor, metrics dict, tokens processed)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        x = self.world.sample(self.batch_size, self.seq_len, generator=_cpu(gen)).to(_device(model))
        logits = model(x[:, :-1])["logits"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        return loss, {"nll": loss.detach()}, x[:, 1:].numel()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _cpu(gen: torch.Generator) -> torch.Generator:
    """World sampling runs on the CPU; derive a CPU generator from a device generator deterministically."""
    if gen.device.type == "cpu":
        return gen
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device)))


class Reinforce:
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
        x = self.world.sample(self.batch_size, self.seq_len, generator=_cpu(gen)).to(_device(model))
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

    def collapsed(self, metrics) -> str | None:
        h = float(metrics["entropy"])
        return f"policy entropy {h:.4f} below {self.collapse_entropy}" if h < self.collapse_entropy else None


class Critic:
    """Multi-token generation graded by a critic, later rewards credited to earlier tokens (regime 3).

    From P prompts (mostly contexts ending at a fork marker), K samples each of H tokens:
        rollout=free:            the policy's own samples are fed back (KV cache)
        rollout=teacher_forced:  world text is fed back; the policy's samples are graded, not followed
        r_t = c(ctx_t, a_t) - beta * log(pi / pi_ref)(a_t | ctx_t)           (no gradient through r)
        G_t = sum_{k=0}^{H-1-t} gamma^k r_{t+k}                               (inside the H window)
        b_t = mean of G_t over the other K - 1 samples of the same prompt     (leave-one-out baseline)
        loss = - mean (G_t - b_t) log pi(a_t | ctx_t)
    pi_ref is the frozen supervised checkpoint, also the initialisation (init=scratch starts afresh);
    ref=truth uses the exact p* as pi_ref instead (the setting of the exact optimum).
    """

    name = "critic"

    def __init__(self, world: World, critic: str = "truth", critic_kwargs: dict | None = None, horizon: int = 8,
                 gamma: float = 1.0, beta: float = 1.0, k_samples: int = 4, n_prompts: int = 32,
                 rollout: str = "free", fork_fraction: float = 0.75, prompt_lengths=(8, 24, 40),
                 ref_checkpoint: str | None = None, ref: str = "checkpoint", init: str = "reference",
                 collapse_entropy: float = 0.01):
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
        self.ref_model = None
        # G = r @ discount, discount[j, t] = gamma^(j - t) for j >= t
        j = torch.arange(horizon)
        self.discount = torch.where(j[:, None] >= j[None, :], float(gamma) ** (j[:, None] - j[None, :]).float(),
                                    torch.zeros(()))
        self._prose_states = torch.tensor([s for s, k in enumerate(world.state_kind) if k == "prose"])
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

    def prompts(self, gen: torch.Generator) -> torch.Tensor:
        """n_prompts world contexts of one length: a share end at a fork marker, the rest anywhere."""
        L = self.prompt_lengths[int(torch.randint(len(self.prompt_lengths), (1,), generator=gen))]
        n_fork = round(self.fork_fraction * self.n_prompts)
        out = [self.world.sample(self.n_prompts - n_fork, L, generator=gen)]
        if n_fork:
            prefix = torch.empty(0, L - 1, dtype=torch.long)
            while len(prefix) < n_fork:
                x = self.world.sample(2 * n_fork, L - 1, generator=gen)
                prefix = torch.cat([prefix, x[torch.isin(self.world.states_of(x)[:, -1], self._prose_states)]])
            markers = torch.tensor(self.world.marker_tokens)[torch.randint(len(self.world.forks), (n_fork, 1),
                                                                           generator=gen)]
            out.append(torch.cat([prefix[:n_fork], markers], 1))
        return torch.cat(out)

    def loss(self, model, step: int, gen: torch.Generator):
        device, H, K = _device(model), self.H, self.K
        cpu_gen = _cpu(gen)
        prompts = self.prompts(cpu_gen).repeat_interleave(K, 0).to(device)  # [N = P*K, L]
        N, L = prompts.shape
        with torch.no_grad():
            if self.rollout == "free":
                actions = model.generate(prompts, H, generator=gen)[0]
                fed = actions
            else:  # world text fed back; the policy's actions at each step are sampled, graded, not followed
                fed = self.world.continue_from(self.world.states_of(prompts.cpu())[:, -1], H, cpu_gen).to(device)
                logits = model(torch.cat([prompts, fed[:, :H - 1]], 1))["logits"][:, L - 1:].float()
                actions = torch.multinomial(F.softmax(logits, -1).flatten(0, 1), 1, generator=gen).view(N, H)
        contexts = torch.cat([prompts, fed[:, :H - 1]], 1)  # action t was taken after contexts[:, :L + t]
        logp = F.log_softmax(model(contexts)["logits"][:, L - 1:].float(), -1)  # [N, H, V]
        logp_a = logp.gather(-1, actions[..., None]).squeeze(-1)
        with torch.no_grad():
            ref_logp_a = F.log_softmax(self.ref_model(contexts)["logits"][:, L - 1:].float(), -1).gather(
                -1, actions[..., None]).squeeze(-1)
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

    def collapsed(self, metrics) -> str | None:
        h = float(metrics["entropy"])
        return f"policy entropy {h:.4f} below {self.collapse_entropy}" if h < self.collapse_entropy else None

    def theory_reward(self) -> torch.Tensor | None:
        """c(s, x) as a table when the critic is a function of state and token (for the exact optimum)."""
        return self.critic.table(self.world) if hasattr(self.critic, "table") else None
