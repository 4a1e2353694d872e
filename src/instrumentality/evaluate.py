"""One run's rows of the results table, and the evaluation CLI.

A trained run is scored on the probe families its regime declares (evaluators.py for world text,
quest_eval.py for ClueQuest), with the regime's exact theory rows beside them; the rows are stored in the
run folder (results.py) and `results.csv` is their concatenation.
CLI: `python -m instrumentality.evaluate RUN_OR_SWEEP_DIR ... --out results.csv`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from instrumentality.build import build_regime, build_world, plain
from instrumentality.errors import DataFileError
from instrumentality.evaluators import FAMILIES, evaluate_model, interval_bounds, scalar_metrics
from instrumentality.files import read_json
from instrumentality.probes import ProbeConfig, ProbeSet, probe_set_for
from instrumentality.quest_eval import agent_run_rows, log_agent, quest_model_rows
from instrumentality.regimes.base import QUEST_PROBES, WORLD_PROBES, Regime
from instrumentality.regimes.performative import PROPHECY_PROBES, ProphecyBase, prophecy_rows
from instrumentality.results import (
    ROWS,
    curve_rows,
    read_run_rows,
    read_table,
    run_id_of,
    source_digest,
    status_rows,
    tidy_rows,
    update_table,
    write_run_rows,
)
from instrumentality.world import World


# ---------------------------------------------------------------------------- the trainer's hook
class TrainingEvaluator:
    """The trainer's evaluation hook, called every trainer.eval_every steps and at the end: probe/ scalars,
    and the probe rows as a W&B table. Calibration and forks during training (every family with
    eval.full); at the end every probe `model_rows` runs, and its rows (the run's rows of the results
    table) are kept as `final_rows`."""

    def __init__(self, world: World, regime: Regime, cfg, tracker=None):
        self.world, self.regime, self.cfg, self.tracker = world, regime, cfg, tracker
        self.world_text = WORLD_PROBES in regime.probe_families()
        self.probes = probe_set_for(world, ProbeConfig(**cfg.eval.get("probes", {})), cfg.eval.get("probe_cache")) \
            if self.world_text else None
        self.final_rows: list[dict] | None = None

    def __call__(self, model, step: int) -> dict:
        cfg = self.cfg
        if step >= cfg.trainer.max_steps:  # the final evaluation: every probe, kept for the results table
            config = plain(cfg)
            rows = self.final_rows = model_rows(model, self.world, self.regime, config, cfg.eval.get("probe_cache"),
                                                self.probes)
        elif self.probes is not None:
            families = FAMILIES if cfg.eval.get("full", False) else ("calibration", "forks")
            rows = evaluate_model(model, self.world, self.probes, families=families)
        else:
            rows = []
        if self.tracker is not None:
            self.tracker.log_table("probe/table", rows, step=step)
            self.tracker.log(interval_bounds(rows), step=step)
        return scalar_metrics(rows)


# ---------------------------------------------------------------------------- one run's rows
def find_runs(paths) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if p.is_file():
            runs.append(p.parent)
        elif (p / "checkpoint.pt").exists() or (p / "summary.json").exists():
            runs.append(p)
        else:
            runs += sorted({c.parent for c in p.rglob("checkpoint.pt")} | {c.parent for c in p.rglob("summary.json")})
    return sorted(set(runs))


def model_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
               probes: ProbeSet | None = None) -> list[dict]:
    """Every probe family the regime's model is scored on (the world probes, the quest probes, the
    forecasts at prophecy markers), and the regime's exact theory rows beside them."""
    rows = []
    if WORLD_PROBES in regime.probe_families():
        probes = probes or probe_set_for(world, ProbeConfig(**run_config.get("eval", {}).get("probes", {})),
                                         probe_cache)
        rows += evaluate_model(model, world, probes)
    if QUEST_PROBES in regime.probe_families():
        rows += quest_model_rows(model, world, run_config["quest"], regime.name)
    if PROPHECY_PROBES in regime.probe_families():
        assert isinstance(regime, ProphecyBase)
        rows += prophecy_rows(model, regime)
    return rows + regime.theory_rows()


def trained_run_rows(run_dir: Path, probe_rows: list[dict], run_config: dict, history: list[dict],
                     status: dict) -> list[dict]:
    """The results-table rows of a trained run: its final probes, its learning curves, its status."""
    rows = probe_rows + curve_rows(history) + status_rows(status)
    return tidy_rows(rows, run_id=run_id_of(run_dir), run_config=run_config, status=status)


def evaluate_checkpoint(run_dir: Path, probe_cache: str | None = None) -> list[dict]:
    """A run's rows from its checkpoint, evaluated on its world's probe set. Raises on a bad checkpoint."""
    from instrumentality.model import GPT, GPTConfig
    from instrumentality.trainer import load_checkpoint

    ck = load_checkpoint(run_dir / "checkpoint.pt")
    run_config = ck["run_config"]
    world = build_world(run_config)
    model = GPT(GPTConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    rows = model_rows(model, world, build_regime(run_config, world), run_config, probe_cache)
    return trained_run_rows(run_dir, rows, run_config, ck["history"], ck["status"])


def evaluate_run(run_dir: Path, probe_cache: str | None = None, recompute: bool = False) -> pd.DataFrame:
    """A run's rows for the results table, stored in its folder: reused where they were computed from its
    current checkpoint (or summary) by this evaluation code, computed afresh otherwise (or with
    `recompute`). Raises on a bad checkpoint or summary, naming the file."""
    source = source_digest(run_dir)
    stored = None if recompute else read_run_rows(run_dir, source)
    if stored is not None:
        return stored
    summary = read_json(run_dir / "summary.json", "run summary") if (run_dir / "summary.json").exists() else {}
    if "agent" in summary:  # a scripted or SB3 quest agent
        rows = agent_run_rows(run_dir, summary)
        log_agent(run_dir, summary, rows)
    elif not (run_dir / "checkpoint.pt").exists():
        if not summary:
            raise DataFileError(f"{run_dir}: neither a checkpoint.pt nor a summary.json")
        rows = failed_run_rows(run_dir, summary)  # a job that failed: its error is in the summary
    else:
        rows = evaluate_checkpoint(run_dir, probe_cache)
    return write_run_rows(run_dir, rows, source)


def failed_run_rows(run_dir: Path, summary: dict) -> list[dict]:
    """A run that failed before writing a checkpoint: its summary.json has the error."""
    return tidy_rows(status_rows(summary["status"]), run_id_of(run_dir), summary.get("config", {}), summary["status"])


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
    runs = find_runs(args.paths)
    if not runs:
        print(f"no runs found under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    failures, tables = [], {}
    for run_dir in tqdm(runs, desc="evaluate", dynamic_ncols=True):
        t0 = time.perf_counter()
        try:
            tables[run_id_of(run_dir)] = evaluate_run(run_dir, args.probe_cache, recompute=args.recompute)
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
        update_table(args.out, tables, keep_only=keep, warn=lambda m: print(m, file=sys.stderr))
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
