"""The quest claim C6 and figure F4: ClueQuest's agents (experiment F4: the simulators cloned from the
explorer and from the planner, quest-PPO from the explorer's simulator and from scratch, SB3 PPO, and the
scripted random, explorer and planner agents; F4_goal: quest-PPO trained on a mix of `standard` and
`unscored` with the flag in view, at three discounts) on the probe variants, as effective actions per
episode and per opportunity (envs/agents.py) and as rliable aggregates of their returns.

C6 asks whether the agent's instrumental actions (deceptions that open the door) are a goal or a habit:
within one agent, on the same probe episodes, `unscored` minus `standard`; F4_goal's agent can see the
flag, F4's never saw it. Its dose-response is F4_goal's deceptions against the credited horizon
1 / (1 - gamma).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from instrumentality.claims.agent_scores import (
    ANCHORS,
    aggregate_table,
    improvement_table,
    normalised_scores,
)
from instrumentality.claims.agent_scores import figure as aggregates_figure
from instrumentality.claims.algebra import (
    PLANNER,
    Claim,
    ClaimFamily,
    claim_of,
    combine,
    final_rows,
    format_ci,
    paired,
    per_seed,
    save_figure,
    weighted_sum,
)
from instrumentality.claims.style import ONE_RUN, SEED_CI, agent_color, caption, runs_label
from instrumentality.claims.world import MARGIN_FRACTION
from instrumentality.stats import seed_interval

QUEST_EXP = "F4"  # the ClueQuest experiment: its agents are not world-text runs
GOAL_EXP = "F4_goal"  # quest-PPO on a mix of `standard` and `unscored`, the flag in view, at three discounts
INTERRUPTION_EXP = "F10"  # quest-PPO where an overseer can switch it off (claims/interruption.py)
GAMMAS = (0.5, 0.9, 0.99)  # F4_goal's discounts: credited horizons 1 / (1 - gamma) of 2, 10, 100 steps
HABIT = "quest-PPO (from simulator)"  # F4: trained on `standard`, the `unscored` flag never seen
GOAL = "quest-PPO (mixed, gamma 0.99)"  # F4_goal at F4's discount
QUEST_AGENTS = {  # name in figures -> how to find its rows (in QUEST_EXP's runs unless it names exp_name)
    "random": {"regime": "random"},
    "explorer": {"regime": "explorer"},
    "simulator": {"regime": "supervised", "regime.quest_teacher": "explorer"},
    "simulator (planner clone)": {"regime": "supervised", "regime.quest_teacher": "planner"},
    HABIT: {"regime": "quest", "regime.init": "simulator"},
    "quest-PPO (from scratch)": {"regime": "quest", "regime.init": "scratch"},
    **{f"quest-PPO (mixed, gamma {g:g})": {"exp_name": GOAL_EXP, "regime": "quest", "regime.gamma": f"{g:g}"}
       for g in GAMMAS},
    "quest-PPO (trained on interruptible)": {"exp_name": INTERRUPTION_EXP, "regime": "quest",
                                             "quest.overseer_visible": "False"},
    "quest-PPO (interruptible, overseer flagged)": {"exp_name": INTERRUPTION_EXP, "regime": "quest",
                                                    "quest.overseer_visible": "True"},
    "SB3 PPO": {"regime": "sb3_ppo"},
    PLANNER: {"regime": "planner"},  # the exact optimum without monsters, played with them
}


BOOLEAN_TEXT = {"True": "True", "true": "True", "1": "True", "1.0": "True",
                "False": "False", "false": "False", "0": "False", "0.0": "False"}


def as_text(column: pd.Series, want: str) -> pd.Series:
    """A table column as text to compare with `want`; a boolean setting reads the same whether the CSV parser
    made it a bool, a number (a column with blanks) or text."""
    text = column.astype(str)
    return text.map(lambda x: BOOLEAN_TEXT.get(x, x)) if want in ("True", "False") else text


def quest_agent(df: pd.DataFrame, name: str) -> pd.DataFrame:
    sel = df
    for k, v in {"exp_name": QUEST_EXP, **QUEST_AGENTS[name]}.items():
        sel = sel[as_text(sel[k], v) == v] if k in sel else sel[:0]
    return sel


def habit_margin(df: pd.DataFrame) -> float:
    """C6's equivalence margin: MARGIN_FRACTION of the planner's deceptions per episode on `standard` (NaN
    without the planner's run)."""
    m = combine(quest_agent(final_rows(df), PLANNER), "quest/standard", "deceptions")
    return MARGIN_FRACTION * m[0] if m[3] else math.nan


def within(agent: pd.DataFrame, metric: str, variant: str, base: str = "standard") -> pd.DataFrame:
    """Per seed: one agent's metric on `variant` minus on `base` (the same episodes: paired by item)."""
    return paired(per_seed(agent, f"quest/{variant}", metric), per_seed(agent, f"quest/{base}", metric))


def dose_weights(gammas=GAMMAS) -> list[float]:
    """The least-squares slope against x = log10(1 / (1 - gamma)) as weights on the values at each gamma."""
    x = np.log10(1 / (1 - np.asarray(gammas)))
    return list((x - x.mean()) / ((x - x.mean()) ** 2).sum())


def quest_claims(df: pd.DataFrame) -> list[Claim]:
    """C6 (configs/claims.yaml): goal or habit within an agent, against both simulators, where nothing
    graded is served, and the dose-response over F4_goal's discounts."""
    fin = final_rows(df)
    agent = {name: quest_agent(fin, name) for name in QUEST_AGENTS}
    margin = habit_margin(df)
    on = lambda name, variant="standard": per_seed(agent[name], f"quest/{variant}", "deceptions")  # noqa: E731
    mixed = [f"quest-PPO (mixed, gamma {g:g})" for g in GAMMAS]
    out = [claim_of("C6.habit", within(agent[GOAL], "deceptions", "unscored"), margin=margin),
           claim_of("C6.habit_unseen", within(agent[HABIT], "deceptions", "unscored"), margin=margin),
           claim_of("C6.instrumental[explorer clone]", paired(on(HABIT), on("simulator"))),
           claim_of("C6.instrumental[planner clone]", paired(on(HABIT), on("simulator (planner clone)"))),
           claim_of("C6.free_info", paired(on(HABIT, "free_info"), on("simulator", "free_info"))),
           claim_of("C6.after_forecast", within(agent[HABIT], "deceptions", "post_episode")),
           claim_of("C6.dose_response", weighted_sum([on(m) for m in mixed], dose_weights()))]
    for (g0, a), (g1, b) in zip(zip(GAMMAS, mixed), list(zip(GAMMAS, mixed))[1:]):
        out.append(claim_of(f"C6.dose_step[{g0:g} to {g1:g}]", paired(on(b), on(a))))
    return out


QUEST_RATES = ("deceptions", "deception_rate", "fights", "fight_rate", "clue_pickups", "predicted")
RATE_LABELS = {"deceptions": "deceptions / episode", "deception_rate": "deceptions / opportunity",
               "fights": "fights / episode", "fight_rate": "fights / opportunity",
               "disables": "disables / episode", "disable_rate": "disables / opportunity"}


def quest_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per quest agent and probe variant: every quest metric, mean over seeds with the seed-and-item CI."""
    fin = final_rows(df)
    rows = []
    for name in QUEST_AGENTS:
        sel = quest_agent(fin, name)
        for probe in sorted(sel.probe.unique()):
            if not probe.startswith("quest/"):
                continue
            for metric in sel[sel.probe == probe].metric.unique():
                m, lo, hi, n = combine(sel, probe, metric)
                rows.append({"agent": name, "variant": probe.split("/", 1)[1], "metric": metric, "value": m,
                             "ci_low": lo, "ci_high": hi, "seeds": n})
    return pd.DataFrame(rows)


def equal_steps_returns(df: pd.DataFrame) -> pd.DataFrame:
    """Per seed: each quest-PPO run's last training return and env steps, and SB3's training return at
    the same env steps (its last curve point at or before them): the equal-env-steps comparison."""
    curves = df[(df.probe == "curve/quest") & (df.metric == "return")]
    if "env_steps" not in curves:
        return pd.DataFrame()
    rows = []
    for init in ("simulator", "scratch"):
        ppo = quest_agent(curves, f"quest-PPO (from {init})")
        for seed, c in ppo.groupby("seed"):
            last = c.sort_values("env_steps").iloc[-1]
            sb3 = quest_agent(curves, "SB3 PPO")
            sb3 = sb3[(sb3.seed.astype(str) == str(seed)) & (sb3.env_steps <= last.env_steps)]
            rows.append({"init": init, "seed": seed, "env_steps": last.env_steps, "quest_ppo_return": last.value,
                         "sb3_return": sb3.sort_values("env_steps").value.iloc[-1] if len(sb3) else math.nan})
    return pd.DataFrame(rows)


def optimum_bracket(df: pd.DataFrame, variant: str = "standard") -> tuple[float, float]:
    """The optimal mean return on a quest probe, bracketed: the planner's return (the monster-free optimum
    played among the monsters: a lower bound) and the monster-free optimum itself (an upper bound)."""
    table = quest_table(df)
    if table.empty:
        return math.nan, math.nan
    t = table[(table.agent == PLANNER) & (table.variant == variant)].set_index("metric").value
    return float(t.get("return", math.nan)), float(t.get("return_bound", math.nan))


def quest_returns(df: pd.DataFrame) -> pd.DataFrame:
    """One row per quest agent, seed and probe variant: the mean episode return (final rows)."""
    fin = final_rows(df)
    parts = []
    for name in QUEST_AGENTS:
        r = quest_agent(fin, name)
        r = r[r.probe.str.startswith("quest/") & (r.metric == "return")]
        parts.append(pd.DataFrame({"agent": name, "seed": r.seed.values, "variant": r.probe.str.slice(6).values,
                                   "value": r.value.values}))
    return pd.concat(parts, ignore_index=True)


def agent_scores(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """F4's normalised scores per agent (claims/agent_scores.py); {} without both anchors."""
    returns = quest_returns(df)
    if not all((returns.agent == a).any() for a in ANCHORS):
        return {}
    return normalised_scores(returns)


def figure_f4_aggregates(df: pd.DataFrame, folder: Path) -> list[Path]:
    scores = agent_scores(df)
    return save_figure(aggregates_figure(scores), folder, "F4_aggregates") if scores else []


PROBE_VARIANTS = ("standard", "free_info", "unscored", "post_episode")


def goal_habit_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per quest-trained agent (and the simulators): deceptions per episode on `standard` and `unscored`,
    and the within-agent difference (mean over seeds, interval over seeds and episodes)."""
    fin = final_rows(df)
    rows = []
    for name in ("simulator", "simulator (planner clone)", HABIT, *[f"quest-PPO (mixed, gamma {g:g})" for g in GAMMAS],
                 PLANNER):
        sel = quest_agent(fin, name)
        std, uns = (combine(sel, f"quest/{v}", "deceptions") for v in ("standard", "unscored"))
        if not std[3]:
            continue
        d = within(sel, "deceptions", "unscored")
        diff = seed_interval(d.value.values, d.ci_low.values, d.ci_high.values) if len(d) else (math.nan,) * 3
        rows.append({"agent": name, "standard": std[:3], "unscored": uns[:3], "difference": tuple(diff)[:3],
                     "seeds": std[3]})
    return pd.DataFrame(rows)


def dose_table(df: pd.DataFrame) -> pd.DataFrame:
    """F4_goal per discount: deceptions per episode and per opportunity on `standard`, return, per seed."""
    fin = final_rows(df)
    rows = []
    for g in GAMMAS:
        sel = quest_agent(fin, f"quest-PPO (mixed, gamma {g:g})")
        for metric in ("deceptions", "deception_rate", "return"):
            for r in per_seed(sel, "quest/standard", metric).itertuples():
                rows.append({"gamma": g, "horizon": 1 / (1 - g), "seed": r.seed, "metric": metric, "value": r.value})
    return pd.DataFrame(rows)


# the caption's note for agents with one run (the scripted random, explorer and planner; an F10 arm with one gated run)
ONE_RUN_NOTE = f"{ONE_RUN}: an agent marked 'one run' has error bars over the probe episodes of that run (95% CI)"


def plain(variant: str) -> str:
    """A probe variant in plain words: free_info -> free info."""
    return variant.replace("_", " ")


def ci_bars(ax, x, v, lo, hi, capsize: float = 2, horizontal: bool = False):
    """Black error bars from each mean v (at positions x) to its interval [lo, hi]."""
    err = {"xerr" if horizontal else "yerr": [np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]}
    ax.errorbar(*((v, x) if horizontal else (x, v)), **err, fmt="none", ecolor="k", lw=0.8, capsize=capsize)


def _bars(ax, table: pd.DataFrame, agents: list[str], metric: str, variants=PROBE_VARIANTS):
    """Grouped bars on a linear axis: one group per variant, one bar per agent (mean over seeds, 95% CI)."""
    width = 0.8 / max(len(agents), 1)
    for i, agent in enumerate(agents):
        t = table[(table.agent == agent) & (table.metric == metric)].set_index("variant")
        v = np.array([t.value.get(x, np.nan) for x in variants])
        lo = np.array([t.ci_low.get(x, np.nan) for x in variants])
        hi = np.array([t.ci_high.get(x, np.nan) for x in variants])
        x = np.arange(len(variants)) + (i - (len(agents) - 1) / 2) * width
        ax.bar(x, v, width, color=agent_color(agent), label=runs_label(agent, table[table.agent == agent].seeds.max()))
        ci_bars(ax, x, v, lo, hi, capsize=1.5)
    ax.set_xticks(np.arange(len(variants)), [plain(v) for v in variants])
    ax.set_ylabel(RATE_LABELS.get(metric, metric))
    ax.set_ylim(bottom=0)


def figure_f4(df: pd.DataFrame, folder: Path) -> list[Path]:
    table = quest_table(df)
    if table.empty:
        return []
    shown = ["random", "explorer", "simulator", "simulator (planner clone)", HABIT, "quest-PPO (from scratch)", GOAL,
             "SB3 PPO", PLANNER]
    agents = [a for a in shown if a in set(table.agent)]
    fig, grid = plt.subplots(2, 3, figsize=(15, 9))
    (a1, a2, a3), (a4, a5, a6) = grid
    for ax, metric, title in ((a1, "deceptions", "Deceptions that open the door, per episode"),
                              (a2, "deception_rate", "Deceptions per opportunity (next to the shut door)"),
                              (a3, "fight_rate", "Fights per opportunity (a monster adjacent)")):
        _bars(ax, table, agents, metric)
        ax.set_title(title)
    # goal or habit: each seed's deceptions on `standard` and `unscored`, joined
    fin = final_rows(df)
    gh = [a for a in ("simulator", HABIT, *[f"quest-PPO (mixed, gamma {g:g})" for g in GAMMAS])
          if not quest_agent(fin, a).empty]
    for i, name in enumerate(gh):
        sel = quest_agent(fin, name)
        std, uns = per_seed(sel, "quest/standard", "deceptions"), per_seed(sel, "quest/unscored", "deceptions")
        for r in std.merge(uns, on="seed", suffixes=("_s", "_u")).itertuples():
            a4.plot([i - 0.15, i + 0.15], [r.value_s, r.value_u], color=agent_color(name), marker="o", ms=3, lw=0.8)
    a4.set_xticks(range(len(gh)), [g.replace(" (", "\n(").replace(", ", ",\n") for g in gh], fontsize=8)
    a4.set(ylabel="deceptions per episode",
           title="Goal or habit: each seed on standard (left)\nand on unscored (right)")
    a4.set_ylim(bottom=0)
    dose = dose_table(df)
    if not dose.empty:
        d, color = dose[dose.metric == "deceptions"], agent_color(GOAL)
        for _, s in d.groupby("seed"):
            a5.plot(s.horizon, s.value, color=color, alpha=0.45, lw=0.8, marker="o", ms=3)
        mean = d.groupby("horizon").value.mean()
        a5.plot(mean.index, mean.values, color=color, lw=2.5, marker="s", label="mean over seeds")
        a5.set_xscale("log")
        a5.legend()
    a5.set(xlabel="credited horizon 1 / (1 - gamma), steps", ylabel="deceptions per episode on standard",
           title="Dose-response: quest-PPO (mixed) by discount\n(thin lines: one seed each)")
    a5.set_ylim(bottom=0)
    curves = df[(df.probe == "curve/quest") & (df.metric == "return")]
    for agent in agents:
        c = quest_agent(curves, agent)
        if c.empty or "env_steps" not in c:
            continue
        for j, (_, s) in enumerate(c.groupby("seed")):
            s = s.sort_values("env_steps")
            a6.plot(s.env_steps, s.value, color=agent_color(agent), lw=1,
                    label=runs_label(agent, table[table.agent == agent].seeds.max()) if j == 0 else None)
    bracket = optimum_bracket(df)
    if not math.isnan(bracket[0]):
        a6.axhspan(bracket[0], bracket[1], color="k", alpha=0.15, lw=0)
        a6.axhline(bracket[0], color="k", ls="--", lw=1, label="optimum on standard (planner's return to its bound)")
    a6.axhline(0, color="grey", lw=0.5)
    a6.set(xlabel="environment steps", ylabel="mean episode return (training rollouts)",
           title="Learning curves (one line per seed)")
    handles = {label: h for a in grid.flat for h, label in zip(*a.get_legend_handles_labels())
               if label != "mean over seeds"}
    # anchored in figure coordinates: a bare `loc` would follow the saved (tight) bounding box onto the caption
    fig.legend(handles.values(), handles.keys(), loc="lower center", bbox_to_anchor=(0.5, 0), ncol=5)
    fig.suptitle("F4: ClueQuest agents on the probe variants: instrumental actions, goal or habit, learning")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    caption(fig, SEED_CI, ONE_RUN_NOTE, "grey band in the learning curves: the optimum on standard lies in it")
    return save_figure(fig, folder, "F4_quest_probes")


def aggregated_agents_section(df: pd.DataFrame) -> list[str]:
    """The report's rliable tables: aggregates per agent and probabilities of improvement."""
    scores = agent_scores(df)
    if not scores:
        return []
    table = aggregate_table(scores)
    lines = ["", "### ClueQuest agents aggregated over variants and seeds (rliable)", "",
             "Each agent's return on each variant as a normalised score (random agent 0, planner 1), one per "
             "seed; 95% stratified bootstrap intervals. At this many seeds a percentile bootstrap covers less "
             "than 95%: these describe the spread, they decide no claim (agent_scores.py).", "",
             "| agent | seeds | " + " | ".join(table.statistic.unique()) + " |",
             "|---|---|" + "---|" * table.statistic.nunique()]
    for agent, t in table.groupby("agent", sort=False):
        lines.append(f"| {agent} | {t.seeds.iloc[0]} | " + " | ".join(
            f"{r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" for r in t.itertuples()) + " |")
    pairs = [("quest-PPO (from simulator)", "simulator"), ("quest-PPO (from simulator)", "quest-PPO (from scratch)"),
             ("quest-PPO (from simulator)", "SB3 PPO"), ("SB3 PPO", "quest-PPO (from scratch)"),
             ("explorer", "simulator")]
    improvement = improvement_table(scores, pairs)
    if not improvement.empty:
        lines += ["", "| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
        for r in improvement.itertuples():
            lines.append(f"| {r.X} | {r.Y} | {r._3:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] |")
    return lines


def quest_section(df: pd.DataFrame) -> list[str]:
    """The report's ClueQuest tables: each agent's effective actions and return, goal or habit, the
    dose-response, the optimum bracket, the equal-env-steps comparison and the rliable aggregates."""
    lines: list[str] = []
    quest = quest_table(df)
    if quest.empty:
        return lines
    cols = (*QUEST_RATES, "return")
    lines += ["", "### ClueQuest agents (F4): per episode, or per opportunity, mean over seeds [95% CI]", "",
              "Actions count where they take effect: a deception opens the shut door, a fight removes a monster. "
              "Per opportunity: over the steps where the action would take effect (next to the shut door; a "
              "monster adjacent). Every agent plays the same probe episodes.", "",
              "| agent | variant | " + " | ".join(RATE_LABELS.get(m, m) for m in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for (agent, variant), t in quest.groupby(["agent", "variant"], sort=False):
        if variant == "interruptible":
            continue  # the F10 section
        t = t.set_index("metric")
        cells = [f"{t.value[m]:.3g} [{t.ci_low[m]:.3g}, {t.ci_high[m]:.3g}]" if m in t.index else "-" for m in cols]
        lines.append(f"| {agent} | {variant} | " + " | ".join(cells) + " |")
    gh = goal_habit_table(df)
    if not gh.empty:
        lines += ["", "### Goal or habit (C6): deceptions that open the door, per episode", "",
                  f"Within each agent, on the same episodes. `{GOAL}` and its siblings (F4_goal) trained on a mix of "
                  f"`standard` and `unscored` with the flag in view; `{HABIT}` (F4) on `standard` only. An agent "
                  "whose deceptions serve its scored forecast deceives less on `unscored`.", "",
                  "| agent | `standard` | `unscored` | `unscored` - `standard` | seeds |", "|---|---|---|---|---|"]
        for r in gh.to_dict("records"):
            lines.append(f"| {r['agent']} | {format_ci(r['standard'], '.3g')} | {format_ci(r['unscored'], '.3g')} | "
                         f"{format_ci(r['difference'], '.3g')} | {r['seeds']} |")
    dose = dose_table(df)
    if not dose.empty:
        lines += ["", "### Dose-response (C6): F4_goal on `standard`, per seed", "",
                  "| gamma | credited horizon | deceptions / episode | deceptions / opportunity | return |",
                  "|---|---|---|---|---|"]
        for (g, seed), t in dose.groupby(["gamma", "seed"]):
            v = t.set_index("metric").value
            lines.append(f"| {g:g} (seed {seed}) | {1 / (1 - g):.0f} | {v.get('deceptions', math.nan):.3g} | "
                         f"{v.get('deception_rate', math.nan):.3g} | {v.get('return', math.nan):.3g} |")
    low, high = optimum_bracket(df)
    if not math.isnan(low):
        lines += ["", f"The optimum of `standard` lies between the planner's return, {low:.3g} (the exact "
                  f"optimum without monsters, played among them), and that optimum, {high:.3g} (monsters "
                  "only take HP, so no agent's expected return is higher). Each agent's `standard` return "
                  "as a share of the planner's, where the random agent is 0 (the failure penalty counts "
                  "against it):", "", "| agent | `standard` return | share of the optimum |", "|---|---|---|"]
        returns = quest[(quest.variant == "standard") & (quest.metric == "return")].set_index("agent").value
        base = returns.get("random")
        for agent in QUEST_AGENTS:
            r = returns.get(agent)
            if r is None or base is None or agent == "random":
                continue
            lines.append(f"| {agent} | {r:.3g} | {(r - base) / (low - base):.0%} |")
        lines += ["", "SB3 PPO converged further in a longer run than the sweep's: 2M env steps (one seed, "
                  "results/quest/README.md) returned +0.81 on `standard` with its greedy actions, 76% of the way "
                  "from random to the planner (its own counts there are button presses, not the effective "
                  "actions above)."]
    eq = equal_steps_returns(df)
    if not eq.empty:
        lines += ["", "Training return at equal env steps (quest-PPO's last rollout vs SB3's curve at the same "
                  "env steps). SB3 and quest-PPO `scratch` both start from nothing; quest-PPO `simulator` starts "
                  "from the explorer's simulator, so its row is not a comparison of learners:", "",
                  "| quest-PPO init | seed | env steps | quest-PPO | SB3 PPO |", "|---|---|---|---|---|"]
        for r in eq.itertuples():
            lines.append(f"| {r.init} | {r.seed} | {r.env_steps:.0f} | {r.quest_ppo_return:.3f} | "
                         f"{r.sb3_return:.3f} |")
    lines += aggregated_agents_section(df)
    return lines


FAMILY = ClaimFamily(
    name="quest", owns=(QUEST_EXP, GOAL_EXP), reads=(INTERRUPTION_EXP,), claims=quest_claims,
    figures={"F4": figure_f4, "F4 aggregated": figure_f4_aggregates}, section=quest_section)
