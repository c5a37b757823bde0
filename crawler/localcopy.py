"""Copying a local file (folder source) into spool/, hashing on the way, with the byte cap."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from crawler.errors import PermanentFetchError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class LocalCopy:
    path: Path
    sha256: str
    size: int


def path_from_file_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise PermanentFetchError(url, "bad_scheme", "only file:// URLs of folder sources")
    return Path(unquote(parts.path))


def copy_to_spool(url: str, spool_dir: Path, max_bytes: int) -> LocalCopy:
    """Copy the file named by a file:// URL into spool_dir (blocking; run in a thread)."""
    source = path_from_file_url(url)
    temp = spool_dir / f"local-{secrets.token_hex(8)}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as reader, open(temp, "xb") as writer:
            os.chmod(temp, 0o600)
            while chunk := reader.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentFetchError(url, "too_large", f"more than {max_bytes} bytes")
                digest.update(chunk)
                writer.write(chunk)
    except FileNotFoundError:
        temp.unlink(missing_ok=True)
        raise PermanentFetchError(url, "file_not_found", str(source)) from None
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise PermanentFetchError(url, "file_unreadable", str(error)) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return LocalCopy(path=temp, sha256=digest.hexdigest(), size=size)
