"""F4's ClueQuest agents compared the way the field compares RL agents: rliable (Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice").

Each agent's mean return on each quest variant becomes a normalised score, one per seed:
    score = (R_agent - R_random) / (R_planner - R_random)      (random agent 0, planner 1)
with R_random and R_planner the mean over seeds of those agents' returns on that variant. The variants
are rliable's "tasks", the seeds its "runs". Aggregates: the interquartile mean of all (seed, variant)
scores (IQM: the mean of the middle half), their mean, the median over variants of each variant's mean,
and the optimality gap (the mean shortfall below 1), with stratified bootstrap intervals (seeds resampled
within each variant); the probability that agent X beats agent Y on a variant, averaged over variants;
performance profiles (the share of scores above tau).

Those intervals are percentile bootstraps over the seeds: at 3 to 5 seeds they cover less than their
nominal 95% (tests/claims/test_stats.py measures how much less for the claims' own intervals), so they
describe the spread; the claims' verdicts use the Student-t intervals of stats.py instead.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd

from instrumentality.claims.algebra import PLANNER

ANCHORS = ("random", PLANNER)  # score 0 and score 1
VARIANTS = ("standard", "free_info", "unscored", "post_episode")
AGGREGATES = ("IQM", "mean", "median", "optimality gap")


def normalised_scores(returns: pd.DataFrame) -> dict[str, np.ndarray]:
    """returns: one row per (agent, seed, variant) with column `value` (the mean episode return). Per agent
    other than the anchors: an array [seeds, variants] of normalised scores (variants in VARIANTS order,
    those every anchor has)."""
    variants = [v for v in VARIANTS
                if all(((returns.agent == a) & (returns.variant == v)).any() for a in ANCHORS)]
    anchor = {a: returns[returns.agent == a].groupby("variant").value.mean() for a in ANCHORS}
    low, high = (np.array([anchor[a][v] for v in variants]) for a in ANCHORS)
    if np.any(high <= low):
        raise ValueError(f"the planner does not beat the random agent on every variant ({variants}): "
                         "no normalised score")
    out = {}
    for agent, r in returns[~returns.agent.isin(ANCHORS)].groupby("agent", sort=False):
        table = r.pivot_table(index="seed", columns="variant", values="value").reindex(columns=variants)
        table = table.dropna()
        if len(table):
            out[str(agent)] = (table.to_numpy() - low) / (high - low)
    return out


def _aggregates(scores: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores),
                     metrics.aggregate_median(scores), metrics.aggregate_optimality_gap(scores)])


@contextlib.contextmanager
def global_seed(seed: int):
    """numpy's global generator seeded for the block, then put back: rliable's bootstraps draw from it
    (arch's resampling despite the RandomState handed to it; the performance profiles only from it), so
    without this an interval would depend on whatever ran before it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


_AGGREGATES: dict[tuple, pd.DataFrame] = {}  # a report asks twice (its F4 section and F4_aggregates)


def aggregate_table(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per agent and aggregate: the point value and its 95% stratified bootstrap interval (the same scores,
    reps and seed give the same table: it is computed once)."""
    key = (reps, seed, tuple((k, v.shape, np.asarray(v, dtype=np.float64).tobytes()) for k, v in scores.items()))
    if key not in _AGGREGATES:
        if len(_AGGREGATES) > 16:
            _AGGREGATES.clear()
        _AGGREGATES[key] = _aggregate_table(scores, reps, seed)
    return _AGGREGATES[key].copy()


def _aggregate_table(scores: dict[str, np.ndarray], reps: int, seed: int) -> pd.DataFrame:
    from rliable import library as rly

    with warnings.catch_warnings(), global_seed(seed):  # rliable hands arch a RandomState, which arch deprecates
        warnings.simplefilter("ignore", FutureWarning)
        point, ci = rly.get_interval_estimates(scores, _aggregates, reps=reps,
                                               random_state=np.random.RandomState(seed))
    rows = []
    for agent in scores:
        for i, name in enumerate(AGGREGATES):
            rows.append({"agent": agent, "statistic": name, "value": float(point[agent][i]),
                         "ci_low": float(ci[agent][0, i]), "ci_high": float(ci[agent][1, i]),
                         "seeds": scores[agent].shape[0], "variants": scores[agent].shape[1]})
    return pd.DataFrame(rows)


def improvement_table(scores: dict[str, np.ndarray], pairs: list[tuple[str, str]], reps: int = 500,
                      seed: int = 0) -> pd.DataFrame:
    """P(X > Y): the probability that a run of X scores above a run of Y on a variant (ties count half),
    averaged over variants, with its 95% stratified bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    pairs = [(x, y) for x, y in pairs if x in scores and y in scores]
    if not pairs:
        return pd.DataFrame()
    with warnings.catch_warnings(), global_seed(seed):
        warnings.simplefilter("ignore", FutureWarning)
        point, ci = rly.get_interval_estimates({f"{x} > {y}": (scores[x], scores[y]) for x, y in pairs},
                                               metrics.probability_of_improvement, reps=reps,
                                               random_state=np.random.RandomState(seed))
    rows = []
    for x, y in pairs:
        low, high = np.ravel(ci[f"{x} > {y}"])
        rows.append({"X": x, "Y": y, "P(X > Y)": float(point[f"{x} > {y}"]), "ci_low": float(low),
                     "ci_high": float(high)})
    return pd.DataFrame(rows)


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int = 500,
                         seed: int = 0) -> tuple[dict, dict]:
    """Per agent: the share of its (seed, variant) scores above each tau, and its 95% interval."""
    from rliable import library as rly

    with global_seed(seed):  # rliable's profile bootstrap draws from numpy's global generator
        return rly.create_performance_profile(scores, taus, reps=reps)


def gamma_style(name: str) -> str:
    """A line style per F4_goal discount (its three arms share one colour): dotted 0.5, dashed 0.9, else solid."""
    return ":" if name.endswith("gamma 0.5)") else "--" if name.endswith("gamma 0.9)") else "-"


MARKERS = {"IQM": "o", "mean": "s", "median": "D", "optimality gap": "v"}  # the gap drawn hollow: lower is better


def figure(scores: dict[str, np.ndarray], reps: int = 2000):
    """Left: each agent's aggregates with their intervals, one row per agent; right: the performance profiles."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from instrumentality.claims.style import BOOTSTRAP_CI, ONE_RUN, agent_color, caption, runs_label

    table = aggregate_table(scores, reps=reps)
    agents = list(scores)
    colors = [agent_color(a) for a in agents]
    y = np.arange(len(agents))
    fig, (ax, prof) = plt.subplots(1, 2, figsize=(13, 0.4 * len(agents) + 2.4), width_ratios=(1.2, 1))
    for i in y[::2]:
        ax.axhspan(i - 0.5, i + 0.5, color="0.95", lw=0)
    for (name, marker), dy in zip(MARKERS.items(), np.linspace(-0.27, 0.27, len(MARKERS))):
        t = table[table.statistic == name].set_index("agent").reindex(agents)
        ax.hlines(y + dy, t.ci_low, t.ci_high, colors=colors, lw=1.2)
        ax.scatter(t.value, y + dy, marker=marker, s=24, zorder=3, edgecolors=colors,
                   facecolors="white" if name == "optimality gap" else colors)
    ax.set_yticks(y, [runs_label(a, scores[a].shape[0]) for a in agents])
    ax.set_ylim(len(agents) - 0.5, -0.5)
    for x in (0, 1):
        ax.axvline(x, color="grey", lw=0.6, ls="-" if x == 0 else ":")
    ax.set(xlabel="normalised score (random agent 0, planner 1)", title="Aggregate scores over variants and seeds")
    ax.legend([Line2D([], [], color="k", marker=m, ls="none", mfc="white" if n == "optimality gap" else "k")
               for n, m in MARKERS.items()],
              ["IQM", "mean", "median over variants", "optimality gap (lower is better)"],
              loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    taus = np.linspace(-0.5, 1.25, 71)
    profile, profile_ci = performance_profiles(scores, taus)
    for agent, color in zip(agents, colors):
        prof.plot(taus, profile[agent], color=color, ls=gamma_style(agent), label=agent)
        prof.fill_between(taus, profile_ci[agent][0], profile_ci[agent][1], color=color, alpha=0.12, lw=0)
    prof.set(xlabel="normalised score tau", ylabel="share of runs scoring above tau", title="Performance profiles")
    prof.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("F4 aggregated: ClueQuest agents' returns as normalised scores (rliable)")
    fig.tight_layout()
    one = [a for a in agents if scores[a].shape[0] == 1]
    caption(fig, f"error bars and {BOOTSTRAP_CI}; at a handful of seeds a percentile bootstrap covers less than 95%",
            f"{', '.join(one)}: {ONE_RUN}" if one else "")
    return fig
