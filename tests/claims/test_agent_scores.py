"""F4's rliable aggregates against values computed independently from planted scores."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from instrumentality.claims.agent_scores import aggregate_table, improvement_table, normalised_scores

VARIANTS = ["standard", "free_info"]


def returns_frame(per_agent: dict[str, list[list[float]]]) -> pd.DataFrame:
    """{agent: [[return on each variant] per seed]} as the rows normalised_scores reads."""
    return pd.DataFrame([{"agent": a, "seed": s, "variant": v, "value": x}
                         for a, seeds in per_agent.items() for s, row in enumerate(seeds)
                         for v, x in zip(VARIANTS, row)])


def test_scores_put_the_random_agent_at_0_and_the_planner_at_1_per_variant():
    # random: -2 on standard, -1 on free_info (mean over its seeds); planner: 2 and 1
    frame = returns_frame({"random": [[-3, -1], [-1, -1]], "planner (optimum)": [[2, 1], [2, 1]],
                           "agent": [[0, 0], [2, -1], [-2, 0.5]]})
    scores = normalised_scores(frame)
    assert list(scores) == ["agent"]
    np.testing.assert_allclose(scores["agent"], [[0.5, 0.5], [1.0, 0.0], [0.0, 0.75]])


def test_a_planner_no_better_than_random_has_no_normalised_score():
    with pytest.raises(ValueError, match="does not beat the random agent"):
        normalised_scores(returns_frame({"random": [[0, 0]], "planner (optimum)": [[0, 1]], "agent": [[0, 0]]}))


def test_aggregates_equal_their_definitions_on_planted_scores():
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(0.5, 0.3, size=(8, 4)), "b": rng.normal(0.2, 0.1, size=(5, 4))}
    table = aggregate_table(scores, reps=200).set_index(["agent", "statistic"])
    for agent, x in scores.items():
        assert table.loc[(agent, "IQM"), "value"] == pytest.approx(stats.trim_mean(x.ravel(), 0.25))
        assert table.loc[(agent, "mean"), "value"] == pytest.approx(x.mean())
        assert table.loc[(agent, "median"), "value"] == pytest.approx(np.median(x.mean(0)))  # of the variants
        assert table.loc[(agent, "optimality gap"), "value"] == pytest.approx(np.mean(1 - np.minimum(x, 1)))
        for stat in ("IQM", "mean"):
            low, high = table.loc[(agent, stat), ["ci_low", "ci_high"]]
            assert low < table.loc[(agent, stat), "value"] < high
    assert table.loc[("a", "mean"), "seeds"] == 8 and table.loc[("b", "mean"), "variants"] == 4


def test_probability_of_improvement_is_1_for_a_dominating_agent_and_a_half_for_a_copy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(5, 3))
    scores = {"high": x + 2, "low": x, "copy": x.copy()}
    t = improvement_table(scores, [("high", "low"), ("copy", "low"), ("low", "nobody")], reps=100).set_index("X")
    assert list(t.index) == ["high", "copy"]  # a pair with an unknown agent is left out
    assert t.loc["high", "P(X > Y)"] == 1.0 and t.loc["high", "ci_low"] == 1.0
    assert t.loc["copy", "P(X > Y)"] == pytest.approx(0.5)  # every run ties with its copy: ties count half


def test_the_bootstrap_intervals_do_not_depend_on_what_ran_before():
    """rliable's bootstraps draw from numpy's global generator: seeded for each call (and put back), an
    interval is the same whatever state the generator was left in, and the caller's state is kept."""
    from instrumentality.claims.agent_scores import _aggregate_table, improvement_table

    rng = np.random.default_rng(1)
    scores = {"a": rng.random((5, 4)), "b": rng.random((5, 4))}
    tables = []
    for state in (0, 123):
        np.random.seed(state)
        tables.append((_aggregate_table(scores, 200, 0), improvement_table(scores, [("a", "b")], reps=200)))
        after = np.random.random()
        np.random.seed(state)
        assert after == np.random.random()  # the caller's generator is where it was
    (a0, i0), (a1, i1) = tables
    pd.testing.assert_frame_equal(a0, a1)
    pd.testing.assert_frame_equal(i0, i1)
