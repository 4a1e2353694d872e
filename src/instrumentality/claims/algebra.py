"""The claim algebra: a claim's per-seed values, its interval over seeds and items, and its verdict (the
rule is VERDICT_RULE below, written into every report).

A claim family (one module beside this one: world, quest, cognition, prophecy, interruption) declares
the experiments whose runs it owns, the claims it makes of them, its figures and its report section as a
`ClaimFamily`; claims/__init__.py lists the families, and report.py loops over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from instrumentality.stats import paired_differences, seed_interval, seeds_to_decide  # noqa: E402

# The verdict rule, written into the report
VERDICT_RULE = """\
a claim's metric is one value per seed (a difference between two arms is taken seed by seed: the arms share
their seeds' starting checkpoints); the claim's value is their mean, with a 95% Student-t interval over the
seeds, widened by the probe items' error (stats.py; its coverage at 2, 3 and 5 seeds is proven by simulation).
If the whole interval lies on the predicted side of the threshold, the claim is *supported*; if it lies wholly
on the other side, *not supported*; otherwise, or with fewer than two seeds, *inconclusive*, and the report
gives the seed count at which the measured mean and spread would decide it. A claim whose runs are not in the
table is *not measured*."""
NO_STEERING = 0.5  # nats: the bound of "does not steer" (C4's gamma = 0, C5's teacher forcing, C8's equivalence)
PLANNER = "planner (optimum)"  # the exact planner's agent name in the quest tables (C6, C10)


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the final evaluation (not curves, not theory curves)."""
    return df[~df.probe.astype(str).str.startswith(("curve/", "theory_curve/", "run"))]


def per_seed(df: pd.DataFrame, probe: str, metric: str, **where) -> pd.DataFrame:
    """One metric's rows (one per run, so one per seed): seed, value, ci_low, ci_high."""
    sel = df[(df.probe == probe) & (df.metric == metric)]
    for k, v in where.items():
        sel = sel[np.isclose(sel[k].astype(float), v)] if isinstance(v, float) else sel[sel[k] == v]
    return sel[["seed", "value", "ci_low", "ci_high"]]


def combine(df: pd.DataFrame, probe: str, metric: str, **where) -> tuple[float, float, float, int]:
    """Mean over seeds of one metric with its interval over seeds and items; also the number of seeds."""
    sel = per_seed(df, probe, metric, **where)
    check_one_run_per_seed(sel, f"{probe} {metric}")
    if sel.empty:
        return math.nan, math.nan, math.nan, 0
    return (*seed_interval(sel.value.values, sel.ci_low.values, sel.ci_high.values), len(sel))


def check_one_run_per_seed(seeds: pd.DataFrame, what: str) -> None:
    """Raise where a seed has more than one row in one arm (two runs of one seed): counted twice, it would
    pass for an extra seed."""
    twice = seeds.seed[seeds.seed.duplicated()]
    if len(twice):
        raise ValueError(f"seed(s) {sorted(set(twice))} have more than one run in {what}: remove the extra runs "
                         "from the table")


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per-seed differences a - b of two per_seed tables (the seeds both have), with item intervals of the
    difference (stats.paired_differences: the two arms' item errors in quadrature). A seed with two rows in
    one arm (two runs of one seed in the table) is an error, not a silent doubling."""
    for arm in (a, b):
        check_one_run_per_seed(arm, "one arm of a paired comparison")
    m = a.merge(b, on="seed", suffixes=("_a", "_b"))
    d, low, high = paired_differences(m.value_a, m.value_b, m.ci_low_a, m.ci_high_a, m.ci_low_b, m.ci_high_b)
    return pd.DataFrame({"seed": m.seed, "value": d, "ci_low": low, "ci_high": high})


# ---------------------------------------------------------------------------- claims and verdicts
@dataclass
class Claim:
    claim: str
    metric: str
    prediction: str  # "< x", "> x", or "abs < x"
    value: float
    low: float
    high: float
    n_seeds: int
    seeds: pd.DataFrame | None = None  # the per-seed values (seed, value, ci_low, ci_high), where there are

    @property
    def verdict(self) -> str:
        return verdict(self.prediction, self.value, self.low, self.high, self.n_seeds)

    @property
    def per_seed_values(self) -> str:
        if self.seeds is None or self.seeds.empty:
            return ""
        return ", ".join(f"{v:.3g}" for v in self.seeds.sort_values("seed").value)

    @property
    def seeds_to_decide(self) -> int | None:
        """For an inconclusive claim: the seed count at which the measured mean and spread would decide it."""
        if self.verdict != "inconclusive" or self.seeds is None or len(self.seeds) < 2:
            return None
        x = float(self.prediction.split()[-1])
        t = self.seeds
        if self.prediction.startswith("abs"):  # decided by excluding the nearer of -x and x
            x = x if self.value >= 0 else -x
        return seeds_to_decide(t.value.values, t.ci_low.values, t.ci_high.values, x)


def claim_of(cid: str, metric: str, prediction: str, seeds: pd.DataFrame) -> Claim:
    """A claim measured by one value per seed (seed, value, ci_low, ci_high)."""
    check_one_run_per_seed(seeds, f"claim {cid} ({metric})")
    if seeds.empty:
        return Claim(cid, metric, prediction, math.nan, math.nan, math.nan, 0)
    return Claim(cid, metric, prediction, *seed_interval(seeds.value.values, seeds.ci_low.values,
                                                         seeds.ci_high.values), len(seeds), seeds)


def verdict(prediction: str, value: float, low: float, high: float, n: int = 2) -> str:
    if n == 0 or any(map(math.isnan, (value, low, high))):
        return "not measured"
    if n < 2:  # one seed says nothing about the spread over seeds
        return "inconclusive"
    op, x = prediction.split()[0], float(prediction.split()[-1])
    if op == "abs":  # |metric| < x: CI inside (-x, x) / CI entirely outside
        if -x < low and high < x:
            return "supported"
        if high < -x or low > x:
            return "not supported"
        return "inconclusive"
    below = high < x
    above = low > x
    if op == "<":
        return "supported" if below else "not supported" if above else "inconclusive"
    if op == ">":
        return "supported" if above else "not supported" if below else "inconclusive"
    raise ValueError(f"unknown prediction {prediction!r}")



def format_ci(v, fmt: str = ".3f") -> str:
    """(mean, low, high, ...) as "mean [low, high]" in a report table; "-" where there is none (NaN)."""
    return "-" if v is None or any(math.isnan(float(x)) for x in v[:3]) else \
        f"{v[0]:{fmt}} [{v[1]:{fmt}}, {v[2]:{fmt}}]"


# ---------------------------------------------------------------------------- figures
def save_figure(fig, folder: Path, name: str) -> list[Path]:
    """A figure as PNG and PDF in `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- claim families
@dataclass(frozen=True)
class ClaimFamily:
    """One family of claims: the experiments whose runs it owns (every run of the table belongs to exactly
    one family's experiment), the other families' experiments it also reads (shared arms, e.g. C8's
    standard cells are F1's and F2's runs), and what it makes of them. Each callable gets the table's runs
    of `owns` + `reads` only."""

    name: str
    owns: tuple[str, ...]
    claims: Callable[[pd.DataFrame], list[Claim]]
    reads: tuple[str, ...] = ()
    figures: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = field(default_factory=dict)
    section: Callable[[pd.DataFrame], list[str]] = lambda df: []

    def runs(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of the runs this family reads: those of its own and its read experiments."""
        return df[df["exp_name"].astype(str).isin(self.owns + self.reads)] if "exp_name" in df else df[:0]
