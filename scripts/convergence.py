"""How close does the critic regime get to the exact optimum it approximates, and how fast?

For each arm (critic, gamma, H), each setting (regime and trainer overrides) and each seed, trains the
critic regime from the supervised run of that seed (trained first if missing) with the fork probes
evaluated every --eval-every steps, and writes:

    <out>/convergence.csv   steering at the p = 0.5 asymmetric fork vs step (and rollout tokens), per run
    <out>/summary.csv       per arm and setting at the end: mean and sd over seeds of learned / exact optimum,
                            and the optimum relative to the actual pi_ref (gamma = 1; sampled, see
                            evaluators.reference_optimum_steering)
    <out>/convergence.png   learned steering vs step, one line per seed, the exact optimum dashed

    .venv/bin/python scripts/convergence.py --out results/convergence/pilot --seeds 3 --steps 300 \
        --arms truth-g1-H8 --setting base: --setting lr3e-3:trainer.lr=3e-3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
PROBE = "probe/forks/asym/p=0.5/steering_index"


def train(overrides: list[str], out_dir: Path, log: Path) -> int:
    """One run of the entry point in its own process (one thread), resumed or skipped if already there."""
    cmd = [sys.executable, "-m", "instrumentality.train", "logger=none", "trainer.progress=false",
           f"hydra.run.dir={out_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    with open(log, "a") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def supervised_dir(runs: Path, seed: int) -> Path:
    return runs / "quick" / "F1" / f"supervised-s{seed}"


def critic_dir(runs: Path, setting: str, arm: str, seed: int) -> Path:
    return runs / "quick" / "convergence" / f"{setting}-{arm}-s{seed}"


def run_all(args) -> None:
    runs, log = args.out / "runs", args.out / "train.log"
    runs.mkdir(parents=True, exist_ok=True)
    common = ["preset=quick", f"runs_root={runs}"]
    pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
    sup = {s: pool.submit(train, [*common, "experiment=F1", "regime=supervised", f"seed={s}"],
                          supervised_dir(runs, s), log) for s in range(args.seeds)}
    jobs = []
    for name, overrides in args.settings:
        for arm in args.arms:
            for s in range(args.seeds):
                cfg = [*common, "experiment=F2", f"arm={arm}", f"seed={s}", "exp_name=convergence",
                       f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.eval_every}", *overrides]
                jobs.append((name, arm, s, cfg))

    def after_supervised(job):
        name, arm, s, cfg = job
        if sup[s].result() != 0:
            return 1
        return train(cfg, critic_dir(runs, name, arm, s), log)

    codes = list(pool.map(after_supervised, jobs))
    failed = [j[:3] for j, c in zip(jobs, codes) if c]
    if failed:
        print(f"{len(failed)} run(s) failed (see {log}): {failed}", file=sys.stderr)


def collect(args) -> pd.DataFrame:
    from instrumentality.evaluation.world_probes import reference_optimum_steering
    from instrumentality.training.build import build_regime, build_world
    from instrumentality.training.checkpoint import load_checkpoint, model_from_checkpoint
    from instrumentality.world.optimum import optimal_steering

    rows, ref_cache = [], {}
    for name, _ in args.settings:
        for arm in args.arms:
            for s in range(args.seeds):
                path = critic_dir(args.out / "runs", name, arm, s) / "checkpoint.pt"
                if not path.exists():
                    continue
                ck = load_checkpoint(path)
                cfg = ck["run_config"]
                world = build_world(cfg)
                regime = build_regime(cfg, world)
                fork = next(f for f in world.forks if not f.symmetric and f.p == 0.5)
                beta, gamma, H = regime.settings.beta, regime.settings.gamma, regime.settings.horizon
                optimum = optimal_steering(world, regime.critic.table(world), beta, gamma, H)[fork.index] \
                    if hasattr(regime.critic, "table") else math.nan
                key = (name, s, arm)
                if key not in ref_cache:
                    ref_cache[key] = math.nan
                    if gamma == 1.0 and hasattr(regime.critic, "table"):
                        ref_model = model_from_checkpoint(load_checkpoint(cfg["regime"]["ref_checkpoint"]))
                        prompts = world.fork_contexts(torch.full((16,), fork.index), 8,
                                                      torch.Generator().manual_seed(1000 + s))
                        ref_cache[key] = reference_optimum_steering(ref_model, world, regime.critic, beta, H, prompts,
                                                                    fork.index, n_samples=128, seed=s)[0]
                for r in ck["history"]:
                    if PROBE in r:
                        rows.append({"setting": name, "arm": arm, "critic": cfg["regime"]["critic"], "gamma": gamma,
                                     "horizon": H, "beta": beta, "seed": s, "step": r["step"],
                                     "tokens": r.get("perf/tokens_seen"), "steering": r[PROBE],
                                     "optimum": optimum, "ref_optimum": ref_cache[key],
                                     "status": ck["status"]["status"]})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    last = df.sort_values("step").groupby(["setting", "arm", "seed"]).tail(1)
    g = last.groupby(["setting", "arm"])
    out = g.agg(critic=("critic", "first"), gamma=("gamma", "first"), horizon=("horizon", "first"),
                beta=("beta", "first"), steps=("step", "max"), seeds=("seed", "nunique"),
                learned=("steering", "mean"), learned_sd=("steering", "std"), optimum=("optimum", "first"),
                ref_optimum=("ref_optimum", "mean")).reset_index()
    out["share_of_optimum"] = out.learned / out.optimum
    out["sd_share"] = out.learned_sd / out.optimum.abs()
    out["share_of_ref_optimum"] = out.learned / out.ref_optimum
    return out


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(df.groupby(["setting", "arm"]).groups)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharex=True)
    for ax, (setting, arm) in zip(axes.flat, panels):
        d = df[(df.setting == setting) & (df.arm == arm)]
        for _, seed in d.groupby("seed"):
            ax.plot(seed.step, seed.steering, color="C0", alpha=0.4, lw=1)
        mean = d.groupby("step").steering.mean()
        ax.plot(mean.index, mean.values, color="C0", lw=2, label="learned (mean)")
        ax.axhline(d.optimum.iloc[0], color="k", ls="--", lw=1, label="exact optimum (pi_ref = p*)")
        if d.ref_optimum.notna().any():
            ax.axhline(d.ref_optimum.mean(), color="C3", ls=":", lw=1.5, label="optimum for the actual pi_ref")
        ax.set_title(f"{arm}, {setting}", fontsize=9)
        ax.set_xlabel("RL step")
        ax.set_ylabel("steering at the p = 0.5 fork")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", default="truth-g1-H8", help="comma-separated F2 arms")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--setting", action="append", default=[],
                    help="NAME:override,override,... (repeatable); default base: (the F2 settings)")
    ap.add_argument("--collect-only", action="store_true", help="tables and figure from runs already there")
    args = ap.parse_args(argv)
    args.arms = args.arms.split(",")
    args.settings = [(s.split(":", 1)[0], [o for o in s.split(":", 1)[1].split(",") if o]) for s in
                     (args.setting or ["base:"])]
    if not args.collect_only:
        run_all(args)
    df = collect(args)
    if df.empty:
        print("no finished runs to collect", file=sys.stderr)
        return 1
    df.to_csv(args.out / "convergence.csv", index=False)
    summary = summarise(df)
    summary.to_csv(args.out / "summary.csv", index=False)
    plot(df, args.out / "convergence.png")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
