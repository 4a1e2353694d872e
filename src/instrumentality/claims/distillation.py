"""F11 and claim C11: internal instrumentality of predictors that jump k tokens in one forward pass, from the
results table (docs/design.md section 10).

Each F11 run is one student: a teacher (`truth`: world text; `policy`: the rollouts of F2's truth-critic
policy at gamma = 1, H = 8, the same seed), a route (`direct`: the teacher's text at stride k; `distilled`:
the stage k/2 student applied twice) and a stride k. Its rows (evaluation/jump_probes.py): KL to the exact
k-step target, output steering at the fork prompts, and the decoding of the tokens it jumps over.

C11's margin is C1's (a quarter of the truth critic's exact instrumental optimum at gamma = 1, H = 8, read
from F2's runs); the policy's own steering (its F2 run's fork rows) is drawn beside its students'.
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
    combine,
    final_rows,
    format_ci,
    paired,
    per_seed,
    save_figure,
)
from instrumentality.claims.world import c1_margin, critics_beta, truth_g1_h8
from instrumentality.stats import seed_interval

DISTILLATION_EXP = "F11"
POLICY_EXP = "F2"  # the instrumental teacher's runs (and the margin's theory rows): the family reads them
STRIDES = (1, 2, 4, 8)
ARMS = (("truth", "direct"), ("truth", "distilled"), ("policy", "direct"), ("policy", "distilled"))
# the teacher's colour (in F0 too) and the route's line: the policy is the truth critic's, so its colour
TEACHER_COLORS = {"truth": style.BLUE, "policy": style.CRITIC_COLORS["truth"]}
ROUTE_LINES = {"direct": "-", "distilled": "--"}
STEERING = ("jump/forks/p=0.5", "instrumental_steering")


def student(fin: pd.DataFrame, teacher: str, route: str, k: int) -> pd.DataFrame:
    """The rows of one arm's runs (every seed). A stride-1 student has one route: the direct one (the chain's
    first stage)."""
    if "regime.stride" not in fin:
        return fin[:0]
    route = "direct" if k == 1 else route
    sel = fin[(fin.exp_name.astype(str) == DISTILLATION_EXP) & (fin.regime == "jump")]
    return sel[(sel["regime.teacher"] == teacher) & (sel["regime.route"] == route)
               & np.isclose(sel["regime.stride"].astype(float), k)]


def policy_runs(fin: pd.DataFrame) -> pd.DataFrame:
    """The instrumental teacher's runs: F2's truth critic at gamma = 1, H = 8, the preset's beta."""
    return truth_g1_h8(fin, critics_beta(fin))


def share_of_ceiling(runs: pd.DataFrame) -> pd.DataFrame:
    """Per seed: simulation index / its ceiling (no item interval: a ratio per seed)."""
    index = per_seed(runs, "jump/skipped", "simulation_index")
    ceiling = per_seed(runs, "jump/skipped", "simulation_ceiling")
    t = index.merge(ceiling[["seed", "value"]].rename(columns={"value": "ceiling"}), on="seed")
    share = t.value / t.ceiling
    return pd.DataFrame({"seed": t.seed, "value": share, "ci_low": share, "ci_high": share, "items": None})


def excess_kl(fin: pd.DataFrame, teacher: str, k: int) -> pd.DataFrame:
    """Per seed: KL of the distilled student minus the direct one, paired by probe sequence."""
    kl = lambda route: per_seed(student(fin, teacher, route, k), "jump/calibration", "kl")  # noqa: E731
    return paired(kl("distilled"), kl("direct"))


def c11_claims(df: pd.DataFrame) -> list[Claim]:
    """C11 (configs/claims.yaml) from F11's students (and F2's runs, for the margin)."""
    fin = final_rows(df)
    m = c1_margin(fin)
    steer = lambda teacher, route, k: per_seed(student(fin, teacher, route, k), *STEERING)  # noqa: E731
    sim = lambda k: student(fin, "truth", "direct", k)  # noqa: E731
    index = lambda k: per_seed(sim(k), "jump/skipped", "simulation_index")  # noqa: E731
    growth = share_of_ceiling(sim(4)).merge(share_of_ceiling(sim(2))[["seed", "value"]], on="seed", suffixes=("", "_2"))
    growth = growth.assign(value=growth.value - growth.value_2, ci_low=growth.value - growth.value_2,
                           ci_high=growth.value - growth.value_2).drop(columns="value_2")
    excess = {k: excess_kl(fin, "truth", k) for k in (2, 4, 8)}
    columns = ["seed", "value", "ci_low", "ci_high"]  # the stages' excesses, compared seed by seed
    compounding = paired(excess[8][columns], excess[2][columns])
    return [claim_of("C11.truth_steering", steer("truth", "distilled", 4), margin=m),
            claim_of("C11.truth_steering[direct k=2]", steer("truth", "direct", 2), margin=m),
            claim_of("C11.truth_steering[direct k=4]", steer("truth", "direct", 4), margin=m),
            claim_of("C11.truth_steering[distilled k=2]", steer("truth", "distilled", 2), margin=m),
            claim_of("C11.carried[direct k=2]", paired(steer("policy", "direct", 2), steer("truth", "direct", 2))),
            claim_of("C11.carried[direct k=4]", paired(steer("policy", "direct", 4), steer("truth", "direct", 4))),
            claim_of("C11.carried[distilled k=4]",
                     paired(steer("policy", "distilled", 4), steer("truth", "distilled", 4))),
            claim_of("C11.simulation[k=2]", index(2)),
            claim_of("C11.simulation[k=8]", index(8)),
            claim_of("C11.simulation_growth", paired(index(4), index(2))),
            claim_of("C11.simulation_share_growth", growth),
            *(claim_of(f"C11.distillation_error[k={k}]", excess[k]) for k in (2, 4, 8)),
            claim_of("C11.compounding", compounding)]


# ---------------------------------------------------------------------------- the table and figure F11
def arm_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (teacher, route, k) with runs: KL, instrumental steering at p = 0.5, simulation index and
    its ceiling (mean over seeds, CI low, CI high), and the number of seeds."""
    fin = final_rows(df)
    rows = []
    for teacher, route in ARMS:
        for k in STRIDES:
            if k == 1 and route == "distilled":
                continue
            runs = student(fin, teacher, route, k)
            kl = combine(runs, "jump/calibration", "kl")
            if not kl[3]:
                continue
            rows.append({"teacher": teacher, "route": route, "k": k, "kl": kl[:3],
                         "steering": combine(runs, *STEERING)[:3],
                         "simulation": combine(runs, "jump/skipped", "simulation_index")[:3],
                         "ceiling": combine(runs, "jump/skipped", "simulation_ceiling")[:3], "seeds": kl[3]})
    return pd.DataFrame(rows)


def policy_steering(df: pd.DataFrame) -> tuple[float, float, float]:
    """The instrumental teacher's own instrumental steering at p = 0.5 (its F2 runs' fork rows)."""
    return combine(policy_runs(final_rows(df)), "forks/p=0.5", "instrumental_steering")[:3]


def report_section(df: pd.DataFrame) -> list[str]:
    table = arm_table(df)
    if table.empty:
        return []
    teacher = policy_steering(df)
    m = c1_margin(final_rows(df))
    lines = ["", "### F11: jump predictors, direct and distilled (mean over seeds [95% CI])", "",
             "A student of stride k reads x_0, x_k, ..., x_jk and predicts x_(j+1)k in one forward pass. KL is to "
             "the exact k-step target (the skipped tokens summed out), nats per jump. Steering: asymmetric minus "
             "symmetric fork at p = 0.5, the jump's share of the first branch's tokens (k = 8 lands past the "
             "phrase: none). Simulation: last layer minus embedding, decoding the skipped tokens at diagnostic "
             "positions; the ceiling is what the exact belief would gain."
             + (f" The policy itself steers {format_ci(teacher)} (its F2 runs)." if not math.isnan(teacher[0]) else "")
             + (f" C11's margin: ±{m:.3g}." if not math.isnan(m) else ""), "",
             "| teacher | route | k | KL | instrumental steering | simulation index | ceiling | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['teacher']} | {r['route'] if r['k'] > 1 else 'stage 1'} | {r['k']} | "
                     f"{format_ci(r['kl'], '.3g')} | {format_ci(r['steering'], '.3g')} | "
                     f"{format_ci(r['simulation'], '.3g')} | {format_ci(r['ceiling'], '.3g')} | {r['seeds']} |")
    return lines


def figure_f11(df: pd.DataFrame, folder) -> list:
    """Per k, for each teacher and route: KL to the exact target, instrumental output steering (C11's margin
    shaded, the policy's own steering dash-dotted), the simulation index with its ceiling (dotted), and
    distillation's excess KL. Colour: teacher; line: route; one legend above the panels."""
    table = arm_table(df)
    if table.empty:
        return []
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fin = final_rows(df)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), layout="constrained")
    (ax_kl, ax_steer), (ax_sim, ax_excess) = axes

    def draw(ax, key, rows, color, ls, offset=0.0):
        rows = rows[rows[key].map(lambda v: not math.isnan(v[0]))]
        if rows.empty:
            return
        k = rows.k.to_numpy(float) * 2 ** offset
        v, lo, hi = (np.array([t[i] for t in rows[key]]) for i in range(3))
        ax.errorbar(k, v, yerr=[v - lo, hi - v], color=color, ls=ls, marker="o", ms=4, capsize=3)

    for n, (teacher, route) in enumerate(ARMS):
        color, ls = TEACHER_COLORS[teacher], ROUTE_LINES[route]
        rows = table[(table.teacher == teacher) & ((table.route == route) | (table.k == 1))]
        offset = 0.04 * (n - 1.5)  # side by side, so that the intervals do not hide each other
        draw(ax_kl, "kl", rows, color, ls, offset)
        draw(ax_steer, "steering", rows, color, ls, offset)
        draw(ax_sim, "simulation", rows[rows.k > 1], color, ls, offset)
        if route == "direct":
            ceiling = rows[(rows.k > 1)]
            ceiling = ceiling[ceiling.ceiling.map(lambda v: not math.isnan(v[0]))]
            ax_sim.plot(ceiling.k, [c[0] for c in ceiling.ceiling], color=color, ls=":", lw=1)
    for teacher, color in TEACHER_COLORS.items():
        rows = []
        for k in (2, 4, 8):
            e = excess_kl(fin, teacher, k)
            if len(e):
                rows.append((k, *combine_per_seed(e)))
        if rows:
            ks, v, lo, hi = (np.array(c, dtype=float) for c in zip(*rows))
            ax_excess.errorbar(ks, v, yerr=[v - lo, hi - v], color=color, marker="o", ms=4, capsize=3)
    handles: list[Artist] = [Patch(color=c, label=f"teacher: {'the truth' if t == 'truth' else 'the RL policy'}")
                             for t, c in TEACHER_COLORS.items()]
    handles += [Line2D([], [], color="0.3", ls=ls, label=f"route: {route}") for route, ls in ROUTE_LINES.items()]
    handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="ceiling of the simulation index (exact belief)"))
    m = c1_margin(fin)
    if not math.isnan(m):
        ax_steer.axhspan(-m, m, color="0.9")
        handles.append(Patch(color="0.9", label=f"C11's margin ±{m:.2g} nats"))
    policy = policy_steering(df)
    if not math.isnan(policy[0]):
        ax_steer.axhline(policy[0], color=TEACHER_COLORS["policy"], ls="-.", lw=1)
        handles.append(Line2D([], [], color=TEACHER_COLORS["policy"], ls="-.", lw=1,
                              label=f"the RL policy itself ({policy[0]:.2g} nats)"))
    ax_kl.set_yscale("log")
    titles = {ax_kl: ("KL to the exact k-step target (nats per jump)", "KL(p* ‖ J)"),
              ax_steer: ("output steering at the p = 0.5 fork (asymmetric minus symmetric)", "nats"),
              ax_sim: ("skipped tokens decoded: last layer minus embedding", "accuracy gain, diagnostic positions"),
              ax_excess: ("distillation's cost: distilled minus direct KL", "nats per jump")}
    for ax, (title, ylabel) in titles.items():
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(STRIDES), [str(k) for k in STRIDES])
        ax.set(xlabel="k (tokens per jump)", title=title, ylabel=ylabel)
        if ax is not ax_kl:
            ax.axhline(0, color="grey", lw=0.5)
    # the legend heads the figure (a suptitle beside a figure legend moves onto it in save_figure's tight box)
    fig.legend(handles=handles, loc="outside upper center", ncol=4,
               title="F11: jump predictors of the truth and of an instrumental RL policy (mean over seeds)")
    style.caption(fig, style.SEED_CI)
    return save_figure(fig, folder, "F11_distillation")


def combine_per_seed(seeds: pd.DataFrame) -> tuple[float, float, float]:
    """A per-seed table's mean and interval over seeds and items (as a claim row's)."""
    return seed_interval(seeds.value.values, seeds.ci_low.values, seeds.ci_high.values)


FAMILY = ClaimFamily(name="distillation", owns=(DISTILLATION_EXP,), reads=(POLICY_EXP,), claims=c11_claims,
                     figures={"F11": figure_f11}, section=report_section)
