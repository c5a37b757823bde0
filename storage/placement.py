"""Filing images under data_dir (SPEC §5): atomic, durable, fail closed.

Every stored image has one private canonical copy, `store/<aa>/<sha256><ext>` (mode 0600
in a 0700 folder, or 0644 while it is in the library). Where it is filed — one or more
`library/<tag>/` folders, `quarantine/` or `held/` — are hard links to that copy, each
made under a temporary name in the destination's own folder and renamed into place, the
folder then fsynced. Moving into the library makes the file readable and links it last;
moving out of it unlinks from the library first, so a quarantined image is never visible.

All functions here block: call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Atomic writes live in storage.atomic; these names stay importable from here.
from storage.atomic import TEMP_PREFIX as TEMP_PREFIX
from storage.atomic import batch_durability as batch_durability
from storage.atomic import fsync_dir as fsync_dir
from storage.atomic import fsync_file as fsync_file
from storage.atomic import rename_into_place as rename_into_place
from storage.atomic import staged_directory as staged_directory
from storage.atomic import temp_name
from storage.atomic import write_file_atomic as write_file_atomic
from storage.errors import DataDirInUseError, PlacementError
from storage.records import Placement
from storage.redact import redact_value

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644
SPOOL_SUFFIX = ".part"
UNTAGGED = "untagged"


@dataclass(frozen=True)
class DataLayout:
    """The folders under data_dir."""

    root: Path

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue.sqlite"

    @property
    def library(self) -> Path:
        return self.root / "library"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def held(self) -> Path:
        return self.root / "held"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold data_dir's lock (`.lock`, flock) while one daemon works in it.

        Two daemons on one data_dir would poll the same sources and re-file under different
        policies; the second is refused with DataDirInUseError naming data_dir and the
        holder's pid. The kernel drops the lock when the holder dies, even by kill -9.
        """
        import fcntl

        descriptor = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                             PRIVATE_FILE_MODE)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                raise DataDirInUseError(str(self.root), holder) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(descriptor)

    def ensure(self) -> None:
        """Create the folders with their modes, whatever the umask (SPEC §5).

        data_dir itself and everything in it but library/ is private (0700): the catalogue
        holds post URLs and authors of quarantined items. library/ is readable on purpose.
        """
        self.root.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, PRIVATE_DIR_MODE)
        for path, mode in (
            (self.library, PUBLIC_DIR_MODE),
            (self.quarantine, PRIVATE_DIR_MODE),
            (self.held, PRIVATE_DIR_MODE),
            (self.spool, PRIVATE_DIR_MODE),
            (self.store, PRIVATE_DIR_MODE),
            (self.models, PRIVATE_DIR_MODE),
            (self.cache, PRIVATE_DIR_MODE),
        ):
            path.mkdir(exist_ok=True)
            os.chmod(path, mode)

    def spool_file(self, sha256: str) -> Path:
        return self.spool / sha256

    def store_file(self, sha256: str, extension: str) -> Path:
        return self.store / sha256[:2] / f"{sha256}{extension}"

    def content_file(self, sha256: str, extension: str) -> Path | None:
        """Where the bytes of `sha256` are now: in the store, else in the spool."""
        for candidate in (self.store_file(sha256, extension), self.spool_file(sha256)):
            if candidate.exists():
                return candidate
        return None

    def targets(self, sha256: str, extension: str, placement: Placement,
                tags: Sequence[str]) -> list[Path]:
        name = f"{sha256}{extension}"
        if placement is Placement.LIBRARY:
            for tag in tags:
                # Tags come from model heads and `megane label`: a tag is one folder name,
                # never a path out of library/ (`../..`) nor a hidden or temporary name.
                if not tag or tag.startswith(".") or "/" in tag or "\\" in tag or "\0" in tag:
                    raise PlacementError(str(self.library / tag), "not a valid tag folder name")
            return [self.library / tag / name for tag in (tags or (UNTAGGED,))]
        if placement is Placement.QUARANTINE:
            return [self.quarantine / name]
        return [self.held / name]

    def sidecar(self, sha256: str) -> Path:
        return self.quarantine / f"{sha256}.json"

    def existing_links(self, sha256: str, extension: str) -> list[Path]:
        name = f"{sha256}{extension}"
        links = [path for path in (self.quarantine / name, self.held / name) if path.exists()]
        if self.library.is_dir():
            links.extend(
                folder / name for folder in self.library.iterdir()
                if (folder / name).exists()
            )
        return links


def _ensure_dir(path: Path, mode: int) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent)
    os.chmod(path, mode)


def _link_into(source: Path, target: Path, mode: int) -> None:
    """Hard-link `source` at `target` atomically (copy where links are impossible)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(source, target):
            return  # already linked: re-filing the same way is a no-op
        if not target.is_symlink() and target.stat().st_size == source.stat().st_size:
            # A copy made where links are impossible (another filesystem). The name is the
            # content's sha256 and copies are renamed into place whole, so it is complete.
            os.chmod(target, mode)
            return
    temp = temp_name(target.parent, source.name[:64])
    try:
        try:
            os.link(source, temp)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, temp)
            os.chmod(temp, mode)
            fsync_file(temp)
        os.replace(temp, target)
        # rename(2) between two links of one inode does nothing and keeps `temp`.
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError):
            # Name the destination: OSError names the source (copyfile) or the temp file.
            raise PlacementError(str(target), error.strerror or str(error)) from error
        raise
    fsync_dir(target.parent)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def admit_to_store(layout: DataLayout, sha256: str, extension: str) -> Path:
    """Move a downloaded file from spool/ into the private store (fsynced); idempotent."""
    stored = layout.store_file(sha256, extension)
    if stored.exists():
        # The same bytes downloaded again (a flagged duplicate): the spool copy is spare.
        with contextlib.suppress(FileNotFoundError):
            layout.spool_file(sha256).unlink()
        return stored
    spooled = layout.spool_file(sha256)
    if not spooled.exists():
        raise PlacementError(str(spooled), "the downloaded file is missing")
    _ensure_dir(stored.parent, PRIVATE_DIR_MODE)
    os.chmod(spooled, PRIVATE_FILE_MODE)
    fsync_file(spooled)
    os.replace(spooled, stored)
    fsync_dir(stored.parent)
    fsync_dir(spooled.parent)
    return stored


def place(
    layout: DataLayout,
    sha256: str,
    extension: str,
    placement: Placement,
    tags: Sequence[str],
    sidecar: Mapping[str, Any] | None = None,
) -> list[Path]:
    """File an image; returns the paths it is visible at. Idempotent, crash-safe.

    Raises PlacementError (naming the path) when the disk refuses; what was already done
    is either complete or absent, and calling again finishes the job.
    """
    try:
        stored = admit_to_store(layout, sha256, extension)
        targets = layout.targets(sha256, extension, placement, tags)
        current = layout.existing_links(sha256, extension)
        stale = [path for path in current if path not in targets]
        if placement is Placement.LIBRARY:
            os.chmod(stored, PUBLIC_FILE_MODE)
            for target in targets:
                _ensure_dir(target.parent, PUBLIC_DIR_MODE)
                _link_into(stored, target, PUBLIC_FILE_MODE)
            for path in stale:
                _unlink(path)
            _unlink(layout.sidecar(sha256))
        else:
            # Out of sight first: unlink from the library before anything else.
            for path in sorted(stale, key=lambda p: p.parent.parent != layout.library):
                _unlink(path)
            os.chmod(stored, PRIVATE_FILE_MODE)
            for target in targets:
                _link_into(stored, target, PRIVATE_FILE_MODE)
            if placement is Placement.QUARANTINE and sidecar is not None:
                try:
                    write_file_atomic(layout.sidecar(sha256), sidecar_bytes(sidecar),
                                      PRIVATE_FILE_MODE)
                except OSError as error:
                    raise PlacementError(str(layout.sidecar(sha256)),
                                         error.strerror or str(error)) from error
            elif placement is not Placement.QUARANTINE:
                _unlink(layout.sidecar(sha256))
        return targets
    except OSError as error:
        raise PlacementError(
            error.filename or str(layout.root), error.strerror or str(error)
        ) from error


def sidecar_bytes(sidecar: Mapping[str, Any]) -> bytes:
    """What a quarantine sidecar file holds (redacted, sorted JSON)."""
    return json.dumps(redact_value(dict(sidecar)), indent=2, sort_keys=True).encode()


def refresh_sidecar(layout: DataLayout, sha256: str, sidecar: Mapping[str, Any]) -> bool:
    """Rewrite a quarantined image's sidecar when its content differs; True when written.

    Raises PlacementError (naming the sidecar) when the disk refuses.
    """
    path = layout.sidecar(sha256)
    content = sidecar_bytes(sidecar)
    try:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == content:
                return False
        write_file_atomic(path, content, PRIVATE_FILE_MODE)
    except OSError as error:
        raise PlacementError(str(path), error.strerror or str(error)) from error
    return True


def remove_everywhere(layout: DataLayout, sha256: str, extension: str) -> None:
    """Delete an image's links, sidecar and stored copy (user deletion, rejection)."""
    for path in layout.existing_links(sha256, extension):
        _unlink(path)
    _unlink(layout.sidecar(sha256))
    _unlink(layout.store_file(sha256, extension))
    _unlink(layout.spool_file(sha256))


def sweep(layout: DataLayout, keep_spool: set[str]) -> list[Path]:
    """Remove leftovers of interrupted work: temp names everywhere, unreferenced spool files."""
    removed: list[Path] = []
    folders = [layout.quarantine, layout.held, layout.spool]
    for parent in (layout.library, layout.store):
        if parent.is_dir():
            folders.extend(path for path in parent.iterdir() if path.is_dir())
            folders.append(parent)
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            orphan_spool = (
                folder == layout.spool and path.is_file() and path.name not in keep_spool
            )
            leftover = path.name.startswith(TEMP_PREFIX) or path.name.endswith(SPOOL_SUFFIX)
            if leftover or orphan_spool:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path)
    return removed
