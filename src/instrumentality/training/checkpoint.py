"""Checkpoint files: a sha256 line, then the torch payload (tensors and plain containers only, read back
with `torch.load(weights_only=True)`: a checkpoint is data, never code)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from instrumentality.files import read_json, write_atomic

CHECKPOINT_NAME = "checkpoint.pt"  # in a run folder


class CheckpointError(RuntimeError):
    """A checkpoint could not be read; nothing was overwritten."""


def save_checkpoint(path: str | os.PathLike, payload: dict):
    """Atomic write: a sha256 line, then the torch payload, through a unique temporary file that is renamed."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    write_atomic(path, hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def checkpoint_digest(path: str | os.PathLike) -> str | None:
    """The sha256 of a checkpoint's payload, where the file is intact (its first line matches the payload);
    None otherwise. It identifies the weights that a run's rows were computed from."""
    try:
        digest, _, data = Path(path).read_bytes().partition(b"\n")
    except OSError:
        return None
    return digest.decode() if len(digest) == 64 and hashlib.sha256(data).hexdigest().encode() == digest else None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    digest, _, data = raw.partition(b"\n")
    if len(digest) != 64 or hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch or truncated); "
                              "delete its run folder to start over, or give the run another name (run_name=...)")
    try:  # tensors and plain containers only: a checkpoint is data, never code
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} could not be loaded as tensors and plain data "
                              f"(torch.load weights_only=True: {first}); it was not made by this suite's trainer, "
                              "or it is damaged: delete it to start over") from e


def load_start(path: str | os.PathLike, what: str, world=None, map_location="cpu") -> dict:
    """A checkpoint another run starts from (a reference model, an initialisation, a teacher), named by the
    setting `what`: it must load (load_checkpoint), be of a run that finished (not one stopped halfway, whose
    weights a later run of it would replace), and, given `world`, of the same world. Else ConfigError."""
    from instrumentality.errors import ConfigError
    from instrumentality.world import World, WorldConfig

    try:
        ck = load_checkpoint(path, map_location=map_location)
    except CheckpointError as e:
        raise ConfigError(f"{what}: {e}; train that run first: `make sweep` runs the experiments in order, or run the "
                          "experiment it comes from with --multirun (a single run writes a dated folder)") from None
    status = (ck.get("status") or {}).get("status")
    if status != "finished":
        raise ConfigError(f"{what}: {path} is a run that has not finished (status {status!r}); a run starts only "
                          "from a finished one: run it to the end first")
    saved = (ck.get("run_config") or {}).get("world")
    if world is not None and isinstance(saved, dict):
        fields = {f for f in WorldConfig.__dataclass_fields__}
        theirs = World(WorldConfig(**{k: v for k, v in saved.items() if k in fields}))
        if theirs.fingerprint() != world.fingerprint():
            raise ConfigError(f"{what}: {path} was trained on world {theirs.fingerprint()} (seed {theirs.cfg.seed}), "
                              f"this run's world is {world.fingerprint()} (seed {world.cfg.seed})")
    return ck


# ---------------------------------------------------------------------------- what a run started from
STARTS_NAME = "starts.json"  # in a run folder: the sha256 of each checkpoint the run started from


def start_checkpoints(config: dict) -> dict[str, str]:
    """The checkpoints a run starts from: each setting of its regime, and each of its `needs`, that names a
    checkpoint file (`regime.ref_checkpoint`, `regime.init_checkpoint`, `regime.source`, `needs.F1`, ...)."""
    found = {**{f"regime.{k}": v for k, v in (config.get("regime") or {}).items()},
             **{f"needs.{k}": v for k, v in (config.get("needs") or {}).items()}}
    return {k: v for k, v in found.items() if isinstance(v, str) and Path(v).name == CHECKPOINT_NAME}


def start_digests(config: dict, paths: dict[str, str] | None = None) -> dict[str, str | None]:
    """Setting -> the sha256 of the checkpoint it names now (None: missing or damaged)."""
    paths = start_checkpoints(config) if paths is None else paths
    digests = {path: checkpoint_digest(path) for path in set(paths.values())}
    return {k: digests[path] for k, path in paths.items()}


def changed_starts(run_dir: str | os.PathLike, config: dict) -> list[str]:
    """The settings whose checkpoint is no longer the one the run in `run_dir` started from (its STARTS_NAME
    record), as "<setting> (<path>)"; none for a run without the record (one older than it)."""
    record = Path(run_dir) / STARTS_NAME
    if not record.exists():
        return []
    recorded = read_json(record, "record of start checkpoints", dict)
    paths = start_checkpoints(config)
    now = start_digests(config, paths)
    return [f"{k} ({paths.get(k, '?')})" for k, digest in recorded.items() if now.get(k) != digest]


def model_from_checkpoint(ck: dict):
    """The GPT a loaded checkpoint holds (its `model_config` and weights), in eval mode."""
    from instrumentality.model import GPT, GPTConfig

    model = GPT(GPTConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.eval()
