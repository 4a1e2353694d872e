"""How much budget or width myopic training needs to pass C8's capability gates (docs/design.md section 9).

Trains the myopic cognition of F8 at the full preset for one seed, longer than F8 does (tiny model, 4x F1's
800 steps) and wider (the nanoGPT-sized `small` model, 2x), evaluating every 200 steps, then writes the KL
curve, each run's final KL and impossible-token rate, and a figure:

    python scripts/myopic_budget.py --out results/convergence/myopic_budget

Both runs go at once, one thread each (about 12 minutes on 2 CPU cores; the small model is 5x slower a step).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from instrumentality.evaluation.run_rows import evaluate_checkpoint  # noqa: E402
from instrumentality.training.checkpoint import load_checkpoint  # noqa: E402

ARMS = {"tiny": 3200, "small": 1600}  # model config -> steps
MAX_KL, MAX_IMPOSSIBLE = 0.05, 0.05  # the gates (claims/cognition.py)


def train(runs: Path, model: str, steps: int, seed: int) -> Path:
    folder = runs / f"myopic-{model}"
    cmd = [sys.executable, "-m", "instrumentality.train", "experiment=F8", "cognition=myopic", "preset=full",
           f"model={model}", f"seed={seed}", f"trainer.max_steps={steps}", "trainer.eval_every=200",
           "trainer.progress=false", "logger=none", f"hydra.run.dir={folder}", f"eval.probe_cache={runs / 'probes'}"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=Path, default=Path("runs/myopic_budget"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-training", action="store_true",
                    help="read the finished runs in --runs/myopic-<model> (evaluate and draw only)")
    args = ap.parse_args(argv)
    if args.no_training:
        folders = {a: args.runs / f"myopic-{a}" for a in ARMS}
    else:
        with ThreadPoolExecutor(len(ARMS)) as pool:
            folders = dict(zip(ARMS, pool.map(lambda a: train(args.runs, a, ARMS[a], args.seed), ARMS)))
    curve, final = [], []
    for model, folder in folders.items():
        ck = load_checkpoint(folder / "checkpoint.pt")
        curve += [{"model": model, "step": r["step"], "kl": r["probe/calibration/kl"]}
                  for r in ck["history"] if "probe/calibration/kl" in r]
        rows = pd.DataFrame(evaluate_checkpoint(folder, str(args.runs / "probes")))
        value = lambda probe, metric: float(rows[(rows.probe == probe) & (rows.metric == metric)].value.iloc[0])  # noqa: E731
        kl, impossible = value("calibration", "kl"), value("rollouts/p=0.5", "impossible_rate")
        final.append({"model": model, "steps": ARMS[model], "kl": kl, "impossible_rate_p0.5": impossible,
                      "passes": kl < MAX_KL and impossible < MAX_IMPOSSIBLE})
    args.out.mkdir(parents=True, exist_ok=True)
    curve_df, final_df = pd.DataFrame(curve), pd.DataFrame(final)
    curve_df.to_csv(args.out / "curve.csv", index=False)
    final_df.to_csv(args.out / "final.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, c in curve_df.groupby("model"):
        ax.plot(c.step, c.kl, "o-", ms=3, label=f"myopic, {model}")
    ax.axhline(MAX_KL, ls=":", color="grey", label=f"gate: KL {MAX_KL}")
    ax.axvline(800, color="grey", lw=0.5)
    ax.set(yscale="log", xlabel="training step (cosine schedule over the run's budget)",
           ylabel="KL(p* || pi), nats/token", title=f"Myopic training: KL against budget and width (seed {args.seed})")
    ax.legend(fontsize=7)
    fig.savefig(args.out / "myopic_budget.png", dpi=130, bbox_inches="tight")
    print(final_df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
