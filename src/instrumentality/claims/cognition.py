"""F8 and claim C8: myopic outputs vs myopic cognition, from the results table.

The grid is cognition x objective. Cognition: standard, myopic training (past keys/values detached),
future heads n = 1 and 3 (configs/cognition/). Objective: supervised next-token; the critic regime with
the truth critic at H = 8, gamma = 1 (credit for later rewards) and gamma = 0 (myopic optimisation). The
standard cells are F1's supervised run and F2's truth-g1-H8 / truth-g0-H8 arms (same budgets and
seeds); the others are F8's and F8_critic's runs. Per cell and seed:
  outputs    steering index at the asymmetric p = 0.5 fork (and instrumental steering), beside the exact
             optimum of the critic regime (`steering_index_theory`)
  cognition  look-ahead probe accuracy minus chance at the best layer, k = 1..4
  myopia gap excess NLL of a cognition's supervised model minus the standard one's, per position class
             (prose, fork marker, easy / hard phrase), paired by seed, at equal tokens; beside it the
             exact entropy floor of those positions (evaluators.position_class_rows)

C8's rows (declared in configs/claims.yaml), on instrumental steering (asymmetric minus symmetric fork at
p = 0.5, so that a bias a cognition adds to both forks does not count), as two factors per seed: objective
(supervised, the gamma = 1 critic) x cognition (standard, c). The objective effect (critic minus
supervised, standard cognition) > 0; for each c, cognition's main effect (the mean over the two objectives
of c minus standard; myopic training's is the claim's primary row) and the cognition x objective
interaction ((c - standard) under the critic minus under supervised) within +-m, m a quarter of the
critic cells' exact optimum (an equivalence test: "larger than" alone does not show "none"); cognition's
effect on look-ahead (k = 2, supervised, paired by seed: myopic minus standard < 0, future heads minus
standard > 0); and the myopic model under the critic still steers (> 0). Each is decided like every row
(claims/algebra.py). Differences are taken item by item where the table keeps the per-item values (the
same fork prompts and look-ahead sequences in every run), else with the items' errors in quadrature.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from instrumentality.claims.algebra import (
    Claim,
    ClaimFamily,
    claim_of,
    final_rows,
    format_ci,
    paired,
    per_seed,
    save_figure,
    weighted_sum,
)
from instrumentality.claims.world import free_running, lookahead_gain_per_seed
from instrumentality.evaluation.world_probes import POSITION_CLASSES
from instrumentality.stats import seed_interval

COGNITIONS = ("standard", "myopic", "future1", "future3")  # configs/cognition/, in the figures' order
COGNITION_LABELS = {"standard": "standard", "myopic": "myopic", "future1": "future-heads-1",
                    "future3": "future-heads-3"}  # the results table's `cognition` column (model.cognition)
OBJECTIVES = ("supervised", "critic gamma=1", "critic gamma=0")
STEERING = ("forks/asym/p=0.5", "steering_index")
INSTRUMENTAL = ("forks/p=0.5", "instrumental_steering")
LOOKAHEAD_K = (1, 2, 3, 4)


def grid(df: pd.DataFrame) -> pd.DataFrame:
    """The final rows of every cell's runs, with `cognition` (a configs/cognition name) and `objective`."""
    fin = final_rows(df)
    exp = fin["exp_name"].astype(str)
    label_to_name = {v: k for k, v in COGNITION_LABELS.items()}
    cognition = fin["cognition"].map(label_to_name) if "cognition" in fin else pd.Series(np.nan, fin.index)
    critic = fin.regime == "critic"
    truth_h8 = critic & (fin.get("regime.critic") == "truth") & np.isclose(fin["regime.horizon"].astype(float), 8)
    gamma = fin["regime.gamma"].astype(float)
    objective = pd.Series(np.nan, fin.index, dtype=object)
    # the standard cells are F1's and F2's runs only: an F8 run of the standard cognition (by hand) would
    # give a seed two runs in one cell
    grid_run = cognition != "standard"
    standard_sup = (exp == "F1") & (fin.regime == "supervised")
    standard_rl = (exp == "F2") & truth_h8 & fin.index.isin(free_running(fin).index)
    objective[standard_sup | ((exp == "F8") & grid_run & (fin.regime == "supervised"))] = "supervised"
    for g in (1.0, 0.0):
        rl = standard_rl | ((exp == "F8_critic") & grid_run)
        objective[rl & truth_h8 & np.isclose(gamma, g)] = f"critic gamma={g:g}"
    out = fin.assign(cognition=cognition, objective=objective)
    return out[out.objective.notna() & out.cognition.notna()]


def cell(g: pd.DataFrame, cognition: str, objective: str) -> pd.DataFrame:
    return g[(g.cognition == cognition) & (g.objective == objective)]


def instrumental(g: pd.DataFrame, cognition: str, objective: str) -> pd.DataFrame:
    return per_seed(cell(g, cognition, objective), *INSTRUMENTAL)


def myopia_gap(g: pd.DataFrame, cognition: str, position: str) -> pd.DataFrame:
    """Per seed: excess NLL of `cognition`'s supervised model minus the standard one's, at one position class
    (the same probe positions, equal tokens), with the item intervals in quadrature."""
    probe = f"calibration/position={position}"
    return paired(per_seed(cell(g, cognition, "supervised"), probe, "excess_nll"),
                  per_seed(cell(g, "standard", "supervised"), probe, "excess_nll"))


MARGIN_FRACTION = 0.25  # C8's equivalence margin: this share of the critic cell's exact optimum (claims.yaml)


def exact_optimum(g: pd.DataFrame, cognition: str) -> float:
    """The exact optimum's instrumental steering at p = 0.5 of the gamma = 1 critic cell of `cognition` (its
    runs' theory rows; NaN without runs)."""
    t = cell(g, cognition, "critic gamma=1")
    t = t[(t.probe == INSTRUMENTAL[0]) & (t.metric == f"{INSTRUMENTAL[1]}_theory")]
    return float(t.value.astype(float).mean()) if len(t) else math.nan


def c8_claims(df: pd.DataFrame) -> list[Claim]:
    """C8 as two factors per seed on instrumental steering at p = 0.5: objective (supervised, critic gamma
    = 1) x cognition (standard, c). The objective effect (standard cognition); for each c, cognition's main
    effect (the mean over the two objectives of c - standard) and the interaction ((c - standard) under the
    critic minus under supervised), each within +-m, a quarter of the exact optimum of the two critic cells;
    and cognition's effect on look-ahead."""
    g = grid(df)
    if g.empty or g[g.cognition != "standard"].empty:
        return []
    steer = {(c, o): instrumental(g, c, o) for c in COGNITIONS for o in ("supervised", "critic gamma=1")}
    out = [claim_of("C8.objective", paired(steer["standard", "critic gamma=1"], steer["standard", "supervised"]))]
    for c in COGNITIONS[1:]:
        under_critic = paired(steer[c, "critic gamma=1"], steer["standard", "critic gamma=1"])
        under_supervised = paired(steer[c, "supervised"], steer["standard", "supervised"])
        optima = [x for x in (exact_optimum(g, c), exact_optimum(g, "standard")) if not math.isnan(x)]
        margin = MARGIN_FRACTION * float(np.mean(optima)) if optima else math.nan
        out.append(claim_of(f"C8.cognition[{c}]", weighted_sum([under_critic, under_supervised], [0.5, 0.5]),
                            margin=margin))
        out.append(claim_of(f"C8.interaction[{c}]", weighted_sum([under_critic, under_supervised], [1.0, -1.0]),
                            margin=margin))
    for c in COGNITIONS[1:]:
        gain = {c2: lookahead_gain_per_seed(cell(g, c2, "supervised"), 2) for c2 in (c, "standard")}
        out.append(claim_of(f"C8.lookahead[{c}]", paired(gain[c], gain["standard"])))
    out.append(claim_of("C8.myopic_steers", steer["myopic", "critic gamma=1"]))
    return out


def over_seeds(t: pd.DataFrame) -> tuple[float, float, float]:
    """A per-seed table's mean with the claims' interval over seeds and items."""
    return seed_interval(t.value.values, t.ci_low.values, t.ci_high.values)


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: seeds, steering [CI], its share of the exact optimum, instrumental steering, and the
    look-ahead gain for k = 1..4, each the mean over seeds with the claims' interval."""
    g = grid(df)
    rows = []
    for c in COGNITIONS:
        for o in OBJECTIVES:
            runs = cell(g, c, o)
            if runs.empty:
                continue
            optimum = runs[(runs.probe == STEERING[0]) & (runs.metric == "steering_index_theory")].value.mean()
            row = {"cognition": c, "objective": o, "seeds": runs.seed.nunique(),
                   "steering": over_seeds(per_seed(runs, *STEERING)), "optimum": optimum,
                   "instrumental": over_seeds(per_seed(runs, *INSTRUMENTAL))}
            for k in LOOKAHEAD_K:
                row[f"lookahead k={k}"] = over_seeds(lookahead_gain_per_seed(runs, k))
            rows.append(row)
    return pd.DataFrame(rows)


def gap_table(df: pd.DataFrame) -> pd.DataFrame:
    """The myopia gap per position class and cognition (mean over seeds [CI]), with the entropy floor."""
    g = grid(df)
    rows = []
    for position in POSITION_CLASSES:
        floor = per_seed(cell(g, "standard", "supervised"), f"calibration/position={position}", "entropy_floor")
        row = {"position": position, "entropy_floor": floor.value.mean() if len(floor) else math.nan}
        for c in COGNITIONS[1:]:
            t = myopia_gap(g, c, position)
            row[c] = (*over_seeds(t), len(t))
        rows.append(row)
    return pd.DataFrame(rows)


def report_section(df: pd.DataFrame) -> list[str]:
    cells = cell_table(df)
    if cells.empty or (cells.cognition != "standard").sum() == 0:
        return []
    lines = ["", "### F8: cognition x objective (mean over seeds [95% CI])", "",
             "Steering at the asymmetric p=0.5 fork (outputs) and look-ahead accuracy minus chance at the best "
             "layer (cognition). Share of optimum: steering / the critic regime's exact optimum (p* as the KL "
             "anchor). The standard cells are F1's supervised run and F2's truth H=8 arms.", "",
             "| cognition | objective | seeds | steering | share of optimum | instrumental steering | "
             + " | ".join(f"look-ahead k={k}" for k in LOOKAHEAD_K) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(LOOKAHEAD_K)]
    for r in cells.to_dict("records"):
        share = f"{r['steering'][0] / r['optimum']:.0%}" if r["optimum"] and not math.isnan(r["optimum"]) else "-"
        lookahead = " | ".join(format_ci(r[f"lookahead k={k}"]) for k in LOOKAHEAD_K)
        lines.append(f"| {r['cognition']} | {r['objective']} | {r['seeds']} | {format_ci(r['steering'])} | {share} | "
                     f"{format_ci(r['instrumental'])} | {lookahead} |")
    gaps = gap_table(df)
    lines += ["", "Myopia gap: excess NLL (nats/token) of each cognition's supervised model minus the standard "
              "one's, per position class, paired by seed at equal tokens; the entropy floor is the exact mean "
              "H(p*) of those positions.", "",
              "| position | entropy floor | " + " | ".join(f"{c} - standard" for c in COGNITIONS[1:]) + " |",
              "|---|---|" + "---|" * len(COGNITIONS[1:])]
    for r in gaps.to_dict("records"):
        lines.append(f"| {r['position']} | {r['entropy_floor']:.4g} | "
                     + " | ".join(format_ci(r[c]) if r[c][3] else "-" for c in COGNITIONS[1:]) + " |")
    return lines


MARKERS = {"supervised": "o", "critic gamma=1": "^", "critic gamma=0": "s"}


def figure_f8(df: pd.DataFrame, folder) -> list:
    """Two panels: steering vs look-ahead (k=2) per cell, one small point per seed and the mean with its
    intervals on both axes; and the myopia gap per position class."""
    g = grid(df)
    if g[g.cognition != "standard"].empty:
        return []
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, c in enumerate(COGNITIONS):
        for o, marker in MARKERS.items():
            runs = cell(g, c, o)
            s, la = per_seed(runs, *STEERING), lookahead_gain_per_seed(runs, 2)
            m = s.merge(la, on="seed", suffixes=("_s", "_l"))
            if m.empty:
                continue
            ax1.scatter(m.value_s, m.value_l, color=f"C{i}", marker=marker, s=10, alpha=0.4)
            xs, ys = over_seeds(s[s.seed.isin(m.seed)]), over_seeds(la[la.seed.isin(m.seed)])
            ax1.errorbar(xs[0], ys[0], xerr=[[xs[0] - xs[1]], [xs[2] - xs[0]]],
                         yerr=[[ys[0] - ys[1]], [ys[2] - ys[0]]], color=f"C{i}", marker=marker, ms=7,
                         capsize=2, label=f"{c}, {o}")
    ax1.axvline(0, color="grey", lw=0.5)
    ax1.set(xlabel="steering index at the p=0.5 fork, nats (outputs)",
            ylabel="look-ahead accuracy k=2 - chance, best layer (cognition)",
            title="F8: each cell (mean, 95% CI; small: one seed)")
    ax1.legend(fontsize=6, ncol=2)
    gaps = gap_table(df)
    width = 0.8 / len(COGNITIONS[1:])
    for j, c in enumerate(COGNITIONS[1:]):
        v = [r[c] for r in gaps.to_dict("records")]
        m = np.array([x[0] for x in v])
        x = np.arange(len(gaps)) + (j - (len(COGNITIONS) - 2) / 2) * width
        ax2.bar(x, m, width=width, color=f"C{j + 1}", label=f"{c} - standard",
                yerr=[m - [x[1] for x in v], [x[2] for x in v] - m], capsize=3)
    ax2.set_xticks(range(len(gaps)), [f"{r['position']}\nfloor {r['entropy_floor']:.2f}"
                                      for r in gaps.to_dict("records")])
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set(ylabel="excess NLL gap, nats/token (paired by seed)",
            title="myopia gap per position class (supervised, equal tokens)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, folder, "F8_cognition_vs_objective")


# the standard cognition's cells are F1's supervised run and F2's truth-critic arms (grid())
FAMILY = ClaimFamily(name="cognition", owns=("F8", "F8_critic"), reads=("F1", "F2"), claims=c8_claims,
                     figures={"F8": figure_f8}, section=report_section)
