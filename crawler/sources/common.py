"""Small helpers shared by the source kinds: cursors, headers, statuses, JSON bodies.

Everything here is pure (no I/O, no clock): time is passed in as `now` (epoch seconds).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from crawler.errors import SourceError
from crawler.headers import parse_retry_after_s
from crawler.sources.base import Document, SourceContext
from storage.redact import redact


def document_cap(context: SourceContext) -> int | None:
    """The byte cap for feeds and API pages: the context's `max_feed_bytes`, else None.

    None lets the HttpClient apply its own cap (the Fetcher's `http.max_feed_bytes`).
    """
    value = context.settings.get("max_feed_bytes")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def load_cursor(cursor: str | None) -> dict[str, Any]:
    """The cursor as a dict; a missing or unreadable cursor is a first poll (empty dict)."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def dump_cursor(value: Mapping[str, Any]) -> str:
    """A stable, compact JSON text for a cursor, always valid UTF-8.

    Strings holding lone surrogates (header bytes or file names that were not UTF-8) are
    written as JSON ``\\udcXX`` escapes, so `load_cursor` gives them back exactly and the
    catalogue can store the text. (A high surrogate directly followed by a low one reads
    back as the one character they pair to: JSON has no other reading. Undecodable bytes
    kept by surrogateescape are low surrogates only, so they always round-trip.)
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text


def header(document: Document, name: str) -> str | None:
    """A response header by case-insensitive name (the headers may be a plain dict)."""
    value = document.headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in document.headers.items():
        if key.lower() == lowered:
            return item
    return None


def is_http_url(url: object) -> bool:
    """Whether `url` is an absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_iso_timestamp(value: object) -> float | None:
    """Epoch seconds from an ISO-8601 time (``2025-01-02T03:04:05.000Z``), else None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso_from_epoch(seconds: float) -> str:
    """An ISO-8601 UTC time for epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def error_message(body: bytes) -> str:
    """A short error text from an API's JSON error body (``message``/``error``), else ''."""
    try:
        value = json.loads(body[:4096])
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(value, dict):
        for key in ("message", "error", "reason", "error_description"):
            text = value.get(key)
            if isinstance(text, str) and text.strip():
                return text.strip()[:200]
    return ""


def raise_for_status(source: str, document: Document, now: float,
                     throttled: frozenset[int] = frozenset({429})) -> None:
    """Raise SourceError for any status but 200, with the server's Retry-After if it sent one.

    `throttled` are the statuses that mean "slow down" (429, and 421 on Moebooru); for them
    a missing Retry-After still yields a retry delay of one minute.
    """
    if document.status == 200:
        return
    retry_after_s = parse_retry_after_s(header(document, "Retry-After"), now)
    shown = redact(document.url)
    if document.status in throttled:
        raise SourceError(source, f"rate limited (HTTP {document.status}) at {shown}",
                          retry_after_s=retry_after_s if retry_after_s is not None else 60.0,
                          reason="rate_limited", url=shown)
    message = error_message(document.body)
    raise SourceError(source, f"HTTP {document.status} from {shown}"
                      + (f": {message}" if message else ""), retry_after_s=retry_after_s,
                      reason=f"http_{document.status}", url=shown)


def parse_json(source: str, body: bytes, url: str = "") -> Any:
    """Decode a JSON body; anything else is a SourceError naming the URL.

    Lone surrogates (``"\\ud800"`` escapes, or encoded in the bytes) become U+FFFD: no
    string from the network may be one that cannot be stored as UTF-8.
    """
    try:
        return _storable(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # deep nesting recurses
        where = f" from {redact(url)}" if url else ""
        raise SourceError(source, f"not JSON{where}: {error}", reason="not_json",
                          url=redact(url) if url else None) from None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """`value` (decoded JSON) with every lone surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _LONE_SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def as_mapping(value: object) -> Mapping[str, Any]:
    """`value` when it is a JSON object, else an empty mapping."""
    return value if isinstance(value, Mapping) else {}


def string_list(value: object) -> list[str] | None:
    """`value` as a list of strings (a single string becomes a one-item list), else None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def normalize_tag(text: str) -> str:
    """A tag or category as stored and matched: NFKC, lower case, inner whitespace collapsed.

    ``"  Window\n\tLight "`` -> ``"window light"``; ``"ＭＥＧＡＮＥ"`` -> ``"megane"``.
    Used for source tags before they are stored and for `[tag_aliases]` before matching.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def lower_unique(items: list[str]) -> tuple[str, ...]:
    """Normalised (`normalize_tag`), non-empty items, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in items:
        text = normalize_tag(item)
        if text:
            seen.setdefault(text, None)
    return tuple(seen)
