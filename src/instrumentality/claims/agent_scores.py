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


def aggregate_table(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per agent and aggregate: the point value and its 95% stratified bootstrap interval."""
    from rliable import library as rly

    with warnings.catch_warnings():  # rliable hands arch a RandomState, which arch deprecates
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
    with warnings.catch_warnings():
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

    np.random.seed(seed)  # rliable's profile bootstrap draws from numpy's global generator
    return rly.create_performance_profile(scores, taus, reps=reps)


def figure(scores: dict[str, np.ndarray], reps: int = 2000):
    """The aggregates with their intervals, and the performance profiles: a matplotlib figure."""
    import matplotlib.pyplot as plt

    table = aggregate_table(scores, reps=reps)
    agents = list(scores)
    fig, axes = plt.subplots(1, len(AGGREGATES) + 1, figsize=(3.2 * (len(AGGREGATES) + 1) + 1, 3.4))
    for ax, name in zip(axes, AGGREGATES):
        t = table[table.statistic == name].set_index("agent").reindex(agents)
        y = np.arange(len(agents))
        ax.errorbar(t.value, y, xerr=[t.value - t.ci_low, t.ci_high - t.value], fmt="o", color="k", capsize=3)
        ax.set_yticks(y, agents if ax is axes[0] else [""] * len(agents), fontsize=8)
        ax.axvline(0, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5, ls=":")
        ax.set_title(name)
        ax.set_xlabel("normalised score" if name != "optimality gap" else "1 - score (lower is better)")
    taus = np.linspace(-0.5, 1.25, 71)
    profile, profile_ci = performance_profiles(scores, taus)
    ax = axes[-1]
    for i, agent in enumerate(agents):
        ax.plot(taus, profile[agent], color=f"C{i}", label=agent)
        ax.fill_between(taus, profile_ci[agent][0], profile_ci[agent][1], color=f"C{i}", alpha=0.2)
    ax.set(xlabel="normalised score tau", ylabel="share of runs with score > tau", title="performance profiles")
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("F4 aggregated (rliable; random agent = 0, planner = 1; 95% stratified bootstrap)")
    fig.tight_layout()
    return fig
