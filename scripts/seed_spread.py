"""The seed-to-seed spread of the quick-preset supervised run: the source of the bounds that the tests of a
trained model use (tests/evaluation/test_probes.py).

A finitely trained model's probe values differ from the exact ones by training noise, and another CPU's
float rounding amounts to another draw of that noise. So a test's bound on a trained model is not one
machine's value plus a margin: it is a prediction interval from the spread over seeds measured here.

    .venv/bin/python scripts/seed_spread.py --seeds 10 --out results/tests/supervised_seed_spread.csv

trains the quick supervised run for each seed (two at a time, one thread each) and writes one row per
seed: KL, excess NLL, ECE and the steering index at each fork probability.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = {("calibration", "kl"): "kl", ("calibration", "excess_nll"): "excess_nll", ("calibration", "ece"): "ece",
           **{(f"forks/asym/p={p}", "steering_index"): f"steering_p{p}" for p in (0.2, 0.5, 0.8)}}


def one_seed(seed: int, root: str) -> dict:
    os.environ["WANDB_MODE"] = "disabled"
    import torch

    torch.set_num_threads(1)
    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.evaluation.table import read_run_rows
    from instrumentality.train import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=quick", "logger=none", "trainer.progress=false",
                                                      f"seed={seed}", f"eval.probe_cache={root}/probes"])
    out = Path(root) / f"supervised-s{seed}"
    t0 = time.perf_counter()
    run(cfg, out)
    rows = read_run_rows(out)
    row = {"seed": seed, "wall_s": round(time.perf_counter() - t0, 1)}
    for r in rows.itertuples():
        if (r.probe, r.metric) in METRICS:
            row[METRICS[(r.probe, r.metric)]] = r.value
    return row


def main() -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "tests" / "supervised_seed_spread.csv")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(one_seed, range(args.seeds), [root] * args.seeds))
    df = pd.DataFrame(rows).sort_values("seed")
    from instrumentality.tracking import cpu_model

    df["cpu"] = cpu_model()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(df.to_string(index=False))
    print("\nmean and standard deviation over seeds:")
    print(df.drop(columns=["seed", "cpu"]).agg(["mean", "std"]).to_string())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
