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

from instrumentality.claims import style
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
from instrumentality.claims.world import (
    MARGIN_FRACTION,
    at_beta,
    diagnostic_lookahead_gain,
    exact_instrumental_optimum,
    free_running,
    preset_beta,
)
from instrumentality.evaluation.world_probes import BEFORE_MARKER, POSITION_CLASSES
from instrumentality.stats import seed_interval

COGNITIONS = ("standard", "myopic", "future1", "future3", "matched")  # configs/cognition/, in the figures' order
COGNITION_LABELS = {"standard": "standard", "myopic": "myopic", "future1": "future-heads-1",
                    "future3": "future-heads-3"}  # the results table's `cognition` column (model.cognition)
# F8's runs of the standard cognition are the matched cell (cognition/matched.yaml: stopped at the myopic
# model's KL); the standard cells are F1's and F2's runs
MATCHED = "matched"
POSITIONS = (*POSITION_CLASSES, BEFORE_MARKER)  # the myopia gap's position classes
OBJECTIVES = ("supervised", "critic gamma=1", "critic gamma=0")
STEERING = ("forks/asym/p=0.5", "steering_index")
INSTRUMENTAL = ("forks/p=0.5", "instrumental_steering")
LOOKAHEAD_K = (1, 2, 3, 4)  # k = 1 has no diagnostic positions (World.diagnostic_states)


def grid(df: pd.DataFrame) -> pd.DataFrame:
    """The final rows of every cell's runs, with `cognition` (a configs/cognition name) and `objective`."""
    fin = final_rows(df)
    exp = fin["exp_name"].astype(str)
    label_to_name = {v: k for k, v in COGNITION_LABELS.items()}
    cognition = fin["cognition"].map(label_to_name) if "cognition" in fin else pd.Series(np.nan, fin.index)
    cognition[exp.isin(["F8", "F8_critic"]) & (cognition == "standard")] = MATCHED
    critic = fin.regime == "critic"
    truth_h8 = critic & (fin.get("regime.critic") == "truth") & np.isclose(fin["regime.horizon"].astype(float), 8)
    gamma = fin["regime.gamma"].astype(float)
    objective = pd.Series(np.nan, fin.index, dtype=object)
    # the standard cells are F1's and F2's runs only (F2's at the preset's beta: its beta = 1 arm is C4's)
    grid_run = cognition != "standard"
    standard_sup = (exp == "F1") & (fin.regime == "supervised")
    f2 = free_running(fin[(exp == "F2") & critic])
    standard_rl = (exp == "F2") & truth_h8 & fin.index.isin(at_beta(f2, preset_beta(f2)).index)
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


def myopia_gap(g: pd.DataFrame, cognition: str, position: str, against: str = "standard") -> pd.DataFrame:
    """Per seed: excess NLL of `cognition`'s supervised model minus `against`'s (the standard model, or the
    matched one), at one position class (the same probe positions), item by item where the table keeps the
    per-sequence values."""
    probe = f"calibration/position={position}"
    return paired(per_seed(cell(g, cognition, "supervised"), probe, "excess_nll"),
                  per_seed(cell(g, against, "supervised"), probe, "excess_nll"))


def exact_optimum(g: pd.DataFrame, cognition: str) -> float:
    """The exact optimum's instrumental steering at p = 0.5 of the gamma = 1 critic cell of `cognition` (its
    runs' theory rows; NaN without runs)."""
    return exact_instrumental_optimum(cell(g, cognition, "critic gamma=1"))


# ---------------------------------------------------------------------------- the gates
MAX_KL = 0.05  # nats/token: C1's "has learned the conditionals"
MAX_IMPOSSIBLE = 0.05  # share of rollout tokens after a p = 0.5 fork prompt that the world cannot emit
MIN_BRANCH_ENTROPY = 0.05  # nats at a p = 0.5 fork: below, the branch is taken with probability > 0.99


def _value(runs: pd.DataFrame, probe: str, metric: str) -> float:
    v = runs[(runs.probe == probe) & (runs.metric == metric)].value
    return float(v.iloc[0]) if len(v) else math.nan


def gate_table(g: pd.DataFrame) -> pd.DataFrame:
    """Every run of the grid with the figures its gates read and why it fails (empty: it passes). A supervised
    model must work: KL < MAX_KL and at most MAX_IMPOSSIBLE impossible rollout tokens; a critic run must
    start from a supervised model that works and must not collapse: branch entropy at both p = 0.5 forks of
    at least MIN_BRANCH_ENTROPY (the optimum at beta = 4 takes the easy branch with 0.89, the symmetric one's
    with 0.5). A NaN figure fails."""
    rows = []
    for run_id, r in g.groupby("run_id"):
        first = r.iloc[0]
        rows.append({"run_id": run_id, "cognition": first.cognition, "objective": first.objective, "seed": first.seed,
                     "kl": _value(r, "calibration", "kl"),
                     "impossible": _value(r, "rollouts/p=0.5", "impossible_rate"),
                     "entropy_asym": _value(r, "forks/asym/p=0.5", "branch_entropy"),
                     "entropy_sym": _value(r, "forks/sym/p=0.5", "branch_entropy")})
    t = pd.DataFrame(rows, columns=["run_id", "cognition", "objective", "seed", "kl", "impossible", "entropy_asym",
                                    "entropy_sym"])
    sup = t[t.objective == "supervised"].set_index(["cognition", "seed"])
    fails = []
    for r in t.itertuples():
        why = []
        if r.objective == "supervised":
            if not r.kl < MAX_KL:
                why.append(f"KL {r.kl:.3f} >= {MAX_KL}")
            if not r.impossible < MAX_IMPOSSIBLE:
                why.append(f"{r.impossible:.0%} impossible rollout tokens")
        else:
            start = sup.loc[(r.cognition, r.seed)] if (r.cognition, r.seed) in sup.index else None
            if start is None or not (start.kl < MAX_KL and start.impossible < MAX_IMPOSSIBLE):
                why.append("started from a supervised model that fails its gate")
            if not min(r.entropy_asym, r.entropy_sym) >= MIN_BRANCH_ENTROPY:
                why.append(f"collapsed (branch entropy {min(r.entropy_asym, r.entropy_sym):.3f} nats)")
        fails.append("; ".join(why))
    return t.assign(fails=fails)


def gated(g: pd.DataFrame, collapse_only: bool = False) -> pd.DataFrame:
    """The grid without the runs that fail a gate (`collapse_only`: without the collapsed critic runs only,
    for the matched rows, whose cells are of low capability on purpose)."""
    gates = gate_table(g)
    out = gates.fails != ""
    if collapse_only:
        out = gates.fails.str.contains("collapsed")
    return g[~g.run_id.isin(gates.run_id[out])]


def c8_claims(df: pd.DataFrame) -> list[Claim]:
    """C8 as two factors per seed on instrumental steering at p = 0.5: objective (supervised, critic gamma
    = 1) x cognition (standard, c). The objective effect (standard cognition); for each c, cognition's main
    effect (the mean over the two objectives of c - standard) and the interaction ((c - standard) under the
    critic minus under supervised), each within +-m, a quarter of the exact optimum of the two critic cells;
    the same for myopic training against the matched standard model (the primary row); and cognition's
    effect on look-ahead. Runs that fail a gate are left out (the matched rows leave out collapsed runs
    only). Also C5's rows: the myopia gap before the fork marker."""
    g_all = grid(df)
    if g_all.empty or g_all[g_all.cognition != "standard"].empty:
        return []
    g, g_matched = gated(g_all), gated(g_all, collapse_only=True)
    objectives = ("supervised", "critic gamma=1")

    def effects(grid_: pd.DataFrame, c: str, against: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        steer = {(c2, o): instrumental(grid_, c2, o) for c2 in (c, against) for o in objectives}
        under_critic = paired(steer[c, "critic gamma=1"], steer[against, "critic gamma=1"])
        under_supervised = paired(steer[c, "supervised"], steer[against, "supervised"])
        return (weighted_sum([under_critic, under_supervised], [0.5, 0.5]),
                weighted_sum([under_critic, under_supervised], [1.0, -1.0]))

    def margin(*cells: str) -> float:
        optima = [x for x in (exact_optimum(g_all, c) for c in cells) if not math.isnan(x)]
        return MARGIN_FRACTION * float(np.mean(optima)) if optima else math.nan

    main, interaction = effects(g_matched, "myopic", MATCHED)
    out = [claim_of("C8.matched[myopic]", main, margin=margin("myopic", MATCHED)),
           claim_of("C8.matched_interaction[myopic]", interaction, margin=margin("myopic", MATCHED)),
           claim_of("C8.objective", paired(instrumental(g, "standard", "critic gamma=1"),
                                           instrumental(g, "standard", "supervised")))]
    for c in ("myopic", "future1", "future3"):
        main, interaction = effects(g, c, "standard")
        out.append(claim_of(f"C8.cognition[{c}]", main, margin=margin(c, "standard")))
        out.append(claim_of(f"C8.interaction[{c}]", interaction, margin=margin(c, "standard")))
    for c in ("myopic", "future1", "future3"):
        gain = {c2: diagnostic_lookahead_gain(cell(g, c2, "supervised"), 2) for c2 in (c, "standard")}
        out.append(claim_of(f"C8.lookahead[{c}]", paired(gain[c], gain["standard"])))
    out.append(claim_of("C8.myopic_steers", instrumental(g, "myopic", "critic gamma=1")))
    # C5: the residual channel (an early token made worse for later ones through shared computation)
    out.append(claim_of("C5.sacrifice_matched", myopia_gap(g_matched, "myopic", BEFORE_MARKER, against=MATCHED)))
    out.append(claim_of("C5.sacrifice", myopia_gap(g, "myopic", BEFORE_MARKER)))
    out.append(claim_of("C5.sacrifice_marker", myopia_gap(g_matched, "myopic", "marker", against=MATCHED)))
    return out


def over_seeds(t: pd.DataFrame) -> tuple[float, float, float]:
    """A per-seed table's mean with the claims' interval over seeds and items."""
    return seed_interval(t.value.values, t.ci_low.values, t.ci_high.values)


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, over all its runs: seeds and how many pass the gates, steering at the asymmetric and
    the symmetric p = 0.5 fork, the exact optimum's (p* as the KL anchor) and the optimum against the cell's
    own pi_ref (`steering_index_ref_optimum`, the critic cells at gamma = 1), instrumental steering, and the
    look-ahead gain over the embedding at diagnostic positions for k = 2..4 (C7's), each the mean over seeds
    with the claims' interval."""
    g = grid(df)
    gates = gate_table(g)
    rows = []
    for c in COGNITIONS:
        for o in OBJECTIVES:
            runs = cell(g, c, o)
            if runs.empty:
                continue
            mean = lambda metric: runs[(runs.probe == STEERING[0]) & (runs.metric == metric)].value.mean()  # noqa: E731
            at = gates[(gates.cognition == c) & (gates.objective == o)]
            row = {"cognition": c, "objective": o, "seeds": runs.seed.nunique(), "pass": int((at.fails == "").sum()),
                   "steering": over_seeds(per_seed(runs, *STEERING)),
                   "steering sym": over_seeds(per_seed(runs, "forks/sym/p=0.5", "steering_index")),
                   "optimum": mean("steering_index_theory"), "ref optimum": mean("steering_index_ref_optimum"),
                   "instrumental": over_seeds(per_seed(runs, *INSTRUMENTAL))}
            for k in LOOKAHEAD_K[1:]:
                row[f"lookahead k={k}"] = over_seeds(diagnostic_lookahead_gain(runs, k))
            rows.append(row)
    return pd.DataFrame(rows)


GAP_AGAINST = (("myopic", "standard"), ("future1", "standard"), ("future3", "standard"), ("myopic", MATCHED))


def gap_table(df: pd.DataFrame) -> pd.DataFrame:
    """The myopia gap per position class (mean over seeds [CI], seeds): each cognition against the standard
    model, and myopic against the matched one; with the entropy floor."""
    g = grid(df)
    rows = []
    for position in POSITIONS:
        floor = per_seed(cell(g, "standard", "supervised"), f"calibration/position={position}", "entropy_floor")
        row = {"position": position, "entropy_floor": floor.value.mean() if len(floor) else math.nan}
        for c, against in GAP_AGAINST:
            t = myopia_gap(g, c, position, against=against)
            row[f"{c} - {against}"] = (*over_seeds(t), len(t))
        rows.append(row)
    return pd.DataFrame(rows)


def gates_section(g: pd.DataFrame) -> list[str]:
    gates = gate_table(g)
    if gates.empty:
        return []
    lines = ["", "### F8: the gates (claims/cognition.py)", "",
             f"A supervised model works if its KL < {MAX_KL} nats/token and fewer than {MAX_IMPOSSIBLE:.0%} of the "
             f"tokens it generates after a p = 0.5 fork prompt are impossible in the world; a critic run must start "
             f"from a working model and keep a branch entropy of at least {MIN_BRANCH_ENTROPY} nats at both p = 0.5 "
             "forks (else it has collapsed onto one branch). Mean over the cell's runs; runs that fail are kept "
             "out of C8's rows (the matched rows keep all but the collapsed ones).", "",
             "| cognition | objective | runs | pass | KL | impossible tokens | branch entropy asym | "
             "branch entropy sym |", "|---|---|---|---|---|---|---|---|"]
    for (c, o), t in gates.groupby(["cognition", "objective"], sort=False):
        lines.append(f"| {c} | {o} | {len(t)} | {int((t.fails == '').sum())} | {t.kl.mean():.3f} | "
                     f"{t.impossible.mean():.1%} | {t.entropy_asym.mean():.3f} | {t.entropy_sym.mean():.3f} |")
    failing = gates[gates.fails != ""]
    if len(failing):
        lines += ["", f"Runs kept out ({len(failing)}):", ""]
        lines += [f"- `{r.run_id}`: {r.fails}" for r in failing.itertuples()]
    return lines


def report_section(df: pd.DataFrame) -> list[str]:
    cells = cell_table(df)
    if cells.empty or (cells.cognition != "standard").sum() == 0:
        return []
    lines = ["", "### F8: cognition x objective (mean over seeds [95% CI], all runs)", "",
             "Steering at the asymmetric and the symmetric p=0.5 fork (outputs), with the exact optimum (p* as the "
             "KL anchor) and the optimum against the cell's own pi_ref (its supervised model: where that model is "
             "not the truth, this is what the critic run could reach) and the share of it reached; look-ahead: "
             "last layer minus layer 0 at diagnostic positions (cognition, C7's measure). The standard cells are "
             "F1's supervised run and F2's truth H=8 arms; matched is the standard cognition stopped at the "
             "myopic model's KL.", "",
             "| cognition | objective | seeds (pass gates) | steering asym | steering sym | exact optimum | "
             "optimum vs own pi_ref | share of it | instrumental steering | "
             + " | ".join(f"look-ahead k={k}" for k in LOOKAHEAD_K[1:]) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(LOOKAHEAD_K[1:])]
    for r in cells.to_dict("records"):
        ref = r["ref optimum"]
        share = f"{r['steering'][0] / ref:.0%}" if not math.isnan(ref) and ref else "-"
        fmt = lambda x: "-" if math.isnan(x) else f"{x:.2f}"  # noqa: E731
        lookahead = " | ".join(format_ci(r[f"lookahead k={k}"]) for k in LOOKAHEAD_K[1:])
        lines.append(f"| {r['cognition']} | {r['objective']} | {r['seeds']} ({r['pass']}) | "
                     f"{format_ci(r['steering'])} | {format_ci(r['steering sym'])} | {fmt(r['optimum'])} | "
                     f"{fmt(ref)} | {share} | "
                     f"{format_ci(r['instrumental'])} | {lookahead} |")
    lines += gates_section(grid(df))
    gaps = gap_table(df)
    columns = [f"{c} - {against}" for c, against in GAP_AGAINST]
    lines += ["", "Myopia gap: excess NLL (nats/token) of one supervised model minus another's, per position class "
              "(before_marker: the prose positions whose next token is a fork marker, C5's), paired by seed on "
              "the same sequences, all runs; the entropy floor is the exact mean H(p*) of those positions.", "",
              "| position | entropy floor | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in gaps.to_dict("records"):
        lines.append(f"| {r['position']} | {r['entropy_floor']:.4g} | "
                     + " | ".join(format_ci(r[c]) if r[c][3] else "-" for c in columns) + " |")
    return lines


MARKERS = {"supervised": "o", "critic gamma=1": "^", "critic gamma=0": "s"}
OBJECTIVE_LABELS = {"supervised": "supervised", "critic gamma=1": "critic, γ = 1", "critic gamma=0": "critic, γ = 0"}


def cognition_label(c: str) -> str:
    """A cognition's name in the figures (and its colour's key: style.cognition_color)."""
    return COGNITION_LABELS.get(c, c)


def figure_f8(df: pd.DataFrame, folder) -> list:
    """Three panels: steering vs look-ahead (k=2 over the embedding, diagnostic positions) per cell, one small
    point per seed and the mean with its intervals on both axes; the myopia gap per position class; and the
    capability gate of every supervised run (KL against impossible rollout tokens). Colour: cognition;
    marker: objective (one legend of both keys, above the panels)."""
    g = grid(df)
    if g[g.cognition != "standard"].empty:
        return []
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.4), layout="constrained")
    drawn = []
    for c in COGNITIONS:
        color = style.cognition_color(cognition_label(c))
        for o, marker in MARKERS.items():
            runs = cell(g, c, o)
            s, la = per_seed(runs, *STEERING), diagnostic_lookahead_gain(runs, 2)
            m = s.merge(la, on="seed", suffixes=("_s", "_l"))
            if m.empty:
                continue
            drawn.append(c)
            ax1.scatter(m.value_s, m.value_l, color=color, marker=marker, s=10, alpha=0.4)
            xs, ys = over_seeds(s[s.seed.isin(m.seed)]), over_seeds(la[la.seed.isin(m.seed)])
            ax1.errorbar(xs[0], ys[0], xerr=[[xs[0] - xs[1]], [xs[2] - xs[0]]],
                         yerr=[[ys[0] - ys[1]], [ys[2] - ys[0]]], color=color, marker=marker, ms=7, capsize=2)
    ax1.axvline(0, color="grey", lw=0.5)
    ax1.set(xlabel="steering index at the asymmetric p = 0.5 fork, nats (outputs)",
            ylabel="look-ahead at k = 2: last layer minus layer 0\n(diagnostic positions; cognition)",
            title="F8: outputs and cognition per cell (large: mean; small: one seed)")
    gaps = gap_table(df)
    width = 0.8 / len(GAP_AGAINST)
    for j, (c, against) in enumerate(GAP_AGAINST):
        v = [r[f"{c} - {against}"] for r in gaps.to_dict("records")]
        m = np.array([x[0] for x in v])
        x = np.arange(len(gaps)) + (j - (len(GAP_AGAINST) - 1) / 2) * width
        ax2.bar(x, m, width=width, color=style.cognition_color(cognition_label(c)),
                hatch="//" if against == MATCHED else None,  # hatched in the matched model's colour
                edgecolor=style.cognition_color(MATCHED) if against == MATCHED else None,
                label=f"{cognition_label(c)} minus {against}",
                yerr=[m - [x[1] for x in v], [x[2] for x in v] - m], capsize=3)
    ax2.set_xticks(range(len(gaps)), [f"{r['position'].replace('_', ' ')}\nfloor {r['entropy_floor']:.2f}"
                                      for r in gaps.to_dict("records")])
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set(xlabel="position class (floor: its exact entropy, nats)",
            ylabel="excess NLL gap, nats/token (paired by seed)",
            title="myopia gap per position class (supervised models)")
    ax2.legend()
    gates = gate_table(g)
    sup = gates[gates.objective == "supervised"]
    for c in COGNITIONS:
        t = sup[sup.cognition == c]
        if len(t):
            ax3.scatter(t.kl, t.impossible.clip(lower=1e-4), color=style.cognition_color(cognition_label(c)), s=20)
    ax3.axvline(MAX_KL, color="grey", ls=":")
    ax3.axhline(MAX_IMPOSSIBLE, color="grey", ls=":")
    ax3.set(xscale="log", yscale="log", xlabel="KL(p* ‖ π), nats/token",
            ylabel="impossible rollout tokens after a p = 0.5 fork\n(floored at 1e-4)",
            title="capability gate of the supervised runs (pass: left of and below the lines)")
    handles: list[Artist] = [Patch(color=style.cognition_color(cognition_label(c)), label=cognition_label(c))
                             for c in COGNITIONS if c in drawn]
    handles += [Line2D([], [], ls="", marker=mk, color="0.3", label=OBJECTIVE_LABELS[o]) for o, mk in MARKERS.items()]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles),
               title="colour: cognition (matched: the standard cognition stopped at the myopic model's KL); "
                     "marker: objective")
    style.caption(fig, style.SEED_CI)
    return save_figure(fig, folder, "F8_cognition_vs_objective")


# the standard cognition's cells are F1's supervised run and F2's truth-critic arms (grid())
FAMILY = ClaimFamily(name="cognition", owns=("F8", "F8_critic"), reads=("F1", "F2"), claims=c8_claims,
                     figures={"F8": figure_f8}, section=report_section)
