"""The sweep's launchers (submitit, SLURM) and its SB3 unit, end to end; the rest of the sweep: test_sweep.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


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
