"""Output directories: one run writes a directory at a time, finds out at once that it cannot, and
never replaces what is there without being asked.

Every command that writes a directory (`train`, `search`, `export`, `fit-lm-head`, `demo`) holds
it with `claim_output` for its whole run, before any model is loaded:

1. create it (and remember whether it did, to remove it again if the run fails and leaves it empty);
2. lock it: an advisory `fcntl.flock` on `DIR/.prompttune.lock`, which holds the holder's pid. The
   kernel drops the lock when its process ends, killed or not, so a crash never leaves a directory
   locked; a second run into the directory fails at once, naming the first one's pid;
3. prove it is writable (write and remove a probe file);
4. refuse to replace the command's own files unless `overwrite`.

`require_free_space` then refuses a run whose estimated output does not fit the disk, before it
trains. Errors are one `OutputError` line naming the directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .files import make_dirs, remove_empty_dirs, remove_staging_leftovers

LOCK = ".prompttune.lock"


@contextmanager
def claim_output(directory: str | Path, *, owned: Sequence[str] = (), what: str = "", overwrite: bool = False) -> Iterator[Path]:
    """Hold `directory` for one run (create, lock, probe a write); yield it as a Path.

    `owned` names the command's files (relative to `directory`); if any exists and not
    `overwrite`, refuse: "runs/x already holds a task artifact (config.json); pass --overwrite to
    replace it". On leaving, the lock is released and a directory this call created is removed
    if the run left it empty.

    Raises `OutputError` (cannot create or write the directory, it is in use, it holds `owned` files).

    Example:
        >>> with claim_output("runs/x", owned=["config.json"], what="a task artifact") as out:
        ...     save_artifact(out, spec, clf, fp)
    """
    directory = Path(directory)
    created = make_dirs(directory)
    try:
        fd = _lock(directory)
        try:
            _probe_write(directory)
            remove_staging_leftovers(directory)  # of a run killed mid-save: we hold the lock, no save is running
            found = [name for name in owned if (directory / name).exists()]
            if found and not overwrite:
                raise OutputError(f"{directory} already holds {what} ({', '.join(found)}); pass --overwrite to replace it")
            yield directory
        finally:
            _unlock(directory, fd)
    finally:
        remove_empty_dirs(created)


def _lock(directory: Path) -> int:
    """Take the directory's lock without waiting; return its file descriptor.

    The lock file is removed on release. A process that opened it just before that holds a lock on
    a file no longer in the directory once it gets the lock, so it checks that the path still names
    the file it locked, and starts again otherwise.
    """
    path = directory / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write in {directory}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputError(f"{directory} is in use by another prompttune run ({f'pid {holder}' if holder else 'pid unknown'}); "
                              "wait for it to finish or write elsewhere") from None
        except OSError as e:
            os.close(fd)
            raise OutputError(f"cannot lock {path}: {e.strerror or e}") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _unlock(directory: Path, fd: int) -> None:
    """Remove the lock file, then release the lock (in this order: see `_lock`)."""
    try:
        (directory / LOCK).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _probe_write(directory: Path) -> None:
    """Write and remove a small file: an unwritable directory fails here, before a model is loaded."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".prompttune-probe-", dir=directory)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write in {directory}: {e.strerror or e}") from None


def free_bytes(directory: Path) -> int:
    """Bytes free for an unprivileged writer on the filesystem of `directory`."""
    return shutil.disk_usage(directory).free


def require_free_space(directory: str | Path, needed: int, what: str) -> None:
    """Refuse to start a run that would fill the disk: `needed` bytes (an estimate of `what` it
    writes) must be free in `directory`.

    Raises `OutputError`: "runs/x has 1,024 bytes free; this run writes up to 9,437,184 bytes (...)".
    """
    free = free_bytes(Path(directory))
    if free < needed:
        raise OutputError(f"{directory} has {free:,} bytes free; this run writes up to {needed:,} bytes ({what}): "
                          "free some space or write elsewhere")
