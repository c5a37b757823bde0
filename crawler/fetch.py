"""HTTP fetching: the one guarded aiohttp session and the `Fetcher` that uses it.

`make_session` builds the process's single `aiohttp.ClientSession` around a
`GuardedConnector`, which refuses forbidden addresses (see `crawler.netguard`) through
aiohttp's public seams only: a `GuardedResolver` checks every DNS answer (the DNS cache
holds only checked answers), and the socket factory checks the address a socket actually
connects to right before `connect()` (covering IP literals, which bypass resolvers).

`Fetcher.download` streams a media file to the spool directory; `Fetcher.get_document`
implements the sources' `HttpClient` seam. Both follow redirects themselves, re-validating
each target, rate-limit per host, cap bytes (after decompression) and enforce one overall
deadline. aiohttp exceptions are translated here, once, into `crawler.errors`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import os
import random
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import ContentEncodingError
from asyncio_throttle.throttler import Throttler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from crawler.config import HttpConfig
from crawler.errors import (
    BlockedAddressError,
    FetchError,
    PermanentFetchError,
    RetryableFetchError,
)
from crawler.headers import (
    parse_retry_after_s,
    sendable_header_value,
    shown_header_value,
)
from crawler.netguard import (
    check_url,
    host_port_key,
    is_forbidden_address,
    normalize_allowed_hosts,
)
from crawler.schedule import retry_delay_s
from crawler.sources.base import Document
from storage.redact import redact

log = structlog.get_logger("crawler.fetch")

T = TypeVar("T")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
WRITE_BATCH_BYTES = 512 * 1024
MAX_THROTTLED_HOSTS = 4096
MAX_DETAIL_CHARS = 300
# Headers that must not follow a redirect to another origin.
_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


@dataclass(frozen=True)
class Download:
    """A completed download: `path` is a file in the spool directory the caller renames."""

    url: str
    final_url: str
    path: Path
    sha256: str
    size: int
    content_type: str | None


# The reasons the socket factory refused addresses during the current request. Happy
# eyeballs folds several connect errors into one OSError text; this keeps them as fields.
# Connect tasks copy the context, so they append to the request's own list.
_blocked_reasons: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "megane_blocked_reasons", default=None)


class _BlockedSocketError(OSError):
    """Raised by the socket factory for a forbidden address (an OSError, as aiohttp expects)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"blocked_address:{reason} ({address})")
        self.reason = reason


class AddressGuard:
    """The address policy on aiohttp's two public seams: the resolver and the socket factory.

    `GuardedResolver` refuses a whole DNS answer when any address in it is forbidden, so
    no connection is even tried; `socket_factory` (called with the exact socket address
    right before `connect()`) refuses again, which also covers IP literals (aiohttp never
    resolves those) and any path around the resolver. `allowed_hosts` (`host_port_key`
    strings) exempts exactly those host:port pairs, and the addresses they resolved to on
    that port.
    """

    def __init__(self, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.allowed_hosts = allowed_hosts
        # (address, port) pairs resolved for an allowed host; bounded by clearing.
        self._exempt_addresses: set[tuple[str, int]] = set()

    def check_answer(self, host: str, port: int, results: Sequence[ResolveResult]) -> None:
        """Raise BlockedAddressError unless `host:port` is allowed or every address is public."""
        key = host_port_key(host, port)
        if key in self.allowed_hosts:
            if len(self._exempt_addresses) > 1024:
                self._exempt_addresses.clear()
            self._exempt_addresses.update((result["host"], port) for result in results)
            return
        for result in results:
            reason = is_forbidden_address(result["host"])
            if reason is not None:
                raise BlockedAddressError(
                    key, f"blocked_address:{reason}", f"{host} resolved to {result['host']}"
                )

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's `socket_factory` hook: a socket, unless the address is forbidden."""
        family, type_, proto, _, address = addr_info
        host, port = str(address[0]), int(address[1])
        reason = is_forbidden_address(host)
        if reason is not None and not self._exempt(host, port):
            blocked = _blocked_reasons.get()
            if blocked is not None:
                blocked.append(reason)
            raise _BlockedSocketError(host, reason)
        return socket.socket(family=family, type=type_, proto=proto)

    def _exempt(self, host: str, port: int) -> bool:
        return (host, port) in self._exempt_addresses or (
            host_port_key(host, port) in self.allowed_hosts
        )


class GuardedResolver(AbstractResolver):
    """An `aiohttp.abc.AbstractResolver` that filters another resolver's answers.

    `inner` defaults to aiohttp's `DefaultResolver`, which this resolver then owns and
    closes.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family=family)
        self._guard.check_answer(host, port, results)
        return results

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that never connects to a forbidden address (see `AddressGuard`).

    Only public constructor arguments are used (`resolver=`, `socket_factory=`); `close`
    also closes the resolver, which aiohttp leaves to whoever passed it in.
    """

    def __init__(
        self,
        *,
        allowed_hosts: frozenset[str] = frozenset(),
        resolver: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        self.address_guard = AddressGuard(allowed_hosts)
        self.guarded_resolver = GuardedResolver(self.address_guard, resolver)
        super().__init__(resolver=self.guarded_resolver,
                         socket_factory=self.address_guard.socket_factory, **kwargs)

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self.guarded_resolver.close()


def make_session(
    config: HttpConfig, *, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The process's one ClientSession: guarded connector, limits and timeouts from config.

    Cookies are not kept (a crawler has no session to keep, and a shared jar would leak
    cookies across sources); proxies from the environment are ignored. Each read waits at
    most `timeout_s`; the Fetcher bounds a whole download by `timeout_s` as well.
    `resolver` replaces the system resolver (tests use it to answer with private addresses).
    """
    connector = GuardedConnector(
        allowed_hosts=normalize_allowed_hosts(config.allowed_private_hosts),
        limit=config.max_connections,
        limit_per_host=config.per_host_connections,
        resolver=resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": config.user_agent},
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.timeout_s
        ),
        # Decompressed bytes are what the Fetcher counts, so a gzip bomb meets the cap;
        # aiohttp inflates in bounded steps as the body is read.
        auto_decompress=True,
        raise_for_status=False,
    )


def throttler_for_rate(rate_per_s: float) -> Throttler:
    """A Throttler allowing `rate_per_s` requests a second (also below one a second)."""
    count = max(1, math.floor(rate_per_s))
    return Throttler(rate_limit=count, period=count / rate_per_s)


class _HostSlots:
    """At most `size` operations at a time per host; entries exist only while in use.

    Waiting for a slot happens before a download's deadline starts, so downloads queued
    behind a busy host wait their turn instead of timing out in aiohttp's pool.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.setdefault(key, (asyncio.Semaphore(self._size), [0]))
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[key]

    def __len__(self) -> int:
        return len(self._slots)


class Fetcher:
    """Downloads media and fetches documents through the guarded session; safe to share.

    Each call first waits for one of its host's `per_host_connections` slots; from then on
    it is bounded by `config.timeout_s`, redirects, retries and their waits included. Every
    request (each redirect hop and retry) also waits for its host's rate limit.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: HttpConfig,
        spool_dir: Path,
        *,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._session = session
        self._config = config
        self._spool_dir = Path(spool_dir)
        self._allowed_hosts = normalize_allowed_hosts(config.allowed_private_hosts)
        self._throttlers: OrderedDict[str, Throttler] = OrderedDict()
        self._host_slots = _HostSlots(config.per_host_connections)
        self._random_fraction = random_fraction
        self._spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def download(self, url: str) -> Download:
        """Stream `url` to a new file in the spool directory; raise FetchError on failure.

        The partial file is removed on every failure, cancellation included.
        """
        return await self._with_deadline(url, lambda: self._download_once(url))

    async def get_document(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Document:
        """GET `url` (after redirects) with any final status; FetchError when none came.

        Only failures without a response (connection errors, timeouts) are retried; a 304,
        4xx or 5xx is returned so the source can read its headers. The body is capped at
        `max_bytes` (default `max_feed_bytes`), decompressed.
        """
        cap = max_bytes if max_bytes is not None else self._config.max_feed_bytes
        sendable = _sendable_headers(url, headers or {})
        return await self._with_deadline(
            url, lambda: self._get_document_once(url, sendable, cap)
        )

    async def _with_deadline(self, url: str, attempt: Callable[[], Awaitable[T]]) -> T:
        shown = redact(url)
        parsed = check_url(url, allowed_hosts=self._allowed_hosts)
        async with self._host_slots.hold(host_port_key(parsed.raw_host or "", parsed.port)):
            deadline = asyncio.get_running_loop().time() + self._config.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._with_retries(shown, attempt, deadline)
            except TimeoutError:
                raise RetryableFetchError(
                    shown, "timeout", f"no complete response within {self._config.timeout_s}s"
                ) from None

    async def _with_retries(
        self, shown: str, attempt: Callable[[], Awaitable[T]], deadline: float
    ) -> T:
        loop = asyncio.get_running_loop()
        for number in range(self._config.max_retries + 1):
            try:
                return await attempt()
            except RetryableFetchError as error:
                if number >= self._config.max_retries:
                    raise
                delay = retry_delay_s(
                    number,
                    backoff_s=self._config.retry_backoff_s,
                    retry_after_s=error.retry_after_s,
                    max_retry_after_s=self._config.max_retry_after_s,
                    jitter=self._random_fraction(),
                )
                if loop.time() + delay >= deadline:
                    raise  # the caller (the catalogue) retries later, honouring retry_after_s
                log.info("fetch_retry", url=shown, reason=error.reason, attempt=number + 1,
                         delay_s=round(delay, 3))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _download_once(self, url: str) -> Download:
        async with self._follow(url, {}, for_document=False) as response:
            max_bytes = self._config.max_bytes
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise PermanentFetchError(
                    redact(url), "too_large", f"Content-Length {declared} > {max_bytes}"
                )
            return await self._stream_to_spool(url, response, max_bytes)

    async def _get_document_once(
        self, url: str, headers: Mapping[str, str], max_bytes: int
    ) -> Document:
        async with self._follow(url, headers, for_document=True) as response:
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise PermanentFetchError(
                    redact(url), "too_large", f"Content-Length {declared} > {max_bytes}"
                )
            body = bytearray()
            chunks = self._capped_chunks(url, response, max_bytes)
            async with aclosing(chunks):
                async for chunk in chunks:
                    body += chunk
            return Document(
                url=redact(response.url),
                status=response.status,
                headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                body=bytes(body),
            )

    @asynccontextmanager
    async def _follow(
        self, url: str, headers: Mapping[str, str], *, for_document: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The final response for `url`, redirects followed and each target re-validated.

        For a download, a status other than 2xx raises; for a document it is yielded.
        """
        current = URL(url)
        request_headers = CIMultiDict(headers)
        seen = {str(current)}
        for hop in range(self._config.max_redirects + 1):
            self._check(url, current)
            await self._throttle(current)
            async with self._request(url, current, request_headers) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location is not None:
                    target = self._redirect_target(url, current, location)
                    self._check(url, target)
                    if str(target) in seen:
                        raise PermanentFetchError(
                            redact(url), "redirect_loop", f"back to {redact(target)}"
                        )
                    if hop >= self._config.max_redirects:
                        raise PermanentFetchError(
                            redact(url), "too_many_redirects",
                            f"more than {self._config.max_redirects}",
                        )
                    seen.add(str(target))
                    if target.origin() != current.origin():
                        for name in _CREDENTIAL_HEADERS:
                            request_headers.popall(name, None)
                    log.debug("fetch_redirect", url=redact(url), status=response.status,
                              target=redact(target))
                    current = target
                    continue
                if not for_document:
                    _raise_for_status(url, response, self._config.max_retry_after_s)
                yield response
                return
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, url: str, target: URL) -> None:
        """check_url on a request target; errors name the URL asked for and the target."""
        try:
            check_url(target, allowed_hosts=self._allowed_hosts)
        except FetchError as error:
            if target == URL(url):
                raise
            detail = f"redirected to {redact(target)}: {error.detail}"
            raise type(error)(redact(url), error.reason, detail) from None

    @staticmethod
    def _redirect_target(url: str, current: URL, location: str) -> URL:
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError) as error:
            raise PermanentFetchError(
                redact(url), "bad_redirect", redact(str(error))[:MAX_DETAIL_CHARS]
            ) from None
        return target.with_fragment(None)

    @asynccontextmanager
    async def _request(
        self, url: str, current: URL, headers: CIMultiDict[str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One GET without redirects; aiohttp errors become FetchErrors naming `url`."""
        _blocked_reasons.set([])
        try:
            response = await self._session.get(current, headers=headers, allow_redirects=False)
        except BlockedAddressError as error:
            # The connector only knows host:port; name the URL asked for.
            raise BlockedAddressError(redact(url), error.reason, error.detail) from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise _translate(url, error) from None
        try:
            yield response
        except aiohttp.ClientError as error:
            response.close()
            raise _translate(url, error) from None
        except BaseException:
            response.close()  # never hand a half-read connection back to the pool
            raise
        else:
            response.release()

    async def _throttle(self, url: URL) -> None:
        key = host_port_key(url.raw_host or "", url.port)
        throttler = self._throttlers.get(key)
        if throttler is None:
            throttler = throttler_for_rate(self._config.per_host_rate)
            self._throttlers[key] = throttler
            if len(self._throttlers) > MAX_THROTTLED_HOSTS:
                # The least recently used host has waited longest; its history is stale.
                self._throttlers.popitem(last=False)
        else:
            self._throttlers.move_to_end(key)
        await throttler.acquire()  # type: ignore[no-untyped-call]

    async def _capped_chunks(
        self, url: str, response: aiohttp.ClientResponse, max_bytes: int
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

    async def _stream_to_spool(
        self, url: str, response: aiohttp.ClientResponse, max_bytes: int
    ) -> Download:
        descriptor, name = tempfile.mkstemp(dir=self._spool_dir, prefix=".fetch-",
                                            suffix=".part")
        path = Path(name)
        try:
            hasher = hashlib.sha256()
            size = 0
            with os.fdopen(descriptor, "wb") as file:
                pending = bytearray()
                chunks = self._capped_chunks(url, response, max_bytes)
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


def _sendable_headers(url: str, headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` without the values that would not go out as the bytes they came in as.

    A validator a server sent with a non-UTF-8 byte (ETag, Last-Modified) cannot be sent
    back unchanged; a conditional request with an altered one is wrong, so it is dropped
    (the request is then unconditional for that validator) and the drop is logged.
    """
    kept: dict[str, str] = {}
    for name, value in headers.items():
        if sendable_header_value(name) and sendable_header_value(value):
            kept[name] = value
        else:
            log.warning("header_dropped", url=redact(url), header=shown_header_value(name),
                        value=shown_header_value(value),
                        reason="not sendable unchanged (undecodable bytes or a line break)")
    return kept


def _raise_for_status(
    url: str, response: aiohttp.ClientResponse, max_retry_after_s: float
) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    shown = redact(url)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after_s(response.headers.get("Retry-After"), time.time())
        if retry_after is not None:
            retry_after = min(retry_after, max_retry_after_s)
        raise RetryableFetchError(shown, f"http_{status}", response.reason or "",
                                  retry_after_s=retry_after)
    if status in REDIRECT_STATUSES:
        raise PermanentFetchError(shown, "bad_redirect", f"{status} without Location")
    raise PermanentFetchError(shown, f"http_{status}", response.reason or "")


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `error` or an exception it was raised from (or during) is a `kind`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _translate(url: str, error: BaseException) -> FetchError:
    """One aiohttp (or socket) error as a FetchError with a constant reason.

    The detail is shortened: aiohttp quotes the offending bytes, which a hostile server
    makes as long as it likes.
    """
    shown = redact(url)
    text = redact(str(error))
    if len(text) > MAX_DETAIL_CHARS:
        text = text[:MAX_DETAIL_CHARS] + "..."
    if isinstance(error, aiohttp.ClientConnectorError):
        os_error = error.os_error
        if isinstance(os_error, _BlockedSocketError):
            return BlockedAddressError(shown, f"blocked_address:{os_error.reason}")
        blocked = _blocked_reasons.get()
        if blocked:  # several addresses, their errors combined into one text by happy eyeballs
            return BlockedAddressError(shown, f"blocked_address:{blocked[0]}")
    if isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return PermanentFetchError(shown, "tls_error", text)
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return RetryableFetchError(shown, "dns_error", text)
    if isinstance(error, aiohttp.InvalidURL | ValueError):
        return PermanentFetchError(shown, "bad_url", text)
    if isinstance(error, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return RetryableFetchError(shown, "timeout", text)
    if isinstance(error, aiohttp.ClientPayloadError):
        if _caused_by(error, ContentEncodingError):
            return PermanentFetchError(shown, "bad_content_encoding", text)
        return RetryableFetchError(shown, "truncated_body", text)
    if isinstance(error, aiohttp.ClientResponseError):
        return PermanentFetchError(shown, "bad_response", text)
    return RetryableFetchError(shown, "connection_error", text)
