"""Output directories: one run writes a directory at a time, finds out at once that it cannot, and
never replaces what is there without being asked.

Every command that writes a directory (`train`, `search`, `export`, `fit-lm-head`, `demo`) holds
it with `claim_output` for its whole run, before any model is loaded:

1. create it (and remember whether it did, to remove it again if the run fails and leaves it empty);
2. lock it: an advisory `fcntl.flock` on the directory (exclusive) and on its ancestors (shared). The
   kernel drops the locks when the process ends, killed or not, so a crash never leaves a directory
   locked; a second run into the directory, into a folder inside it or into one that holds it fails
   at once, naming the first one's pid (from `DIR/.prompttune.lock`, which only informs);
3. prove it is writable (write and remove a probe file);
4. refuse to replace the command's own files unless `overwrite`, and files of the same names that
   prompttune did not write (a model's `config.json`) even then.

`require_free_space` then refuses a run whose estimated output does not fit the disk, before it
trains. Errors are one `OutputError` line naming the directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .files import make_dirs, read_json_object, remove_empty_dirs, remove_staging_leftovers, text_writer, write_together

LOCK = ".prompttune.lock"
"""Holds the pid of the run writing the directory, for the message a second run gets (the lock
itself is on the directory: deleting this file by hand unlocks nothing)."""

_HELD: dict[Path, int] = {}  # directories this process holds (resolved) → their locked descriptor


@contextmanager
def claim_output(directory: str | Path, *, owned: Sequence[str] = (), what: str = "", overwrite: bool = False,
                 is_ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Hold `directory` for one run (create, lock, probe a write); yield it as a Path.

    `owned` names the command's files (relative to `directory`); if any exists and not
    `overwrite`, refuse: "runs/x already holds a task artifact (config.json); pass --overwrite to
    replace it". `is_ours(directory)` tells whether such files were written by prompttune: files of
    the same names written by anything else (a model's own `config.json`) are refused even with
    `overwrite`. On leaving, the lock is released and a directory this call created is removed if
    the run left it empty.

    The lock is an advisory `flock` on the directory itself (exclusive) and on each of its ancestors
    (shared), so no other run writes into the directory, into a directory inside it, or into one
    that holds it; the kernel releases the locks when the process ends, killed or not.

    Raises `OutputError` (no directory given, cannot create or write it, it is in use, it holds
    `owned` files).

    Example:
        >>> with claim_output("runs/x", owned=["config.json"], what="a task artifact") as out:
        ...     save_artifact(out, spec, clf, fp)
    """
    if not str(directory).strip():
        raise OutputError("the output directory is empty text; name a directory, e.g. --out runs/sst2")
    directory = Path(directory)
    created = make_dirs(directory)
    try:
        with _locked(directory):
            _probe_write(directory)
            remove_staging_leftovers(directory)  # of a run killed mid-save: we hold the lock, no save is running
            found = [name for name in owned if (directory / name).exists()]
            if found and is_ours is not None and not is_ours(directory):
                raise OutputError(f"{directory} holds {', '.join(found)} that prompttune did not write (is it a model's or "
                                  "another tool's directory?); write elsewhere")
            if found and not overwrite:
                raise OutputError(f"{directory} already holds {what} ({', '.join(found)}); pass --overwrite to replace it")
            yield directory
    finally:
        remove_empty_dirs(created)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Lock `directory` (exclusive) and its ancestors (shared) for the duration, without waiting.

    Ancestors this process holds itself (a demo holding its folder while it trains into sub-folders)
    are not locked again: the locks are per open file, so that would block the process itself.
    """
    real = directory.resolve()
    fds: list[int] = []
    try:
        _lock_shared(real.parents, real, fds)
        fds.append(_flock(real, fcntl.LOCK_EX, real))
        _HELD[real] = fds[-1]
        _write_pid(real)
        try:
            yield
        finally:
            del _HELD[real]
            (real / LOCK).unlink(missing_ok=True)
    finally:
        for fd in fds:
            os.close(fd)


def _lock_shared(folders: Sequence[Path], claimed: Path, fds: list[int]) -> None:
    """Lock `folders` shared, outermost first, adding each descriptor to `fds` (the caller closes them);
    folders this process holds itself (`_HELD`) are skipped."""
    for folder in reversed(folders):
        if folder not in _HELD:
            fds.append(_flock(folder, fcntl.LOCK_SH, claimed))


def _nearest_folder(path: Path) -> Path:
    """The nearest of `path`'s ancestors that exists."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _flock(path: Path, mode: int, claimed: Path) -> int:
    """Open the directory `path` and `flock` it with `mode` without waiting; return the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _read_pid(path)
        who = f"pid {holder}" if holder else "pid unknown"
        if path == claimed:
            raise OutputError(f"{claimed} is in use by another prompttune run ({who}), writing in it or in a folder inside "
                              "it; wait for it to finish or write elsewhere") from None
        raise OutputError(f"{claimed} is inside {path}, which another prompttune run ({who}) is writing; wait for it to "
                          "finish or write elsewhere") from None
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot lock {path}: {e.strerror or e}") from None
    return fd


def check_output_file(path: str | Path, *, overwrite: bool = False) -> Path:
    """Before a model loads: refuse to write the file `path` where it cannot be written, or where a
    file already is unless `overwrite` (the file itself is then written atomically, `files.write_together`).
    Its folder need not exist yet: the nearest folder that does must take a write.

    Raises `OutputError`: "preds.jsonl already exists; pass --overwrite to replace it".
    """
    path = Path(path)
    if not path.name or path.is_dir():
        raise OutputError(f"{path} is a directory; name a file to write, e.g. --out {path / 'predictions.jsonl'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it")
    folder = _nearest_folder(path)
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is not a directory")
    _probe_write(folder)
    return path


@contextmanager
def hold_file_output(path: str | Path) -> Iterator[None]:
    """While a command works towards writing the file `path`: a shared lock on the nearest folder of it
    that exists and on that folder's ancestors, so a run that holds one of them (`claim_output`) refuses
    it, and it refuses such a run, in one line; other file writers share them."""
    folder = _nearest_folder(Path(path).resolve())
    fds: list[int] = []
    try:
        _lock_shared([folder, *folder.parents], folder, fds)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def publish_new_file(path: str | Path, text: str) -> None:
    """Write `text` to the file `path`, which must not exist: written beside it and linked into place
    in one step, so a file that appeared meanwhile (another run, the user) is never replaced.

    Raises `OutputError`: "preds.jsonl appeared while this run worked; pass --overwrite to replace it".
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_together(path.parent, {staging.name: text_writer(text)})
    try:
        os.link(staging, path)
    except FileExistsError:
        raise OutputError(f"{path} appeared while this run worked; pass --overwrite to replace it") from None
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        staging.unlink(missing_ok=True)


def json_marked(path: Path, key: str) -> bool:
    """Whether `path` is a JSON object holding `key`: the mark prompttune puts in the file that
    describes each of its outputs (`prompttune_version` in an artifact's `config.json`...)."""
    try:
        return key in read_json_object(path)
    except OutputError:
        return False


def _write_pid(directory: Path) -> None:
    try:
        (directory / LOCK).write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise OutputError(f"cannot write in {directory}: {e.strerror or e}") from None


def _read_pid(directory: Path) -> str:
    try:
        return (directory / LOCK).read_text().strip()[:32]
    except (OSError, UnicodeDecodeError):
        return ""


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
