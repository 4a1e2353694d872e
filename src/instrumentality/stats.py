"""Bootstrap confidence intervals (percentile), over items or over clusters of items."""

from __future__ import annotations

from collections.abc import Callable

import torch

N_BOOT = 1000
ALPHA = 0.05


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> torch.Tensor:
    """[n_boot, n] resampling indices, with replacement, from a fixed seed (CIs are reproducible)."""
    return torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))


def mean_ci(values: torch.Tensor, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0):
    """Mean of `values` [n] with a percentile bootstrap CI over items: (value, low, high)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    boots = values[bootstrap_indices(len(values), n_boot, seed)].mean(1)
    return _interval(float(values.mean()), boots, alpha)


def stat_ci(n: int, stat: Callable[[torch.Tensor], torch.Tensor], n_boot: int = N_BOOT,
            alpha: float = ALPHA, seed: int = 0):
    """Any statistic of n clusters: stat(idx [n_boot, n]) -> [n_boot]; stat(arange(n)[None]) is the estimate."""
    value = float(stat(torch.arange(n)[None])[0])
    return _interval(value, stat(bootstrap_indices(n, n_boot, seed)), alpha)


def _interval(value: float, boots: torch.Tensor, alpha: float):
    lo, hi = torch.quantile(boots.double(), torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    return value, float(lo), float(hi)


def seed_ci(values, lows=None, highs=None, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0):
    """Combine per-seed estimates (each with an item CI) into one mean with a CI over seeds and items:
    resample seeds with replacement, and each resampled seed's value from N(value, se) with
    se = (high - low) / (2 * 1.96) from its item CI. Returns (mean, low, high)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    se = torch.zeros_like(v)
    if lows is not None and highs is not None:
        width = torch.as_tensor(highs, dtype=torch.float64) - torch.as_tensor(lows, dtype=torch.float64)
        se = torch.nan_to_num(width / (2 * 1.959964), nan=0.0)
    order = sorted(range(len(v)), key=lambda i: (float(v[i]), float(se[i])))  # the CI is that of the set:
    v, se = v[order], se[order]                                              # the rows' order does not enter
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(v), (n_boot, len(v)), generator=g)
    draws = v[idx] + se[idx] * torch.randn(n_boot, len(v), generator=g, dtype=torch.float64)
    return _interval(float(v.mean()), draws.mean(1), alpha)
