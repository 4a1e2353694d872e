"""Checkpoint files: a sha256 line, then the torch payload (tensors and plain containers only, read back
with `torch.load(weights_only=True)`: a checkpoint is data, never code)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from instrumentality.files import write_atomic

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


def model_from_checkpoint(ck: dict):
    """The GPT a loaded checkpoint holds (its `model_config` and weights), in eval mode."""
    from instrumentality.model import GPT, GPTConfig

    model = GPT(GPTConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.eval()
