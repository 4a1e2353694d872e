"""The sweep end to end: two experiments through the joblib launcher, one job made to fail."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def sb3_run(tmp_path, overrides, preset="debug"):
    """The SB3 unit's command line as train_sb3.py reads it: (arguments, composed config)."""
    cmd = load_script("sweep").unit_command("F4_sb3", 0, preset, "basic", 1, tmp_path, overrides)
    assert cmd[1] == "scripts/train_sb3.py"
    return load_script("train_sb3").parse(cmd[2:])


def test_a_quest_override_reaches_the_quest_agents_and_sb3(tmp_path):
    sweep, sb3 = load_script("sweep"), load_script("train_sb3")
    for overrides in (["F4:quest.time_limit=20"], ["quest.time_limit=20"], ["F4_sb3:quest.time_limit=20"]):
        args, cfg = sb3_run(tmp_path, overrides)
        assert sb3.quest_of(cfg)["time_limit"] == 20 and sb3.quest_of(cfg)["size"] == 5
    f4 = sweep.unit_command("F4", 0, "debug", "basic", 1, tmp_path, ["F4:quest.time_limit=20"])
    assert f4[-1] == "quest.time_limit=20"
    args, cfg = sb3_run(tmp_path, ["F4_simulator:quest.time_limit=20", "hydra.launcher.partition=gpu"])
    assert sb3.quest_of(cfg)["time_limit"] == 16  # another experiment's override: not F4's
    assert sb3.out_dir(args, cfg) == tmp_path / "debug" / "F4" / "sb3_ppo-s0" and args.baselines


def test_sb3_units_train_at_least_as_long_as_a_quest_agent_can_and_follow_the_overrides(tmp_path):
    sweep, sb3 = load_script("sweep"), load_script("train_sb3")
    overrides = ["logger=none", "F2:arm=truth-g1-H1", "F4_sb3:seed=5", "F4:trainer.max_steps=3"]
    assert sweep.unit_overrides(overrides, "F4_sb3") == ["logger=none", "seed=5"]
    assert sweep.unit_overrides(overrides, "F2") == ["logger=none", "arm=truth-g1-H1"]
    assert sweep.unit_overrides(overrides, "F4", "F4_sb3") == ["logger=none", "seed=5", "trainer.max_steps=3"]
    steps = lambda overrides: sb3.env_steps(sb3_run(tmp_path, overrides)[1])  # noqa: E731
    # debug preset: 4 quest-PPO steps, 4 epochs x 2 minibatches per rollout -> 1 rollout of 128 episodes of
    # at most 16 steps (quest small), above its budget.sb3_steps of 512
    assert steps([]) == 1 * 128 * 16
    assert steps(["F4_sb3:budget.sb3_steps.debug=5000"]) == 5000
    assert steps(["F4:trainer.max_steps=20", "F4:regime.n_envs=32"]) == 3 * 32 * 16  # ceil(20 / 8) rollouts
    assert steps(["F2:trainer.max_steps=20"]) == 1 * 128 * 16  # another experiment's override: not F4's
    assert sb3.env_steps(sb3_run(tmp_path, [], preset="full")[1]) == 32 * 128 * 16  # 256 steps: 32 rollouts
    args, cfg = sb3_run(tmp_path, ["F4_sb3:seed=5"])
    assert cfg.seed == 5 and sb3.out_dir(args, cfg).name == "sb3_ppo-s5"


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


def test_a_sweep_through_submitit_prints_each_run_as_it_ends(tmp_path):
    """The `local` launcher (submitit on this machine, as `slurm` submits on a cluster): its jobs print to
    .submitit/ files, so the sweep reads each run's end from its summary.json."""
    cmd = [sys.executable, "scripts/sweep.py", "--preset", "debug", "--launcher", "local", "--seeds", "1",
           "--experiments", "F1", "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
           "F1:regime=supervised,reinforce", "trainer.max_steps=2", "logger=none"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for run in ("supervised-s0", "reinforce-s0"):
        assert re.search(rf"\[F1 s0 \|[^]]*\] \[{run}\] finished after 2 steps", out), out[-3000:]
        assert (tmp_path / "runs" / "debug" / "F1" / run / "checkpoint.pt").exists()
    assert list((tmp_path / "runs" / "debug" / "F1" / ".submitit").rglob("*_log.out"))  # submitit ran the jobs


def test_the_slurm_launcher_composes_and_stops_with_one_line_off_a_cluster(tmp_path):
    sweep = load_script("sweep")
    cfg = sweep.compose("full", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path)}  # no sbatch here
    proc = subprocess.run([sys.executable, "scripts/sweep.py", "--launcher", "slurm", "--runs-root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "sbatch" in proc.stderr and "--launcher local" in proc.stderr
    proc = subprocess.run([sys.executable, "scripts/sweep.py", "--launcher", "nope"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "no such Hydra launcher" in proc.stderr and "slurm" in proc.stderr


def test_the_sb3_unit_scores_the_baselines_so_the_evaluation_only_collects_them(tmp_path, monkeypatch):
    """--baselines writes the random, explorer and planner folders and scores them at once (the sweep's
    evaluation runs alone after every unit); the planner's rows carry the exact optima: `return_bound` the
    mean monster-free optimum of each variant, and on `interruptible` the optimum that cannot disable."""
    import numpy as np
    import yaml

    from instrumentality.envs.agents import PROBE_SEED
    from instrumentality.envs.cluequest import QuestConfig
    from instrumentality.envs.planner import solve
    from instrumentality.evaluation import run_rows as evaluate

    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = tmp_path / "debug" / "F4" / "sb3_ppo-s0"
    proc = subprocess.run([sys.executable, "scripts/train_sb3.py", "--baselines", "--steps", "64", "--out", str(out),
                           "preset=debug", "quest.time_limit=10", "+quest.interrupt_at=5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(f"[{k}] scored on the quest probes" in proc.stdout for k in ("random", "explorer", "planner"))

    def recomputed(*args, **kwargs):
        raise AssertionError("the evaluation scored an agent again")

    monkeypatch.setattr(evaluate, "agent_run_rows", recomputed)
    planner = evaluate.evaluate_run(out.parent / "planner")
    for kind in ("random", "explorer"):
        assert (evaluate.evaluate_run(out.parent / kind).probe == "quest/interruptible").any()
    bound = planner[planner.metric == "return_bound"].set_index("probe").value
    assert len(bound) == 5 and bound["quest/unscored"] == pytest.approx(0.0, abs=1e-12)
    cfg = QuestConfig(**{**yaml.safe_load((ROOT / "configs/quest/small.yaml").read_text()),
                         "time_limit": 10, "interrupt_at": 5})
    seeds = np.arange(PROBE_SEED, PROBE_SEED + 100)  # the debug preset's eval.quest_episodes
    assert bound["quest/standard"] == pytest.approx(solve(cfg, seeds, "standard").value.mean())
    without = planner[planner.metric == "return_bound_no_disable"].set_index("probe").value
    assert list(without.index) == ["quest/interruptible"]
    assert without["quest/interruptible"] == pytest.approx(
        solve(cfg, seeds, "interruptible", allow_disable=False).value.mean())
    assert without["quest/interruptible"] < bound["quest/interruptible"]


def test_logger_none_reaches_the_report_run_and_its_files_follow_runs_root(tmp_path):
    sweep = load_script("sweep")
    assert sweep.tracking_mode(["logger=none"]) == "disabled"
    assert sweep.tracking_mode(["logger.mode=offline", "seed=1"]) == "offline"
    assert sweep.tracking_mode(["F2:logger=none"]) == "auto"  # the other experiments' runs still log
    sweep.log_report_to_wandb(tmp_path / "results", {"preset": "debug"}, "disabled", tmp_path / "runs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


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
