"""Writing files so that nothing is half-written: a save either completes or leaves the previous
files untouched, and files that belong together (weights and the config that names their
checksum) are replaced together.

Every write goes through `write_together`: all files are written and fsynced in a staging folder
inside the target directory first, where running out of disk or permission fails before anything
is replaced; then they are renamed into place. Errors are one `OutputError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import OutputError, PromptTuneError

STAGING_PREFIX = ".prompttune-staging-"

Writer = Callable[[Path], None]
"""Writes one file's content at the path it is given (a path in the staging folder)."""


def _dump_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _dump_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _dump_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    save_file(tensors, str(path), metadata=metadata)


def json_writer(obj) -> Writer:
    """A writer of `obj` as indented UTF-8 JSON."""
    return lambda path: _dump_json(path, obj)


def text_writer(text: str) -> Writer:
    """A writer of `text` as UTF-8."""
    return lambda path: _dump_text(path, text)


def bytes_writer(data: bytes) -> Writer:
    """A writer of `data` as it is (a copy of a file read beforehand, e.g. a fitted head's weights)."""
    return lambda path: path.write_bytes(data)


def safetensors_writer(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Writer:
    """A writer of `tensors` as a safetensors file (contiguous CPU copies: safetensors refuses views
    that share storage, and a copy taken now is what is saved even if training goes on)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return lambda path: _dump_safetensors(path, tensors, metadata)


def write_together(directory: str | Path, files: dict[str, Writer], *, replaces: Iterable[str] = ()) -> None:
    """Write `files` (name → writer) into `directory` so that they replace the files there together,
    or not at all.

    Each file is written and fsynced in a staging folder inside `directory`, in order (a later writer
    may read an earlier file from the staging folder, e.g. to record its checksum). Only when all of
    that I/O succeeded are the files renamed into place, in order (renames within one directory
    need no space), and the directory fsynced. Put the file that describes the others last (config
    after weights): a reader sees the new config only once the new weights are in place. On any
    failure the files in `directory` are as they were, the staging folder is gone, and so is
    `directory` if this call created it. `replaces` names files that described what is replaced
    (an artifact's `eval.json`): they are removed once the new files are in place, not before.

    Raises `OutputError`: "cannot write runs/x/weights.safetensors: No space left on device".

    Example:
        >>> write_together("runs/x", {"weights.safetensors": safetensors_writer(tensors), "config.json": json_writer(config)})
    """
    directory = Path(directory)
    created = make_dirs(directory)
    target = directory
    mode = 0o666 & ~_umask()
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory))
        try:
            for name, write in files.items():
                target = directory / name
                write(staging / name)
                os.chmod(staging / name, mode)  # as any new file of the user's (safetensors writes 0600)
                _fsync(staging / name)
            for name in files:
                target = directory / name
                os.replace(staging / name, target)  # atomic on POSIX: readers see the old file or the new one
            for name in replaces:
                target = directory / name
                target.unlink(missing_ok=True)
            _fsync(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException as e:
        remove_empty_dirs(created)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from None
        if isinstance(e, SafetensorError):  # safetensors reports the disk's errors as its own
            found = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", str(e))
            raise OutputError(f"cannot write {target}: {found.group(1) if found else e}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json_object(path: str | Path, error: type[PromptTuneError] = OutputError) -> dict:
    """The JSON object in the file `path` (one prompttune wrote: a config, a state, a head's info).

    Raises `error` naming the file when it is unreadable, not UTF-8, not valid JSON (or nested too
    deeply to read), or holds something other than an object.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise error(f"{path} is not valid JSON: {e or 'nested too deeply'}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} holds {type(obj).__name__}, expected a JSON object; was it written by prompttune?")
    return obj


def write_json(path: str | Path, obj) -> None:
    """Write one JSON file atomically (see `write_together`)."""
    path = Path(path)
    write_together(path.parent, {path.name: json_writer(obj)})


def discard(directory: str | Path, names: Iterable[str]) -> None:
    """Remove the files `names` that prompttune wrote in `directory`, and any staging folder a killed
    save left there; then `directory` itself if nothing else is in it. Files of anyone else stay.

    Raises `OutputError` if a file cannot be removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for name in names:
        try:
            (directory / name).unlink(missing_ok=True)
        except OSError as e:
            raise OutputError(f"cannot remove {directory / name}: {e.strerror or e}") from None
    remove_staging_leftovers(directory)
    remove_empty_dirs([directory])


def remove_staging_leftovers(directory: Path) -> None:
    """Remove staging folders that a save killed half-way left in `directory` (call it only while
    no save into `directory` can be running, e.g. while holding its output lock)."""
    for leftover in directory.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; return those created, deepest first.

    Raises `OutputError`: "cannot create runs/x: Permission denied".
    """
    missing, d = [], directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {directory}: {e.strerror or e}") from None
    return missing


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove each directory of `dirs` (deepest first) while it is empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (`file_sha256`); of a directory (a saved Hugging Face dataset),
    the SHA-256 of the lines "relative/name<TAB>file's sha256" of every file inside, in name order.

    Example:
        >>> path_sha256("data/train.tsv") == hashlib.sha256(open("data/train.tsv", "rb").read()).hexdigest()
        True
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()}\t{file_sha256(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()
