"""Test helpers for the source tests: an HttpClient over a real aiohttp session, and a server.

`SessionHttpClient` implements the `HttpClient` seam with a plain aiohttp session (no SSRF
guard, which the fetcher's own tests cover) so the sources talk to real local test servers.
`serve(app)` runs an aiohttp.web application on 127.0.0.1 for the duration of a test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from crawler.errors import FetchError, PermanentFetchError, RetryableFetchError
from crawler.sources.base import Document


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


@contextlib.asynccontextmanager
async def http_client() -> AsyncIterator[SessionHttpClient]:
    """A SessionHttpClient over a fresh session, closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield SessionHttpClient(session)


__all__ = ["FetchError", "SessionHttpClient", "http_client", "serve"]
