"""Atomic, durable file writes: the one owner of "temp name, fsync, rename, fsync folder".

A file appears at its final name whole or not at all: it is written under a temporary name
(`TEMP_PREFIX`, swept by `storage.placement.sweep`) in the destination's own folder, its
bytes fsynced, renamed over the target, and the folder fsynced so the rename survives a
crash. `staged_directory` does the same for a folder of files (a model version).
Inside `batch_durability()` the fsyncs are deferred to one sync at the end.

All functions here block: call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"

# Inside `batch_durability()`, fsyncs are deferred to one sync at the end of the batch.
_deferring: contextvars.ContextVar[bool] = contextvars.ContextVar("deferring", default=False)


@contextlib.contextmanager
def batch_durability() -> Iterator[None]:
    """Make many placements durable with one sync at the end instead of fsyncs per file.

    For re-filing thousands of images (rescore): the caller commits their rows only after
    this block has exited, so rows never get ahead of the disk.
    """
    token = _deferring.set(True)
    try:
        yield
    finally:
        _deferring.reset(token)
        os.sync()


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (a rename, a new link) durable."""
    if _deferring.get():
        return
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    """Make the bytes of file `path` durable."""
    if _deferring.get():
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def temp_name(folder: Path, stem: str) -> Path:
    """A fresh temporary name in `folder` (swept as a leftover if a crash strands it)."""
    return folder / f"{TEMP_PREFIX}{stem[:16]}-{secrets.token_hex(4)}"


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` at `path` via a temp name in the same folder: write, fsync, rename.

    The file gets exactly `mode` (whatever the umask); the folder is fsynced after.
    """
    temp = temp_name(path.parent, path.stem)
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            if not _deferring.get():
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def rename_into_place(temp: Path, target: Path, *, durable: bool = True) -> None:
    """Rename a finished file `temp` (in `target`'s folder) over `target`.

    With `durable`, the file is fsynced first and the folder after. Without, it is a bare
    rename, for scratch files whose durability is made later (spool/: `admit_to_store`
    fsyncs a download before the store holds it, and a lost one is fetched again).
    """
    if durable:
        fsync_file(temp)
    os.replace(temp, target)
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def staged_directory(folder: Path, mode: int = 0o755) -> Iterator[Path]:
    """A staging folder beside `folder`, renamed to `folder` whole when the block succeeds.

    The caller writes its files into the yielded folder. On success each file in it is
    fsynced, the folder gets `mode`, is renamed to `folder` (never over an existing,
    non-empty one) and the parent is fsynced; on any failure the staging folder is removed.
    """
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        yield staging
        for path in staging.iterdir():
            if path.is_file():
                fsync_file(path)
        staging.chmod(mode)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(root)
