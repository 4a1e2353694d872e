"""The claim algebra: a claim's per-seed values, its interval over seeds and items, and its verdict (the
rule is VERDICT_RULE below, written into every report).

A claim family (one module beside this one: world, quest, cognition, prophecy, interruption, distillation) declares
the experiments whose runs it owns, the claims it makes of them, its figures and its report section as a
`ClaimFamily`; claims/__init__.py lists the families, and report.py loops over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from instrumentality.claims.declared import claims as declared_claims  # noqa: E402
from instrumentality.claims.declared import spec  # noqa: E402
from instrumentality.evaluation.table import ITEMS  # noqa: E402
from instrumentality.stats import (  # noqa: E402
    ALPHA,
    alpha_to_exclude,
    detect_split,
    holm,
    mean_ci,
    paired_differences,
    remedy,
    seed_interval,
)

# The verdict rule, written into the report
VERDICT_RULE = """\
every claim and its rows are declared in configs/claims.yaml before they are measured, each row with its prediction
and the reason for its threshold; a claim stands or falls on its *primary* row. A row's metric is one value per
seed (a difference between two arms is taken seed by seed: the arms share their seeds' starting checkpoints); its
value is their mean, with a 95% Student-t interval over the seeds, widened by the probe items' error (stats.py;
coverage in docs/design.md). If the whole interval lies on the predicted side of the threshold, the row is
*supported*; if it lies wholly on the other side, *not supported*; otherwise, or with fewer than two seeds,
*inconclusive*, and the report says what would decide it (more seeds, more probe items, or both, if the measured
mean and spreads held). Seeds that fall into two modes on different sides of the threshold (stats.detect_split)
are a *split*: the modes are reported instead of a mean that describes no seed. The primary row is one test; a
claim's secondary rows are decided after Holm's correction over them (a row decided only on its own reads
inconclusive, and says so). An "abs < m" row within its margin whose interval excludes 0 is *equivalent within
m*, not converged, and says so. A row whose runs are not in the table is *not measured*."""
PLANNER = "planner (optimum)"  # the exact planner's agent name in the quest tables (C6, C10)


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the final evaluation (not curves, not theory curves)."""
    return df[~df.probe.astype(str).str.startswith(("curve/", "theory_curve/", "run"))]


def per_seed(df: pd.DataFrame, probe: str, metric: str, **where) -> pd.DataFrame:
    """One metric's rows (one per run, so one per seed): seed, value, ci_low, ci_high, and `items` (the
    run's per-item values, where the table has them: report.load)."""
    sel = df[(df.probe == probe) & (df.metric == metric)]
    for k, v in where.items():
        sel = sel[np.isclose(sel[k].astype(float), v)] if isinstance(v, float) else sel[sel[k] == v]
    out = sel[["seed", "value", "ci_low", "ci_high"]].copy()
    out["items"] = sel[ITEMS] if ITEMS in sel else None
    return out


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


def same_items(*columns: pd.Series) -> bool:
    """Whether every seed of every arm (an `items` column each) has per-item values, all of one length (the
    same items)."""
    arrays = [x for c in columns for x in c]
    return bool(arrays) and all(isinstance(x, np.ndarray) for x in arrays) and len({len(x) for x in arrays}) == 1


def _with_items(seeds, value, items: list | None, quadrature_half) -> pd.DataFrame:
    """A per-seed table of a combination of arms: item intervals from the combined per-item values where
    there are (the items' percentile bootstrap, stats.mean_ci), else the arms' errors in quadrature."""
    if items is not None:
        cis = [mean_ci(x) for x in items]
        return pd.DataFrame({"seed": seeds, "value": [c[0] for c in cis], "ci_low": [c[1] for c in cis],
                             "ci_high": [c[2] for c in cis], "items": items, "item_pairing": "paired"})
    value = np.asarray(value, dtype=float)
    return pd.DataFrame({"seed": seeds, "value": value, "ci_low": value - quadrature_half,
                         "ci_high": value + quadrature_half, "items": None, "item_pairing": "quadrature"})


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per-seed differences a - b of two per_seed tables (the seeds both have). Where both arms have per-item
    values on the same items (the same prompts, the same episodes), the difference's item interval comes
    from the item-by-item differences (stats.item_paired_difference), so what the items share cancels;
    otherwise the two arms' item errors are added in quadrature (stats.paired_differences). A seed with
    two rows in one arm (two runs of one seed in the table) is an error, not a silent doubling."""
    for arm in (a, b):
        check_one_run_per_seed(arm, "one arm of a paired comparison")
    m = a.merge(b, on="seed", suffixes=("_a", "_b"))
    if m.empty:
        return _with_items(m.seed, [], None, np.zeros(0))
    if {"items_a", "items_b"} <= set(m) and same_items(m.items_a, m.items_b):
        return _with_items(m.seed, None, [x - y for x, y in zip(m.items_a, m.items_b)], None)
    d, low, high = paired_differences(m.value_a, m.value_b, m.ci_low_a, m.ci_high_a, m.ci_low_b, m.ci_high_b)
    return _with_items(m.seed, d, None, (high - low) / 2)


def weighted_sum(tables: list[pd.DataFrame], weights: list[float]) -> pd.DataFrame:
    """Per seed: sum_i w_i x_i of several per-seed tables (the seeds all have). Where every table has
    per-item values on the same items, the sum is taken item by item and its interval comes from those
    (exact for tables that share items); otherwise the item errors are added in quadrature,
    sqrt(sum_i w_i^2 se_i^2), as if the tables' items were independent."""
    if not tables:
        raise ValueError("weighted_sum needs at least one per-seed table")
    for t in tables:
        check_one_run_per_seed(t, "one term of a weighted sum")
    parts = [t[["seed", "value", "ci_low", "ci_high", *(["items"] if "items" in t else [])]]
             .rename(columns=lambda c, i=i: c if c == "seed" else f"{c}_{i}") for i, t in enumerate(tables)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part, on="seed")
    if merged.empty:
        return _with_items(merged.seed, [], None, np.zeros(0))
    item_columns = [f"items_{i}" for i in range(len(tables))]
    if all(c in merged for c in item_columns) and same_items(*(merged[c] for c in item_columns)):
        items = [sum(w * merged[c].iloc[k] for c, w in zip(item_columns, weights)) for k in range(len(merged))]
        return _with_items(merged.seed, None, items, None)
    value = sum(w * merged[f"value_{i}"] for i, w in enumerate(weights))
    half = np.sqrt(sum((w * (merged[f"ci_high_{i}"] - merged[f"ci_low_{i}"]) / 2) ** 2 for i, w in enumerate(weights)))
    return _with_items(merged.seed, value, None, half)


# ---------------------------------------------------------------------------- rows and verdicts
@dataclass
class Claim:
    """One row of a claim: a declared metric (claims.yaml) measured as one value per seed."""

    claim: str
    metric: str
    prediction: str  # "< x", "> x", or "abs < x"
    value: float
    low: float
    high: float
    n_seeds: int
    seeds: pd.DataFrame | None = None  # the per-seed values (seed, value, ci_low, ci_high), where there are
    row: str = ""  # its name in the claims file, <claim>.<key>
    primary: bool = False  # the row the claim stands or falls on
    reason: str = ""  # why this threshold (the claims file)
    note: str = ""  # what else the reader must know (a censored run, a fallback)
    holm_p: float | None = None  # a secondary row's Holm-adjusted p-value among its claim's rows (decide())

    @property
    def threshold(self) -> float:
        return float(self.prediction.split()[-1])

    @cached_property
    def modes(self) -> np.ndarray | None:
        """Where the seeds fall into two modes (stats.detect_split): the upper mode's mask; else None."""
        if self.seeds is None or len(self.seeds) < 3:
            return None
        t = self.seeds
        return detect_split(t.value.values, t.ci_low.values, t.ci_high.values)

    @property
    def raw_verdict(self) -> str:
        """The row's verdict on its own (no correction for the claim's other rows)."""
        v = verdict(self.prediction, self.value, self.low, self.high, self.n_seeds)
        if v != "not measured" and self.modes is not None and not self._all_on_one_side():
            return "split"
        return v

    @property
    def verdict(self) -> str:
        """The primary row's own verdict; a secondary row's after Holm's correction over its claim's rows."""
        raw = self.raw_verdict
        if self.holm_p is None or raw in ("split", "not measured") or self.holm_p < ALPHA:
            return raw
        return "inconclusive"

    def _all_on_one_side(self) -> bool:
        """Whether every seed lies on the same side of the prediction's threshold(s)."""
        assert self.seeds is not None
        v = self.seeds.value.to_numpy(float)
        x = self.threshold
        if self.prediction.startswith("abs"):
            inside = np.abs(v) < x
            return bool(inside.all() or (~inside).all())
        return bool((v > x).all() or (v < x).all())

    def p_values(self) -> tuple[float, float]:
        """(p of "supported", p of "not supported"): the smallest alpha at which the row's interval would lie
        wholly on each side (stats.alpha_to_exclude); 1.0 where it cannot."""
        if self.seeds is None or len(self.seeds) < 2:
            return 1.0, 1.0
        t = self.seeds
        p = lambda x, side: alpha_to_exclude(t.value.values, t.ci_low.values, t.ci_high.values, x, side)  # noqa: E731
        op, x = self.prediction.split()[0], self.threshold
        if op == "abs":  # inside (-x, x) / wholly outside
            return max(p(-x, "above"), p(x, "below")), min(p(-x, "below"), p(x, "above"))
        return (p(x, "above"), p(x, "below")) if op == ">" else (p(x, "below"), p(x, "above"))

    @property
    def split_description(self) -> str:
        """The two modes and their seeds, for a split row."""
        mask = self.modes
        if mask is None:
            return ""
        t = self.seeds
        assert t is not None
        parts = []
        for m in (~mask, mask):
            v, s = t.value.to_numpy(float)[m], t.seed.to_numpy()[m]
            seeds = ", ".join(map(str, sorted(s)))
            parts.append(f"{m.sum()} seed(s) at {v.min():.3g} to {v.max():.3g} (seeds {seeds})")
        return "; ".join(parts)

    @property
    def equivalence_note(self) -> str:
        """For an "abs < m" row: whether its interval contains 0 (converged to the end point) or only lies
        within the margin (equivalent, not converged)."""
        if not self.prediction.startswith("abs") or self.n_seeds < 2 or math.isnan(self.low):
            return ""
        return "interval contains 0" if self.low <= 0 <= self.high else \
            "interval excludes 0: within the margin, not at the point"

    @property
    def per_seed_values(self) -> str:
        if self.seeds is None or self.seeds.empty:
            return ""
        return ", ".join(f"{v:.3g}" for v in self.seeds.sort_values("seed").value)

    @property
    def remedy(self) -> str | None:
        """For an inconclusive row: what would decide it if the measured mean and spreads held (more seeds,
        more probe items, or both)."""
        if self.verdict != "inconclusive" or self.seeds is None or len(self.seeds) < 2:
            return None
        t = self.seeds
        x = self.threshold
        if self.prediction.startswith("abs"):  # decided by excluding the nearer of -x and x
            x = x if self.value >= 0 else -x
        if self.holm_p is not None and self.raw_verdict != "inconclusive":
            return "decided on its own, not after the correction for the claim's other rows"
        return remedy(t.value.values, t.ci_low.values, t.ci_high.values, x)


def claim_of(row: str, seeds: pd.DataFrame, note: str = "", **fill) -> Claim:
    """A declared row (claims.yaml: <claim>.<key>) measured by one value per seed (seed, value, ci_low,
    ci_high); `fill` fills the placeholders of its metric and prediction."""
    s = spec(row)
    cid = row.split(".")[0]
    metric, prediction = s.metric.format(**fill), s.prediction.format(**fill)
    check_one_run_per_seed(seeds, f"claim {cid} ({metric})")
    if "item_pairing" in seeds and (seeds.item_pairing == "quadrature").any():
        note = "; ".join(filter(None, [note, "the arms' item errors in quadrature (no per-item values for them "
                                             "in this table)"]))
    common: dict[str, Any] = dict(row=row, primary=s.primary, reason=s.reason, note=note)
    if seeds.empty:
        return Claim(cid, metric, prediction, math.nan, math.nan, math.nan, 0, **common)
    return Claim(cid, metric, prediction, *seed_interval(seeds.value.values, seeds.ci_low.values,
                                                         seeds.ci_high.values), len(seeds), seeds, **common)


def decide(rows: list[Claim]) -> list[Claim]:
    """Holm's correction within each claim: every measured secondary row gets its adjusted p-value (its
    direction's, supported or not), so that it is decided only where it would be after the correction for
    the claim's other secondary rows. The primary row is one test and is not adjusted. Returns the rows."""
    by_claim: dict[str, list[Claim]] = {}
    for r in rows:
        if not r.primary and r.n_seeds >= 2 and not math.isnan(r.value):
            by_claim.setdefault(r.claim, []).append(r)
    for secondary in by_claim.values():
        p = [min(r.p_values()) for r in secondary]
        for r, adjusted in zip(secondary, holm(p)):
            r.holm_p = float(adjusted)
    return rows


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict: its primary row's, with its secondary rows' verdicts counted."""

    claim: str
    statement: str
    primary: Claim | None
    secondary: tuple[Claim, ...]

    @property
    def verdict(self) -> str:
        return self.primary.verdict if self.primary is not None else "not measured"

    @property
    def secondary_summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.secondary:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        return ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "-"


def claim_verdicts(rows: list[Claim]) -> list[ClaimVerdict]:
    """One verdict per declared claim (claims.yaml), in the file's order, from decided rows (decide())."""
    out = []
    for cid, c in declared_claims().items():
        mine = [r for r in rows if r.claim == cid]
        primary = next((r for r in mine if r.primary), None)
        out.append(ClaimVerdict(cid, c.statement, primary, tuple(r for r in mine if not r.primary)))
    return out


def verdict(prediction: str, value: float, low: float, high: float, n: int = 2) -> str:
    if n == 0 or any(map(math.isnan, (value, low, high))):
        return "not measured"
    if n < 2:  # one seed says nothing about the spread over seeds
        return "inconclusive"
    op, x = prediction.split()[0], float(prediction.split()[-1])
    if math.isnan(x):  # a margin from theory rows the table does not have
        return "not measured"
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
