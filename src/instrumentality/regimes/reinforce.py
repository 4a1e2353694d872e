"""Regime 2: REINFORCE that approximates the supervised gradient, on world text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from instrumentality.model import device_of
from instrumentality.regimes.base import (
    POSITIVE,
    EntropyCollapse,
    RegimeBase,
    Update,
    check_settings,
    cpu_generator,
    one_of,
)
from instrumentality.regimes.rl import entropy
from instrumentality.world import World

BASELINE_MOMENTUM = 0.99  # baseline=mean: the running mean's weight on its old value at each update


@dataclass
class ReinforceSettings:
    batch_size: int = field(default=64, metadata=POSITIVE)  # sequences per step (configs: the run's batch_size)
    # likelihood (r = 1[a = x_t] / pi(a|x_<t)) | indicator (r = 1[a = x_t]: accuracy, mode seeking)
    reward: str = field(default="likelihood", metadata=one_of("likelihood", "indicator"))
    baseline: str = field(default="one", metadata=one_of("one", "none", "mean"))  # mean: a running mean of r
    samples_per_position: int = field(default=1, metadata=POSITIVE)  # actions sampled at each position (K)
    collapse_entropy: float = 0.02  # mean policy entropy (nats) below which the run is recorded as collapsed

    def __post_init__(self):
        check_settings(self)


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
    Settings = ReinforceSettings

    def __init__(self, world: World, settings: ReinforceSettings):
        self.world, self.settings = world, settings
        self.running_mean: float | torch.Tensor = 1.0 if settings.reward == "likelihood" else 0.0

    def state_dict(self) -> dict:
        return {"running_mean": float(self.running_mean)}

    def load_state_dict(self, state: dict) -> None:
        self.running_mean = state["running_mean"]

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        x = self.world.sample(self.settings.batch_size, self.world.cfg.seq_len, generator=cpu_generator(gen))
        x = x.to(device_of(model))
        yield self.update_on(model, x, gen)

    def update_on(self, model, x: torch.Tensor, gen: torch.Generator) -> Update:
        """The update on world text x [B, T] (sampling the actions from gen)."""
        s = self.settings
        logp = F.log_softmax(model(x[:, :-1])["logits"].float(), -1)  # [B, T, V]
        target = x[:, 1:]
        B, T, V = logp.shape
        probs = logp.detach().exp().reshape(B * T, V)
        a = torch.multinomial(probs, s.samples_per_position, replacement=True, generator=gen).view(B, T, -1)
        logp_a = logp.gather(-1, a)  # [B, T, K]
        hit = (a == target[..., None]).float()
        r = hit / logp_a.detach().exp() if s.reward == "likelihood" else hit
        if s.baseline == "one":
            b: float | torch.Tensor = 1.0 if s.reward == "likelihood" else 0.0
        elif s.baseline == "mean":
            b = torch.as_tensor(self.running_mean, dtype=torch.float64, device=r.device)  # kept on the device
            self.running_mean = BASELINE_MOMENTUM * b + (1 - BASELINE_MOMENTUM) * r.mean().double()
        else:
            b = 0.0
        loss = -((r - b) * logp_a).mean()
        nll = -logp.detach().gather(-1, target[..., None]).mean()
        return Update(loss, {"reward": r.mean(), "entropy": entropy(logp.detach()), "nll": nll}, target.numel())
