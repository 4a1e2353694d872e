"""The claims file, configs/claims.yaml: every claim's statement, the row it stands or falls on, and each
row's metric, prediction and the reason for its threshold, declared before the runs are measured.

A row is named `<claim>.<key>` (C2.ratio, C8.cognition[myopic]); the claim families compute its value and
take its text from here (`spec`). The report prints the file's digest and whether the file changed after
the runs it reports (`file_status`).
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from instrumentality.configs import CONFIG_DIR

CLAIMS_FILE = Path(CONFIG_DIR) / "claims.yaml"


@dataclass(frozen=True)
class RowSpec:
    row: str  # <claim>.<key>
    metric: str  # may hold {placeholders} the family fills
    prediction: str  # "< x", "> x" or "abs < x" (x may be a placeholder)
    reason: str
    primary: bool


@dataclass(frozen=True)
class ClaimSpec:
    claim: str
    statement: str
    primary: str  # the key of the row the claim stands or falls on
    rows: dict[str, RowSpec]


def claims(path: Path | None = None) -> dict[str, ClaimSpec]:
    """The claims file (CLAIMS_FILE unless `path`), checked: every claim has a statement, a primary row among
    its rows, and every row a metric, a prediction of a known form and a reason."""
    return _read(Path(path or CLAIMS_FILE))


@cache
def _read(path: Path) -> dict[str, ClaimSpec]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the claims file ({e})") from e
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: the claims file must map claim ids (C1, C2, ...) to claims")
    out = {}
    for cid, c in raw.items():
        where = f"{path}: claim {cid}"
        missing = [k for k in ("statement", "primary", "rows") if k not in (c or {})]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        rows = {}
        for key, r in c["rows"].items():
            gaps = [k for k in ("metric", "prediction", "reason") if not (r or {}).get(k)]
            if gaps:
                raise ValueError(f"{where}, row {key} lacks {', '.join(gaps)}")
            if r["prediction"].split()[0] not in ("<", ">", "abs"):
                raise ValueError(f"{where}, row {key}: prediction {r['prediction']!r} is not '< x', '> x' or 'abs < x'")
            rows[key] = RowSpec(f"{cid}.{key}", " ".join(r["metric"].split()), r["prediction"],
                                " ".join(r["reason"].split()), key == c["primary"])
        if c["primary"] not in rows:
            raise ValueError(f"{where}: its primary row {c['primary']!r} is not among its rows ({', '.join(rows)})")
        out[str(cid)] = ClaimSpec(str(cid), " ".join(str(c["statement"]).split()), c["primary"], rows)
    return out


def spec(row: str) -> RowSpec:
    """A declared row by its name <claim>.<key>; an undeclared row is an error (declare it first)."""
    cid, _, key = row.partition(".")
    declared = claims()
    if cid not in declared or key not in declared[cid].rows:
        raise KeyError(f"row {row!r} is not declared in {CLAIMS_FILE.name} (rows of {cid}: "
                       f"{', '.join(declared[cid].rows) if cid in declared else 'no such claim'})")
    return declared[cid].rows[key]


def digest(path: Path | None = None) -> str:
    """The claims file's sha256 (first 16 hex digits), as the report prints it."""
    return hashlib.sha256(Path(path or CLAIMS_FILE).read_bytes()).hexdigest()[:16]


def file_status(runs_revision: str | None, path: Path | None = None, runs_dirty: bool = False) -> str:
    """Whether the claims file changed after the runs of a table: compares its last commit with the runs'
    git revision (a sentence for the report). Runs made from a working tree with uncommitted changes
    (`runs_dirty`) may have met another version of the file than any commit holds, and the sentence says so."""
    path = Path(path or CLAIMS_FILE)
    status = _file_status(runs_revision, path)
    return status + ("; the runs were made from uncommitted changes, so the file they met is not on record"
                     if runs_dirty else "")


def _file_status(runs_revision: str | None, path: Path) -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(path).parent)

    try:
        last = git("log", "-1", "--format=%h %cs", "--", Path(path).name)
        dirty = git("status", "--porcelain", "--", Path(path).name)
    except OSError:
        return "whether it changed after the runs cannot be checked here (no git)"
    if last.returncode != 0 or not last.stdout.strip():
        return "it is not committed, so it changed after any runs"
    commit, date = last.stdout.split()
    if dirty.stdout.strip():
        return f"it has uncommitted changes since {commit} ({date}): it changed after the runs"
    if not runs_revision or runs_revision == "unknown":
        return f"last changed at {commit} ({date}); the runs' revision is unknown"
    before = git("merge-base", "--is-ancestor", commit, runs_revision)
    if before.returncode == 0:
        return f"last changed at {commit} ({date}), before the runs (at {runs_revision}): declared before measured"
    if before.returncode == 1:
        return f"last changed at {commit} ({date}), **after the runs** (at {runs_revision}): its rows were not all " \
               "declared before these runs were measured"
    return f"last changed at {commit} ({date}); the runs' revision {runs_revision} is not in this repository"
