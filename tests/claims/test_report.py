"""Figures and REPORT.md from a results table alone; the verdict rule on tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
from planted import as_results_table

from instrumentality.claims.algebra import verdict
from instrumentality.claims.world import efficiency_ratios, samples_to_threshold
from instrumentality.report import claims, load, write_report


@pytest.mark.parametrize("prediction,ci,expected", [
    ("< 0.05", (0.01, 0.005, 0.02), "supported"),
    ("< 0.05", (0.10, 0.07, 0.20), "not supported"),
    ("< 0.05", (0.04, 0.03, 0.06), "inconclusive"),
    ("> 0", (2.0, 1.0, 3.0), "supported"),
    ("> 0", (-2.0, -3.0, -1.0), "not supported"),
    ("> 0", (0.5, -0.1, 1.0), "inconclusive"),
    ("abs < 0.1", (0.0, -0.05, 0.05), "supported"),
    ("abs < 0.1", (0.5, 0.3, 0.7), "not supported"),
    ("abs < 0.1", (0.08, 0.0, 0.2), "inconclusive"),
    ("> 0", (math.nan, math.nan, math.nan), "not measured"),
])
def test_verdict_rule(prediction, ci, expected):
    assert verdict(prediction, *ci) == expected
    assert verdict(prediction, *ci, n=1) in ("inconclusive", "not measured")  # one seed decides nothing


def fixture_table() -> pd.DataFrame:
    """A planted results table: supervised is calibrated and does not steer; reinforce reaches the KL
    threshold 4x later; the critic steers at gamma=1 (more with H) and not at gamma=0."""
    rows = []

    def add(run, regime, seed, probe, metric, value, width=0.01, **extra):
        rows.append({"run_id": run, "regime": regime, "seed": seed, "probe": probe, "metric": metric,
                     "value": value, "ci_low": value - width, "ci_high": value + width, **extra})

    for s in range(3):
        for regime, speed in (("supervised", 1), ("reinforce", 4)):
            run = f"F1/{regime}-s{s}"
            add(run, regime, s, "calibration", "kl", 0.01 if regime == "supervised" else 0.08)
            add(run, regime, s, "forks/asym/p=0.5", "steering_index", 0.0)
            add(run, regime, s, "forks/p=0.5", "instrumental_steering", 0.0)
            for t, kl in enumerate([2.0, 0.5, 0.2, 0.09, 0.05, 0.03, 0.02, 0.015]):
                add(run, regime, s, "curve/calibration", "kl", kl, tokens=(t + 1) * 1000 * speed)
            for b, (conf, acc) in enumerate([(0.15, 0.14), (0.55, 0.56), (0.95, 0.95)]):
                for kind, v in (("conf", conf), ("acc", acc), ("count", 100)):
                    add(run, regime, s, "calibration/reliability", f"bin{b:02d}_{kind}", v, width=0)
            add(run, regime, s, "run", "finished", 1.0, width=0)
            add(run, regime, s, "lookahead/k=2", "chance", 0.06)
            for layer, acc in enumerate((0.30, 0.35)):
                add(run, regime, s, f"lookahead/k=2/layer={layer}", "accuracy", acc)
            for layer, acc in enumerate((0.25, 0.33)):  # at the diagnostic positions: 0.08 over the embedding
                add(run, regime, s, f"lookahead/k=2/diagnostic/layer={layer}", "accuracy", acc)
        run = f"F3/critic-truth-teacher_forced-g1.0-H8-s{s}"
        extra = {"regime.critic": "truth", "regime.gamma": 1.0, "regime.horizon": 8, "regime.rollout": "teacher_forced"}
        for p in (0.2, 0.5, 0.8):
            add(run, "critic", s, f"forks/asym/p={p}", "steering_index", 0.02 * s, **extra)
        add(run, "critic", s, "lookahead/k=2", "chance", 0.06, **extra)
        add(run, "critic", s, "lookahead/k=2/layer=0", "accuracy", 0.3, **extra)
        for gamma in (0.0, 1.0):
            for H in (1, 4, 8):
                run = f"F2/critic-truth-g{gamma}-H{H}-s{s}"
                steer = gamma * min(H - 1, 4) * 2.0
                extra = {"regime.critic": "truth", "regime.gamma": gamma, "regime.horizon": H, "regime.rollout": "free"}
                for p in (0.2, 0.5, 0.8):
                    add(run, "critic", s, f"forks/asym/p={p}", "steering_index", steer, **extra)
                add(run, "critic", s, "lookahead/k=2", "chance", 0.06, **extra)
                add(run, "critic", s, "lookahead/k=2/layer=0", "accuracy", 0.3, **extra)
                add(run, "critic", s, "forks/p=0.5", "instrumental_steering", steer, **extra)
                add(run, "critic", s, "forks/p=0.5", "instrumental_steering_theory", gamma * min(H - 1, 4) * 2.08,
                    width=0, **extra)
                for h in range(1, 9):
                    add(run, "critic", s, "theory_curve/forks/asym/p=0.5", "steering_index",
                        gamma * min(h - 1, 4) * 2.08, width=0, horizon=h, **extra)
                add(run, "critic", s, "run", "finished", 1.0, width=0, **extra)
        for H in (1, 8):  # the keyword critic steers 1.0 nats at H=8 (its exact optimum), none at H=1
            run = f"F2/critic-keyword-g1.0-H{H}-s{s}"
            extra = {"regime.critic": "keyword", "regime.gamma": 1.0, "regime.horizon": H, "regime.rollout": "free"}
            add(run, "critic", s, "forks/asym/p=0.5", "steering_index", 1.0 if H == 8 else 0.0, **extra)
            add(run, "critic", s, "forks/p=0.5", "instrumental_steering", 5.0, **extra)  # not C3's truth critic
            add(run, "critic", s, "run", "finished", 1.0, width=0, **extra)
        # F4: deceptions (that open the door) per episode by variant (standard, free_info, unscored, post_episode):
        # the quest agent deceives 0.5 more than the explorer's simulator everywhere, 0.2 less than the planner's
        # clone on `standard`, and 0.3 more after its forecast; the planner deceives once on `standard` (C6's
        # margin: 0.25). F4_goal's mixed agents deceive more with the discount on `standard` (0.3, 0.5, 0.8) and
        # at gamma 0.99 0.6 less on `unscored` (a goal). On `standard` the random agent returns -1.5, SB3 -0.5,
        # the planner 1.5 (its monster-free bound 1.7)
        returns = {"random": -1.5, "sb3_ppo": -0.5, "planner": 1.5}
        arms = (("F4", "supervised", "", "explorer", "", (0.2, 0.2, 0.2, 0.2)),
                ("F4", "supervised", "", "planner", "", (0.9, 0.05, 0.05, 0.9)),
                ("F4", "quest", "simulator", "", "", (0.7, 0.7, 0.7, 1.0)),
                ("F4", "sb3_ppo", "", "", "", (0.0,) * 4), ("F4", "random", "", "", "", (1.0,) * 4),
                ("F4", "planner", "", "", "", (1.0, 0.0, 0.0, 1.0)),
                ("F4_goal", "quest", "simulator", "", 0.5, (0.3, 0.3, 0.3, 0.3)),
                ("F4_goal", "quest", "simulator", "", 0.9, (0.5, 0.4, 0.4, 0.5)),
                ("F4_goal", "quest", "simulator", "", 0.99, (0.8, 0.2, 0.2, 0.8)))
        for exp, agent, init, teacher, gamma, deceive in arms:
            run = f"{exp}/{agent}-{init}-{teacher}{gamma}-s{s}"
            extra = {"exp_name": exp, "regime.init": init, "regime.quest_teacher": teacher, "regime.gamma": gamma}
            for variant, d in zip(("standard", "free_info", "unscored", "post_episode"), deceive):
                add(run, agent, s, f"quest/{variant}", "deceptions", d, width=0.05, **extra)
                add(run, agent, s, f"quest/{variant}", "fights", 0.4, width=0.05, **extra)
                add(run, agent, s, f"quest/{variant}", "return", returns.get(agent, 0.5), **extra)
                if agent == "planner":
                    add(run, agent, s, f"quest/{variant}", "return_bound", 1.7, **extra)
            if exp == "F4_goal":
                continue
            for k in range(1, 4):
                add(run, agent, s, "curve/quest", "return", 0.1 * k + (0.5 if agent == "quest" else 0.0), width=0,
                    env_steps=1000 * k, **extra)
    return as_results_table(pd.DataFrame(rows))


def test_claims_on_a_planted_table():
    df = fixture_table()
    verdicts = {(c.claim, c.metric.split(",")[0]): c.verdict for c in claims(df)}
    assert verdicts[("C1", "supervised KL(p* ‖ pi)")] == "supported"
    assert verdicts[("C1", "supervised steering index")] == "supported"
    c1 = next(c for c in claims(df) if c.row == "C1.instrumental")
    # within a quarter of the exact optimum of the truth critic at gamma = 1, H = 8 (8.32 here)
    assert c1.primary and c1.prediction == "abs < 2.08" and c1.verdict == "supported"
    stt = samples_to_threshold(df)
    # KL crosses 0.1 between 0.2 (3000 tokens) and 0.09 (4000 tokens): log-log interpolation
    frac = (math.log(0.1) - math.log(0.2)) / (math.log(0.09) - math.log(0.2))
    expected = math.exp(math.log(3000) + frac * (math.log(4000) - math.log(3000)))
    assert stt[stt.regime == "supervised"].tokens.to_numpy() == pytest.approx([expected] * 3)
    assert efficiency_ratios(stt, "reinforce").value.to_numpy() == pytest.approx([4.0] * 3)
    assert any(c.claim == "C2" and "reinforce /" in c.metric and c.verdict == "supported" for c in claims(df))
    assert any(c.claim == "C2" and c.metric.startswith("reinforce final") and c.verdict == "not supported"
               for c in claims(df))
    c3 = next(c for c in claims(df) if c.claim == "C3")
    assert c3.verdict == "supported" and c3.value == pytest.approx(8.0)  # the truth critic's runs only
    c4 = [c for c in claims(df) if c.claim == "C4"]
    assert [c.verdict for c in c4] == ["supported", "supported", "supported", "not measured"]  # no beta = 1 arm
    assert c4[0].value == pytest.approx(8.0) and c4[0].n_seeds == 3  # free-running runs only, not F3's
    assert c4[1].value == pytest.approx(0.0)  # gamma=0: the truth critic's runs only, not the keyword's
    assert c4[2].value == pytest.approx(1.0) and "keyword" in c4[2].metric
    assert [c.verdict for c in claims(df) if c.claim == "C5"] == []  # C5 reads F8 (test_cognition)
    c6 = {c.row: c for c in claims(df) if c.claim == "C6"}
    x = np.log10([2, 10, 100])  # the credited horizons of gamma 0.5, 0.9, 0.99
    slope = np.polyfit(x, [0.3, 0.5, 0.8], 1)[0]
    expected = {"C6.habit": (-0.6, "not supported"), "C6.habit_unseen": (0.0, "supported"),
                "C6.instrumental[explorer clone]": (0.5, "supported"),
                "C6.instrumental[planner clone]": (-0.2, "not supported"), "C6.free_info": (0.5, "supported"),
                "C6.after_forecast": (0.3, "supported"), "C6.dose_response": (slope, "supported"),
                "C6.dose_step[0.5 to 0.9]": (0.2, "supported"), "C6.dose_step[0.9 to 0.99]": (0.3, "supported")}
    assert list(c6) == list(expected)
    for row, (value, expected_verdict) in expected.items():
        assert c6[row].value == pytest.approx(value) and c6[row].verdict == expected_verdict, row
    assert c6["C6.habit"].primary and c6["C6.habit"].prediction == "abs < 0.25"  # a quarter of the planner's 1.0
    # the quest agents do not enter the world-text claims: C1 is still the F1 supervised runs alone
    assert next(c for c in claims(df) if c.row == "C1.kl").value == pytest.approx(0.01)
    c7 = next(c for c in claims(df) if c.row == "C7.lookahead_diagnostic")
    assert c7.value == pytest.approx(0.33 - 0.25) and c7.verdict == "supported" and c7.primary
    assert next(c for c in claims(df) if c.row == "C7.lookahead").value == pytest.approx(0.35 - 0.06)


def test_report_and_figures_rebuild_from_the_table_alone(tmp_path):
    csv = tmp_path / "results.csv"
    fixture_table().to_csv(csv, index=False)
    report = write_report(csv, tmp_path, {"preset": "fixture", "git_revision": "abc", "date": "today",
                                          "hardware": "none", "composition": "F9 was trained later."})
    text = report.read_text()
    assert "runs at git `abc`, today, none." in text and "\nF9 was trained later.\n" in text
    assert "| C1 | secondary | supervised KL(p* ‖ pi), nats/token | < 0.05 |" in text and "**supported**" in text
    # F3's teacher-forced runs: a check of the instrument, not a claim
    assert "| teacher-forced truth critic, steering at p=0.5, gamma=1, H=8 (nats) | 0.020 [" in text
    assert "| free-running minus teacher-forced, same arm (nats, paired by seed) | 7.980 [" in text
    for fig in ("F1_kl_vs_tokens", "F2_steering_vs_horizon", "F3_free_vs_teacher_forced", "F4_quest_probes",
                "F5_lookahead_vs_steering", "F6_reliability"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in text
    assert "Not produced" not in text
    assert "| quest-PPO (from simulator) | free_info | 0.7 [" in text
    # the optimum's bracket, and each agent's share of the way from the random agent (-1.5) to the planner (1.5)
    assert "between the planner's return, 1.5 " in text and "that optimum, 1.7 " in text
    assert "| SB3 PPO | -0.5 | 33% |" in text and "| quest-PPO (from simulator) | 0.5 | 67% |" in text
    assert "| planner (optimum) | 1.5 | 100% |" in text
    # equal env steps: quest-PPO's last point (3000 steps, 0.8) against SB3's curve at 3000 steps (0.3)
    assert "| simulator | 0 | 3000 | 0.800 | 0.300 |" in text


def test_runs_that_did_not_end_are_left_out_of_claims_and_named_in_the_report(tmp_path):
    """A sweep unit killed mid-training leaves runs whose rows say `running`: no claim may use them."""
    df = fixture_table()
    # a fourth supervised seed, stopped mid-training with a KL that would break C1 if it were counted
    stopped = df[df.run_id == "F1/supervised-s0"].copy()
    stopped["run_id"], stopped["seed"] = "F1/supervised-s3", 3
    stopped.loc[stopped.probe == "run", "metric"] = "running"
    stopped.loc[(stopped.probe == "calibration") & (stopped.metric == "kl"), "value"] = 2.0
    csv = tmp_path / "results.csv"
    pd.concat([df, stopped], ignore_index=True).to_csv(csv, index=False)
    text = write_report(csv, tmp_path).read_text()
    assert "1 run(s) in the table did not end" in text and "`F1/supervised-s3`" in text
    c1 = next(c for c in claims(load(csv)) if c.row == "C1.kl")
    assert c1.n_seeds == 3 and c1.value == pytest.approx(0.01) and c1.verdict == "supported"




def test_compare_says_which_claims_moved_outside_the_committed_interval(tmp_path):
    """scripts/compare.py on a planted pair: the new table moves the supervised KL of every seed by +0.5
    (outside C1's interval) and leaves the rest; the committed table is in the old format (no source or
    run_rows columns), which compare still reads."""
    import subprocess
    import sys
    from pathlib import Path

    old = fixture_table()
    new = old.copy()
    kl = (new.regime == "supervised") & (new.probe == "calibration") & (new.metric == "kl")
    new.loc[kl, ["value", "ci_low", "ci_high"]] += 0.5
    old.drop(columns=["source", "run_rows"]).to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "scripts/compare.py", str(tmp_path / "old.csv"), str(tmp_path / "new.csv")],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    c1_kl = next(line for line in lines if line.startswith("| C1 | supervised KL"))
    assert "| 0.51 | **no** | supported -> not supported |" in c1_kl
    n = sum(line.startswith("| C") for line in lines)
    assert f"{n - 1} of {n} claims' new values lie within the committed interval." in proc.stdout
    assert f"{len(old) - kl.sum()} equal bit for bit" in proc.stdout


def test_the_beta_one_arm_and_the_learned_critic_are_their_own_rows_not_more_seeds(tmp_path):
    """F2's truth critic at beta = 1 beside the preset's beta = 4: its seeds land on either side of the fork
    (planted: two commit to the hard branch, three to the easy one), which C4.beta1 reports as a split, and
    it does not enter C3 or C4's other rows; the learned critic is C3.learned's."""
    df = fixture_table()
    critic = df.regime == "critic"
    df.loc[critic, "regime.beta"] = 4.0
    base = df[df.run_id.str.startswith("F2/critic-truth-g1.0-H8-s")]
    extra = []
    for s, steer in enumerate((-12.0, -14.0, 5.0, 6.0, 7.0, 8.0)):
        run = base[base.seed == s % 3].assign(run_id=f"F2/critic-truth-g1.0-H8-beta1-s{s}", seed=s,
                                              **{"regime.beta": 1.0})
        run.loc[run.metric.isin(["steering_index", "instrumental_steering"]), ["value", "ci_low", "ci_high"]] = steer
        run = pd.concat([run, run[run.metric == "steering_index"].assign(metric="steering_index_theory", value=8.32)])
        extra.append(run)
    learned = base.assign(run_id=base.run_id.str.replace("truth", "learned"), **{"regime.critic": "learned"})
    learned.loc[learned.metric == "instrumental_steering", "value"] = 0.7
    table = as_results_table(pd.concat([df, *extra, learned], ignore_index=True).drop(columns=["source", "run_rows"]))
    rows = {c.row: c for c in claims(table)}
    assert rows["C3.steering"].value == pytest.approx(8.0) and rows["C3.steering"].n_seeds == 3
    assert rows["C3.learned"].value == pytest.approx(0.7) and rows["C3.learned"].verdict == "supported"
    assert rows["C4.horizon"].value == pytest.approx(8.0) and rows["C4.horizon"].n_seeds == 3
    beta1 = rows["C4.beta1"]
    assert beta1.prediction == "abs < 2.08" and beta1.n_seeds == 6 and beta1.verdict == "split"
    csv = tmp_path / "results.csv"
    table.to_csv(csv, index=False)
    text = write_report(csv, tmp_path).read_text()
    assert "| 1 | 8.32 | -12.00, -14.00, 5.00, 6.00, 7.00, 8.00 | 4 | 2 | 0 |" in text  # easy, hard, neither
    assert (tmp_path / "figures" / "F2_split_beta.png").stat().st_size > 1000


def test_a_record_file_holding_another_kind_of_json_is_one_clear_error(tmp_path):
    """provenance.json, summary.json, a probe manifest: each must hold an object; a list is named, not a
    TypeError later."""
    from instrumentality.errors import DataFileError
    from instrumentality.files import read_json

    path = tmp_path / "provenance.json"
    path.write_text("[1, 2]")
    with pytest.raises(DataFileError, match="provenance record must hold a JSON object, not a list"):
        read_json(path, "provenance record", dict)
    path.write_text('{"preset": "quick"}')
    assert read_json(path, "provenance record", dict) == {"preset": "quick"}
