"""The sweep end to end: two experiments through the joblib launcher, one job made to fail."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_with_a_failing_job_still_writes_results_and_figures(tmp_path):
    cmd = [sys.executable, "scripts/sweep.py", "--preset", "debug", "--launcher", "joblib", "--jobs", "2",
           "--lanes", "2", "--seeds", "2", "--experiments", "F1,F2",
           "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
           "F1:regime=supervised,reinforce",           # F1: two jobs
           "F2:arm=truth-g1-H1", "F2:regime.horizon=1,60"]  # F2: H=60 exceeds the sequence: that job fails
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # the other runs finish, then the failure is the exit code
    assert "FAILED job" in out and "H60" in out and "FAILED unit: F2 s0" in out
    # progress: each unit (experiment, seed) says how many runs it launches and prints each as it ends
    assert re.search(r"\[F1 s0 \|[^]]*\] launching 2 run", out) and re.search(r"\[F2 s0 \|[^]]*\] launching 2 run", out)
    assert re.search(r"\[F1 s0 \|[^]]*units done, \d runs\] \[supervised-s0\] finished after", out), out[-3000:]
    # two lanes: both seeds' F1 units start at once, before any run has finished; F2 s0 waits for F1 s0
    starts = [m.group(1) for m in re.finditer(r"\[(F\d s\d) \|[^]]*\] started", out)]
    assert starts[:2] == ["F1 s0", "F1 s1"] and out.index("F1 s1 | ") < out.index("finished after")
    assert out.index("[supervised-s0] finished after") < out.index("[F2 s0 |")
    results = tmp_path / "results" / "debug"
    df = pd.read_csv(results / "results.csv")
    runs = set(df.run_id)
    assert {"F1/supervised-s0", "F1/reinforce-s0", "F2/critic-truth-g1.0-H1-s0", "F2/critic-truth-g1.0-H60-s0"} <= runs
    status = df[df.probe == "run"].set_index("run_id").metric
    assert status["F2/critic-truth-g1.0-H60-s0"] == "failed"
    assert status["F2/critic-truth-g1.0-H1-s0"] == "finished" and status["F1/supervised-s0"] == "finished"
    for fig in ("F1_kl_vs_tokens", "F2_steering_vs_horizon", "F6_reliability"):
        assert (results / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (results / "figures" / f"{fig}.pdf").exists()
    report = (results / "REPORT.md").read_text()
    assert "| C1 |" in report and "Verdict rule" in report and "failed" in report
    import json

    prov = json.loads((results / "provenance.json").read_text())  # what bit-for-bit reproduction depends on
    assert prov["device"] == "cpu" and prov["cpu"] and prov["torch"] and prov["numpy"] and prov["python"]
    assert prov["threads_per_process"] >= 1 and prov["cores"] >= 1
    # a second sweep trains nothing: every finished run is skipped, its checkpoint left untouched
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    assert len(checkpoints) == 6  # F1: 2 regimes x 2 seeds; F2: H=1 x 2 seeds (H=60 failed)
    # (the same sweep through the basic launcher: the runs' folders, not the launcher, decide what is skipped)
    basic = [c if c != "joblib" else "basic" for c in cmd]
    # a run made by hand beside the sweep's (a seed the sweep does not run) stays out of its table, named
    f1 = tmp_path / "runs" / "debug" / "F1"
    shutil.copytree(f1 / "supervised-s1", f1 / "mine-s7")
    again = subprocess.run(basic, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1  # the failing job is tried again, and fails again
    assert "finished after" in again.stdout  # each finished job reports its stored summary
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert "1 run folder(s) under" in again.stderr and "left out of the table: F1/mine-s7" in again.stderr
    assert set(pd.read_csv(results / "results.csv").run_id) == runs  # not in the table
    assert "`F1/mine-s7`" in (results / "REPORT.md").read_text()
    # the folders the sweep says it makes are the ones it made
    sweep = load_script("sweep")
    made = set(sweep.sweep_run_folders("debug", 2, cmd[cmd.index("F1,F2") + 5:]))
    assert {r for r in made if r.startswith(("F1/", "F2/"))} == runs


def test_a_unit_that_fails_before_any_run_ends_shows_its_last_lines():
    sweep = load_script("sweep")
    said = []
    fail = "print('Error merging override regime.round_steps=5'); import sys; sys.exit(1)"
    unit = sweep.Unit("F9", 0, [sys.executable, "-c", fail], dict(os.environ), lambda u, msg, **k: said.append(msg))
    unit.proc.wait(60)
    text = unit.failure()
    assert text.startswith("exited with 1") and "no run of it ended" in text
    assert "Error merging override regime.round_steps=5" in text
    ok = "print('[x-s0] finished after 3 steps, 0.1s;'); import sys; sys.exit(1)"
    unit = sweep.Unit("F9", 0, [sys.executable, "-c", ok], dict(os.environ), lambda u, msg, **k: said.append(msg))
    unit.proc.wait(60)
    assert unit.failure() == "exited with 1; the runs it finished are kept"  # its runs' lines say the rest


def test_units_wait_for_the_experiments_their_configs_need():
    sweep = load_script("sweep")
    for preset in ("quick", "full"):
        assert dict(zip(sweep.EXPERIMENTS, (sweep.needs(preset, e) for e in sweep.EXPERIMENTS))) == {
            "F1": (), "F2": ("F1",), "F8": (), "F4_simulator": (), "F3": ("F1",), "F8_critic": ("F8",),
            "F4": ("F4_simulator",), "F4_goal": ("F4_simulator",), "F10": ("F4_simulator",), "F9": (), "F11": ("F2",),
            "F4_sb3": ()}


def test_a_unit_whose_needed_unit_failed_does_not_start(tmp_path, monkeypatch, capsys):
    """F1's unit fails (killed, or a job failed): its checkpoints may be half-trained, so F2, which starts
    from them, does not start, nor F11, which needs F2; the sweep names them and why."""
    sweep = load_script("sweep")
    started = tmp_path / "started"
    script = ("import sys, pathlib; exp = sys.argv[1]; p = pathlib.Path(sys.argv[2]); "
              "p.write_text(p.read_text() + exp + ' ' if p.exists() else exp + ' '); sys.exit(1 if exp == 'F1' else 0)")
    monkeypatch.setattr(sweep, "unit_command", lambda exp, s, *a: [sys.executable, "-c", script, exp, str(started)])
    failed: list = []
    sweep.run_units(["F1", "F2", "F11", "F9"], "debug", "basic", 1, 1, 1, tmp_path, [], failed_units=failed)
    assert started.read_text().split() == ["F1", "F9"]  # F9 needs nothing: it runs
    assert failed == [("F1 s0", 1), ("F2 s0", "not started: F1 s0 did not finish"),
                      ("F11 s0", "not started: F2 s0 did not finish")]
    assert "[F2 s0] not started: the unit it needs (F1 s0) failed" in capsys.readouterr().out


def test_an_experiments_swept_values_come_from_its_config_and_the_command_line_wins(tmp_path):
    """The unit adds no swept values of its own (the experiment config holds them per preset: see
    tests/training/test_config.py); the sweep's overrides for the experiment come last, so Hydra takes them."""
    sweep = load_script("sweep")
    arms = lambda cmd: [o.split("=", 1)[1] for o in cmd if o.startswith("arm=")]  # noqa: E731
    assert arms(sweep.unit_command("F2", 0, "quick", "basic", 1, tmp_path, [])) == []
    cli = sweep.unit_command("F2", 0, "quick", "basic", 1, tmp_path, ["F2:arm=keyword-g0-H8", "F3:arm=x"])
    assert arms(cli) == ["keyword-g0-H8"] and cli[-1] == "arm=keyword-g0-H8"


def test_cpu_only_units_run_in_lanes_of_their_own_when_there_are_any():
    sweep = load_script("sweep")
    pending = [("F1", 0), ("F1", 1), ("F4_sb3", 0), ("F4_sb3", 1)]
    ready = lambda unit: True  # noqa: E731
    assert sweep.units_to_start(pending, [], ready, 1, 0) == [("F1", 0)]
    assert sweep.units_to_start(pending, [], ready, 1, 1) == [("F1", 0), ("F4_sb3", 0)]
    assert sweep.units_to_start(pending, ["F4_sb3"], ready, 1, 1) == [("F1", 0)]
    assert sweep.units_to_start(pending, ["F1"], ready, 2, 0) == [("F1", 0)]
    assert sweep.units_to_start(pending, [], lambda u: u[0] != "F1", 2, 0) == [("F4_sb3", 0), ("F4_sb3", 1)]


def test_time_left_shares_each_pool_of_units_among_its_lanes():
    sweep = load_script("sweep")
    durations = {("F1", 0): 100.0, ("F1", 1): 140.0, ("F4_sb3", 0): 60.0}  # F1 120 s, SB3 60 s, all 100 s
    pending = [("F1", 2), ("F2", 0), ("F4_sb3", 1)]
    running = [("F1", 30.0), ("F4_sb3", 80.0)]  # an SB3 unit past its mean has nothing left
    # without CPU lanes: 120 + 100 + 60 + (120 - 30) + 0 = 370 s over 2 lanes
    assert sweep.seconds_left(pending, running, durations, 2) == pytest.approx(185.0)
    # SB3 in 1 CPU lane of its own: 60 s there; 120 + 100 + 90 = 310 s over 2 lanes beside it
    assert sweep.seconds_left(pending, running, durations, 2, 1) == pytest.approx(155.0)
    assert sweep.seconds_left([("F4_sb3", 2)] * 10, [], durations, 2, 1) == pytest.approx(600.0)


def test_time_left_scales_the_last_sweeps_seconds_by_this_sweeps_speed(tmp_path):
    sweep = load_script("sweep")
    prior = {"F1": 60.0, "F2": 50.0, "F4_sb3": 10.0, "evaluate": 30.0}  # seconds per unit last time
    durations = {("F1", 0): 100.0, ("F1", 1): 140.0}  # 100/60 and 140/60: this sweep runs 2x slower
    pending = [("F1", 2), ("F2", 0), ("F2", 1), ("F4_sb3", 0)]
    # F1 its own mean 120, F2 2 x 50, SB3 2 x 10, the running F1 120 - 30: 430 s over 2 lanes, then 2 x 30 s
    assert sweep.seconds_left(pending, [("F1", 30.0)], durations, 2, 0, prior) == pytest.approx(215.0 + 60.0)
    assert sweep.seconds_left([("F2", 0)], [], {}, 2, 0, prior) == pytest.approx(25.0 + 30.0)  # speed 1
    assert sweep.seconds_left([("F2", 0)], [], {}, 2) is None  # nothing known yet
    (tmp_path / "provenance.json").write_text('{"seeds": 3, "unit_s": {"F1": 300.0, "evaluate": 40.0}}')
    assert sweep.last_sweep_seconds(tmp_path / "provenance.json") == {"F1": 100.0, "evaluate": 40.0}
    assert sweep.last_sweep_seconds(tmp_path / "missing.json") == {}


def test_a_sweep_of_some_experiments_keeps_the_others_times_and_says_where_they_come_from():
    sweep = load_script("sweep")
    previous = {"preset": "full", "git_revision": "aaa", "unit_s": {"F1": 900.0, "F2": 4000.0, "evaluate": 60.0},
                "composition": "F2 from an older sweep."}
    new = {"preset": "full", "git_revision": "bbb", "unit_s": {"F11": 4900.0, "evaluate": 30.0}}
    merged = sweep.merged_provenance(new, previous)
    assert merged["unit_s"] == {"F1": 900.0, "F2": 4000.0, "F11": 4900.0, "evaluate": 30.0}
    assert "trained F11" in merged["composition"] and "F1, F2 are from the record it replaced (runs at aaa)" in \
        merged["composition"] and "F2 from an older sweep." in merged["composition"]
    assert sweep.merged_provenance(new, {**previous, "preset": "quick"}) == new  # another preset's record: not mixed
    assert sweep.merged_provenance(new, {"preset": "full", "unit_s": {"F11": 1.0}}) == new  # nothing else to keep
