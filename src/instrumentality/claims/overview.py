"""The headline figure (README): one measure of instrumentality, instrumental steering at the p = 0.5 fork,
for the predictors and the optimisers that the world claims and F11 compare, from the results table.

It makes no claims of its own (C1, C3, C4 and C11 decide them); it reads the runs of F1, F2 and F11.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from instrumentality.claims.algebra import ClaimFamily, combine, final_rows, save_figure
from instrumentality.claims.distillation import student
from instrumentality.claims.world import c1_margin, exact_instrumental_optimum, truth_critics

SUPERVISED, OPTIMISED, JUMPS = "#4c72b0", "#c44e52", "#8172b3"


def headline_bars(df: pd.DataFrame) -> list[tuple[str, str, tuple[float, float, float], int]]:
    """(label, colour, (mean, CI low, CI high), seeds) per bar, in reading order; bars without runs left out."""
    fin = final_rows(df)
    crit = truth_critics(fin)

    def critic(gamma: float, horizon: int) -> pd.DataFrame:
        if crit.empty:
            return crit
        g, h = crit["regime.gamma"].astype(float), crit["regime.horizon"].astype(float)
        return crit[np.isclose(g, gamma) & np.isclose(h, horizon)]

    arms = [("next-token predictor (supervised)", SUPERVISED, fin[fin.regime == "supervised"], "forks/p=0.5"),
            ("critic-graded RL, gamma 0, H 8", OPTIMISED, critic(0.0, 8), "forks/p=0.5"),
            ("critic-graded RL, gamma 1, H 1", OPTIMISED, critic(1.0, 1), "forks/p=0.5"),
            ("critic-graded RL, gamma 0.5, H 8", OPTIMISED, critic(0.5, 8), "forks/p=0.5"),
            ("critic-graded RL, gamma 1, H 8", OPTIMISED, critic(1.0, 8), "forks/p=0.5"),
            ("jump predictor of the truth, distilled, k 4", JUMPS, student(fin, "truth", "distilled", 4),
             "jump/forks/p=0.5"),
            ("jump predictor of the RL policy, k 2", JUMPS, student(fin, "policy", "direct", 2), "jump/forks/p=0.5")]
    bars = []
    for label, color, runs, probe in arms:
        mean, low, high, n = combine(runs, probe, "instrumental_steering")
        if n:
            bars.append((label, color, (mean, low, high), n))
    return bars


def figure_headline(df: pd.DataFrame, folder) -> list:
    """Instrumental steering (asymmetric minus symmetric fork, nats) per arm, mean over seeds with its 95%
    interval, the exact optimum of the gamma = 1, H = 8 critic and C1's margin beside them."""
    bars = headline_bars(df)
    if not bars:
        return []
    import matplotlib.pyplot as plt

    fin = final_rows(df)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.6))
    y = np.arange(len(bars))[::-1]
    v, lo, hi = (np.array([b[2][i] for b in bars]) for i in range(3))
    ax.barh(y, v, color=[b[1] for b in bars], height=0.6)
    ax.errorbar(v, y, xerr=[v - lo, hi - v], fmt="none", ecolor="k", capsize=3, lw=1)
    ax.set_yticks(y, [f"{b[0]} ({b[3]} seeds)" for b in bars], fontsize=10)
    m = c1_margin(fin)
    if not math.isnan(m):
        ax.axvspan(-m, m, color="0.92", zorder=0, label=f"'steers nothing': within ±{m:.2g} nats (C1's margin)")
    optimum = exact_instrumental_optimum(truth_critics(fin))
    if not math.isnan(optimum):
        ax.axvline(optimum, color=OPTIMISED, ls="--", lw=1,
                   label=f"exact optimum of the gamma 1, H 8 critic ({optimum:.2g})")
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("instrumental steering at the p = 0.5 fork (nats; asymmetric minus symmetric fork)", fontsize=10)
    ax.set_title("Who steers the world toward the easy branch? (mean over seeds, 95% CI)", fontsize=11)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.4, -0.14 * 7 / max(len(bars), 1)), ncol=2,
              frameon=False)
    fig.tight_layout()
    return save_figure(fig, folder, "F0_headline")


FAMILY = ClaimFamily(name="overview", owns=(), reads=("F1", "F2", "F11"), claims=lambda df: [],
                     figures={"F0": figure_headline})
