"""Compare a sweep's results table with the committed one: does each claim's new value lie within the
committed interval, and how many rows agree?

    .venv/bin/python scripts/compare.py --preset quick               # working tree's table vs HEAD's
    .venv/bin/python scripts/compare.py OLD.csv NEW.csv              # any two tables

`make sweep` rewrites results/<preset>/results.csv; run this afterwards to see what moved. Bit-for-bit
equality is expected only on the same CPU (or GPU) model with the same library versions and thread
count (provenance.json records them); elsewhere, training noise moves values, and the test is whether
the new value lies within the committed interval. Exit code 0 (a report, not a check).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from instrumentality.claims.algebra import decide
from instrumentality.errors import DataFileError
from instrumentality.evaluation.table import items_path
from instrumentality.report import claims, load

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["run_id", "probe", "metric", "step", "horizon", "tokens", "env_steps", "start", "stable"]


def as_table(raw: bytes, name: str, folder: Path, items: bytes | None = None) -> Path:
    """The bytes of a results table (and of the per-item values beside it, where there are) as files the
    report can load; a table from before rows carried their source and run_rows gets them (source
    `legacy`), so that old committed tables can be compared."""
    path = folder / name
    path.write_bytes(raw)
    if items is not None:
        items_path(path).write_bytes(items)
    df = pd.read_csv(path, low_memory=False, float_precision="round_trip")
    if "source" not in df or "run_rows" not in df:
        df.insert(1, "source", "legacy")
        df.insert(2, "run_rows", df.run_id.map(df.run_id.value_counts()))
        df.to_csv(path, index=False)
    return path


def row_agreement(old: pd.DataFrame, new: pd.DataFrame) -> dict:
    """How many rows of two tables match (by their keys and, among rows whose keys are all equal, such as an
    F9 run's fixed points, by their order), and how many of those are equal or close. Each row matches at
    most one row of the other table."""
    keys = [k for k in KEYS if k in old and k in new]
    a = old[keys + ["value"]].copy()
    b = new[keys + ["value"]].copy()
    for t in (a, b):
        for k in keys:
            t[k] = t[k].astype(str)
        t["nth"] = t.groupby(keys, sort=False).cumcount()  # the n-th row with these keys
    m = a.merge(b, on=keys + ["nth"], suffixes=("_old", "_new"))
    x, y = m.value_old.to_numpy(float), m.value_new.to_numpy(float)
    both_nan = np.isnan(x) & np.isnan(y)
    exact = (x == y) | both_nan
    close = exact | (np.abs(x - y) <= np.maximum(0.02, 0.1 * np.abs(x)))
    return {"old": len(a), "new": len(b), "matched": len(m), "exact": int(exact.sum()), "close": int(close.sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="*", type=Path, help="OLD.csv NEW.csv (default: --committed vs the working tree)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--committed", default="HEAD", help="git revision of the committed table (default HEAD)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            if len(args.tables) == 2:
                old_raw, new_raw = (p.read_bytes() for p in args.tables)
                old_items, new_items = (items_path(p).read_bytes() if items_path(p).exists() else None
                                        for p in args.tables)
                labels = tuple(map(str, args.tables))
            elif not args.tables:
                rel = f"results/{args.preset}/results.csv"

                def committed(path: str) -> bytes | None:
                    shown = subprocess.run(["git", "show", f"{args.committed}:{path}"], cwd=ROOT, capture_output=True)
                    return shown.stdout if shown.returncode == 0 else None

                old_raw = subprocess.run(["git", "show", f"{args.committed}:{rel}"], cwd=ROOT, capture_output=True,
                                         check=True).stdout
                old_items = committed(str(items_path(Path(rel))))
                new_raw = (ROOT / rel).read_bytes()
                new_items = items_path(ROOT / rel).read_bytes() if items_path(ROOT / rel).exists() else None
                labels = (f"{rel} at {args.committed}", f"{rel} in the working tree")
            else:
                ap.error("give two tables, or none")
            if old_raw == new_raw:
                print(f"error: {labels[0]} and {labels[1]} are the same table: there is nothing to compare (run "
                      "`make sweep` first, or name two tables)", file=sys.stderr)
                return 2
            old = load(as_table(old_raw, "old.csv", tmp, old_items))
            new = load(as_table(new_raw, "new.csv", tmp, new_items))
        except (OSError, subprocess.CalledProcessError, DataFileError, ValueError) as e:
            print(f"error: {getattr(e, 'stderr', b'') and e.stderr.decode().strip() or e}", file=sys.stderr)
            return 2
    print(f"committed: {labels[0]}\nnew:       {labels[1]}\n")
    print("| claim | metric | committed (95% CI) | new | within the committed CI | verdicts |")
    print("|---|---|---|---|---|---|")
    inside = total = 0
    def key(c):  # a claim's id and metric, without a note that depends on the data (after "; ")
        return c.claim, c.metric.split("; ")[0]

    committed = {key(c): c for c in decide(claims(old))}
    new_claims = decide(claims(new))
    for c_new in new_claims:  # a claim only in the new table is listed as such
        c_old = committed.get(key(c_new))
        if c_old is None or c_old.n_seeds == 0:
            if c_new.n_seeds:
                print(f"| {c_new.claim} | {c_new.metric} | not in the committed table | {c_new.value:.4g} | - | "
                      f"{c_new.verdict} |")
            continue
        if c_new.n_seeds == 0 or math.isnan(c_new.value):
            continue
        total += 1
        ok = c_old.low <= c_new.value <= c_old.high
        inside += ok
        print(f"| {c_old.claim} | {c_old.metric} | {c_old.value:.4g} [{c_old.low:.4g}, {c_old.high:.4g}] | "
              f"{c_new.value:.4g} | {'yes' if ok else '**no**'} | {c_old.verdict} -> {c_new.verdict} |")
    gone = [c for k, c in committed.items() if c.n_seeds and k not in {key(c) for c in new_claims}]
    for c in gone:
        print(f"| {c.claim} | {c.metric} | {c.value:.4g} [{c.low:.4g}, {c.high:.4g}] | not in the new table | - | "
              f"{c.verdict} |")
    r = row_agreement(old, new)
    print(f"\n{inside} of {total} claims' new values lie within the committed interval.")
    print(f"rows: {r['matched']} matched of {r['old']} committed and {r['new']} new; {r['exact']} equal bit for bit, "
          f"{r['close']} within max(0.02, 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
