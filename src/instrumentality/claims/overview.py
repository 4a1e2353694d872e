"""The headline figure (README): one measure of instrumentality, instrumental steering at the p = 0.5 fork,
for the predictors and the optimisers that the world claims and F11 compare, from the results table.

It makes no claims of its own (C1, C3, C4 and C11 decide them); it reads the runs of F1, F2 and F11.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from instrumentality.claims import style
from instrumentality.claims.algebra import ClaimFamily, combine, final_rows, save_figure
from instrumentality.claims.distillation import TEACHER_COLORS, student
from instrumentality.claims.world import c1_margin, exact_instrumental_optimum, truth_critics

# the colours of F1/F2 (regime) and F11 (teacher); a jump predictor's bar is hatched
SUPERVISED, CRITIC = style.REGIME_COLORS["supervised"], style.REGIME_COLORS["critic"]
JUMP_HATCH = "//"


def headline_bars(df: pd.DataFrame) -> list[tuple[str, str, str | None, tuple[float, float, float], int]]:
    """(label, colour, hatch, (mean, CI low, CI high), seeds) per bar, in reading order; bars without runs
    left out."""
    fin = final_rows(df)
    crit = truth_critics(fin)

    def critic(gamma: float, horizon: int) -> pd.DataFrame:
        if crit.empty:
            return crit
        g, h = crit["regime.gamma"].astype(float), crit["regime.horizon"].astype(float)
        return crit[np.isclose(g, gamma) & np.isclose(h, horizon)]

    arms = [("next-token predictor (supervised)", SUPERVISED, None, fin[fin.regime == "supervised"]),
            ("critic-graded RL, γ = 0, H = 8", CRITIC, None, critic(0.0, 8)),
            ("critic-graded RL, γ = 1, H = 1", CRITIC, None, critic(1.0, 1)),
            ("critic-graded RL, γ = 0.5, H = 8", CRITIC, None, critic(0.5, 8)),
            ("critic-graded RL, γ = 1, H = 8", CRITIC, None, critic(1.0, 8)),
            ("jump predictor of the truth, distilled, k = 4", TEACHER_COLORS["truth"], JUMP_HATCH,
             student(fin, "truth", "distilled", 4)),
            ("jump predictor of the RL policy, k = 2", TEACHER_COLORS["policy"], JUMP_HATCH,
             student(fin, "policy", "direct", 2))]
    bars = []
    for label, color, hatch, runs in arms:
        probe = "jump/forks/p=0.5" if hatch else "forks/p=0.5"
        mean, low, high, n = combine(runs, probe, "instrumental_steering")
        if n:
            bars.append((label, color, hatch, (mean, low, high), n))
    return bars


def figure_headline(df: pd.DataFrame, folder) -> list:
    """Instrumental steering (asymmetric minus symmetric fork, nats) per arm, mean over seeds with its 95%
    interval, the exact optimum of the gamma = 1, H = 8 critic and C1's margin beside them."""
    bars = headline_bars(df)
    if not bars:
        return []
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fin = final_rows(df)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.6))
    y = np.arange(len(bars))[::-1]
    v, lo, hi = (np.array([b[3][i] for b in bars]) for i in range(3))
    for yi, vi, (_, color, hatch, *_) in zip(y, v, bars):
        ax.barh(yi, vi, color=color, hatch=hatch, edgecolor="white" if hatch else None, height=0.6)
    ax.errorbar(v, y, xerr=[v - lo, hi - v], fmt="none", ecolor="k", capsize=3, lw=1)
    ax.set_yticks(y, [f"{b[0]} ({b[4]} seeds)" for b in bars])
    m = c1_margin(fin)
    if not math.isnan(m):
        ax.axvspan(-m, m, color="0.92", zorder=0, label=f"'steers nothing': within ±{m:.2g} nats (C1's margin)")
    optimum = exact_instrumental_optimum(truth_critics(fin))
    if not math.isnan(optimum):
        ax.axvline(optimum, color=CRITIC, ls="--", lw=1,
                   label=f"exact optimum of the γ = 1, H = 8 critic ({optimum:.2g})")
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("instrumental steering at the p = 0.5 fork (nats; asymmetric minus symmetric fork)")
    ax.set_title("Who steers the world toward the easy branch? (mean over seeds)")
    handles = [*ax.get_legend_handles_labels()[0],
               Patch(facecolor="0.6", hatch=JUMP_HATCH, edgecolor="white", label="hatched: jump predictors (F11)")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.4, -0.14 * 7 / max(len(bars), 1)), ncol=2)
    fig.tight_layout()
    style.caption(fig, style.SEED_CI, "γ: the critic's discount; H: its horizon in tokens; k: tokens per jump")
    return save_figure(fig, folder, "F0_headline")


FAMILY = ClaimFamily(name="overview", owns=(), reads=("F1", "F2", "F11"), claims=lambda df: [],
                     figures={"F0": figure_headline})
