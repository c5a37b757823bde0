"""Response bodies with byte caps: read into memory, or streamed to spool/ and hashed.

Caps count decompressed bytes, so a gzip bomb meets the cap as a plain body does
(`decompression_bomb` rather than `too_large`). A declared Content-Length over the cap
is refused before any byte is read. Disk writes and hashing run off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from crawler.errors import PermanentFetchError
from storage.redact import redact

CHUNK_BYTES = 64 * 1024
WRITE_BATCH_BYTES = 512 * 1024


@dataclass(frozen=True)
class Download:
    """A completed download: `path` is a file in the spool directory the caller renames."""

    url: str
    final_url: str
    path: Path
    sha256: str
    size: int
    content_type: str | None


def check_declared_length(url: str, response: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Refuse a response whose Content-Length already says it is over `max_bytes`."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise PermanentFetchError(
            redact(url), "too_large", f"Content-Length {declared} > {max_bytes}"
        )


async def capped_chunks(
    url: str, response: aiohttp.ClientResponse, max_bytes: int
) -> AsyncGenerator[bytes, None]:
    """The body, decompressed, in chunks; raise once more than `max_bytes` arrived."""
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            reason = "too_large" if encoding in ("", "identity") else "decompression_bomb"
            raise PermanentFetchError(
                redact(url), reason, f"body over {max_bytes} bytes ({encoding})"
            )
        yield chunk


async def read_capped(url: str, response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body of `response` to `url`, decompressed, at most `max_bytes`."""
    check_declared_length(url, response, max_bytes)
    body = bytearray()
    chunks = capped_chunks(url, response, max_bytes)
    async with aclosing(chunks):
        async for chunk in chunks:
            body += chunk
    return bytes(body)


async def stream_to_spool(
    url: str, response: aiohttp.ClientResponse, max_bytes: int, spool_dir: Path
) -> Download:
    """The body of `response` to `url`, capped, in a new file in `spool_dir`, hashed.

    The partial file is removed on every failure, cancellation included.
    """
    check_declared_length(url, response, max_bytes)
    descriptor, name = tempfile.mkstemp(dir=spool_dir, prefix=".fetch-", suffix=".part")
    path = Path(name)
    try:
        hasher = hashlib.sha256()
        size = 0
        with os.fdopen(descriptor, "wb") as file:
            pending = bytearray()
            chunks = capped_chunks(url, response, max_bytes)
            async with aclosing(chunks):
                async for chunk in chunks:
                    pending += chunk
                    size += len(chunk)
                    if len(pending) >= WRITE_BATCH_BYTES:
                        await _write_in_thread(file, hasher, bytes(pending))
                        pending.clear()
            if pending:
                await _write_in_thread(file, hasher, bytes(pending))
        return Download(
            url=redact(url),
            final_url=redact(response.url),
            path=path,
            sha256=hasher.hexdigest(),
            size=size,
            content_type=response.headers.get("Content-Type"),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def _write_in_thread(file: IO[bytes], hasher: Any, data: bytes) -> None:
    """Hash and write `data` off the event loop; on cancellation, let the write finish first.

    Waiting keeps the thread from writing to a file the caller is closing and deleting.
    """
    def write() -> None:
        hasher.update(data)
        file.write(data)

    future = asyncio.get_running_loop().run_in_executor(None, write)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
