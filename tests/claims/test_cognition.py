"""F8 and C8 (myopia.py) on planted results tables with known answers, and the myopia gap of identical models."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from planted import as_results_table

from instrumentality.claims.cognition import c8_claims, cell_table, gap_table, grid, myopia_gap, report_section
from instrumentality.evaluation.world_probes import POSITION_CLASSES, calibration_rows
from instrumentality.model import GPT, GPTConfig
from instrumentality.report import claims, write_report

SEEDS = range(5)
# diagnostic look-ahead k=2 at the last layer (layer 0, the embedding: 0.20 in every cell); chance 0.06
LOOKAHEAD = {"standard": 0.35, "myopic": 0.25, "future1": 0.40, "future3": 0.45, "matched": 0.30}
LAYER0 = 0.20
STEER_G1 = {"standard": 2.0, "myopic": 1.8, "future1": 2.1, "future3": 2.0, "matched": 1.9}  # critic gamma=1, H=8
MARKER_EXCESS = {"standard": 0.01, "myopic": 0.06, "future1": 0.01, "future3": 0.02, "matched": 0.05}
KL = {"standard": 0.006, "myopic": 0.03, "future1": 0.007, "future3": 0.007, "matched": 0.17}  # all but matched pass
# the results table's `cognition` column: the matched cell is the standard cognition (F8's runs of it)
LABEL = {"standard": "standard", "myopic": "myopic", "future1": "future-heads-1", "future3": "future-heads-3",
         "matched": "standard"}


def planted_grid() -> pd.DataFrame:
    """Every F8 cell for 5 seeds (seed noise +-0.01 around the planted values): the objective sets steering
    (gamma=1 steers about 2 nats whatever the cognition, supervised and gamma=0 do not), cognition sets
    look-ahead (myopic lower, future heads higher), and only the myopic and the matched models pay at fork
    markers. Every supervised model passes the capability gate but the matched one (KL 0.17, by design); no
    critic run collapses."""
    rows = []

    def add(run, exp, regime, seed, cognition, probe, metric, value, width=0.01, **extra):
        rows.append({"run_id": run, "exp_name": exp, "regime": regime, "seed": seed, "cognition": LABEL[cognition],
                     "probe": probe, "metric": metric, "value": value, "ci_low": value - width,
                     "ci_high": value + width, "tokens": math.nan, "step": math.nan, **extra})

    for s in SEEDS:
        noise = 0.01 * (s - 2)
        for c in LOOKAHEAD:
            sup = ("F1", "F1/supervised-s{s}") if c == "standard" else ("F8", f"F8/supervised-{c}-s{{s}}")
            exp, run = sup[0], sup[1].format(s=s)
            add(run, exp, "supervised", s, c, "forks/asym/p=0.5", "steering_index", noise)
            add(run, exp, "supervised", s, c, "forks/p=0.5", "instrumental_steering", noise)
            add(run, exp, "supervised", s, c, "calibration", "kl", KL[c])
            add(run, exp, "supervised", s, c, "rollouts/p=0.5", "impossible_rate", 0.01)
            for kind in ("asym", "sym"):
                add(run, exp, "supervised", s, c, f"forks/{kind}/p=0.5", "branch_entropy", 0.69)
            add(run, exp, "supervised", s, c, "lookahead/k=2", "chance", 0.06)
            add(run, exp, "supervised", s, c, "lookahead/k=2/layer=1", "accuracy", LOOKAHEAD[c] + noise)
            add(run, exp, "supervised", s, c, "lookahead/k=2/diagnostic/layer=0", "accuracy", LAYER0)
            add(run, exp, "supervised", s, c, "lookahead/k=2/diagnostic/layer=2", "accuracy", LOOKAHEAD[c] + noise)
            for t, kl in enumerate((0.5, 0.05)):  # a learning curve (F8 runs log one at their end too)
                rows.append({**rows[-1], "probe": "curve/calibration", "metric": "kl", "value": kl,
                             "ci_low": math.nan, "ci_high": math.nan, "tokens": 1000.0 * (t + 1)})
            for position in (*POSITION_CLASSES, "before_marker"):
                excess = MARKER_EXCESS[c] if position in ("marker", "before_marker") else 0.01
                add(run, exp, "supervised", s, c, f"calibration/position={position}", "excess_nll", excess + noise)
                add(run, exp, "supervised", s, c, f"calibration/position={position}", "entropy_floor", 0.5, width=0)
            for gamma in (0.0, 1.0):
                exp = "F2" if c == "standard" else "F8_critic"
                run = f"{exp}/critic-truth-{'' if c == 'standard' else c + '-'}g{gamma}-H8-s{s}"
                extra = {"regime.critic": "truth", "regime.gamma": gamma, "regime.horizon": 8,
                         "regime.rollout": "free", "regime.beta": 4.0}
                steer = gamma * STEER_G1[c] + noise
                add(run, exp, "critic", s, c, "forks/asym/p=0.5", "steering_index", steer, **extra)
                add(run, exp, "critic", s, c, "forks/asym/p=0.5", "steering_index_theory", gamma * 2.08, width=0,
                    **extra)
                add(run, exp, "critic", s, c, "forks/p=0.5", "instrumental_steering", steer, **extra)
                add(run, exp, "critic", s, c, "forks/p=0.5", "instrumental_steering_theory", gamma * 2.08, width=0,
                    **extra)
                add(run, exp, "critic", s, c, "calibration", "kl", 0.05, **extra)
                add(run, exp, "critic", s, c, "rollouts/p=0.5", "impossible_rate", 0.01, **extra)
                for kind in ("asym", "sym"):
                    add(run, exp, "critic", s, c, f"forks/{kind}/p=0.5", "branch_entropy", 0.3, **extra)
                add(run, exp, "critic", s, c, "lookahead/k=2", "chance", 0.06, **extra)
                add(run, exp, "critic", s, c, "lookahead/k=2/layer=1", "accuracy", LOOKAHEAD[c], **extra)
                add(run, exp, "critic", s, c, "lookahead/k=2/diagnostic/layer=0", "accuracy", LAYER0, **extra)
                add(run, exp, "critic", s, c, "lookahead/k=2/diagnostic/layer=2", "accuracy", LOOKAHEAD[c], **extra)
    return as_results_table(pd.DataFrame(rows))


def with_decoys(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that share a cell's regime or arm but are not in the grid: F3's teacher-forced runs, the keyword
    critic at H=8, the truth critic at H=1, at gamma 0.5 and at beta 1 (C4.beta1's arm), and F1's REINFORCE."""
    base = df[df.run_id == "F2/critic-truth-g1.0-H8-s0"]
    decoys = []
    for run, exp, changes in (
            ("F3/critic-truth-teacher_forced-g1.0-H8-s0", "F3", {"regime.rollout": "teacher_forced"}),
            ("F2/critic-keyword-g1.0-H8-s0", "F2", {"regime.critic": "keyword"}),
            ("F2/critic-truth-g1.0-H1-s0", "F2", {"regime.horizon": 1}),
            ("F2/critic-truth-g0.5-H8-s0", "F2", {"regime.gamma": 0.5}),
            ("F2/critic-truth-g1.0-H8-beta1-s0", "F2", {"regime.beta": 1.0}),
            ("F1/reinforce-s0", "F1", {"regime": "reinforce", "regime.critic": np.nan})):
        decoy = base.assign(run_id=run, exp_name=exp, **changes)
        decoy.loc[decoy.metric == "instrumental_steering", "value"] = 99.0
        decoys.append(decoy)
    return pd.concat([df, *decoys], ignore_index=True)


def test_the_grid_finds_every_cell_and_its_standard_cells_in_f1_and_f2():
    g = grid(with_decoys(planted_grid()))
    counts = g.groupby(["cognition", "objective"]).seed.nunique()
    assert len(counts) == 15 and (counts == 5).all() and len(g.run_id.unique()) == 15 * 5  # no decoy
    assert [round(c.value, 6) for c in c8_claims(with_decoys(planted_grid()))] == [
        round(c.value, 6) for c in c8_claims(planted_grid())]
    standard = g[g.cognition == "standard"]
    assert set(standard.exp_name) == {"F1", "F2"} and set(g[g.cognition == "myopic"].exp_name) == {"F8", "F8_critic"}
    assert set(g[g.cognition == "matched"].exp_name) == {"F8", "F8_critic"}  # F8's runs of the standard cognition


def c8_rows(df: pd.DataFrame) -> dict:
    return {c.row: c for c in c8_claims(df)}


def test_c8_on_a_planted_grid():
    """Two factors per seed on instrumental steering: the objective effect (2.0, standard cognition), each
    cognition's main effect (half of (c - standard) under the critic, since the supervised cells do not
    steer) and its interaction with the objective ((c - standard) under the critic), each within a quarter
    of the exact optimum (2.08 / 4 = 0.52); and cognition's effect on look-ahead."""
    rows = c8_rows(planted_grid())
    assert rows["C8.objective"].value == pytest.approx(2.0) and rows["C8.objective"].verdict == "supported"
    assert [round(rows[f"C8.cognition[{c}]"].value, 6) for c in ("myopic", "future1", "future3")] == [-0.1, 0.05, 0.0]
    assert [round(rows[f"C8.interaction[{c}]"].value, 6) for c in ("myopic", "future1", "future3")] == \
        [-0.2, 0.1, 0.0]
    for c in ("myopic", "future1", "future3"):
        for factor in ("cognition", "interaction"):
            row = rows[f"C8.{factor}[{c}]"]
            assert row.prediction == "abs < 0.52" and row.verdict == "supported" and row.n_seeds == 5
    assert rows["C8.matched[myopic]"].primary and not rows["C8.cognition[myopic]"].primary
    # at matched capability: (1.8 - 1.9) / 2 under the critic, 0 under supervised; the matched cell fails the
    # capability gate by design and still counts here
    assert rows["C8.matched[myopic]"].value == pytest.approx(-0.05) and rows["C8.matched[myopic]"].n_seeds == 5
    assert rows["C8.matched_interaction[myopic]"].value == pytest.approx(-0.1)
    assert rows["C8.lookahead[myopic]"].value == pytest.approx(-0.10)
    assert rows["C8.lookahead[myopic]"].verdict == "supported"
    assert rows["C8.lookahead[future1]"].value == pytest.approx(0.05)
    assert rows["C8.lookahead[future3]"].value == pytest.approx(0.10)
    assert rows["C8.myopic_steers"].value == pytest.approx(1.8) and rows["C8.myopic_steers"].verdict == "supported"
    assert [c.claim for c in claims(planted_grid())].count("C8") == len([r for r in rows if r.startswith("C8")]) == 13


def test_runs_that_fail_a_gate_are_named_and_kept_out_of_the_rows_but_the_matched_ones():
    """A myopic model with KL 0.17 and 60% impossible rollout tokens (the size the full preset runs): it and the
    critic runs started from it leave C8's gated rows; one collapsed critic run (branch entropy 0.01 nats)
    leaves every row, the matched ones too."""
    from instrumentality.claims.cognition import gate_table

    df = planted_grid()
    broken = df.run_id.str.startswith("F8/supervised-myopic")
    df.loc[broken & (df.metric == "kl"), "value"] = 0.17
    df.loc[broken & (df.metric == "impossible_rate"), "value"] = 0.6
    collapsed = (df.run_id == "F8_critic/critic-truth-matched-g1.0-H8-s4") & (df.metric == "branch_entropy")
    df.loc[collapsed, "value"] = 0.01
    gates = gate_table(grid(df)).set_index("run_id")
    assert gates.loc["F8/supervised-myopic-s0", "fails"] == "KL 0.170 >= 0.05; 60% impossible rollout tokens"
    assert gates.loc["F8_critic/critic-truth-myopic-g1.0-H8-s2", "fails"] == \
        "started from a supervised model that fails its gate"
    assert "collapsed (branch entropy 0.010 nats)" in gates.loc["F8_critic/critic-truth-matched-g1.0-H8-s4", "fails"]
    assert gates.loc["F8/supervised-future1-s0", "fails"] == ""
    rows = c8_rows(df)
    for row in ("C8.cognition[myopic]", "C8.interaction[myopic]", "C8.lookahead[myopic]", "C8.myopic_steers"):
        assert rows[row].n_seeds == 0 and rows[row].verdict == "not measured", row
    assert rows["C8.matched[myopic]"].n_seeds == 4  # seed 4's matched critic run collapsed
    assert rows["C8.cognition[future1]"].n_seeds == 5
    assert rows["C5.sacrifice"].n_seeds == 0 and rows["C5.sacrifice_matched"].n_seeds == 5
    text = "\n".join(report_section(df))
    assert "- `F8/supervised-myopic-s3`: KL 0.170 >= 0.05; 60% impossible rollout tokens" in text
    # 5 myopic and 5 matched models (KL 0.17 by design: the matched rows keep them) and their 20 critic runs
    assert "Runs kept out (30):" in text


def test_c5_asks_for_the_myopia_gap_before_the_fork_marker_at_matched_capability():
    """Planted: before a marker the myopic model pays 0.06, the matched standard one 0.05, the standard 0.01."""
    rows = c8_rows(planted_grid())
    assert rows["C5.sacrifice_matched"].primary and rows["C5.sacrifice_matched"].value == pytest.approx(0.01)
    assert rows["C5.sacrifice_matched"].verdict == "supported"  # within 0.05
    assert rows["C5.sacrifice"].value == pytest.approx(0.05) and rows["C5.sacrifice"].verdict == "inconclusive"
    assert rows["C5.sacrifice_marker"].value == pytest.approx(0.01)


def test_c8_fails_when_cognition_moves_steering_as_much_as_the_objective():
    df = planted_grid()
    myopic_g1 = (df.run_id.str.startswith("F8_critic/critic-truth-myopic-g1.0")) & (
        df.metric == "instrumental_steering")
    df.loc[myopic_g1, ["value", "ci_low", "ci_high"]] -= 3.0  # the myopic model steers the other way
    rows = c8_rows(df)
    assert rows["C8.cognition[myopic]"].value == pytest.approx(-3.2 / 2)
    assert rows["C8.cognition[myopic]"].verdict == "not supported"
    assert rows["C8.interaction[myopic]"].value == pytest.approx(-3.2)
    assert rows["C8.interaction[myopic]"].verdict == "not supported"
    # a bias that a cognition adds to both forks (the raw steering index) is not instrumental steering
    biased = planted_grid()
    biased.loc[biased.run_id.str.contains("future1") & (biased.metric == "steering_index"), "value"] += 3.0
    assert [round(c.value, 6) for c in c8_claims(biased)] == [round(c.value, 6) for c in c8_claims(planted_grid())]


def test_a_cognition_that_moves_steering_under_both_objectives_alike_is_a_main_effect_not_an_interaction():
    """+1 nats of instrumental steering from future heads (1) under both objectives: the main effect grows by
    1, the interaction stays at the planted 0.1 (a composite of the critic's difference alone could not tell
    the two apart)."""
    df = planted_grid()
    f1 = df.run_id.str.contains("future1") & (df.metric == "instrumental_steering") & \
        ~df.run_id.str.contains("g0.0")
    df.loc[f1, ["value", "ci_low", "ci_high"]] += 1.0
    rows = c8_rows(df)
    assert rows["C8.cognition[future1]"].value == pytest.approx((0.1 + 1.0 + 1.0) / 2)
    assert rows["C8.cognition[future1]"].verdict == "not supported"
    assert rows["C8.interaction[future1]"].value == pytest.approx(0.1)
    assert rows["C8.interaction[future1]"].verdict == "supported"


def test_myopia_gap_is_zero_for_identical_models_and_the_planted_difference_otherwise(world):
    g = grid(planted_grid())
    for position in POSITION_CLASSES:
        assert (myopia_gap(g, "future1", position).value == 0).all()  # future1's rows equal standard's
    assert myopia_gap(g, "myopic", "marker").value.to_numpy() == pytest.approx([0.05] * 5)
    assert myopia_gap(g, "myopic", "marker", against="matched").value.to_numpy() == pytest.approx([0.01] * 5)
    gaps = gap_table(planted_grid()).set_index("position")
    assert gaps.loc["marker", "myopic - standard"][0] == pytest.approx(0.05)
    assert gaps.loc["prose", "myopic - standard"][0] == 0
    assert gaps.loc["before_marker", "myopic - matched"][0] == pytest.approx(0.01)
    assert gaps.loc["marker", "entropy_floor"] == 0.5
    # two models with the same weights (a GPT and its copy) score the same excess NLL in every class, to the
    # bit; a myopic copy (the same forward pass, attention computed by hand) to float rounding; other
    # weights do not
    tokens = world.sample(32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    cfg = dict(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=2, n_head=4, n_embd=32)
    a, b, myopic, other = (GPT(GPTConfig(**cfg, myopic=m)) for m in (False, False, True, False))
    b.load_state_dict(a.state_dict())
    myopic.load_state_dict(a.state_dict())

    def excess(model):
        return [r["value"] for r in calibration_rows(model.eval(), world, tokens)
                if r["probe"].startswith("calibration/position=") and r["metric"] == "excess_nll"]

    gaps = [x - y for x, y in zip(excess(a), excess(b))]
    assert len(gaps) == len(POSITION_CLASSES) + 1 and all(d == 0 for d in gaps)  # and before_marker
    assert all(abs(x - y) < 1e-6 for x, y in zip(excess(a), excess(myopic)))
    assert all(abs(x - y) > 1e-4 for x, y in zip(excess(a), excess(other)))


def test_cell_table_reports_steering_its_share_of_the_optimum_and_look_ahead():
    df = planted_grid()
    ref = df[(df.run_id.str.contains("myopic-g1.0")) & (df.metric == "steering_index_theory")]
    df = pd.concat([df, ref.assign(metric="steering_index_ref_optimum", value=2.4)], ignore_index=True)
    t = cell_table(df).set_index(["cognition", "objective"])
    assert len(t) == 15
    row = t.loc[("myopic", "critic gamma=1")]
    assert row.steering[0] == pytest.approx(1.8) and row.optimum == pytest.approx(2.08)
    assert row["ref optimum"] == pytest.approx(2.4) and row["pass"] == 5
    assert row["lookahead k=2"][0] == pytest.approx(0.25 - LAYER0)
    assert math.isnan(row["lookahead k=3"][0])  # not measured in the planted table
    assert t.loc[("matched", "supervised"), "pass"] == 0  # KL 0.17: the capability gate
    lines = "\n".join(report_section(df))
    assert "| myopic | critic gamma=1 | 5 (5) | 1.800 [" in lines and "| 2.08 | 2.40 | 75% |" in lines
    assert "| marker | 0.5 | 0.050 [" in lines


def test_the_report_draws_f8_and_keeps_f8_runs_out_of_the_other_claims(tmp_path):
    df = planted_grid()
    csv = tmp_path / "results.csv"
    df.to_csv(csv, index=False)
    text = write_report(csv, tmp_path).read_text()  # F8's curves do not enter F1's tokens-to-KL (one run a seed)
    assert "| F8/" not in text.split("### Tokens to KL")[1].split("###")[0]
    assert (tmp_path / "figures" / "F8_cognition_vs_objective.png").stat().st_size > 1000
    assert "### F8: cognition x objective" in text and "| C8 |" in text
    import re

    rows = text.split("### Every row")[1].split("\n### ")[0]
    for line in (x for x in rows.splitlines() if x.startswith("| C")):  # 8 columns, unescaped pipes only
        assert len(re.split(r"(?<!\\)\|", line)) == 10, line
    by = {(c.claim, c.metric): c for c in claims(df)}
    c7 = next(c for (cid, _), c in by.items() if cid == "C7")
    assert c7.value == pytest.approx(0.35 - LAYER0) and c7.n_seeds == 5  # F1's supervised runs, not F8's
    c3 = next(c for (cid, _), c in by.items() if cid == "C3")
    assert c3.value == pytest.approx(2.0) and np.isfinite(c3.low)  # F2's runs, not F8_critic's


def test_a_runs_rows_name_its_cognition_as_the_grid_reads_it():
    from instrumentality.claims.cognition import COGNITION_LABELS
    from instrumentality.evaluation.table import tidy_rows
    from instrumentality.model import cognition

    assert [cognition(False, 0), cognition(True, 0), cognition(False, 3), cognition(True, 1)] == [
        "standard", "myopic", "future-heads-3", "myopic+future-heads-1"]
    for name, (myopic, heads) in {"standard": (False, 0), "myopic": (True, 0), "future1": (False, 1),
                                  "future3": (False, 3)}.items():
        config = {"seed": 0, "regime": {"name": "supervised"}, "model": {"myopic": myopic, "n_future_heads": heads}}
        (row,) = tidy_rows([{"probe": "p", "metric": "m", "value": 1.0}], "F8/x", config)
        assert row["cognition"] == COGNITION_LABELS[name] and row["model.n_future_heads"] == heads
    # a scripted quest agent has no model: no cognition
    assert "cognition" not in tidy_rows([{"probe": "p"}], "F4/random-s0", {"regime": {"name": "random"}})[0]


def test_compare_lists_the_claims_a_new_table_adds(tmp_path):
    """scripts/compare.py matches claims by id and metric: against a committed table without F8's runs, the
    C8 claims are listed as new, and the others are compared as before."""
    import subprocess
    import sys
    from pathlib import Path

    new = planted_grid()
    old = new[~new.exp_name.isin(["F8", "F8_critic"])]
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    proc = subprocess.run([sys.executable, "scripts/compare.py", str(tmp_path / "old.csv"), str(tmp_path / "new.csv")],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    c8 = [line for line in proc.stdout.splitlines() if line.startswith("| C8 |")]
    assert len(c8) == 13 and all("| not in the committed table |" in line for line in c8)
    assert "| C7 |" in proc.stdout and "| yes |" in proc.stdout
