"""`make sweep`: every experiment as a Hydra multirun, then evaluation, figures and REPORT.md.

Runs live in runs/<preset>/<experiment>/<run name>/: re-running resumes unfinished runs and skips
finished ones (their checkpoints say so), so a second `make sweep` trains nothing.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# in dependency order: F2 and F3 fine-tune F1's supervised runs; F4 fine-tunes F4_simulator's, then the
# SB3 reference agent trains for at least as many env steps as the quest agents took (sb3_stage)
EXPERIMENTS = ["F1", "F2", "F3", "F4_simulator", "F4"]
LAUNCHERS = {"basic": "basic", "joblib": "joblib", "submitit_slurm": "submitit_slurm"}


def compose(preset: str, *overrides: str, hydra: bool = False):
    """The config a job of this preset gets (with `hydra`, also Hydra's own node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[f"preset={preset}", *overrides],
                             return_hydra_config=hydra)


def preset_value(preset: str, key: str):
    return compose(preset)[key]


def quest_choice(preset: str, experiment: str = "F4") -> str:
    """The configs/quest/ option an experiment uses (SB3 must train on the same quest)."""
    return compose(preset, f"experiment={experiment}", hydra=True).hydra.runtime.choices["quest"]


def n_seeds(preset: str) -> int:
    return int(preset_value(preset, "n_seeds"))


def quest_env_steps(run_dir: Path) -> int:
    """Env steps a finished quest-PPO run took (0 if it has none)."""
    summary = run_dir / "summary.json"
    if not summary.exists():
        return 0
    return int(json.loads(summary.read_text()).get("metrics", {}).get("perf/env_steps_seen", 0))


def sb3_stage(preset: str, seeds: int, runs_root: Path) -> float:
    """SB3 PPO per seed, for max(the quest agents' env steps of that seed, the preset's sb3_steps), two
    processes at a time; plus the random and explorer agent folders. Finished runs are skipped."""
    t0 = time.perf_counter()
    exp_dir = runs_root / preset / "F4"
    floor, quest = int(preset_value(preset, "sb3_steps")), quest_choice(preset)
    jobs = []
    for seed in range(seeds):
        steps = max([floor] + [quest_env_steps(d) for d in exp_dir.glob(f"quest-*-s{seed}")])
        cmd = [sys.executable, "scripts/train_sb3.py", "--quest", quest, "--steps", str(steps), "--seed", str(seed),
               "--out", str(exp_dir / f"sb3_ppo-s{seed}"), "--baselines"]
        jobs.append(cmd)
    print(f"\n=== F4 SB3 reference agent: {len(jobs)} seeds", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[subprocess.Popen] = []
    for cmd in jobs:
        while len(running) >= 2:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.5)
        print(f"[F4] {' '.join(cmd[1:])}", flush=True)
        running.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
    for p in running:
        p.wait()
    return time.perf_counter() - t0


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def run_experiment(exp: str, preset: str, launcher: str, jobs: int, seeds: int, runs_root: Path,
                   extra: list[str]) -> float:
    """One multirun; its progress (runs done of n, time left) is printed as runs finish. With the joblib
    launcher `jobs` runs go at once, each process with cores // jobs threads (OMP_NUM_THREADS)."""
    cmd = [sys.executable, "-m", "instrumentality.train", "--multirun", f"experiment={exp}", f"preset={preset}",
           f"seed={','.join(map(str, range(seeds)))}", f"hydra/launcher={LAUNCHERS[launcher]}",
           f"runs_root={runs_root}"]
    env = dict(os.environ)
    if launcher == "joblib":
        cmd.append(f"hydra.launcher.n_jobs={jobs}")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    cmd += extra
    print(f"\n=== {exp}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    total, done = None, 0
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    for line in proc.stdout:
        if m := re.search(r"[Ll]aunching (\d+) jobs", line):
            total = int(m.group(1))
            print(f"[{exp}] {total} runs" + (f", {jobs} at a time" if launcher == "joblib" else ""), flush=True)
        finished = re.match(r"\[(\S+)\] (?:finished after|collapsed after|FAILED)", line)
        if finished or line.startswith("configuration error"):
            done += 1
            elapsed = time.perf_counter() - t0
            eta = f", about {elapsed / done * (total - done) / 60:.1f} min left" if total and done < total else ""
            print(f"[{exp}] {done}/{total or '?'} done{eta}: {line.rstrip()}", flush=True)
        elif "error" in line.lower() and not line.startswith("[20"):
            print("    " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        print(f"[{exp}] the multirun exited with {proc.returncode}; the runs it finished are kept", flush=True)
    return time.perf_counter() - t0


def log_report_to_wandb(out: Path, provenance: dict):
    """One W&B run per sweep (group report-<preset>): the figures as images, the claims as a table."""
    from instrumentality.report import claims, load
    from instrumentality.tracking import Tracker

    tracker = Tracker(mode="auto", group=f"report-{provenance['preset']}", name=f"report-{provenance['preset']}",
                      tags=[f"rev:{provenance['git_revision']}", f"preset:{provenance['preset']}", "report"],
                      config=provenance, dir=ROOT / "runs" / "wandb-report")
    for png in sorted((out / "figures").glob("*.png")):
        tracker.log_image(f"figures/{png.stem}", png, step=0)
    tracker.log_table("report/claims", [{"claim": c.claim, "metric": c.metric, "prediction": c.prediction,
                                         "value": c.value, "ci_low": c.low, "ci_high": c.high,
                                         "seeds": c.n_seeds, "verdict": c.verdict}
                                        for c in claims(load(out / "results.csv"))], step=0)
    tracker.finish()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--launcher", default="basic", choices=sorted(LAUNCHERS))
    ap.add_argument("--jobs", type=int, default=2, help="joblib launcher: runs at once (threads split between them)")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--results", default="results", type=Path, help="results/<preset>/ is written here")
    ap.add_argument("--runs-root", default="runs", type=Path, help="run folders: <runs-root>/<preset>/<experiment>/")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's n_seeds)")
    ap.add_argument("overrides", nargs="*",
                    help="extra Hydra overrides for every job; EXP:key=value applies to experiment EXP only")
    args = ap.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    out = (ROOT / args.results / args.preset).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs_root = (ROOT / args.runs_root).resolve()
    seeds = args.seeds or n_seeds(args.preset)
    t_all = time.perf_counter()
    walls = {}
    for exp in args.experiments.split(","):
        extra = [o.split(":", 1)[1] if ":" in o.split("=")[0] else o for o in args.overrides
                 if ":" not in o.split("=")[0] or o.split(":", 1)[0] == exp]
        walls[exp] = run_experiment(exp, args.preset, args.launcher, args.jobs, seeds, runs_root, extra)
        if exp == "F4":
            walls["F4_sb3"] = sb3_stage(args.preset, seeds, runs_root)
    print("\n=== evaluating every run on the common probe set", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "instrumentality.evaluate", str(runs_root / args.preset),
                    "--out", str(out / "results.csv"), "--probe-cache", str(runs_root / "probes"),
                    "--skip-existing"], cwd=ROOT, check=False)
    walls["evaluate"] = time.perf_counter() - t0
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    provenance = {"preset": args.preset, "git_revision": rev.strip() or "unknown",
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
                  "seeds": seeds, "launcher": args.launcher,
                  "jobs_at_once": args.jobs if args.launcher == "joblib" else 1,
                  "wall_s": {k: round(v, 1) for k, v in walls.items()},
                  "total_wall_s": round(time.perf_counter() - t_all, 1)}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
    from instrumentality.report import write_report

    report = write_report(out / "results.csv", out, provenance)
    log_report_to_wandb(out, provenance)
    failed = [p.parent for p in (runs_root / args.preset).rglob("summary.json")
              if '"status": "failed"' in p.read_text()]
    print(f"\nwrote {out / 'results.csv'}, {report}, {out / 'figures'}/ in {provenance['total_wall_s'] / 60:.1f} min")
    for p in failed:
        print(f"  FAILED job: {p} (see its summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
