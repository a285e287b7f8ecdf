"""Atomic file writes, shared by checkpoints, metrics and figures; the run folder's lock."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["check_run_folder", "atomic_write", "remove_stray_temporaries", "FolderLock", "FolderBusy", "make_new_folder", "LOCK_FILE"]


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


def remove_stray_temporaries(folder) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` leaves when its process is killed
    (``.<name>.<pid>.<hex>.tmp``); returns them. Call it only while holding the folder's lock, when
    no other process can be writing one."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(".*.tmp"):
        parts = p.name[1:-len(".tmp")].rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and len(parts[2]) == 32 and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


LOCK_FILE = ".rnngrad.lock"


class FolderBusy(ValueError):
    """Another process is writing into the run folder."""


class FolderLock:
    """An exclusive lock on a run folder, held while one process writes into it.

    ``fcntl.flock`` on ``folder/.rnngrad.lock``: an operating-system lock that dies with its
    process, so a run killed with SIGKILL never leaves a stale lock behind (the file itself stays,
    empty of meaning, and the next run takes the lock at once). The holder writes its process id
    into the file so that a refused second writer can name it. Where ``fcntl`` does not exist
    (Windows), no lock is taken.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "FolderLock":
        if self._fh is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip()
            fh.close()
            # Its PID is written just after the lock is taken: a holder caught in between has none yet.
            holder = f"process {pid}" if pid else "another process (which has only just started)"
            raise FolderBusy(f"run folder {str(self.folder)!r} is in use by {holder}, which is still "
                             f"writing into it; wait for it to finish (then --resume it), or choose another "
                             f"folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the flock
            self._fh = None


def check_run_folder(path, name: str) -> Path:
    """``path`` as a run folder: an existing folder or a name that can become one. Raise
    ValueError naming the argument (``name``, e.g. "--out") for a file or a dangling link."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{name} {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not "
                         f"exist; create that folder first, or choose another {name}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file, not a folder; the run writes several files into "
                         f"a folder: choose a folder name (e.g. runs/{path.stem or 'run'})")
    for parent in path.parents:  # the first existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"{name} {str(path)!r} lies under {str(parent)!r}, which is not a folder; "
                                 f"choose another {name}")
            break
    return path


def make_new_folder(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, ... if it exists: mkdir either creates
    the folder or fails, so two runs started in the same second never share one."""
    path, n = Path(base), 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = Path(base).with_name(f"{Path(base).name}-{n}")
