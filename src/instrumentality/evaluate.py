"""The evaluation CLI: `python -m instrumentality.evaluate RUN_OR_SWEEP_DIR ... --out results.csv`.

Each run's rows come from instrumentality.evaluation.run_rows (reused from its folder while they were
computed from its current checkpoint by this evaluation code) and are put into the results table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from instrumentality.evaluation.run_rows import evaluate_run, find_runs
from instrumentality.evaluation.table import ROWS, read_table, run_id_of, update_items, update_table


# ---------------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate checkpoints on the common probe set into a tidy CSV.")
    ap.add_argument("paths", nargs="+", help="run folders, checkpoint files, or sweep folders to search")
    ap.add_argument("--out", required=True, type=Path, help="results CSV (the runs' rows are put into it)")
    ap.add_argument("--probe-cache", default="runs/probes", help="where probe sets are stored")
    ap.add_argument("--prune", action="store_true",
                    help="drop rows of runs that have no folder under the paths (the table then mirrors the "
                         "runs: rows of a run a preset no longer sweeps do not linger)")
    ap.add_argument("--recompute", action="store_true",
                    help=f"evaluate every checkpoint afresh (default: reuse the rows stored in a run folder "
                         f"({ROWS}) while they were computed from its current checkpoint by this code)")
    args = ap.parse_args(argv)
    if args.out.is_dir():
        ap.error(f"--out {args.out} is a folder; give the results table's path (e.g. {args.out / 'results.csv'})")
    runs = find_runs(args.paths, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    if not runs:
        print(f"no runs found under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    failures, tables = [], {}
    for run_dir in tqdm(runs, desc="evaluate", dynamic_ncols=True):
        t0 = time.perf_counter()
        try:
            tables[run_id_of(run_dir)] = evaluate_run(run_dir, args.probe_cache, recompute=args.recompute,
                                                      warn=lambda m: tqdm.write(f"warning: {m}", file=sys.stderr))
        except Exception as e:  # noqa: BLE001 - report the run and go on with the others
            failures.append((run_dir, e))
            tqdm.write(f"FAILED {run_dir}: {e}")
            continue
        tqdm.write(f"{run_dir}: {len(tables[run_id_of(run_dir)])} rows in {time.perf_counter() - t0:.1f}s")
    keep = {run_id_of(r) for r in runs} if args.prune else None
    before = set()
    if args.prune and args.out.exists():
        before = set(read_table(args.out)[0].get("run_id", pd.Series(dtype=str)).astype(str))
    if tables or args.out.exists():
        table = update_table(args.out, tables, keep_only=keep, warn=lambda m: print(m, file=sys.stderr))
        update_items(args.out, {run_id_of(r): r for r in runs if run_id_of(r) in tables}, table)
    dropped = sorted(before - keep) if keep is not None else []
    if dropped:
        print(f"dropped the rows of {len(dropped)} run(s) with no folder under {' '.join(args.paths)}: "
              + ", ".join(dropped))
    print(f"wrote {args.out}; {len(tables)} run(s) in it from this evaluation, {len(failures)} failed")
    for run_dir, error in failures:
        print(f"  FAILED {run_dir}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
