"""The logging contract: an offline W&B run written by the trainer, read back from its .wandb log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instrumentality.tracking import resolve_mode


def test_offline_run_holds_config_probe_metrics_group_and_tags(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "instrumentality.train", "preset=debug", "logger=wandb",
                           "logger.mode=offline", "exp_name=contract", f"hydra.run.dir={tmp_path}/run",
                           f"eval.probe_cache={tmp_path}/probes"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_log = (tmp_path / "run" / "train.log").read_text().splitlines()  # the run's lines, timed, in its folder
    assert [line.split("] ", 1)[1].split(":")[0] for line in run_log[:2]] == ["step 5/10", "step 10/10"]
    assert "[supervised-s0] finished after 10 steps" in run_log[-1] and "[INFO]" in run_log[-1]
    assert "[supervised-s0] finished after 10 steps" in proc.stderr  # and on the console
    logs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    wandb_cli = Path(sys.executable).with_name("wandb")
    summary = json.loads(subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(logs[0])],
                                        capture_output=True, text=True, check=True, timeout=120).stdout)
    assert summary["config"]["regime"]["name"] == "supervised" and summary["config"]["preset_name"] == "debug"
    assert summary["config"]["trainer"]["max_steps"] == 10  # the config, logged in full
    metrics = {k: v["last"] if isinstance(v, dict) and "last" in v else v for k, v in summary["summary"].items()}
    assert set(summary["summary"]["probe/calibration/kl"]) == {"last", "min", "max"}  # the runs table's columns
    for key in ("probe/calibration/kl", "probe/forks/asym/p=0.5/steering_index", "train/loss", "perf/tokens_per_s"):
        assert key in metrics, key
    assert metrics["probe/calibration/kl"] > 0
    assert summary["name"] == "contract/supervised-s0"
    assert "preset:debug" in summary["tags"] and any(t.startswith("rev:") for t in summary["tags"])
    records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(logs[0])],
                             capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    run_record = next(json.loads(r) for r in records if '"type":"run"' in r)["run"]
    # found by preset (project), experiment arm (group: the run name without its seed) and regime (job type)
    assert run_record["project"] == "instrumentality-debug" and run_record["run_group"] == "contract/supervised"
    assert run_record["job_type"] == "supervised" and "cognition:standard" in run_record["tags"]
    # training curves against tokens seen
    defined = [json.loads(r)["metric"] for r in records if '"type":"metric"' in r]
    assert {(m.get("glob_name"), m.get("step_metric")) for m in defined} >= {
        (family, "perf/tokens_seen") for family in ("train/*", "perf/*", "probe/*", "probe_ci/*", "env/*")}
    probe_summary = next(m["summary"] for m in defined if m.get("glob_name") == "probe/*")
    assert probe_summary == {"last": True, "min": True, "max": True}  # the run table's columns
    # the probes' interval bounds beside their values
    low, value, high = (metrics[f"probe{ci}/calibration/kl{side}"] for ci, side in
                        (("_ci", "/low"), ("", ""), ("_ci", "/high")))
    assert low < value < high
    # the checkpoint and the run's rows as an artifact
    artifacts = [json.loads(r)["artifact"] for r in records if '"type":"artifact"' in r]
    run_artifact = next(a for a in artifacts if a["type"] == "model")
    assert run_artifact["name"] == "contract-supervised-s0" and "final" in run_artifact["aliases"]
    assert sorted(c["path"] for c in run_artifact["manifest"]["contents"]) == ["checkpoint.pt", "rows.csv"]
    from instrumentality.training.checkpoint import checkpoint_digest

    metadata = json.loads(run_artifact["metadata"])
    assert metadata["steps"] == 10 and metadata["regime"] == "supervised" and metadata["seed"] == 0
    assert metadata["checkpoint_sha256"] == checkpoint_digest(tmp_path / "run" / "checkpoint.pt")
    # the sweep's report run names it by content (offline: W&B records lineage online only)
    from instrumentality.tracking import Tracker, file_artifact

    monkeypatch.setenv("WANDB_MODE", "offline")  # the suite runs with W&B disabled; this run is read back
    report = Tracker(mode="offline", project="instrumentality-debug", name="report-debug", dir=tmp_path / "report")
    files = [tmp_path / "run" / "checkpoint.pt", tmp_path / "run" / "rows.csv"]
    report.use_artifacts([file_artifact("contract-supervised-s0", "model", files, copy=False)])
    report.finish()
    (report_log,) = (tmp_path / "report" / "wandb").glob("offline-run-*/run-*.wandb")
    uses = json.loads(subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(report_log)],
                                     capture_output=True, text=True, check=True, timeout=120).stdout)["config"]["uses"]
    assert uses == [f"contract-supervised-s0@{run_artifact['digest']}"]
    assert any('"type":"run_table"' in r or "probe/table" in r for r in records)  # the probe table


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode("auto") == "offline"  # not logged in
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("online") == "disabled"  # the environment wins (tests, CI)
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_mode("sometimes")


def logged_keys(run_dir: Path) -> set[str]:
    """Every metric key in the history of the offline W&B run under run_dir."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.splitlines()
    return {k for r in records if '"type":"history"' in r for k in json.loads(r)["history"]["item"]}


def test_the_workspace_draws_only_keys_that_runs_log(tmp_path):
    """scripts/wandb_workspace.py builds its workspace offline; every panel's key is logged by a run of the
    regime it is for: supervised and reinforce on world text, PPO on the interruptible quest (from scratch),
    SB3, and RL on the prophecy forks (F9)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    base = [sys.executable, "-m", "instrumentality.train", "preset=debug", "logger=wandb", "logger.mode=offline",
            f"eval.probe_cache={tmp_path}/probes", "trainer.eval_every=5"]
    runs = {"supervised": ["regime=supervised"], "reinforce": ["regime=reinforce"],
            "quest": ["experiment=F10", "regime.init=scratch", "trainer.max_steps=8"],  # F4's PPO on `interruptible`
            "prophecy": ["experiment=F9", "regime=prophecy_rl", "regime.warmup_steps=2", "trainer.max_steps=6",
                         "trainer.log_every=2", "regime.samples=64"]}
    keys: set[str] = set()
    for name, overrides in runs.items():
        proc = subprocess.run([*base, *overrides, f"hydra.run.dir={tmp_path}/{name}"], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        keys |= logged_keys(tmp_path / name)
    proc = subprocess.run([sys.executable, "scripts/train_sb3.py", "--steps", "4200", "--out", str(tmp_path / "sb3"),
                           "preset=debug", "logger=wandb", "logger.mode=offline"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys |= logged_keys(tmp_path / "sb3")

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import wandb_workspace

    workspace = wandb_workspace.build("someone", "quick")
    assert workspace.project == "instrumentality-quick"
    assert [s.name for s in workspace.sections] == list(wandb_workspace.SECTIONS)
    drawn = {y for s in workspace.sections for p in s.panels for y in p.y}
    assert drawn == wandb_workspace.panel_keys() and drawn <= keys, sorted(drawn - keys)
    xs = {p.x for s in workspace.sections for p in s.panels}
    assert xs - {"Step"} <= keys  # the x axes too
    assert not workspace.runset_settings.filters  # every run; a view per experiment shows its runs alone
    names = wandb_workspace.experiment_names("quick")
    assert names[:2] == ["F1", "F2"] and "F4" in names and len(names) == len(set(names))
    view = wandb_workspace.build("someone", "quick", "F1")
    only = str(view.runset_settings.filters)  # the workspace keeps its filters as one expression
    assert view.name == "instrumentality quick F1" and "exp_name" in only and "'F1'" in only


def test_a_scripted_agents_probes_are_logged_like_a_training_run(tmp_path, monkeypatch):
    """Evaluating a random, explorer or planner agent's folder logs its quest probes to W&B: the project of
    its preset, group F4/<kind>, job type <kind>."""
    from instrumentality.evaluation.run_rows import evaluate_run
    from instrumentality.files import write_json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    folder = tmp_path / "runs" / "quick" / "F4" / "random"
    from instrumentality.envs import SMALL

    # the experiments' quest and 50 episodes per variant: what is logged, not how well the agent plays
    write_json(folder / "summary.json", {"agent": {"kind": "random", "quest": SMALL, "seed": 0, "episodes": 50},
                                         "status": {"status": "finished", "step": 0, "reason": ""}})
    rows = evaluate_run(folder)
    (log,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    summary = json.loads(subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(log)],
                                        capture_output=True, text=True, check=True, timeout=120).stdout)
    records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.splitlines()
    run = next(json.loads(r) for r in records if '"type":"run"' in r)["run"]
    assert (run["project"], run["run_group"], run["job_type"]) == ("instrumentality-quick", "F4/random", "random")
    expected = rows[(rows.probe == "quest/standard") & (rows.metric == "return")].value.iloc[0]
    assert summary["summary"]["probe/quest/standard/return"] == pytest.approx(expected)
    assert "probe_ci/quest/standard/return/low" in summary["summary"]
