"""HTTP fetching: the `Fetcher` that uses the one guarded aiohttp session.

`Fetcher.download` streams a media file to the spool directory; `Fetcher.get_document`
implements the sources' `HttpClient` seam. Both follow redirects themselves, re-validating
each target, rate-limit per host, cap bytes (after decompression) and enforce one overall
deadline. The parts live in their own modules, re-exported here: the guarded session
(`crawler.connector`), per-host limits (`crawler.hostlimits`), capped bodies and the
spool (`crawler.download`), and the translation of aiohttp's outcomes into
`crawler.errors` (`crawler.fetch_errors`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from crawler.config import HttpConfig
from crawler.connector import (
    AddressGuard,
    GuardedConnector,
    GuardedResolver,
    blocked_reasons,
    make_session,
)
from crawler.download import (
    CHUNK_BYTES,
    WRITE_BATCH_BYTES,
    Download,
    read_capped,
    stream_to_spool,
)
from crawler.errors import (
    BlockedAddressError,
    FetchError,
    PermanentFetchError,
    RetryableFetchError,
)
from crawler.fetch_errors import (
    MAX_DETAIL_CHARS,
    REDIRECT_STATUSES,
    raise_for_download_status,
    translate_error,
)
from crawler.headers import sendable_header_value, shown_header_value
from crawler.hostlimits import MAX_THROTTLED_HOSTS, HostSlots, HostThrottles, throttler_for_rate
from crawler.netguard import check_url, host_port_key, normalize_allowed_hosts
from crawler.schedule import retry_delay_s
from crawler.sources.base import Document
from storage.redact import redact

__all__ = [
    "CHUNK_BYTES",
    "MAX_DETAIL_CHARS",
    "MAX_THROTTLED_HOSTS",
    "REDIRECT_STATUSES",
    "WRITE_BATCH_BYTES",
    "AddressGuard",
    "Download",
    "Fetcher",
    "GuardedConnector",
    "GuardedResolver",
    "make_session",
    "throttler_for_rate",
]

log = structlog.get_logger("crawler.fetch")

T = TypeVar("T")

# Headers that must not follow a redirect to another origin.
_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


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
        self._throttles = HostThrottles(config.per_host_rate)
        self._host_slots = HostSlots(config.per_host_connections)
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
            return await stream_to_spool(url, response, self._config.max_bytes,
                                         self._spool_dir)

    async def _get_document_once(
        self, url: str, headers: Mapping[str, str], max_bytes: int
    ) -> Document:
        async with self._follow(url, headers, for_document=True) as response:
            body = await read_capped(url, response, max_bytes)
            return Document(
                url=redact(response.url),
                status=response.status,
                headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                body=body,
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
                    raise_for_download_status(url, response, self._config.max_retry_after_s)
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
        blocked_reasons.set([])
        try:
            response = await self._session.get(current, headers=headers, allow_redirects=False)
        except BlockedAddressError as error:
            # The connector only knows host:port; name the URL asked for.
            raise BlockedAddressError(redact(url), error.reason, error.detail) from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise translate_error(url, error) from None
        try:
            yield response
        except aiohttp.ClientError as error:
            response.close()
            raise translate_error(url, error) from None
        except BaseException:
            response.close()  # never hand a half-read connection back to the pool
            raise
        else:
            response.release()

    async def _throttle(self, url: URL) -> None:
        await self._throttles.acquire(host_port_key(url.raw_host or "", url.port))


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

