"""aiohttp's outcomes as ours: status codes and client errors become `crawler.errors`.

Translated here, once: `raise_for_download_status` turns a final non-2xx response into a
retryable or permanent FetchError (Retry-After honoured, capped), `translate_error` turns
an aiohttp or socket exception into a FetchError with a constant reason and a short
detail.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError

from crawler.connector import BlockedSocketError, blocked_reasons
from crawler.errors import (
    BlockedAddressError,
    FetchError,
    PermanentFetchError,
    RetryableFetchError,
)
from crawler.headers import parse_retry_after_s
from storage.redact import redact

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_DETAIL_CHARS = 300


def raise_for_download_status(
    url: str, response: aiohttp.ClientResponse, max_retry_after_s: float
) -> None:
    """Raise the FetchError a final non-2xx `response` to `url` stands for; 2xx passes.

    429 and 5xx are retryable, with the server's Retry-After capped at `max_retry_after_s`.
    """
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


def translate_error(url: str, error: BaseException) -> FetchError:
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
        if isinstance(os_error, BlockedSocketError):
            return BlockedAddressError(shown, f"blocked_address:{os_error.reason}")
        blocked = blocked_reasons.get()
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
