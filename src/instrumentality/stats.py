"""Confidence intervals: percentile bootstraps over items (or clusters of items) for one checkpoint, and
Student-t intervals over seeds for a claim."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

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
    proven by simulation in tests/claims/test_stats.py. One seed: its item interval (a claim needs two seeds to
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


# ---------------------------------------------------------------------------- what a verdict rests on
def alpha_to_exclude(values, lows, highs, threshold: float, side: str, lo_alpha: float = 1e-12) -> float:
    """The p-value of a one-sided decision made with seed_interval: the smallest alpha at which the two-sided
    (1 - alpha) interval lies wholly `side` ("above" or "below") of `threshold` (1.0 when no alpha does,
    e.g. when the mean itself is on the other side). At alpha = ALPHA this is exactly the verdict's
    decision, so Holm's correction on these values reduces to the verdict rule for one row."""
    if side not in ("above", "below"):
        raise ValueError(f"side must be 'above' or 'below', not {side!r}")
    v = np.asarray(values, dtype=float).ravel()
    if len(v) < 2:
        return 1.0

    def excludes(alpha: float) -> bool:
        _, lo, hi = seed_interval(v, lows, highs, alpha)
        return lo > threshold if side == "above" else hi < threshold

    if not excludes(1.0 - 1e-9):  # even a zero-width interval (the mean) is not on that side
        return 1.0
    if excludes(lo_alpha):
        return lo_alpha
    a, b = lo_alpha, 1.0 - 1e-9  # excludes(b) and not excludes(a): bisect on log(alpha)
    for _ in range(60):
        mid = math.sqrt(a * b)
        a, b = (a, mid) if excludes(mid) else (mid, b)
    return b


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of p-values (family-wise error rate): p_(j) -> max over i <= j of
    min(1, (m - i + 1) p_(i)), in the input's order. A row is decided at level alpha when its adjusted
    p-value is below alpha."""
    p = np.asarray(pvalues, dtype=float).ravel()
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(adjusted) if m else adjusted
    return out


# ---------------------------------------------------------------------------- seeds that split into modes
SPLIT_ALPHA = 0.05  # the false-split rate under Gaussian seeds


def _max_gap(x: np.ndarray, item_se: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of sorted values [reps, n] -> the split statistic of each row and the position of its gap."""
    n = x.shape[1]
    stats_ = np.empty((x.shape[0], n - 1))
    for j in range(1, n):
        a, b = x[:, :j], x[:, j:]
        within = ((a - a.mean(1, keepdims=True)) ** 2).sum(1) + ((b - b.mean(1, keepdims=True)) ** 2).sum(1)
        scale = np.sqrt(within / (n - 2) + item_se ** 2)
        gap = x[:, j] - x[:, j - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            stats_[:, j - 1] = np.where(scale > 0, gap / scale, np.where(gap > 0, np.inf, 0.0))
    return stats_.max(1), stats_.argmax(1) + 1


def split_statistic(values, item_se: float = 0.0) -> tuple[float, int]:
    """The largest gap between consecutive sorted values over the spread within the two groups it makes
    (pooled standard deviation on n - 2 degrees of freedom, the mean item standard error added in
    quadrature so that a gap inside the item error is no split), and the gap's position j (the split puts
    the j smallest values in one mode). Needs three values; inf where the groups have no spread at all."""
    best, where = _max_gap(np.sort(np.asarray(values, dtype=float).ravel())[None], item_se)
    return float(best[0]), int(where[0])


def split_critical_value(n: int, alpha: float = SPLIT_ALPHA, reps: int = 200_000) -> float:
    """The (1 - alpha) quantile of split_statistic over n Gaussian seeds (no item error), by simulation from
    a fixed seed: a split is declared where the statistic exceeds it."""
    return _split_critical_value(int(n), float(alpha), int(reps))


@cache
def _split_critical_value(n: int, alpha: float, reps: int) -> float:
    if n < 3:
        return math.inf
    best, _ = _max_gap(np.sort(np.random.default_rng(20261206).normal(size=(reps, n)), axis=1))
    return float(np.quantile(best, 1 - alpha))


def detect_split(values, lows=None, highs=None, alpha: float = SPLIT_ALPHA) -> np.ndarray | None:
    """Where the seeds fall into two modes: a boolean mask of the upper mode's seeds (in the input's order),
    or None. A split is declared when split_statistic exceeds what Gaussian seeds give with probability
    alpha. Three seeds give the test almost no power (one degree of freedom within the modes) and two give
    none; a mode that no seed fell into cannot be seen at any seed count."""
    v = np.asarray(values, dtype=float).ravel()
    if len(v) < 3:
        return None
    se = float(item_se(lows, highs, len(v)).mean())
    stat, j = split_statistic(v, se)
    if not stat > split_critical_value(len(v), alpha):
        return None
    cut = np.sort(v)[j]
    return v >= cut


# ---------------------------------------------------------------------------- what would decide a row
def items_to_decide(values, lows, highs, threshold: float, alpha: float = ALPHA, most: float = 1000.0) -> float | None:
    """The factor by which the probe items must grow (their error falls as 1 / sqrt(items)) for an interval
    of seed_interval's kind at the measured seed count to exclude `threshold`, if the mean and spreads
    held; None if no factor up to `most` would (the seeds' spread alone is wider than the distance)."""
    v = np.asarray(values, dtype=float).ravel()
    n = len(v)
    if n < 2:
        return None
    seeds_half = stats.t.ppf(1 - alpha / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    gap = abs(v.mean() - threshold)
    item = stats.norm.ppf(1 - alpha / 2) * float(item_se(lows, highs, n).mean())
    if seeds_half >= gap:
        return None
    if item == 0 or math.hypot(seeds_half, item) < gap:
        return 1.0
    factor = (item / math.sqrt(gap ** 2 - seeds_half ** 2)) ** 2  # hypot(seeds_half, item / sqrt(f)) = gap
    return float(factor * 1.0001) if factor <= most else None


def remedy(values, lows, highs, threshold: float, alpha: float = ALPHA) -> str:
    """What would decide an undecided row if the measured mean and spreads held: more seeds, more probe
    items, or both (and how many), in words; "no count would decide it ..." where none would."""
    v = np.asarray(values, dtype=float).ravel()
    if len(v) < 2:
        return "at least two seeds"
    if abs(v.mean() - threshold) == 0:
        return "no count would decide it: the mean lies on the threshold"
    n_seeds = seeds_to_decide(v, lows, highs, threshold, alpha)
    factor = items_to_decide(v, lows, highs, threshold, alpha)
    if n_seeds is not None:
        seeds = f"about {n_seeds} seeds"
        return seeds if factor is None or factor <= 1 else \
            f"{seeds}, or {_times(factor)} the probe items at {len(v)} seeds"
    if factor is not None:
        return f"{_times(factor)} the probe items (the seeds' spread is not what blocks it)"
    for f in (2.0, 4.0, 10.0, 100.0):  # neither alone: seeds with more items
        scaled_highs = None if highs is None else v + (np.asarray(highs, float) - v) / math.sqrt(f)
        scaled_lows = None if lows is None else v - (v - np.asarray(lows, float)) / math.sqrt(f)
        n = seeds_to_decide(v, scaled_lows, scaled_highs, threshold, alpha)
        if n is not None:
            return f"about {n} seeds with {_times(f)} the probe items (the probe items' error blocks it at any " \
                   "seed count)"
    return "no count would decide it (up to 1000 seeds with 100x the probe items): the mean lies too close to " \
           "the threshold"


def _times(factor: float) -> str:
    return f"{math.ceil(factor * 10) / 10:g}x" if factor < 10 else f"{math.ceil(factor):d}x"


# ---------------------------------------------------------------------------- ratios and paired items
def log_ratio_interval(ratios, alpha: float = ALPHA) -> tuple[float, float, float]:
    """The geometric mean of per-seed ratios with a Student-t interval on their logarithms, mapped back:
    (geometric mean, low, high). NaN where fewer than one positive ratio."""
    r = np.asarray(ratios, dtype=float).ravel()
    r = r[np.isfinite(r)]
    if len(r) == 0 or (r <= 0).any():
        return math.nan, math.nan, math.nan
    m, lo, hi = seed_interval(np.log(r), alpha=alpha)
    return float(np.exp(m)), float(np.exp(lo)), float(np.exp(hi))


def item_paired_difference(items_a, items_b, seed: int = 0) -> tuple[float, float, float]:
    """One seed's difference of two arms scored on the same probe items (the same prompts, the same episodes
    with common random numbers): the mean of the item-by-item differences with the items' percentile
    bootstrap interval (mean_ci), so that what the items share cancels instead of adding in quadrature."""
    a, b = np.asarray(items_a, dtype=float).ravel(), np.asarray(items_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"item-paired arms need the same items: {len(a)} against {len(b)}")
    return mean_ci(a - b, seed=seed)
