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
