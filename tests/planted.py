"""Planted models with known answers for the tests (the truth itself is instrumentality.world.truth).
Each follows the GPT calling convention: forward(idx, cache=None, return_hidden=False) -> {"logits", "hidden"?}.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from instrumentality.world import World
from instrumentality.world.truth import TruthModel

__all__ = ["TruthModel", "UniformModel", "FutureCopyModel", "RandomStateModel", "uniform_kl"]


class UniformModel(nn.Module):
    """pi(. | anything) = 1/V. KL(p* || pi) = log V - H(p*(.|s)) in closed form."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("_device_anchor", torch.zeros(()))

    def forward(self, idx, cache=None, return_hidden=False):
        out = {"logits": torch.zeros(*idx.shape, self.vocab_size, device=idx.device)}
        if return_hidden:
            out["hidden"] = [torch.zeros(*idx.shape, 1, device=idx.device)]
        return out


class FutureCopyModel(UniformModel):
    """Hidden state at t holds one-hot codes of the true tokens x_{t+1} .. x_{t+n} (read from the input
    itself): a model that 'knows the future'. Linear look-ahead probes must decode it perfectly."""

    def __init__(self, vocab_size: int, n: int = 4):
        super().__init__(vocab_size)
        self.n = n

    def forward(self, idx, cache=None, return_hidden=False):
        out = super().forward(idx)
        if return_hidden:
            B, T = idx.shape
            codes = []
            for k in range(1, self.n + 1):
                fut = torch.cat([idx[:, k:], torch.zeros(B, min(k, T), dtype=idx.dtype, device=idx.device)], 1)
                codes.append(F.one_hot(fut, self.vocab_size).float())
            out["hidden"] = [torch.cat(codes, -1)]
        return out


class RandomStateModel(UniformModel):
    """Hidden states are noise independent of the text: look-ahead probes must score chance."""

    def __init__(self, vocab_size: int, dim: int = 32, seed: int = 0):
        super().__init__(vocab_size)
        self.dim, self.seed = dim, seed

    def forward(self, idx, cache=None, return_hidden=False):
        out = super().forward(idx)
        if return_hidden:
            g = torch.Generator().manual_seed(self.seed + idx.shape[0])
            out["hidden"] = [torch.randn(*idx.shape, self.dim, generator=g).to(idx.device)]
        return out


def uniform_kl(world: World, states: torch.Tensor) -> torch.Tensor:
    """Closed form of KL(p*(.|s) || uniform) = log V - H(p*(.|s))."""
    return math.log(world.vocab_size) - world.state_entropy[states]


class JumpTruthModel(nn.Module):
    """The exact jump predictor of stride k: J = p*(z_{j+1} | z_<=j) (world/jump.py), with every asymmetric
    fork's first branch tilted by `tilt` nats at x_{P+k} (the marker at P: the tokens only that branch can put
    there). Hidden states: layer 0 the one-hot current token (the present only), layer 1 the exact belief
    over states (the whole strided history), from which the skipped tokens' posteriors are linear."""

    def __init__(self, world: World, k: int, tilt: float = 0.0):
        super().__init__()
        self.world, self.k, self.tilt = world, k, tilt
        self.register_buffer("_device_anchor", torch.zeros(()))

    def forward(self, idx, cache=None, return_hidden=False):
        from instrumentality.evaluation.jump_probes import branch_supports
        from instrumentality.world.jump import beliefs, strided_conditionals

        logits = strided_conditionals(self.world, idx.cpu(), self.k).clamp_min(1e-30).log()
        for fork in self.world.forks:
            supports = branch_supports(self.world, fork, self.k)
            if fork.symmetric or supports is None:
                continue
            at = idx.cpu() == fork.marker
            logits[at] = logits[at] + self.tilt * supports[0].double()
        out = {"logits": logits.float()}
        if return_hidden:
            out["hidden"] = [F.one_hot(idx.cpu(), self.world.vocab_size).float(),
                             beliefs(self.world, idx.cpu(), self.k).float()]
        return out


# ---------------------------------------------------------------------------- planted results tables
def as_results_table(df: pd.DataFrame, status: str = "finished") -> pd.DataFrame:
    """Planted rows as the evaluation writes them: every run with a status row (`status` where the rows
    name none), each row with its run's source and row count, and its experiment (exp_name: the run id's
    folder, as in a sweep's table) where the rows name none."""
    folder = df.run_id.astype(str).str.split("/").str[0]
    df = df.assign(exp_name=df["exp_name"].fillna(folder) if "exp_name" in df else folder)
    have = set(df[df.probe == "run"].run_id)
    extra = [{**df[df.run_id == r].iloc[0].to_dict(), "probe": "run", "metric": status, "value": 1.0,
              "ci_low": math.nan, "ci_high": math.nan} for r in df.run_id.unique() if r not in have]
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True) if extra else df
    df.insert(1, "source", df.run_id.map(lambda r: f"{abs(hash(r)) % 16**16:016x}"))
    df.insert(2, "run_rows", df.run_id.map(df.run_id.value_counts()))
    return df
