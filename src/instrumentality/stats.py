"""Confidence intervals: percentile bootstraps over items (or clusters of items) for one checkpoint, and
Student-t intervals over seeds for a claim."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

N_BOOT = 1000
ALPHA = 0.05


def _percentile_bootstrap(data: tuple, statistic, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """scipy.stats.bootstrap's percentile interval of a vectorised statistic, from a fixed seed (CIs are
    reproducible); each sample in `data` is resampled on its own."""
    res = stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                          vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: torch.Tensor | np.ndarray, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0):
    """Mean of `values` [n] with a percentile bootstrap CI over items: (value, low, high)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1 or (v == v[0]).all():  # no spread: the interval is the value
        return float(v.mean()), float(v[0]), float(v[0])
    return (float(v.mean()), *_percentile_bootstrap((v,), np.mean, n_boot, alpha, seed))


def diff_ci(a, b, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0):
    """Difference of two independent means, mean(a) - mean(b), with a percentile bootstrap CI (each sample
    resampled on its own): (value, low, high)."""
    a, b = (torch.as_tensor(x, dtype=torch.float64).flatten().numpy() for x in (a, b))

    def difference(x, y, axis=-1):
        return x.mean(axis) - y.mean(axis)

    return (float(a.mean() - b.mean()), *_percentile_bootstrap((a, b), difference, n_boot, alpha, seed))


def stat_ci(n: int, stat: Callable[[torch.Tensor], torch.Tensor], n_boot: int = N_BOOT,
            alpha: float = ALPHA, seed: int = 0):
    """Any statistic of n clusters (sequences): stat(idx [n_boot, n]) -> [n_boot], the clusters drawn by
    index; stat(arange(n)[None]) is the estimate. The percentile bootstrap resamples the indices."""
    value = float(stat(torch.arange(n)[None])[0])

    def of_indices(idx, axis=-1):
        return stat(torch.as_tensor(idx).reshape(-1, n)).numpy().reshape(idx.shape[:-1])

    return (value, *_percentile_bootstrap((np.arange(n),), of_indices, n_boot, alpha, seed))


def item_se(lows, highs, n: int) -> np.ndarray:
    """Standard errors over items from 95% item intervals: (high - low) / (2 x 1.96); 0 where there is none."""
    if lows is None or highs is None:
        return np.zeros(n)
    width = np.asarray(highs, dtype=float) - np.asarray(lows, dtype=float)
    return np.nan_to_num(width / (2 * 1.959964), nan=0.0)


def seed_interval(values, lows=None, highs=None, alpha: float = ALPHA) -> tuple[float, float, float]:
    """The mean of per-seed values with a (1 - alpha) interval that holds at the seed count used.

    Seeds differ far more than probe items do, and there are a handful of them, so the interval is a
    Student-t over the per-seed values: mean +- t(1 - alpha/2, n - 1) s / sqrt(n). Every seed is scored on
    the same probe items, so the items' error does not average out over seeds: the mean item standard
    error (from each seed's item interval) is added in quadrature, z(1 - alpha/2) se_items. Coverage is
    proven by simulation in tests/test_stats.py. One seed: its item interval (a claim needs two seeds to
    be decided; see report.verdict). Returns (mean, low, high)."""
    v = np.asarray(values, dtype=float).ravel()
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    se_items = float(item_se(lows, highs, n).mean())
    z = stats.norm.ppf(1 - alpha / 2)
    if n == 1:
        return float(v[0]), float(v[0] - z * se_items), float(v[0] + z * se_items)
    half = math.hypot(stats.t.ppf(1 - alpha / 2, n - 1) * v.std(ddof=1) / math.sqrt(n), z * se_items)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def paired_differences(a, b, a_lows=None, a_highs=None, b_lows=None, b_highs=None, alpha: float = ALPHA):
    """Per-seed differences a_k - b_k of two arms of the same seeds, each with a (1 - alpha) item interval:
    the two arms' item errors added in quadrature. Returns (differences, lows, highs)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    se = np.hypot(item_se(a_lows, a_highs, len(a)), item_se(b_lows, b_highs, len(b)))
    d = a - b
    z = stats.norm.ppf(1 - alpha / 2)
    return d, d - z * se, d + z * se


def paired_interval(a, b, a_lows=None, a_highs=None, b_lows=None, b_highs=None, alpha: float = ALPHA):
    """The mean of per-seed differences a_k - b_k (two arms of the same seeds: a fine-tuned model and the
    reference it started from, two arms from one checkpoint) with a Student-t interval over the
    differences, the two arms' item errors added in quadrature (what every paired claim's verdict uses:
    report.paired, then seed_interval). Returns (mean, low, high)."""
    d, lows, highs = paired_differences(a, b, a_lows, a_highs, b_lows, b_highs, alpha)
    return seed_interval(d, lows, highs, alpha)


def seeds_to_decide(values, lows, highs, threshold: float, alpha: float = ALPHA, most: int = 1000) -> int | None:
    """The smallest seed count at which an interval of seed_interval's kind around the measured mean would
    exclude `threshold`, if the mean and the spread over seeds stayed as measured; None if no count up to
    `most` would (the item error alone is wider than the distance, or the mean sits on the threshold)."""
    v = np.asarray(values, dtype=float).ravel()
    if len(v) < 2:
        return None
    s, gap = v.std(ddof=1), abs(v.mean() - threshold)
    item = stats.norm.ppf(1 - alpha / 2) * float(item_se(lows, highs, len(v)).mean())
    for n in range(2, most + 1):
        if math.hypot(stats.t.ppf(1 - alpha / 2, n - 1) * s / math.sqrt(n), item) < gap:
            return n
    return None
