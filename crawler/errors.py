"""Exceptions of the crawler package.

The fetch errors follow aiohttp's split between "a response came" and "none did", and
between retryable and permanent outcomes; each carries the URL at fault and a short
constant `reason` code that is stored in the catalogue.
"""

from __future__ import annotations

from storage.errors import MeganeError


class CrawlerError(MeganeError):
    """Base of crawler failures."""


class ConfigError(CrawlerError):
    """The configuration is invalid; `problems` lists every problem found, each naming its key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")
        self.path = path
        self.problems = problems


class FetchError(CrawlerError):
    """A download failed. `reason` is a constant code such as ``http_404`` or ``too_large``."""

    retryable: bool = False

    def __init__(self, url: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{url}: {reason}" + (f" ({detail})" if detail else ""))
        self.url = url
        self.reason = reason
        self.detail = detail


class RetryableFetchError(FetchError):
    """A transient failure (timeout, 429, 5xx, reset); may be tried again later.

    `retry_after_s` is the server's Retry-After, when it sent one.
    """

    retryable = True

    def __init__(
        self, url: str, reason: str, detail: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(url, reason, detail)
        self.retry_after_s = retry_after_s


class PermanentFetchError(FetchError):
    """A failure that will not change on retry (4xx, too large, bad scheme)."""


class BlockedAddressError(PermanentFetchError):
    """The URL resolves to (or is) an address we refuse to connect to (SSRF guard)."""


class SourceError(CrawlerError):
    """A source could not be polled (bad response, unparseable feed); the source backs off.

    `reason` is a constant code for callers to branch on (``source_error`` unless the
    source says more, e.g. ``http_503``, ``rate_limited``, ``not_json``); `url` is the
    document at fault, when there is one; `detail` is for people.
    """

    def __init__(self, source: str, detail: str, retry_after_s: float | None = None, *,
                 reason: str = "source_error", url: str | None = None) -> None:
        super().__init__(f"source {source!r}: {detail}")
        self.source = source
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.url = url
