"""The sweep end to end: two experiments through the joblib launcher, one job made to fail."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_with_a_failing_job_still_writes_results_and_figures(tmp_path):
    cmd = [sys.executable, "scripts/sweep.py", "--preset", "debug", "--launcher", "joblib", "--jobs", "2",
           "--seeds", "1", "--experiments", "F1,F2",
           "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
           "F1:regime=supervised,reinforce",           # F1: two jobs
           "F2:arm=truth-g1-H1", "F2:regime.horizon=1,60"]  # F2: H=60 exceeds the sequence: that job fails
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "FAILED job" in out and "H60" in out
    assert "[F1] 2 runs, 2 at a time" in out and "[F1] 2/2 done" in out  # progress: runs done of n
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
    assert (results / "provenance.json").exists()
    # a second sweep trains nothing: every finished run is skipped, its checkpoint left untouched
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    assert len(checkpoints) == 3
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "finished after" in again.stdout  # each finished job reports its stored summary
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
