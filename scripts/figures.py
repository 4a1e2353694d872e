"""Redraw every figure and REPORT.md from results/<preset>/results.csv (no training)."""

import argparse
import sys
from pathlib import Path

from instrumentality.errors import DataFileError
from instrumentality.files import read_json
from instrumentality.report import write_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--results", default="results", help="folder holding <preset>/results.csv")
    args = ap.parse_args()
    folder = Path(args.results) / args.preset
    csv = folder / "results.csv"
    if not csv.exists():
        print(f"no results table at {csv}: run `make sweep PRESET={args.preset}` first", file=sys.stderr)
        return 2
    prov = folder / "provenance.json"
    try:
        report = write_report(csv, folder, read_json(prov, "provenance record", dict) if prov.exists() else None)
    except DataFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {report} and {folder / 'figures'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
