"""Regime 2: REINFORCE that approximates the supervised gradient, on world text."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from instrumentality.model import device_of
from instrumentality.regimes.base import EntropyCollapse, RegimeBase, Update, cpu_generator, positive
from instrumentality.rl import entropy
from instrumentality.world import ConfigError, World


class Reinforce(EntropyCollapse, RegimeBase):
    """At every position t of world text, sample a ~ pi(.|x_<t) (K samples per position):
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
        positive("regime.batch_size", batch_size)
        positive("regime.samples_per_position", samples_per_position)
        if reward not in ("likelihood", "indicator"):
            raise ConfigError(f"regime.reward must be one of: likelihood, indicator; got {reward!r}")
        if baseline not in ("one", "none", "mean"):
            raise ConfigError(f"regime.baseline must be one of: one, none, mean; got {baseline!r}")
        self.world, self.batch_size = world, batch_size
        self.seq_len = seq_len or world.cfg.seq_len
        self.reward, self.baseline, self.samples_per_position = reward, baseline, samples_per_position
        self.momentum, self.collapse_entropy = baseline_momentum, collapse_entropy
        self.running_mean: float | torch.Tensor = 1.0 if reward == "likelihood" else 0.0

    def state_dict(self) -> dict:
        return {"running_mean": float(self.running_mean)}

    def load_state_dict(self, state: dict) -> None:
        self.running_mean = state["running_mean"]

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        x = self.world.sample(self.batch_size, self.seq_len, generator=cpu_generator(gen)).to(device_of(model))
        yield self.update_on(model, x, gen)

    def update_on(self, model, x: torch.Tensor, gen: torch.Generator) -> Update:
        """The update on world text x [B, T] (sampling the actions from gen)."""
        logp = F.log_softmax(model(x[:, :-1])["logits"].float(), -1)  # [B, T, V]
        target = x[:, 1:]
        B, T, V = logp.shape
        probs = logp.detach().exp().reshape(B * T, V)
        a = torch.multinomial(probs, self.samples_per_position, replacement=True, generator=gen).view(B, T, -1)
        logp_a = logp.gather(-1, a)  # [B, T, K]
        hit = (a == target[..., None]).float()
        r = hit / logp_a.detach().exp() if self.reward == "likelihood" else hit
        if self.baseline == "one":
            b: float | torch.Tensor = 1.0 if self.reward == "likelihood" else 0.0
        elif self.baseline == "mean":
            b = torch.as_tensor(self.running_mean, dtype=torch.float64, device=r.device)  # kept on the device
            self.running_mean = self.momentum * b + (1 - self.momentum) * r.mean().double()
        else:
            b = 0.0
        loss = -((r - b) * logp_a).mean()
        nll = -logp.detach().gather(-1, target[..., None]).mean()
        return Update(loss, {"reward": r.mean(), "entropy": entropy(logp.detach()), "nll": nll}, target.numel())
