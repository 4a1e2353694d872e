"""Experiment tracking over Weights & Biases, used the same way by every regime.

mode: "auto" = online when an API key is configured, offline otherwise (sync later with `wandb sync`);
"online", "offline", or "disabled" (unit tests, debug preset). Metrics are namespaced by the caller:
train/, probe/, env/, perf/.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_revision(default: str = "unknown") -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return default


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


class Tracker:
    """Thin wrapper: log scalars, tables and images to W&B; a no-op when disabled."""

    def __init__(self, mode: str = "auto", project: str = "instrumentality", group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, config: dict | None = None,
                 dir: str | os.PathLike = ".", run_id: str | None = None):
        self.mode = resolve_mode(mode)
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, group=group, name=name, tags=[t for t in (tags or []) if t],
                              config=config, dir=str(dir), mode=self.mode, id=run_id, resume="allow",
                              reinit="finish_previous", settings=wandb.Settings(silent=True))

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict, step: int):
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: list[dict], step: int):
        if self.run is not None and rows:
            import wandb

            cols = list(rows[0].keys())
            self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])},
                         step=step)

    def log_image(self, key: str, path: str | os.PathLike, step: int | None = None):
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def summary(self, values: dict):
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self):
        if self.run is not None:
            self.run.finish()
            self.run = None
