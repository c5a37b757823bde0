"""Copying a local file (folder source) into spool/, hashing on the way, with the byte cap.

The file is opened without following a symlink (`O_NOFOLLOW`) and without blocking on a
FIFO (`O_NONBLOCK`); the opened descriptor must be a regular file, and the bytes come from
that descriptor only. A symlink swapped in for a scanned file after the scan is refused
(`not_regular_file: symlink`), as are FIFOs, devices, sockets and directories. The folders
on the way to the file are the configured folder and are trusted.

A file:// URL carries the file name's bytes percent-encoded, so names that are not UTF-8
(`caf%E9.jpg`) are read back exactly.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

from crawler.errors import PermanentFetchError

CHUNK_BYTES = 1 << 20


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


def open_regular(path: Path | str | bytes) -> int:
    """Open a file for reading without following a symlink or blocking on a FIFO.

    Returns the descriptor of a regular file, or raises `NotRegularFileError` naming what
    was found instead (a symlink, FIFO, device, socket or directory); `OSError` otherwise.
    Callers read from this descriptor only, so a file swapped after a check cannot be read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotRegularFileError("symlink") from None
        if error.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            # A socket or a device without a driver cannot even be opened: say what it is.
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                raise error from None
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(_kind_of(mode)) from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(_kind_of(mode))
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
                       (stat.S_ISBLK, "device"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return kind
    return "special file"



def path_from_file_url(url: str) -> Path:
    """The local path a file:// URL names, its percent-encoded bytes decoded exactly."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise PermanentFetchError(url, "bad_scheme", "only file:// URLs of folder sources")
    return Path(os.fsdecode(unquote_to_bytes(parts.path)))


def copy_to_spool(url: str, spool_dir: Path, max_bytes: int) -> LocalCopy:
    """Copy the file named by a file:// URL into spool_dir (blocking; run in a thread)."""
    source = path_from_file_url(url)
    temp = spool_dir / f"local-{secrets.token_hex(8)}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(open_regular(source), "rb") as reader, open(temp, "xb") as writer:
            os.chmod(temp, 0o600)
            while chunk := reader.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentFetchError(url, "too_large", f"more than {max_bytes} bytes")
                digest.update(chunk)
                writer.write(chunk)
    except FileNotFoundError:
        temp.unlink(missing_ok=True)
        raise PermanentFetchError(url, "file_not_found", display_name(source)) from None
    except NotRegularFileError as error:
        temp.unlink(missing_ok=True)
        raise PermanentFetchError(url, f"not_regular_file: {error.kind}",
                                  f"{display_name(source)} is a {error.kind}, not a regular file; "
                                  "only regular files are read") from None
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise PermanentFetchError(url, "file_unreadable", display_name(str(error))) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return LocalCopy(path=temp, sha256=digest.hexdigest(), size=size)


def display_name(text: object) -> str:
    """A file name (or a message holding one) for people and logs: valid UTF-8 kept, other
    bytes shown as U+FFFD. Never raises, whatever surrogates `text` holds."""
    try:
        return os.fsencode(str(text)).decode("utf-8", errors="replace")
    except UnicodeError:
        return str(text).encode("utf-8", errors="replace").decode("utf-8")
