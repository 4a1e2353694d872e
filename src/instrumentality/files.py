"""Files the suite writes and reads: atomic writes, locks, and reads that name the file when it is bad.

Every file another process may read (summary.json, a run's rows, the results table, caches) is written to a
uniquely named temporary file beside it and moved over it, so a reader sees the old file or the new one,
never half of one, and two writers never share a temporary name. Locks are advisory `flock` locks on a
`<name>.lock` file beside the target: the kernel releases them when the holder dies, so a killed process
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

from instrumentality.errors import DataFileError


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a unique temporary file in the same folder, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes the file private; the suite's files are ordinary ones
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, **kwargs) + "\n")


def read_json(path: str | os.PathLike, what: str = "file", kind: type | None = None):
    """The JSON in `path`; a missing, unreadable or damaged file, or (given `kind`, e.g. dict) one that holds
    another kind of value, raises DataFileError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: cannot read this {what} ({e})") from e
    try:
        value = json.loads(text)
    except ValueError as e:
        raise DataFileError(f"{path}: this {what} is not valid JSON ({e}); delete it to start over") from e
    if kind is not None and not isinstance(value, kind):
        raise DataFileError(f"{path}: this {what} must hold a JSON {'object' if kind is dict else kind.__name__}, "
                            f"not a {type(value).__name__}; delete it to start over")
    return value


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete temporary files that writes of `name` in `folder` left behind (a writer killed mid-write).
    Call it only while holding the folder's lock: then no live writer owns them."""
    stale = [p for p in Path(folder).glob(f".{name}.*.tmp")] + list(Path(folder).glob(f"{name}.tmp*"))
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


class Locked(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait_s: float | None = None, what: str = "file"):
    """Hold an exclusive lock on `path` (a `<path>.lock` file). wait_s=None waits as long as it takes;
    otherwise Locked is raised after wait_s seconds, naming the holder's pid where it wrote one."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_NOFOLLOW: a lock file that is a link would have the pid written through it into another file
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataFileError(f"{lock_path} is a symbolic link: this suite writes only the files of its own "
                                "folders; remove the link") from None
        raise
    try:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or deadline is None:
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise Locked(f"{path}: this {what} is in use by another process (pid {holder})") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
