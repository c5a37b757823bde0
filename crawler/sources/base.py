"""The source interface: each kind of source is one module behind these types.

A source is polled with its stored cursor and returns the media it found plus the new
cursor; the daemon owns scheduling, persistence of the cursor and the catalogue. Parsing
is pure (`bytes -> list[MediaRef]`); only `poll` does I/O, through the `HttpClient` seam.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.records import MediaRef


@dataclass(frozen=True)
class Document:
    """A fetched document (feed, API page): the final URL, status, headers and capped body."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpClient(Protocol):
    """What a source may do on the network: GET a capped document through the SSRF guard."""

    async def get_document(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Document:
        """GET `url`; return any final status (after redirects); raise FetchError on no response."""
        ...


@dataclass(frozen=True)
class PollResult:
    """What one poll produced.

    `cursor` is the new opaque cursor (JSON-serialisable text) to store, or None to keep the
    old one. `full` says the source had more than a page (poll sooner); `retry_after_s`
    asks the scheduler to wait at least that long (rate limits). `notice` is a condition
    worth reporting in `megane status` (e.g. "public timeline disabled by the server").
    """

    refs: tuple[MediaRef, ...]
    cursor: str | None = None
    full: bool = False
    retry_after_s: float | None = None
    notice: str | None = None
    skipped: tuple[tuple[str, str], ...] = field(default=())


class Source(Protocol):
    """A pollable source of media."""

    name: str
    kind: str

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """Poll once from `cursor`; raise SourceError (or FetchError) when the poll failed."""
        ...

    def query_key(self) -> str:
        """A string identifying the query; when it changes, the stored cursor is reset."""
        ...


@dataclass(frozen=True)
class SourceContext:
    """What a source is built with: the HTTP client and a few global settings."""

    http: HttpClient
    user_agent: str
    settings: Mapping[str, Any] = field(default_factory=dict)
