"""The fetcher against real aiohttp servers on 127.0.0.1: normal, slow, lying and hostile ones."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import socket
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from crawler.config import HttpConfig
from crawler.errors import (
    BlockedAddressError,
    FetchError,
    PermanentFetchError,
    RetryableFetchError,
)
from crawler.fetch import (
    AddressGuard,
    Download,
    Fetcher,
    GuardedConnector,
    GuardedResolver,
    make_session,
    throttler_for_rate,
)
from crawler.headers import parse_retry_after_s
from crawler.schedule import retry_delay_s

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7"
    b"\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)
MIB = 1024 * 1024
HUGE_BYTES = 300 * MIB
BOMB_BYTES = 256 * MIB


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzip-compressed to about 250 KiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    parts = [compressor.compress(block) for _ in range(BOMB_BYTES // MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


class Hits:
    """What the test server saw: requests per path, headers of the last one, bytes sent."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        self.headers: dict[str, dict[str, str]] = {}
        self.bytes_sent = 0
        self.stream_done = asyncio.Event()


def make_app(hits: Hits, bomb: bytes) -> web.Application:
    """The hostile and friendly endpoints every test draws on."""
    routes = web.RouteTableDef()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits.paths[request.path] += 1
        hits.headers[request.path] = dict(request.headers)
        response: web.StreamResponse = await handler(request)
        return response

    @routes.get("/image.png")
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def stream_zeros(request: web.Request, response: web.StreamResponse) -> None:
        block = bytes(256 * 1024)
        try:
            while hits.bytes_sent < HUGE_BYTES:
                await response.write(block)
                hits.bytes_sent += len(block)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        finally:
            hits.stream_done.set()

    @routes.get("/huge-declared")
    async def huge_declared(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = HUGE_BYTES
        await response.prepare(request)
        await stream_zeros(request, response)
        return response

    @routes.get("/huge-chunked")
    async def huge_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await stream_zeros(request, response)
        return response

    @routes.get("/gzip-bomb")
    async def gzip_bomb(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"}
        )

    @routes.get("/gzip-small")
    async def gzip_small(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PNG),
            headers={"Content-Encoding": "gzip", "Content-Type": "image/png"},
        )

    @routes.get("/gzip-corrupt")
    async def gzip_corrupt(request: web.Request) -> web.Response:
        return web.Response(
            body=b"\x1f\x8b\x08\x00not gzip at all" * 10,
            headers={"Content-Encoding": "gzip", "Content-Type": "image/png"},
        )

    @routes.get("/drip")
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 100
        await response.prepare(request)
        try:
            for _ in range(100):
                await response.write(b"x")
                await asyncio.sleep(1.0)
        except (ConnectionError, RuntimeError):
            pass
        return response

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/redirect/{n}")
    async def redirect_chain(request: web.Request) -> web.Response:
        remaining = int(request.match_info["n"])
        target = "/image.png" if remaining == 0 else f"/redirect/{remaining - 1}"
        raise web.HTTPFound(target)

    @routes.get("/loop/a")
    async def loop_a(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop/b")

    @routes.get("/loop/b")
    async def loop_b(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/loop/a")

    @routes.get("/to")
    async def redirect_to(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["target"]})

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"X-RateLimit-Remaining": "0"}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"status {code}", headers=headers)

    @routes.get("/flaky/{code}/{failures}")
    async def flaky(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        failures = int(request.match_info["failures"])
        if hits.paths[request.path] <= failures:
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=code, text="try later", headers=headers)
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/feed")
    async def feed(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(text="<rss/>", content_type="application/rss+xml",
                            headers={"ETag": '"v1"'})

    @routes.get("/headers")
    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    app = web.Application(middlewares=[count])
    app.add_routes(routes)
    return app


class Server:
    """A running test server: its port, base URL, and what it saw."""

    def __init__(self, server: TestServer, hits: Hits) -> None:
        self.server = server
        self.hits = hits
        assert server.port is not None
        self.port: int = server.port
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"


ServerFactory = Callable[[], Awaitable[Server]]


@pytest.fixture
async def start_server(gzip_bomb: bytes) -> AsyncIterator[ServerFactory]:
    """A factory of servers on 127.0.0.1, each closed at the end of the test."""
    servers: list[TestServer] = []

    async def start() -> Server:
        hits = Hits()
        server = TestServer(make_app(hits, gzip_bomb), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Server(server, hits)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: ServerFactory) -> Server:
    """One running test server."""
    return await start_server()


def http_config(*allowed: str, **overrides: Any) -> HttpConfig:
    """Small limits so that every hostile case ends within a second or two."""
    settings: dict[str, Any] = {
        "user_agent": "megane-crawler-test/1.0",
        "timeout_s": 1.5,
        "connect_timeout_s": 1.0,
        "max_bytes": 1 * MIB,
        "max_feed_bytes": 64 * 1024,
        "max_redirects": 3,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
        "max_retry_after_s": 2.0,
        "per_host_rate": 1000.0,
        "allowed_private_hosts": frozenset(allowed),
    }
    settings.update(overrides)
    return HttpConfig(**settings)


class FakeResolver(AbstractResolver):
    """Answers names from a table, as a hostile or rebinding DNS server would."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(hostname=host, host=address, port=port,
                          family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        return None


FetcherFactory = Callable[..., Awaitable[Fetcher]]


@pytest.fixture
async def make_fetcher(tmp_path: Path) -> AsyncIterator[FetcherFactory]:
    """A factory of Fetchers over a fresh session (closed afterwards) and a spool dir."""
    sessions: list[aiohttp.ClientSession] = []
    spool = tmp_path / "spool"
    spool.mkdir()

    async def make(config: HttpConfig, *, resolver: AbstractResolver | None = None) -> Fetcher:
        session = make_session(config, resolver=resolver)
        sessions.append(session)
        return Fetcher(session, config, spool)

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """The spool directory the fetchers write to."""
    return tmp_path / "spool"


async def fetch_error(call: Awaitable[Any]) -> FetchError:
    """The FetchError `call` raises (fails the test if it returns)."""
    with pytest.raises(FetchError) as caught:
        await call
    return caught.value


class TestDownload:
    async def test_image(self, server: Server, make_fetcher: FetcherFactory, spool: Path) -> None:
        """A normal image lands in the spool with its sha256, size and content type."""
        fetcher = await make_fetcher(http_config(server.host_port))
        download = await fetcher.download(f"{server.base}/image.png")
        assert isinstance(download, Download)
        assert download.path.parent == spool
        assert download.path.read_bytes() == PNG
        assert download.sha256 == hashlib.sha256(PNG).hexdigest()
        assert download.size == len(PNG)
        assert download.content_type == "image/png"
        assert download.final_url == download.url == f"{server.base}/image.png"

    async def test_user_agent(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """Requests carry the configured User-Agent."""
        fetcher = await make_fetcher(http_config(server.host_port))
        await fetcher.download(f"{server.base}/image.png")
        assert server.hits.headers["/image.png"]["User-Agent"] == "megane-crawler-test/1.0"

    async def test_huge_declared(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A 300 MB Content-Length is refused from the headers, before the body is read."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.download(f"{server.base}/huge-declared"))
        assert isinstance(error, PermanentFetchError)
        assert error.reason == "too_large"
        assert list(spool.iterdir()) == []
        assert server.hits.paths["/huge-declared"] == 1
        await asyncio.wait_for(server.hits.stream_done.wait(), 5.0)
        assert server.hits.bytes_sent < 50 * MIB

    async def test_huge_chunked(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A 300 MB chunked body is cut off at max_bytes and the partial file removed."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.download(f"{server.base}/huge-chunked"))
        assert error.reason == "too_large"
        assert list(spool.iterdir()) == []
        await asyncio.wait_for(server.hits.stream_done.wait(), 5.0)
        assert server.hits.bytes_sent < 50 * MIB

    async def test_gzip_bomb(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A gzip bomb is stopped once its decompressed bytes pass max_bytes."""
        fetcher = await make_fetcher(http_config(server.host_port))
        started = time.monotonic()
        error = await fetch_error(fetcher.download(f"{server.base}/gzip-bomb"))
        assert isinstance(error, PermanentFetchError)
        assert error.reason == "decompression_bomb"
        assert time.monotonic() - started < 3.0
        assert list(spool.iterdir()) == []

    async def test_gzip_small(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A small gzip-encoded body is stored decompressed and hashed as such."""
        fetcher = await make_fetcher(http_config(server.host_port))
        download = await fetcher.download(f"{server.base}/gzip-small")
        assert download.path.read_bytes() == PNG
        assert download.sha256 == hashlib.sha256(PNG).hexdigest()

    async def test_drip(self, server: Server, make_fetcher: FetcherFactory, spool: Path) -> None:
        """A server dripping one byte a second is cut off at the overall deadline."""
        config = http_config(server.host_port, timeout_s=1.2)
        fetcher = await make_fetcher(config)
        started = time.monotonic()
        error = await fetch_error(fetcher.download(f"{server.base}/drip"))
        elapsed = time.monotonic() - started
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "timeout"
        assert 1.1 < elapsed < 3.0
        assert list(spool.iterdir()) == []

    async def test_cancelled_removes_partial(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """Cancelling a download mid-body removes the partial file and propagates."""
        fetcher = await make_fetcher(http_config(server.host_port, timeout_s=10.0))
        task = asyncio.create_task(fetcher.download(f"{server.base}/drip"))
        for _ in range(200):
            if list(spool.iterdir()):
                break
            await asyncio.sleep(0.01)
        assert list(spool.iterdir())  # the partial file exists while the body drips
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list(spool.iterdir()) == []

    async def test_redirects_followed(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A chain of exactly max_redirects redirects is followed to the image."""
        fetcher = await make_fetcher(http_config(server.host_port, max_redirects=3))
        download = await fetcher.download(f"{server.base}/redirect/2")
        assert download.final_url == f"{server.base}/image.png"
        assert download.url == f"{server.base}/redirect/2"

    async def test_too_many_redirects(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """One redirect more than max_redirects fails as too_many_redirects."""
        fetcher = await make_fetcher(http_config(server.host_port, max_redirects=3))
        error = await fetch_error(fetcher.download(f"{server.base}/redirect/3"))
        assert error.reason == "too_many_redirects"
        assert server.hits.paths["/image.png"] == 0

    async def test_redirect_loop(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A redirect back to a URL already visited fails as redirect_loop."""
        fetcher = await make_fetcher(http_config(server.host_port, max_redirects=10))
        error = await fetch_error(fetcher.download(f"{server.base}/loop/a"))
        assert error.reason == "redirect_loop"
        assert server.hits.paths["/loop/a"] == 1

    @pytest.mark.parametrize(
        ("target", "reason"),
        [
            ("http://169.254.169.254/latest/meta-data/", "blocked_address:metadata"),
            ("//169.254.169.254/", "blocked_address:metadata"),
            ("http://[::ffff:169.254.169.254]/", "blocked_address:metadata"),
            ("http://2852039166/", "blocked_address:metadata"),
            ("http://10.0.0.1/", "blocked_address:private"),
            ("http://localhost/", "blocked_address:loopback"),
            ("file:///etc/passwd", "bad_scheme"),
            ("ftp://example.com/image.png", "bad_scheme"),
        ],
    )
    async def test_redirect_refused(
        self, server: Server, make_fetcher: FetcherFactory, target: str, reason: str
    ) -> None:
        """A redirect into private space or to a non-http(s) scheme is refused."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.download(f"{server.base}/to?target={target}"))
        assert isinstance(error, PermanentFetchError)
        assert error.reason == reason

    async def test_redirect_to_other_port(
        self, start_server: ServerFactory, make_fetcher: FetcherFactory
    ) -> None:
        """A redirect to 127.0.0.1 on a port not allowed is refused; that server sees nothing."""
        allowed, other = await start_server(), await start_server()
        fetcher = await make_fetcher(http_config(allowed.host_port))
        target = f"{other.base}/image.png"
        error = await fetch_error(fetcher.download(f"{allowed.base}/to?target={target}"))
        assert isinstance(error, BlockedAddressError)
        assert error.reason == "blocked_address:loopback"
        assert sum(other.hits.paths.values()) == 0

    async def test_redirect_to_private_dns_answer(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A redirect to a name whose DNS answer is private is refused by the connector."""
        resolver = FakeResolver({"rebind.test": ["127.0.0.1"]})
        fetcher = await make_fetcher(http_config(server.host_port), resolver=resolver)
        target = f"http://rebind.test:{server.port}/image.png"
        error = await fetch_error(fetcher.download(f"{server.base}/to?target={target}"))
        assert error.reason == "blocked_address:loopback"
        assert error.url == f"{server.base}/to?target={target}"
        assert server.hits.paths["/image.png"] == 0

    async def test_retry_after_429(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A 429 with Retry-After: 1 is retried after about a second and then succeeds."""
        fetcher = await make_fetcher(http_config(server.host_port, timeout_s=5.0))
        started = time.monotonic()
        download = await fetcher.download(f"{server.base}/flaky/429/1?retry_after=1")
        assert time.monotonic() - started >= 0.95
        assert download.path.read_bytes() == PNG
        assert server.hits.paths["/flaky/429/1"] == 2

    async def test_retry_503(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A 503 is retried with backoff and the next 200 is used."""
        fetcher = await make_fetcher(http_config(server.host_port))
        download = await fetcher.download(f"{server.base}/flaky/503/1")
        assert download.size == len(PNG)
        assert server.hits.paths["/flaky/503/1"] == 2

    async def test_retries_exhausted(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A server that keeps answering 503 is tried max_retries + 1 times, then http_503."""
        fetcher = await make_fetcher(http_config(server.host_port, max_retries=2))
        error = await fetch_error(fetcher.download(f"{server.base}/status/503"))
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "http_503"
        assert server.hits.paths["/status/503"] == 3
        assert list(spool.iterdir()) == []

    async def test_retry_after_beyond_deadline(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A Retry-After longer than the time left is not slept; it is passed on to the caller."""
        fetcher = await make_fetcher(
            http_config(server.host_port, timeout_s=1.0, max_retry_after_s=600.0)
        )
        started = time.monotonic()
        error = await fetch_error(fetcher.download(f"{server.base}/status/429?retry_after=120"))
        assert time.monotonic() - started < 0.9
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "http_429"
        assert error.retry_after_s == 120.0
        assert server.hits.paths["/status/429"] == 1

    async def test_retry_after_passed_on_capped(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A Retry-After passed on to the caller is capped by max_retry_after_s."""
        fetcher = await make_fetcher(
            http_config(server.host_port, timeout_s=1.0, max_retry_after_s=60.0)
        )
        error = await fetch_error(fetcher.download(f"{server.base}/status/503?retry_after=9999999"))
        assert isinstance(error, RetryableFetchError)
        assert error.retry_after_s == 60.0

    async def test_retry_after_capped(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A huge Retry-After is capped by max_retry_after_s."""
        fetcher = await make_fetcher(
            http_config(server.host_port, timeout_s=3.0, max_retry_after_s=0.1)
        )
        started = time.monotonic()
        download = await fetcher.download(f"{server.base}/flaky/429/1?retry_after=86400")
        assert time.monotonic() - started < 1.0
        assert download.size == len(PNG)

    async def test_404_not_retried(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A 404 fails at once as http_404; the server sees exactly one request."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.download(f"{server.base}/status/404"))
        assert isinstance(error, PermanentFetchError)
        assert error.reason == "http_404"
        assert server.hits.paths["/status/404"] == 1
        assert list(spool.iterdir()) == []

    async def test_connection_refused(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A closed port is a retryable connection_error after the retries."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        fetcher = await make_fetcher(http_config(f"127.0.0.1:{closed_port}"))
        error = await fetch_error(fetcher.download(f"http://127.0.0.1:{closed_port}/x"))
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "connection_error"

    async def test_password_not_in_error(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A URL's userinfo password appears in no error."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(
            fetcher.download(f"http://user:hunter2@127.0.0.1:{server.port}/status/404")
        )
        assert "hunter2" not in str(error) and "hunter2" not in error.url
        assert "hunter2" not in error.detail

    async def test_concurrent_downloads(
        self, server: Server, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """Many tasks share one Fetcher; each gets its own spool file."""
        fetcher = await make_fetcher(http_config(server.host_port, per_host_connections=2))
        downloads = await asyncio.gather(
            *(fetcher.download(f"{server.base}/image.png") for _ in range(20))
        )
        assert len({download.path for download in downloads}) == 20
        assert all(download.path.read_bytes() == PNG for download in downloads)

    async def test_queued_downloads_do_not_time_out(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """Downloads queued behind a busy host's slots start their deadline when they start."""
        fetcher = await make_fetcher(
            http_config(server.host_port, per_host_connections=1, timeout_s=0.8)
        )
        downloads = await asyncio.gather(
            *(fetcher.download(f"{server.base}/slow") for _ in range(3))
        )
        assert [download.size for download in downloads] == [len(PNG)] * 3
        assert len(fetcher._host_slots) == 0  # no per-host state is kept once idle

    async def test_per_host_rate(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """With per_host_rate=10, eleven requests to one host take at least a second."""
        fetcher = await make_fetcher(http_config(server.host_port, per_host_rate=10.0))
        started = time.monotonic()
        await asyncio.gather(*(fetcher.download(f"{server.base}/image.png") for _ in range(11)))
        assert time.monotonic() - started >= 0.95


RawReply = Callable[[asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[tuple[int, list[int]]]]]:
    """A factory of raw TCP servers that send fixed bytes to each request, then hang up.

    For lies aiohttp.web would not tell: a Content-Length that does not match the body.
    Returns the port and a list counting the requests served.
    """
    servers: list[asyncio.Server] = []

    async def start(reply: bytes) -> tuple[int, list[int]]:
        served: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                served.append(1)
                writer.write(reply)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], served

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


class TestLyingServers:
    async def test_content_length_longer_than_body(
        self, raw_server: Any, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """A body shorter than its Content-Length is truncated_body, retried, file removed."""
        port, served = await raw_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + PNG
        )
        fetcher = await make_fetcher(http_config(f"127.0.0.1:{port}", max_retries=2))
        error = await fetch_error(fetcher.download(f"http://127.0.0.1:{port}/a.png"))
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "truncated_body"
        assert len(served) == 3
        assert list(spool.iterdir()) == []

    async def test_content_length_shorter_than_body(
        self, raw_server: Any, make_fetcher: FetcherFactory, spool: Path
    ) -> None:
        """Bytes past a short Content-Length never reach the file: 10 bytes or bad_response."""
        port, _served = await raw_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789" + bytes(4 * MIB)
        )
        fetcher = await make_fetcher(http_config(f"127.0.0.1:{port}"))
        try:
            download = await fetcher.download(f"http://127.0.0.1:{port}/a.png")
        except PermanentFetchError as error:  # aiohttp parsed the excess as a next response
            assert error.reason == "bad_response"
            assert len(str(error)) < 1000
            assert list(spool.iterdir()) == []
        else:
            assert download.path.read_bytes() == b"0123456789"

    async def test_smuggled_response_ignored(
        self, raw_server: Any, make_fetcher: FetcherFactory
    ) -> None:
        """A second response sent after a short body is not taken for the next request."""
        port, served = await raw_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
        )
        fetcher = await make_fetcher(http_config(f"127.0.0.1:{port}"))
        first = await fetcher.download(f"http://127.0.0.1:{port}/a.png")
        second = await fetcher.download(f"http://127.0.0.1:{port}/b.png")
        assert first.path.read_bytes() == second.path.read_bytes() == b"0123456789"
        assert len(served) == 2

    @pytest.mark.parametrize(
        ("reply", "reason"),
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nxx", "bad_response"),
            (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", "bad_response"),
            (b"NOT HTTP AT ALL\r\n\r\n", "bad_response"),
        ],
    )
    async def test_malformed_response(
        self, raw_server: Any, make_fetcher: FetcherFactory, reply: bytes, reason: str
    ) -> None:
        """A malformed status line or header is a permanent bad_response."""
        port, _served = await raw_server(reply)
        fetcher = await make_fetcher(http_config(f"127.0.0.1:{port}"))
        error = await fetch_error(fetcher.download(f"http://127.0.0.1:{port}/a.png"))
        assert error.reason == reason
        assert isinstance(error, PermanentFetchError)

    async def test_corrupt_gzip(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A body that is not the gzip its Content-Encoding claims is bad_content_encoding."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.download(f"{server.base}/gzip-corrupt"))
        assert error.reason == "bad_content_encoding"
        assert server.hits.paths["/gzip-corrupt"] == 1


class TestAddressGuard:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:{port}/image.png",
            "http://[::ffff:127.0.0.1]:{port}/image.png",
            "http://[::ffff:7f00:1]:{port}/image.png",
            "http://2130706433:{port}/image.png",
            "http://0x7f.1:{port}/image.png",
            "http://127.1:{port}/image.png",
            "http://localhost:{port}/image.png",
        ],
    )
    async def test_loopback_refused(
        self, server: Server, make_fetcher: FetcherFactory, url: str
    ) -> None:
        """Loopback in any spelling is refused when not allowed; the server sees nothing."""
        fetcher = await make_fetcher(http_config())
        error = await fetch_error(fetcher.download(url.format(port=server.port)))
        assert isinstance(error, BlockedAddressError)
        assert error.reason == "blocked_address:loopback"
        assert sum(server.hits.paths.values()) == 0

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:{port}/image.png",
            "http://[::ffff:127.0.0.1]:{port}/image.png",
            "http://localhost:{port}/image.png",
            "http://0x7f.1:{port}/image.png",
        ],
    )
    async def test_session_refuses_without_url_check(
        self, server: Server, url: str
    ) -> None:
        """The session itself (not only the URL check) refuses loopback literals and names."""
        async with make_session(http_config()) as session:
            with pytest.raises((BlockedAddressError, aiohttp.ClientError)) as caught:
                await session.get(url.format(port=server.port))
        if isinstance(caught.value, BlockedAddressError):  # the resolver refused the name
            assert caught.value.reason == "blocked_address:loopback"
        elif isinstance(caught.value, aiohttp.ClientConnectorError):  # the socket factory
            assert str(caught.value.os_error).startswith("blocked_address:loopback")
        else:  # aiohttp itself refuses non-canonical numeric hosts
            assert isinstance(caught.value, aiohttp.InvalidURL)
        assert sum(server.hits.paths.values()) == 0

    @pytest.mark.parametrize(
        ("answers", "reason"),
        [
            (["127.0.0.1"], "blocked_address:loopback"),
            (["10.1.2.3"], "blocked_address:private"),
            (["169.254.169.254"], "blocked_address:metadata"),
            (["::ffff:127.0.0.1"], "blocked_address:loopback"),
            (["93.184.215.14", "127.0.0.1"], "blocked_address:loopback"),
        ],
    )
    async def test_private_dns_answer(
        self, server: Server, make_fetcher: FetcherFactory, answers: list[str], reason: str
    ) -> None:
        """A public-looking name whose DNS answer holds a forbidden address is refused."""
        resolver = FakeResolver({"images.test": answers})
        fetcher = await make_fetcher(http_config(), resolver=resolver)
        error = await fetch_error(fetcher.download(f"http://images.test:{server.port}/image.png"))
        assert isinstance(error, BlockedAddressError)
        assert error.reason == reason
        assert sum(server.hits.paths.values()) == 0

    async def test_socket_factory_layer(self, server: Server, tmp_path: Path) -> None:
        """With the resolver check bypassed, the socket factory still refuses loopback."""

        config = http_config()
        resolver = FakeResolver({"images.test": ["127.0.0.1"]})
        # A plain connector with the unchecked resolver: only the socket factory guards it.
        connector = aiohttp.TCPConnector(resolver=resolver,
                                         socket_factory=AddressGuard().socket_factory)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            fetcher = Fetcher(session, config, tmp_path)
            error = await fetch_error(
                fetcher.download(f"http://images.test:{server.port}/image.png")
            )
        assert isinstance(error, BlockedAddressError)
        assert error.reason == "blocked_address:loopback"
        assert sum(server.hits.paths.values()) == 0

    def test_only_public_seams(self) -> None:
        """The guard overrides no private aiohttp method; it plugs in as `resolver=` and
        `socket_factory=` (a minor aiohttp release cannot silently bypass it)."""
        private = [name for name in vars(GuardedConnector)
                   if name.startswith("_") and not name.startswith("__")]
        assert private == []
        assert issubclass(GuardedResolver, AbstractResolver)

    async def test_resolver_passes_public_answers(self) -> None:
        """A public answer goes through the resolver unchanged; a private one is refused."""
        guard = AddressGuard()
        resolver = GuardedResolver(guard, FakeResolver({"ok.test": ["93.184.215.14"],
                                                        "bad.test": ["93.184.215.14", "10.0.0.1"]}))
        [answer] = await resolver.resolve("ok.test", 443)
        assert answer["host"] == "93.184.215.14"
        with pytest.raises(BlockedAddressError) as caught:
            await resolver.resolve("bad.test", 443)
        assert caught.value.reason == "blocked_address:private"
        await resolver.close()

    async def test_socket_factory_layer_with_several_addresses(
        self, server: Server, tmp_path: Path
    ) -> None:
        """Several refused addresses (errors folded by happy eyeballs) still name the reason."""

        class SocketGuardOnly(GuardedConnector):
            async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
                return await aiohttp.TCPConnector._resolve_host(self, host, port, traces)

        resolver = FakeResolver({"images.test": ["127.0.0.1", "127.0.0.2"]})
        connector = SocketGuardOnly(resolver=resolver)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            fetcher = Fetcher(session, http_config(), tmp_path)
            error = await fetch_error(
                fetcher.download(f"http://images.test:{server.port}/image.png")
            )
        assert isinstance(error, BlockedAddressError)
        assert error.reason == "blocked_address:loopback"
        assert sum(server.hits.paths.values()) == 0

    async def test_unknown_name(self, make_fetcher: FetcherFactory) -> None:
        """A name that does not resolve is a retryable dns_error."""
        fetcher = await make_fetcher(http_config(), resolver=FakeResolver({}))
        error = await fetch_error(fetcher.download("http://nowhere.test/image.png"))
        assert isinstance(error, RetryableFetchError)
        assert error.reason == "dns_error"

    async def test_allowed_ip_literal(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """The allowed 127.0.0.1:<port> works."""
        fetcher = await make_fetcher(http_config(server.host_port))
        download = await fetcher.download(f"{server.base}/image.png")
        assert download.size == len(PNG)

    async def test_allowed_name(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """An allowed host name works even though its address is loopback."""
        resolver = FakeResolver({"bridge.test": ["127.0.0.1"]})
        fetcher = await make_fetcher(
            http_config(f"bridge.test:{server.port}"), resolver=resolver
        )
        download = await fetcher.download(f"http://bridge.test:{server.port}/image.png")
        assert download.size == len(PNG)

    async def test_allowance_is_exact(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """Allowing a name does not allow its address, nor the name on another port."""
        resolver = FakeResolver({"bridge.test": ["127.0.0.1"]})
        fetcher = await make_fetcher(http_config(f"bridge.test:{server.port}"), resolver=resolver)
        await fetcher.download(f"http://bridge.test:{server.port}/image.png")
        for url in (f"{server.base}/image.png", "http://bridge.test:1/image.png"):
            error = await fetch_error(fetcher.download(url))
            assert error.reason in ("blocked_address:loopback", "bad_port")
        assert server.hits.paths["/image.png"] == 1


class TestGetDocument:
    async def test_feed(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A document comes back with status, headers and body."""
        fetcher = await make_fetcher(http_config(server.host_port))
        document = await fetcher.get_document(f"{server.base}/feed")
        assert document.status == 200
        assert document.body == b"<rss/>"
        assert document.headers["etag"] == '"v1"'
        assert document.url == f"{server.base}/feed"

    async def test_not_modified(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A conditional GET returns the 304 itself."""
        fetcher = await make_fetcher(http_config(server.host_port))
        document = await fetcher.get_document(
            f"{server.base}/feed", headers={"If-None-Match": '"v1"'}
        )
        assert document.status == 304
        assert document.body == b""

    @pytest.mark.parametrize("code", [404, 429, 503])
    async def test_error_status_returned(
        self, server: Server, make_fetcher: FetcherFactory, code: int
    ) -> None:
        """4xx and 5xx are returned once, not retried, with their headers readable."""
        fetcher = await make_fetcher(http_config(server.host_port))
        document = await fetcher.get_document(f"{server.base}/status/{code}?retry_after=30")
        assert document.status == code
        assert document.headers["Retry-After"] == "30"
        assert document.headers["X-RateLimit-Remaining"] == "0"
        assert server.hits.paths[f"/status/{code}"] == 1

    async def test_redirect(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """Redirects are followed; the document names the final URL."""
        fetcher = await make_fetcher(http_config(server.host_port))
        document = await fetcher.get_document(f"{server.base}/to?target=/feed")
        assert document.status == 200
        assert document.url == f"{server.base}/feed"

    async def test_redirect_to_metadata(
        self, server: Server, make_fetcher: FetcherFactory
    ) -> None:
        """A document redirecting to the metadata address is refused."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(
            fetcher.get_document(f"{server.base}/to?target=http://169.254.169.254/")
        )
        assert error.reason == "blocked_address:metadata"

    async def test_too_large(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A document over max_feed_bytes is refused as too_large."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(fetcher.get_document(f"{server.base}/huge-chunked"))
        assert error.reason == "too_large"

    async def test_max_bytes_argument(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """The caller's max_bytes overrides max_feed_bytes."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(
            fetcher.get_document(f"{server.base}/image.png", max_bytes=10)
        )
        assert error.reason == "too_large"

    async def test_gzip_bomb(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A gzip bomb served as a feed stops at the cap."""
        fetcher = await make_fetcher(http_config(server.host_port))
        error = await fetch_error(
            fetcher.get_document(f"{server.base}/gzip-bomb", max_bytes=MIB)
        )
        assert error.reason == "decompression_bomb"

    async def test_authorization_dropped_across_origins(
        self, start_server: ServerFactory, make_fetcher: FetcherFactory
    ) -> None:
        """An Authorization header is not forwarded on a redirect to another origin."""
        first, second = await start_server(), await start_server()
        fetcher = await make_fetcher(http_config(first.host_port, second.host_port))
        document = await fetcher.get_document(
            f"{first.base}/to?target={second.base}/headers",
            headers={"Authorization": "Bearer sekrit", "Accept": "application/json"},
        )
        assert document.status == 200
        assert "Authorization" not in second.hits.headers["/headers"]
        assert second.hits.headers["/headers"]["Accept"] == "application/json"
        assert first.hits.headers["/to"]["Authorization"] == "Bearer sekrit"

    async def test_drip(self, server: Server, make_fetcher: FetcherFactory) -> None:
        """A dripping document is cut off at the deadline."""
        fetcher = await make_fetcher(http_config(server.host_port, timeout_s=0.5))
        error = await fetch_error(fetcher.get_document(f"{server.base}/drip"))
        assert error.reason == "timeout"


class TestRetryTiming:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("120", 120.0),
            ("0", 0.0),
            (" 5 ", 5.0),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
            ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
            ("soon", None),
            ("-5", None),
            ("1.5", 1.5),
            ("+5", None),
            ("1e3", None),
            ("9" * 400, None),
            ("Wed, 21 Oct 2015 07:28:00", 60.0),
            ("Wed, 21 Oct 2015 08:28:00 +0100", 60.0),
            ("", None),
            (None, None),
        ],
    )
    def test_parse_retry_after(self, value: str | None, seconds: float | None) -> None:
        """Retry-After is delta-seconds or an HTTP-date (GMT when no zone) relative to now."""
        now = 1445412420.0  # Wed, 21 Oct 2015 07:27:00 GMT
        assert parse_retry_after_s(value, now) == seconds

    @pytest.mark.parametrize(
        ("attempt", "jitter", "retry_after", "expected"),
        [
            (0, 1.0, None, 1.0),
            (0, 0.0, None, 0.5),
            (2, 1.0, None, 4.0),
            (3, 0.5, None, 6.0),
            (0, 1.0, 30.0, 30.0),
            (0, 1.0, 9999.0, 300.0),
            (5, 1.0, 2.0, 32.0),
        ],
    )
    def test_retry_delay(
        self, attempt: int, jitter: float, retry_after: float | None, expected: float
    ) -> None:
        """Backoff doubles per attempt with jitter; Retry-After is a floor, capped."""
        delay = retry_delay_s(attempt, backoff_s=1.0, retry_after_s=retry_after,
                              max_retry_after_s=300.0, jitter=jitter)
        assert delay == pytest.approx(expected)

    @pytest.mark.parametrize(
        ("rate", "limit", "period"), [(4.0, 4, 1.0), (0.5, 1, 2.0), (2.5, 2, 0.8)]
    )
    def test_throttler_for_rate(self, rate: float, limit: int, period: float) -> None:
        """Rates below one or fractional become whole counts over a longer period."""
        throttler = throttler_for_rate(rate)
        assert throttler.rate_limit == limit
        assert throttler.period == pytest.approx(period)


def test_config_is_frozen() -> None:
    """The test config helper produces a valid frozen HttpConfig."""
    config = http_config("127.0.0.1:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout_s = 5  # type: ignore[misc]
