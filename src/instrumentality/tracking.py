"""Experiment tracking over Weights & Biases, used the same way by every regime.

mode: "auto" = online when an API key is configured, offline otherwise (sync later with `wandb sync`);
"online", "offline", or "disabled" (unit tests, debug preset). Online falls back to offline, with one
warning line, when the server does not accept a connection within a few seconds or answers with an error.
A run folder keeps its W&B run id, so a resumed run continues its W&B run. Metrics are namespaced by the
caller: train/, probe/, probe_ci/ (the probes' 95% interval bounds), env/, perf/. A training run is found by
project (one per preset), group (its experiment arm: the run name without the seed), job type (its regime)
and tags.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import urlparse

from instrumentality.files import write_atomic

PROJECT = "instrumentality"  # configs/logger/wandb.yaml's logger.project


def wandb_project(preset: str | None, base: str = PROJECT) -> str:
    """Where a preset's runs go in W&B: one project per preset (`instrumentality-quick`), so that a quick
    sweep's runs never mix with a full sweep's; the base alone without a preset."""
    return f"{base}-{preset}" if preset else base


def wandb_group(experiment: str, arm: str) -> str:
    """A run's W&B group: its experiment and arm (the run name without its seed), e.g. F2/critic-truth-g1.0-H8."""
    return f"{experiment}/{re.sub(r'-s[0-9]+$', '', str(arm))}"


def git_revision(default: str = "unknown") -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return default


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; else what platform knows), for provenance records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_mode(mode: str) -> str:
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be one of auto, online, offline, disabled; got {mode!r}")
    if os.environ.get("WANDB_MODE") in ("disabled", "offline", "online"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the W&B server (WANDB_BASE_URL, else api.wandb.ai) accepts a TCP connection within timeout_s.
    The name lookup runs in a thread too: without a network it can hang far longer than the connect."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    result = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(result and result[0])


SECTIONS = ("train/*", "perf/*", "probe/*", "probe_ci/*", "env/*")  # the metric families a run logs
SUMMARIES = {"probe/*": "last,min,max", "env/*": "last,max"}  # the runs table's columns (else the last value alone)


class Tracker:
    """Thin wrapper: log scalars, tables and images to W&B; a no-op when disabled."""

    def __init__(self, mode: str = "auto", project: str = "instrumentality", group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, config: dict | None = None,
                 dir: str | os.PathLike = ".", run_id: str | None = None, job_type: str | None = None,
                 x_axis: str | None = None):
        """x_axis: the metric (e.g. perf/tokens_seen) that train/ and perf/ charts are drawn against; probe/
        charts keep the trainer step they were evaluated at."""
        self.mode = resolve_mode(mode)
        self.run = None
        if self.mode == "disabled":
            return
        if self.mode == "online" and not server_reachable():
            print("warning: the W&B server cannot be reached; logging offline instead (`wandb sync` the run "
                  "folder's wandb/ later)", file=sys.stderr, flush=True)
            self.mode = "offline"
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)

        def init(mode: str):
            return wandb.init(project=project, group=group, name=name, tags=[t for t in (tags or []) if t],
                              config=config, dir=str(dir), mode=mode,  # type: ignore[arg-type]
                              id=run_id, resume="allow", reinit="finish_previous", job_type=job_type,
                              settings=wandb.Settings(silent=True))

        try:
            self.run = init(self.mode)
        except Exception as e:  # noqa: BLE001 - whatever a server that answers with an error raises
            if self.mode != "online":
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"warning: the W&B server answered with an error ({type(e).__name__}: {first}); logging offline "
                  "instead (`wandb sync` the run folder's wandb/ later)", file=sys.stderr, flush=True)
            self.mode = "offline"
            self.run = init(self.mode)
        if x_axis is not None:
            self.run.define_metric(x_axis)
            for section in SECTIONS:  # every family against the same x-axis (its last value where one is not logged)
                self.run.define_metric(section, step_metric=x_axis, summary=SUMMARIES.get(section))

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict, step: int):
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: list[dict], step: int | None = None):
        if self.run is not None and rows:
            import wandb

            cols = [c for c in rows[0] if c != "items"]  # per-item arrays stay beside the results table
            self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])},
                         step=step)

    def log_image(self, key: str, path: str | os.PathLike, step: int | None = None):
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def log_artifact(self, name: str, kind: str, paths: list, description: str = "", metadata: dict | None = None,
                     aliases: list[str] | None = None):
        """Files (and folders) as one W&B artifact of type `kind` (a trained model: "model"), with `metadata`
        and `aliases` (e.g. "final"); missing paths are left out."""
        if self.run is None:
            return
        self.run.log_artifact(file_artifact(name, kind, paths, description, metadata), aliases=aliases)

    def use_artifacts(self, artifacts: list):
        """Declare the artifacts (file_artifact of the same files as their producer logged) this run reads:
        the W&B lineage from each training run to it, matched by content. W&B records lineage online only:
        offline, the run's config lists them (`uses`: name and content digest) instead."""
        if self.run is None or not artifacts:
            return
        if self.mode == "offline":
            self.run.config.update({"uses": [f"{a.name}@{a.digest}" for a in artifacts]}, allow_val_change=True)
            return
        for artifact in artifacts:
            self.run.use_artifact(artifact)

    def summary(self, values: dict):
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self):
        if self.run is not None:
            self.run.finish()
            self.run = None


def file_artifact(name: str, kind: str, paths: list, description: str = "", metadata: dict | None = None,
                  copy: bool = True):
    """A W&B artifact of these files (and folders); missing paths are left out. Made from the same files, two
    are one artifact version (W&B names a version by its content). `copy`: the files are copied for upload
    (a checkpoint trained on later does not change what was logged); else only read for their digest."""
    import wandb

    artifact = wandb.Artifact(re.sub(r"[^\w.-]+", "-", name), type=kind, description=description,
                              metadata=metadata)
    for path in map(Path, paths):
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        elif path.exists():
            artifact.add_file(str(path), policy="mutable" if copy else "immutable")
    return artifact


def wandb_run_id(out_dir: Path) -> str:
    """The W&B run id of this run folder, made once and kept, so that a resumed run continues its W&B run."""
    path = out_dir / "wandb_run_id"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    write_atomic(path, run_id + "\n")
    return run_id
