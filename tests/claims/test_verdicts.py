"""The verdict rule's statistics on known answers: Holm, p-values that agree with the intervals, splits,
remedies, log ratios, item-paired differences, coverage under the seed distributions this project
produces, and the claims file that declares every row."""

import math
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from instrumentality.claims import declared
from instrumentality.claims.algebra import Claim, claim_of, claim_verdicts, decide
from instrumentality.coverage import simulate
from instrumentality.stats import (
    alpha_to_exclude,
    detect_split,
    holm,
    item_paired_difference,
    items_to_decide,
    log_ratio_interval,
    mean_ci,
    remedy,
    seed_interval,
    seeds_to_decide,
    split_critical_value,
)

Z = 1.959964


def seeds(values, half=0.0) -> pd.DataFrame:
    v = np.asarray(values, dtype=float)
    return pd.DataFrame({"seed": range(len(v)), "value": v, "ci_low": v - half, "ci_high": v + half})


# ---------------------------------------------------------------------------- p-values and Holm
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, 1 x 0.04, then the running maximum
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == pytest.approx([0.5]) and holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_p_value_is_the_t_tests_and_agrees_with_the_interval():
    v = np.array([0.3, 1.1, 0.8, 1.6, 0.9])
    p = alpha_to_exclude(v, None, None, 0.0, "above")
    assert p == pytest.approx(stats.ttest_1samp(v, 0.0).pvalue, rel=1e-6)  # no item error: Student's t
    assert alpha_to_exclude(v, None, None, 0.0, "below") == 1.0  # the mean is above: never wholly below
    # with item error: the interval at alpha = p touches the threshold
    lows, highs = v - 0.4, v + 0.4
    p = alpha_to_exclude(v, lows, highs, 0.2, "above")
    assert seed_interval(v, lows, highs, alpha=p)[1] == pytest.approx(0.2, abs=1e-6)
    assert (p < 0.05) == (seed_interval(v, lows, highs)[1] > 0.2)


def test_secondary_rows_are_decided_after_holm_and_the_primary_on_its_own():
    """Three secondary rows of C8 with t-test p-values about 0.03, 0.03 and 1e-4: on their own all are
    decided at 5%; after Holm over three rows only the strongest is (0.03 x 2 > 0.05)."""
    weak = seeds([0.05, 0.35, 0.2, 0.5, 0.1])  # one-sample t p about 0.03
    strong = seeds([2.0, 2.1, 1.9, 2.05, 1.95])
    primary = claim_of("C8.matched[myopic]", seeds([0.01, -0.01, 0.0, 0.02, -0.02]), margin=0.5)
    rows = [primary, claim_of("C8.objective", weak), claim_of("C8.lookahead[future1]", weak),
            claim_of("C8.lookahead[future3]", strong)]
    assert [r.verdict for r in rows] == ["supported"] * 4  # before decide(): each on its own
    decide(rows)
    assert primary.holm_p is None and primary.verdict == "supported"
    assert [r.verdict for r in rows[1:]] == ["inconclusive", "inconclusive", "supported"]
    assert rows[1].raw_verdict == "supported" and "on its own" in rows[1].remedy
    verdict = next(v for v in claim_verdicts(rows) if v.claim == "C8")
    assert verdict.verdict == "supported" and verdict.secondary_summary == "2 inconclusive, 1 supported"
    assert next(v for v in claim_verdicts(rows) if v.claim == "C1").verdict == "not measured"


# ---------------------------------------------------------------------------- splits
def test_a_split_across_the_threshold_is_its_own_verdict():
    """C8's myopic critic cell at main 5fcade7: three seeds steer a little, two collapse far below."""
    row = claim_of("C8.myopic_steers", seeds([0.0286, 0.233, 0.286, -3.49, -3.4], half=0.02))
    assert row.verdict == "split"
    assert "2 seed(s) at -3.49 to -3.4 (seeds 3, 4)" in row.split_description
    assert "3 seed(s) at 0.0286 to 0.286 (seeds 0, 1, 2)" in row.split_description
    # two modes on the same side of the threshold: the verdict stands
    same_side = claim_of("C8.myopic_steers", seeds([5.0, 5.1, 5.2, 0.5, 0.6], half=0.02))
    assert same_side.modes is not None and same_side.verdict != "split"


def test_gaussian_seeds_are_declared_split_at_the_stated_rate_and_ties_inside_the_item_error_never():
    rng = np.random.default_rng(3)
    rate = np.mean([detect_split(rng.normal(size=5)) is not None for _ in range(2000)])
    assert 0.03 < rate < 0.07  # nominal 5%; binomial sd 0.5%
    assert detect_split([1.0, 2.0]) is None  # two seeds: no test
    v = np.array([0.0, 0.0, 0.0, 0.005, 0.0])  # C6's deceptions after the forecast: a tie, item error 0.035
    assert detect_split(v, v - 0.07, v + 0.07) is None
    assert split_critical_value(5) == pytest.approx(7.2, abs=0.2)  # 95% of Gaussian max-gap statistics


# ---------------------------------------------------------------------------- remedies
def test_the_remedy_names_seeds_where_seeds_block_and_items_where_items_block():
    v = np.array([0.0, 1.0, 2.0])  # mean 1, sd 1, no item error: 7 seeds (test_stats' closed form)
    assert remedy(v, v, v, 0.0) == "about 7 seeds"
    assert items_to_decide(v, v, v, 0.0) is None  # more items do nothing when the seeds' spread is the block
    same = np.full(5, 0.1)  # every seed agrees: the items' error (se 0.1) is the whole interval
    lows, highs = same - Z * 0.1, same + Z * 0.1
    assert seeds_to_decide(same, lows, highs, 0.0) is None
    assert items_to_decide(same, lows, highs, 0.0) == pytest.approx((Z * 0.1 / 0.1) ** 2, rel=1e-3)  # (item/gap)^2
    assert remedy(same, lows, highs, 0.0).startswith("3.9x the probe items")  # 1.96^2 = 3.84, rounded up
    both = np.array([-0.05, 0.25, 0.1, 0.0, 0.2])  # mean 0.1: seeds (t half-width 0.15) and items (0.2) both block
    assert "seeds with" in remedy(both, both - Z * 0.1, both + Z * 0.1, 0.0)
    tie = np.array([0.0, 0.0, 0.0, 0.005, 0.0])  # C6's deceptions after the forecast: mean 0.001, item se 0.035
    assert remedy(tie, tie - Z * 0.035, tie + Z * 0.035, 0.0).startswith("no count would decide it")
    assert remedy(np.array([-1.0, 1.0]), None, None, 0.0) == "no count would decide it: the mean lies on the threshold"


# ---------------------------------------------------------------------------- ratios, items
def test_the_ratio_interval_is_the_t_interval_of_the_log_ratios_mapped_back():
    r = np.array([4.7, 4.48, 4.19, 4.47, 4.11])
    m, lo, hi = seed_interval(np.log(r))
    assert log_ratio_interval(r) == pytest.approx((math.exp(m), math.exp(lo), math.exp(hi)))
    assert math.isnan(log_ratio_interval([])[0]) and math.isnan(log_ratio_interval([2.0, -1.0])[0])


def test_item_paired_differences_cancel_what_the_items_share():
    rng = np.random.default_rng(4)
    shared = rng.normal(0, 5, 400)  # item effects common to both arms
    a, b = 1.0 + shared + rng.normal(0, 0.2, 400), shared + rng.normal(0, 0.2, 400)
    d, lo, hi = item_paired_difference(a, b)
    assert (d, lo, hi) == pytest.approx(mean_ci(a - b))
    assert lo < 1.0 < hi and hi - lo < 0.1  # the arms' own intervals are about 1 wide
    _, alo, ahi = mean_ci(a)
    assert ahi - alo > 10 * (hi - lo)
    with pytest.raises(ValueError, match="same items"):
        item_paired_difference(a, b[:10])


# ---------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("n", (2, 3, 5))
@pytest.mark.parametrize("distribution", ("gaussian", "heavy tails (t, 3 df)"))
def test_coverage_holds_for_gaussian_and_heavy_tailed_seeds_with_items_shared_or_paired(n, distribution):
    """Nominal 95%: at least 93% in 1000 simulated experiments (binomial sd 0.7%), seeds dominating the item
    error (10x) or not (1x); with two arms on the same items, the item-paired interval covers and is
    narrower than the one adding the arms' item errors in quadrature."""
    for ratio in (1.0, 10.0):
        one_arm = simulate(distribution, n, False, ratio, reps=1000, seed=n)
        two_arms = simulate(distribution, n, True, ratio, reps=1000, seed=n)
        assert one_arm["t"] >= 0.93, (ratio, one_arm)
        assert two_arms["t, item-paired"] >= 0.93, (ratio, two_arms)
        assert two_arms["t, item-paired width"] <= two_arms["t, arms' items in quadrature width"]
    if n == 5:  # where the t quantile no longer dominates, the items' share is large
        cov = simulate(distribution, n, True, 1.0, reps=300, seed=1)
        assert cov["t, item-paired width"] < 0.8 * cov["t, arms' items in quadrature width"], cov


def test_no_interval_covers_a_two_mode_mixture_at_five_seeds_and_the_rule_sees_most_splits():
    """A 20% minority mode ten sds away, seeds dominating: t covers well under 93% (a third of samples
    never see the minority, (0.8)^5), and the rule declares about half the samples split."""
    cov = simulate("two modes, minority 20%", 5, False, 10.0, reps=1000, seed=7)
    assert cov["t"] < 0.8 and cov["rule"] < 0.93
    assert 0.35 < cov["split declared"] < 0.7


# ---------------------------------------------------------------------------- the claims file
def test_every_row_a_family_makes_is_declared_and_every_declared_row_is_made():
    """On the committed full table: the rows the families produce are exactly the claims file's."""
    from instrumentality.report import claims, load

    made = {c.row for c in claims(load("results/full/results.csv"))}
    declared_rows = {r.row for c in declared.claims().values() for r in c.rows.values()}
    assert made == declared_rows
    for c in declared.claims().values():
        assert c.rows[c.primary].primary and sum(r.primary for r in c.rows.values()) == 1


def test_an_undeclared_row_or_a_claim_without_its_primary_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="not declared"):
        claim_of("C1.made_up", seeds([0.1, 0.2]))
    bad = tmp_path / "claims.yaml"
    bad.write_text("C1:\n  statement: s\n  primary: b\n  rows:\n    a: {metric: m, prediction: '< 1', reason: r}\n")
    with pytest.raises(ValueError, match="primary row 'b' is not among its rows"):
        declared.claims(bad)
    bad.write_text("C1:\n  statement: s\n  primary: a\n  rows:\n    a: {metric: m, prediction: '~ 1', reason: r}\n")
    with pytest.raises(ValueError, match="is not '< x', '> x' or 'abs < x'"):
        declared.claims(bad)


def test_the_report_says_whether_the_claims_file_changed_after_the_runs(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "a@b")
    git("config", "user.name", "a")
    f = tmp_path / "claims.yaml"
    f.write_text("v1\n")
    git("add", "claims.yaml")
    git("commit", "-qm", "declare")
    declared_at = git("rev-parse", "--short", "HEAD")
    (tmp_path / "runs").write_text("x")
    git("add", "runs")
    git("commit", "-qm", "runs")
    runs_at = git("rev-parse", "--short", "HEAD")
    assert "before the runs" in declared.file_status(runs_at, f)
    f.write_text("v2\n")
    assert "uncommitted changes" in declared.file_status(runs_at, f)
    git("commit", "-qam", "move a threshold")
    assert "**after the runs**" in declared.file_status(runs_at, f)
    assert "before the runs" in declared.file_status(git("rev-parse", "--short", "HEAD"), f)
    assert "not on record" in declared.file_status(git("rev-parse", "--short", "HEAD"), f, runs_dirty=True)
    assert declared_at != runs_at
    assert declared.digest(f) == __import__("hashlib").sha256(b"v2\n").hexdigest()[:16]


def test_an_equivalence_row_says_whether_it_converged():
    near = Claim("C9", "m", "abs < 0.05", 0.02, 0.013, 0.027, 5, seeds([0.02] * 5))
    at = Claim("C9", "m", "abs < 0.05", 0.002, -0.006, 0.011, 5, seeds([0.002] * 5))
    assert near.verdict == at.verdict == "supported"
    assert "excludes 0" in near.equivalence_note and at.equivalence_note == "interval contains 0"


# ---------------------------------------------------------------------------- per-item values, end to end
def planted_runs(tmp_path, with_items: bool = True):
    """Two arms (supervised, reinforce) of three seeds, each scored on the same 300 fork prompts whose
    item effects are shared (sd 3) and differ between the arms by 0.5 plus a little noise; their rows are
    written as the evaluation writes them and put into a results table with the per-item values beside."""
    from instrumentality.evaluation.table import update_items, update_table, write_run_rows

    rng = np.random.default_rng(9)
    shared = rng.normal(0, 3, 300)
    runs, arms = {}, {}
    for regime, shift in (("supervised", 0.0), ("reinforce", 0.5)):
        for s in range(3):
            run_dir = tmp_path / "runs" / "F1" / f"{regime}-s{s}"
            run_dir.mkdir(parents=True)
            items = shared + shift + 0.3 * s + rng.normal(0, 0.05, 300)
            m, lo, hi = mean_ci(items)
            rows = [{"run_id": f"F1/{regime}-s{s}", "exp_name": "F1", "regime": regime, "seed": s,
                     "probe": "forks/asym/p=0.5", "metric": "steering_index", "value": m, "ci_low": lo,
                     "ci_high": hi, **({"items": items} if with_items else {})},
                    {"run_id": f"F1/{regime}-s{s}", "exp_name": "F1", "regime": regime, "seed": s, "probe": "run",
                     "metric": "finished", "value": 1.0, "ci_low": math.nan, "ci_high": math.nan}]
            runs[f"F1/{regime}-s{s}"] = write_run_rows(run_dir, rows, source=f"{regime}{s}".ljust(64, "0"))
            arms[(regime, s)] = items
            assert "items" not in runs[f"F1/{regime}-s{s}"]  # the table holds no arrays
            assert (run_dir / "items.npz").exists()
    table = tmp_path / "results.csv"
    update_table(table, runs)
    update_items(table, {r: tmp_path / "runs" / r for r in runs})
    return table, arms


def test_two_arms_on_the_same_items_are_compared_item_by_item(tmp_path):
    from instrumentality.claims.algebra import paired, per_seed
    from instrumentality.report import load

    table, arms = planted_runs(tmp_path)
    df = load(table)
    a = per_seed(df[df.regime == "reinforce"], "forks/asym/p=0.5", "steering_index")
    b = per_seed(df[df.regime == "supervised"], "forks/asym/p=0.5", "steering_index")
    d = paired(a, b).sort_values("seed")
    assert (d.item_pairing == "paired").all()
    for s, row in zip(range(3), d.itertuples()):
        expected = mean_ci(arms["reinforce", s] - arms["supervised", s])
        assert (row.value, row.ci_low, row.ci_high) == pytest.approx(expected)
        assert row.ci_high - row.ci_low < 0.05  # the shared item effects (sd 3: width about 0.7) cancel
    row = claim_of("C4.horizon", d)
    assert row.low > 0.4 and row.high < 0.6 and "quadrature" not in row.note


def test_without_per_item_values_the_arms_errors_add_in_quadrature_and_the_row_says_so(tmp_path):
    from instrumentality.claims.algebra import paired, per_seed
    from instrumentality.report import load

    table, _ = planted_runs(tmp_path, with_items=False)
    df = load(table)
    d = paired(per_seed(df[df.regime == "reinforce"], "forks/asym/p=0.5", "steering_index"),
               per_seed(df[df.regime == "supervised"], "forks/asym/p=0.5", "steering_index"))
    assert (d.item_pairing == "quadrature").all() and (d.ci_high - d.ci_low > 0.5).all()
    assert "in quadrature" in claim_of("C4.horizon", d).note


def test_items_of_a_run_whose_checkpoint_changed_do_not_count(tmp_path):
    """The items file is keyed by each run's source: once the table's rows of a run come from another
    checkpoint, its old items are not used."""
    from instrumentality.evaluation.table import items_path, load_items, read_table

    table, _ = planted_runs(tmp_path)
    df, _ = read_table(table)
    assert len(load_items(table, df)) == 6
    df.loc[df.run_id == "F1/reinforce-s0", "source"] = "another checkpoint"
    items = load_items(table, df)
    assert len(items) == 5 and ("F1/reinforce-s0", "forks/asym/p=0.5", "steering_index") not in items
    assert items_path(table).name == "results.items.npz"


def test_the_evaluators_keep_the_items_each_mean_came_from(world):
    """Fork, look-ahead and quest rows carry the per-item values whose mean is the row's value, on the same
    items for every model (so two runs can be paired item by item); instrumental steering's items are the
    prompt-by-prompt asym - sym differences."""
    from planted import TruthModel, UniformModel

    from instrumentality.envs.agents import Explorer, RandomAgent, quest_rows
    from instrumentality.evaluation.probe_set import ProbeConfig, ProbeSet
    from instrumentality.evaluation.world_probes import evaluate_model

    probes = ProbeSet.generate(world, ProbeConfig(n_calibration=32, n_per_fork_position=8, n_lookahead_train=48,
                                                  n_lookahead_test=24))
    by_model = []
    for model in (UniformModel(world.vocab_size), TruthModel(world)):
        rows = evaluate_model(model, world, probes, families=("forks", "lookahead"))
        with_items = {(r["probe"], r["metric"]): r for r in rows if r.get("items") is not None}
        assert {p for p, _ in with_items} >= {"forks/asym/p=0.5", "forks/sym/p=0.5", "forks/p=0.5", "lookahead/k=2",
                                              "lookahead/k=2/layer=0"}
        for r in with_items.values():
            assert r["items"].mean() == pytest.approx(r["value"], abs=1e-9)
        by_model.append({k: len(r["items"]) for k, r in with_items.items()})
    assert by_model[0] == by_model[1]  # the same items for every model
    rows = quest_rows({"random": RandomAgent(1), "explorer": Explorer(seed=1)}, n_episodes=20, variants=("standard",))
    for r in rows:
        assert len(r["items"]) == 20 and r["items"].mean() == pytest.approx(r["value"])


def test_compare_matches_each_row_at_most_once():
    """scripts/compare.py's row count on a table against itself: every row matched once and equal, also
    where an F9 run has several rows with the same keys (its fixed points) and where rows differ by `start`."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("compare", Path(__file__).resolve().parents[2] / "scripts/compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    rows = [{"run_id": "F9/retrain-s0", "probe": "prophecy/theory", "metric": "fixed_point", "stable": s, "value": v}
            for s, v in ((True, 0.15), (False, 0.47), (True, 0.89))]
    rows += [{"run_id": "F9/retrain-s0", "probe": "prophecy", "metric": "forecast", "start": s, "value": s + 0.1}
             for s in (0.08, 0.3, 0.65, 0.97)]
    table = pd.DataFrame(rows)
    r = compare.row_agreement(table, table)
    assert r == {"old": 7, "new": 7, "matched": 7, "exact": 7, "close": 7}
    moved = table.assign(value=table.value + np.where(table.metric == "forecast", 0.5, 0.0))
    assert compare.row_agreement(table, moved)["exact"] == 3  # the fixed points; each forecast moved


def test_a_table_reads_back_every_float_exactly(tmp_path):
    """Values written by the evaluation (to_csv) read back bit for bit: pandas' default parser would change
    the last digits of some of them."""
    from instrumentality.evaluation.table import read_table

    values = np.random.default_rng(11).normal(size=500) / 7.0
    table = pd.DataFrame({"run_id": "F1/supervised-s0", "source": "s", "run_rows": 500, "probe": "p",
                          "metric": [f"m{i}" for i in range(500)], "value": values})
    table.to_csv(tmp_path / "results.csv", index=False)
    assert (read_table(tmp_path / "results.csv")[0].value.to_numpy() == values).all()


def test_compare_refuses_a_table_against_itself(tmp_path):
    import sys
    from pathlib import Path

    table = tmp_path / "results.csv"
    pd.DataFrame({"run_id": ["F1/supervised-s0"], "source": ["s"], "run_rows": [1], "probe": ["run"],
                  "metric": ["finished"], "value": [1.0]}).to_csv(table, index=False)
    proc = subprocess.run([sys.executable, "scripts/compare.py", str(table), str(table)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == 2 and "are the same table: there is nothing to compare" in proc.stderr
