"""Copying a local file (folder source) into spool/, hashing on the way, with the byte cap.

The file is opened without following a symlink (`O_NOFOLLOW`) and without blocking on a
FIFO (`O_NONBLOCK`); the opened descriptor must be a regular file, and the bytes come from
that descriptor only. A symlink swapped in for a scanned file after the scan is refused
(`not_regular_file: symlink`), as are FIFOs, devices, sockets and directories.

Only files inside a folder source's folder (its `path` or `move_to`, registered with
`allow_root` when the source is made) are read, and no folder between that root and the
file may be a symlink: the root is opened once and every component below it is opened with
`O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor (`open_under`), so a scanned
sub-folder swapped for a symlink after the scan is refused (`not_regular_file: symlink in
path`) and a path outside every root is `outside_folder`. The configured root itself may be
a symlink (or lie under one): it is resolved when the source is made and trusted as given.

A file:// URL carries the file name's bytes percent-encoded, so names that are not UTF-8
(`caf%E9.jpg`) are read back exactly.

A failure of the file costs the item (PermanentFetchError); a failure of our side (the
spool's disk full, our descriptors or memory exhausted) is raised as the OSError it is, and
the download stage defers the row, as it does for an HTTP download (`copy_to_spool`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from crawler.errors import PermanentFetchError

CHUNK_BYTES = 1 << 20
# Failures of our own process, not of the file read: out of descriptors or memory.
OWN_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@dataclass(frozen=True)
class LocalCopy:
    path: Path
    sha256: str
    size: int


class NotRegularFileError(OSError):
    """What `open_regular` found instead of a regular file (`kind`: symlink, fifo, ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file: a {kind}")
        self.kind = kind


def open_regular(path: Path | str | bytes, *, dir_fd: int | None = None) -> int:
    """Open a file for reading without following a symlink or blocking on a FIFO.

    Returns the descriptor of a regular file, or raises `NotRegularFileError` naming what
    was found instead (a symlink, FIFO, device, socket or directory); `OSError` otherwise.
    Callers read from this descriptor only, so a file swapped after a check cannot be read.
    With `dir_fd`, `path` is a name relative to that open directory.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotRegularFileError("symlink") from None
        if error.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            # A socket or a device without a driver cannot even be opened: say what it is.
            try:
                mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except OSError:
                raise error from None
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(kind_of(mode)) from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(kind_of(mode))
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
                       (stat.S_ISBLK, "device"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return kind
    return "special file"


class OutsideFolderError(OSError):
    """A path that is not below any folder source's root (or climbs out with `..`)."""

    def __init__(self, path: Path | str | bytes) -> None:
        super().__init__(errno.EACCES, f"not inside a folder source's folder: "
                         f"{display_name(os.fsdecode(path))}")


_roots: set[bytes] = set()


def allow_root(root: Path | str | bytes) -> None:
    """Let `copy_to_spool` read below `root` (a folder source's `path` or `move_to`).

    The root is resolved now: it may itself be a symlink, the folders below it may not.
    """
    _roots.add(os.fsencode(os.path.realpath(root)))


def split_under(path: Path | str | bytes,
                roots: Sequence[bytes] | None = None) -> tuple[bytes, list[bytes]]:
    """The registered root `path` lies in (the deepest one) and the names below it.

    Raises `OutsideFolderError` for a path under no root, or with `.`/`..`/empty names.
    """
    target = os.fsencode(path)
    best: bytes | None = None
    for root in (roots if roots is not None else sorted(_roots)):
        prefix = root.rstrip(b"/") + b"/"
        if target.startswith(prefix) and (best is None or len(root) > len(best)):
            best = root
    if best is None:
        raise OutsideFolderError(path)
    names = target[len(best.rstrip(b"/")) + 1:].split(b"/")
    if any(name in (b"", b".", b"..") for name in names):
        raise OutsideFolderError(path)
    return best, names


def open_root(root: Path | str | bytes) -> int:
    """A descriptor of the folder `root` (following a symlink: the root is configured)."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dirs(root_fd: int, names: Sequence[bytes], *, create: bool = False) -> int:
    """Walk `names` down from `root_fd` (not closed), never through a symlink.

    Returns a new descriptor of the last folder (a duplicate of root_fd for no names). A
    symlink on the way raises `NotRegularFileError("symlink in path")`; with `create`,
    missing folders are made (0755, as `mkdir -p`).
    """
    current = os.dup(root_fd)
    try:
        for name in names:
            try:
                following = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY
                                    | os.O_CLOEXEC, dir_fd=current)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=current)
                following = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY
                                    | os.O_CLOEXEC, dir_fd=current)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    mode = os.stat(name, dir_fd=current, follow_symlinks=False).st_mode
                    if stat.S_ISLNK(mode):
                        raise NotRegularFileError("symlink in path") from None
                raise
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


def open_under(path: Path | str | bytes, roots: Sequence[bytes] | None = None) -> int:
    """Open the regular file `path` for reading, only inside a registered root and with no
    symlink between the root and the file (see the module docstring)."""
    root, names = split_under(path, roots)
    root_fd = open_root(root)
    try:
        directory = open_dirs(root_fd, names[:-1])
    finally:
        os.close(root_fd)
    try:
        return open_regular(names[-1], dir_fd=directory)
    finally:
        os.close(directory)



def path_from_file_url(url: str) -> Path:
    """The local path a file:// URL names, its percent-encoded bytes decoded exactly."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise PermanentFetchError(url, "bad_scheme", "only file:// URLs of folder sources")
    return Path(os.fsdecode(unquote_to_bytes(parts.path)))


def copy_to_spool(url: str, spool_dir: Path, max_bytes: int) -> LocalCopy:
    """Copy the file named by a file:// URL into spool_dir (blocking; run in a thread).

    Failures are sorted by whose they are, as an HTTP download's are (`crawler.download`
    lets a failing spool write through): the file's own (missing, not a regular file,
    outside the folders, unreadable, too large) raise PermanentFetchError and cost the
    item; the spool's (a full disk, a quota, a read-only or missing spool folder: any
    OSError creating or writing the copy) and our process running out of descriptors or
    memory (`OWN_ERRNOS`) raise the OSError itself, which the download stage defers as
    `disk_error` and tries again later.
    """
    source = path_from_file_url(url)
    descriptor = _open_source(url, source)
    temp = spool_dir / f"local-{secrets.token_hex(8)}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(descriptor, "rb") as reader, open(temp, "xb") as writer:
            os.chmod(temp, 0o600)
            while chunk := _read_chunk(url, source, reader):
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentFetchError(url, "too_large", f"more than {max_bytes} bytes")
                digest.update(chunk)
                writer.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return LocalCopy(path=temp, sha256=digest.hexdigest(), size=size)


def _open_source(url: str, source: Path) -> int:
    """`open_under(source)`, its failures translated: the file's are PermanentFetchError."""
    try:
        return open_under(source)
    except FileNotFoundError:
        raise PermanentFetchError(url, "file_not_found", display_name(source)) from None
    except NotRegularFileError as error:
        detail = (f"a folder on the way to {display_name(source)} is a symlink; symlinks below "
                  "a folder source's folder are never followed"
                  if error.kind == "symlink in path" else
                  f"{display_name(source)} is a {error.kind}, not a regular file; "
                  "only regular files are read")
        raise PermanentFetchError(url, f"not_regular_file: {error.kind}", detail) from None
    except OutsideFolderError:
        raise PermanentFetchError(url, "outside_folder",
                                  f"{display_name(source)} is not inside a folder source's "
                                  "folder; only files under a configured `path` or `move_to` "
                                  "are read") from None
    except OSError as error:
        if error.errno in OWN_ERRNOS:
            raise
        raise PermanentFetchError(url, "file_unreadable", display_name(str(error))) from error


def _read_chunk(url: str, source: Path, reader: BinaryIO) -> bytes:
    """The next chunk of the file; a read error is the file's, unless it is our process's."""
    try:
        return reader.read(CHUNK_BYTES)
    except OSError as error:
        if error.errno in OWN_ERRNOS:
            raise
        raise PermanentFetchError(url, "file_unreadable",
                                  f"{display_name(source)}: {display_name(str(error))}") from error


def encode_name(name: str) -> str:
    """A file name as ASCII text that keeps its exact bytes (percent-encoded)."""
    return quote_from_bytes(os.fsencode(name), safe="/ ")


def decode_name(text: str) -> str:
    """The file name `encode_name` wrote (surrogate-escaped where not UTF-8)."""
    return os.fsdecode(unquote_to_bytes(text))


def display_name(text: object) -> str:
    """A file name (or a message holding one) for people and logs: valid UTF-8 kept, other
    bytes shown as U+FFFD. Never raises, whatever surrogates `text` holds."""
    try:
        return os.fsencode(str(text)).decode("utf-8", errors="replace")
    except UnicodeError:
        return str(text).encode("utf-8", errors="replace").decode("utf-8")
