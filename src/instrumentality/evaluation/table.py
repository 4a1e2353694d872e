"""The results table: each run's rows in its own folder, and results.csv built from them.

A run's rows (the probes of its final weights, its learning curves, its status) live in the run folder as
`rows.csv`, with `rows.json` beside it naming what they were computed from: the sha256 of the checkpoint
(or, for a run without one, of its summary.json), the number of rows and the evaluation code's version.
Rows are reused only while all three still match, so a replaced checkpoint is always evaluated again and a
file cut short by a kill is never used.

`results.csv` is the concatenation of runs' rows. Every row carries its run's `source` (that digest) and
`run_rows` (how many rows the run has), so a table cut short, or one with a run's rows from two different
checkpoints, is detected when read: the damaged runs are dropped from it (and rebuilt from their folders
when they are among the runs being evaluated), never appended to. The table is rewritten under a lock
through a uniquely named temporary file, so concurrent writers lose no rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from instrumentality.configs import experiment_file, experiments, flatten
from instrumentality.errors import DataFileError
from instrumentality.files import file_lock, read_json, write_atomic, write_json
from instrumentality.model import cognition
from instrumentality.regimes.prophecy import forecast_start

EVAL_VERSION = 7  # of the evaluators: bump when a change to them changes rows (a run's rows are then redone)
ROWS, ROWS_META = "rows.csv", "rows.json"
ITEMS = "items"  # a row's per-item values (a numpy array), where its evaluator keeps them
ITEMS_FILE = "items.npz"  # a run's per-item values, beside its rows: {"<probe>|<metric>": values}
# config values copied into every row: what a run is (its preset, experiment, world, model and budget), then
# the keys its experiment declares tell its runs apart (`columns` of configs/experiment/<name>.yaml)
IDENTITY_COLUMNS = ("preset_name", "exp_name", "world.seed", "model.n_layer", "model.n_embd", "model.myopic",
                    "model.n_future_heads", "trainer.max_steps")


@functools.cache
def swept_keys() -> tuple[str, ...]:
    """The config keys of results.csv: IDENTITY_COLUMNS, then every key an experiment declares in `columns`
    (first declaration first, experiments in the sweep's order). An experiment added with its file adds its
    columns. Every row has all of them: one its run's config lacks is left empty."""
    keys = dict.fromkeys(IDENTITY_COLUMNS)
    for name in experiments():
        keys.update(dict.fromkeys(experiment_file(name).get("columns") or ()))
    return tuple(keys)


TABLE_KEYS = ("run_id", "source", "run_rows", "probe", "metric", "value")  # every table has these columns


# ---------------------------------------------------------------------------- one run's rows
def run_id_of(run_dir: Path) -> str:
    """<experiment folder>/<run folder>: unique within a sweep."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def tidy_rows(rows: list[dict], run_id: str, run_config: dict, status: dict | None = None) -> list[dict]:
    """Rows with the run's identity: run_id, regime, seed, the swept config values and its status."""
    flat = flatten(run_config)
    meta = {"run_id": run_id, "regime": flat.get("regime.name", ""), "seed": flat.get("seed", "")}
    meta.update({k: flat.get(k, "") for k in swept_keys()})
    if "model.myopic" in flat:  # a world-text or quest model (not a scripted agent)
        meta["cognition"] = cognition(bool(flat["model.myopic"]), int(flat.get("model.n_future_heads") or 0))
    meta["status"] = (status or {}).get("status", "")
    return [{**meta, **r} for r in rows]


def curve_rows(history: list[dict]) -> list[dict]:
    """The evaluations made during training (every trainer.eval_every steps), a quest agent's returns and
    the forecasts at prophecy markers (at every logging step) as curve rows."""
    rows = []
    for h in history:
        for key in ("probe/calibration/kl", "probe/calibration/excess_nll"):
            if key in h:
                rows.append({"probe": "curve/calibration", "metric": key.rsplit("/", 1)[1], "value": h[key],
                             "ci_low": math.nan, "ci_high": math.nan, "step": h["step"],
                             "tokens": h.get("perf/tokens_seen", math.nan)})
        for key in h:  # the forecast at each prophecy marker (F9), by its start
            start = forecast_start(key)
            if start is not None:
                rows.append({"probe": "curve/prophecy", "metric": "forecast", "start": start,
                             "value": h[key], "ci_low": math.nan, "ci_high": math.nan, "step": h["step"]})
        if "env/return" in h:  # a quest agent's mean episode return over its rollouts
            rows.append({"probe": "curve/quest", "metric": "return", "value": h["env/return"], "ci_low": math.nan,
                         "ci_high": math.nan, "step": h["step"], "env_steps": h.get("perf/env_steps_seen", math.nan)})
    return rows


STALE = "stale"  # the status of a run whose start checkpoints changed after it started from them


def status_rows(status: dict) -> list[dict]:
    """1 for the run's final status (finished / collapsed / failed / running), with the step it ended at."""
    return [{"probe": "run", "metric": status.get("status", "unknown"), "value": 1.0, "ci_low": math.nan,
             "ci_high": math.nan, "step": status.get("step", math.nan)}]


def source_digest(run_dir: Path) -> str:
    """What a run's rows are computed from: its checkpoint's sha256 (the checkpoint's first line), or for a
    run without a checkpoint (a scripted or SB3 agent, a failed job) the sha256 of its summary.json and of
    the SB3 policy file where there is one."""
    from instrumentality.training.checkpoint import CHECKPOINT_NAME, checkpoint_digest

    digest = checkpoint_digest(run_dir / CHECKPOINT_NAME)
    if digest is not None:
        return digest
    h = hashlib.sha256()
    for name in ("summary.json", "ppo.zip"):
        if (run_dir / name).exists():
            h.update(name.encode() + (run_dir / name).read_bytes())
    return h.hexdigest()


def write_run_rows(run_dir: Path, rows: list[dict], source: str | None = None, warn=None) -> pd.DataFrame:
    """Store a run's tidy rows in its folder (atomically), tagged with what they were computed from, and
    their per-item values (rows with `items`) in items.npz beside them. Returns the rows as stored (with
    source and run_rows). A folder that cannot be written (read-only) gets a warning through `warn` and the
    rows are returned unstored (computed again next time; without items.npz their arms' item errors are
    added in quadrature)."""
    source = source or source_digest(run_dir)
    items = {f"{r['probe']}|{r['metric']}": np.asarray(r[ITEMS], dtype=np.float64) for r in rows
             if r.get(ITEMS) is not None}
    rows = [{k: v for k, v in r.items() if k != ITEMS} for r in rows]
    df = pd.DataFrame(rows)
    df.insert(1, "source", source[:16])
    df.insert(2, "run_rows", len(df))
    try:
        write_atomic(run_dir / ITEMS_FILE, npz_bytes(items))
        write_atomic(run_dir / ROWS, df.to_csv(index=False))
        write_json(run_dir / ROWS_META, {"source": source, "rows": len(df), "eval_version": EVAL_VERSION})
    except OSError as e:
        if warn is None:
            raise
        warn(f"{run_dir}: its rows could not be stored in the folder ({e.strerror or e}); they are in the "
             "table, computed again at the next evaluation")
    return df


def read_run_rows(run_dir: Path, source: str | None = None) -> pd.DataFrame | None:
    """A run's stored rows if they are complete and were computed from the run's current checkpoint (or
    summary; its digest `source` where the caller has it) by this evaluation code; None otherwise (they
    must be computed again)."""
    if not (run_dir / ROWS_META).exists() or not (run_dir / ROWS).exists():
        return None
    try:
        meta = read_json(run_dir / ROWS_META, "rows record", dict)
        if meta.get("eval_version") != EVAL_VERSION or meta.get("source") != (source or source_digest(run_dir)):
            return None
        df = pd.read_csv(run_dir / ROWS, float_precision="round_trip")
    except (DataFileError, ValueError, OSError):
        return None
    if len(df) != meta.get("rows") or not _complete(df).all():
        return None
    # a folder copied or renamed keeps its rows, computed from the same checkpoint: they are this folder's
    return df.assign(run_id=run_id_of(run_dir)) if "run_id" in df else None


# ---------------------------------------------------------------------------- the table
def _complete(df: pd.DataFrame) -> pd.Series:
    """Per run id: whether its rows are all there (as many as run_rows says) and from one source."""
    g = df.groupby(df["run_id"].astype(str))
    n_rows = pd.to_numeric(df["run_rows"], errors="coerce")
    return (g.size() == n_rows.groupby(df["run_id"].astype(str)).max()) & (g["source"].nunique(dropna=False) == 1) \
        & (n_rows.groupby(df["run_id"].astype(str)).nunique() == 1) & df["metric"].notna().groupby(
            df["run_id"].astype(str)).all()


def read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The runs of a results table that are complete, and a list of what was wrong with the rest (empty
    when nothing was). A table that cannot be read at all counts as empty, with the reason."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(), []
    raw = path.read_bytes()
    problems = []
    if not raw.endswith(b"\n"):  # cut in the middle of a row: that row is not data
        problems.append(f"{path} ends in the middle of a row")
        raw = raw[:raw.rfind(b"\n") + 1]
    try:
        # round_trip: pandas' default parser can change a float's last digits; the table is read exactly
        df = pd.read_csv(io.BytesIO(raw), low_memory=False, float_precision="round_trip")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        return pd.DataFrame(), [f"{path} cannot be read as CSV ({str(e).splitlines()[0]})"]
    missing = [c for c in TABLE_KEYS if c not in df.columns]
    if missing:
        return pd.DataFrame(), [f"{path} lacks the column(s) {', '.join(missing)} (not a results table of this "
                                "suite, or its header is damaged)"]
    ok = _complete(df)
    bad = sorted(ok.index[~ok])
    if bad:
        problems.append(f"{path}: the rows of {len(bad)} run(s) are incomplete or mixed ({', '.join(bad[:5])}"
                        + (", ..." if len(bad) > 5 else "") + ")")
    return df[df["run_id"].astype(str).isin(set(ok.index[ok]))], problems


def update_table(path: Path, runs: dict[str, pd.DataFrame], keep_only: set[str] | None = None,
                 warn=print) -> pd.DataFrame:
    """Put each run's rows (run id -> its rows) into the table at `path`, replacing the rows it had there;
    with `keep_only`, drop the runs not in it. Damaged runs already in the table are dropped with a
    warning (they come back when their folders are evaluated). Read-modify-write under the table's lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, what="results table"):
        old, problems = read_table(path)
        for p in problems:
            warn(f"warning: {p}; those rows are dropped and rebuilt from their run folders where given")
        if not old.empty:
            old = old[~old["run_id"].astype(str).isin(set(runs))]
            if keep_only is not None:
                old = old[old["run_id"].astype(str).isin(keep_only)]
        parts = [d for d in (old, *runs.values()) if not d.empty]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(TABLE_KEYS))
        write_atomic(path, table.to_csv(index=False))
    return table


def items_path(table: Path) -> Path:
    """Where a results table's per-item values live: results.csv -> results.items.npz beside it."""
    return Path(table).with_suffix(".items.npz")


def read_run_items(run_dir: Path) -> dict[str, np.ndarray]:
    """A run's per-item values ({"<probe>|<metric>": values}); empty where it has none."""
    try:
        with np.load(run_dir / ITEMS_FILE) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return {}


def update_items(table: Path, run_dirs: dict[str, Path], df: pd.DataFrame | None = None) -> Path:
    """Put the per-item values of the runs now in the table (run id -> its folder) beside it, keyed
    "<run id>|<source>|<probe>|<metric>": a run's items count only while its source (its checkpoint's
    digest) is the table's. Items of runs no longer in the table are dropped. `df`: the table as just
    written (update_table's result), else it is read."""
    table = Path(table)
    path = items_path(table)
    df = read_table(table)[0] if df is None else df
    sources = dict(zip(df["run_id"].astype(str), df["source"].astype(str))) if not df.empty else {}
    keep = {}
    if path.exists():
        try:
            with np.load(path) as z:  # kept: runs not evaluated now whose source is still the table's
                keep = {k: z[k] for k in z.files if k.split("|")[0] not in run_dirs
                        and sources.get(k.split("|")[0]) == k.split("|")[1]}
        except (OSError, ValueError):
            keep = {}
    for run_id, run_dir in run_dirs.items():
        if run_id in sources:
            keep.update({f"{run_id}|{sources[run_id]}|{k}": v for k, v in read_run_items(run_dir).items()})
    write_atomic(path, npz_bytes(keep))
    return path


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of a compressed .npz file (written atomically by the caller)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    return buffer.getvalue()


def load_items(table: Path, df: pd.DataFrame) -> dict[tuple[str, str, str], np.ndarray]:
    """The per-item values beside a results table whose run's source matches the table's rows:
    {(run id, probe, metric): values}. Empty where there is no items file (a table from before them)."""
    path = items_path(table)
    if not path.exists() or df.empty:
        return {}
    sources = dict(zip(df["run_id"].astype(str), df["source"].astype(str)))
    out = {}
    with np.load(path) as z:
        for k in z.files:
            run_id, source, probe, metric = k.split("|", 3)
            if sources.get(run_id) == source:
                out[(run_id, probe, metric)] = z[k]
    return out


def load_table(path: str | Path) -> pd.DataFrame:
    """A results table for reading (report, figures): its complete runs; a table that cannot be read raises
    DataFileError naming it, and damaged runs are left out with a warning."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no results table here; run `make sweep` (or the evaluation CLI) first")
    if path.is_dir():
        raise DataFileError(f"{path} is a folder; give the results table's path (e.g. {path / 'results.csv'})")
    df, problems = read_table(path)
    if df.empty and problems:
        raise DataFileError("; ".join(problems))
    if df.empty:
        raise DataFileError(f"{path}: the results table is empty; run `make sweep` (or the evaluation CLI) first")
    for p in problems:
        print(f"warning: {p}; those runs are left out (re-run the evaluation to rebuild them)")
    return df
