"""Test helpers for the source tests: the real Fetcher pointed at a local test server.

`http_client(base)` yields the production `crawler.fetch.Fetcher` (guarded session, caps,
redirect checks) with the test server's host:port allowed, wrapped so tests can see what
was requested. Without a base it yields `SessionHttpClient`, a minimal HttpClient over a
plain aiohttp session, for tests that never touch the network.
`serve(app)` runs an aiohttp.web application on 127.0.0.1 for the duration of a test.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from crawler.config import HttpConfig
from crawler.errors import FetchError, PermanentFetchError, RetryableFetchError
from crawler.fetch import Fetcher, make_session
from crawler.sources.base import Document, HttpClient


@dataclass
class SessionHttpClient:
    """GET documents with a capped body; records every request's URL and headers."""

    session: aiohttp.ClientSession
    default_max_bytes: int = 10 * 1024 * 1024
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def get_document(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Document:
        """GET `url`; raise FetchError when no response came or the body is over the cap."""
        self.requests.append((url, dict(headers or {})))
        cap = max_bytes or self.default_max_bytes
        try:
            async with self.session.get(url, headers=dict(headers or {})) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > cap:
                        raise PermanentFetchError(url, "too_large", f"over {cap} bytes")
                    chunks.append(chunk)
                return Document(url=str(response.url), status=response.status,
                                headers=dict(response.headers), body=b"".join(chunks))
        except aiohttp.ClientError as error:
            raise RetryableFetchError(url, "connection", str(error)) from error

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.requests]


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 on a free port; yield its base URL (no trailing slash)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class RecordingClient:
    """Wraps an HttpClient, recording each request's URL and headers."""

    inner: HttpClient
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def get_document(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Document:
        """Record the request, then let the wrapped client make it."""
        self.requests.append((url, dict(headers or {})))
        return await self.inner.get_document(url, headers=headers, max_bytes=max_bytes)

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.requests]


@contextlib.asynccontextmanager
async def http_client(base: str | None = None) -> AsyncIterator[RecordingClient]:
    """The real Fetcher allowed to reach `base` (a local test server); closed afterwards."""
    if base is None:
        async with aiohttp.ClientSession() as session:
            yield RecordingClient(SessionHttpClient(session))
        return
    parts = urlsplit(base)
    config = HttpConfig(
        user_agent="megane-crawler-tests/1",
        allowed_private_hosts=frozenset({f"{parts.hostname}:{parts.port}"}),
        max_retries=0, timeout_s=20.0, per_host_rate=10_000.0, per_host_connections=8,
    )
    with tempfile.TemporaryDirectory(prefix="megane-sources-") as spool:
        async with make_session(config) as session:
            yield RecordingClient(Fetcher(session, config, Path(spool)))


__all__ = ["FetchError", "RecordingClient", "SessionHttpClient", "http_client", "serve"]
