"""Atomic file writes, shared by checkpoints, metrics and figures."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path, write: Callable, mode: str = "wb") -> Path:
    """Write ``path`` by calling ``write(file)`` on a temporary file, then renaming it into place.

    The temporary file lives in the same folder (a rename across file systems is not
    atomic), is flushed and fsynced before ``os.replace`` (atomic on POSIX and Windows),
    and is removed if anything fails — a KeyboardInterrupt included — so a crash leaves
    either the old file or the new one at ``path``, never a partial one, and no stray
    temporary file. ``open(..., "x")`` rather than ``tempfile.mkstemp``: mkstemp's 0600
    mode would survive the rename, where a normal file honours the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
