"""Text from the network or the file system, made storable: the catalogue's input boundary.

SQLite stores TEXT as UTF-8; binding a Python string that holds lone surrogates (bytes that
were not UTF-8, kept by ``surrogateescape`` in header values and file names) raises
UnicodeEncodeError. Every such value is either stored losslessly or not at all:

- URLs (`url`, `post_url`, `dedup_key`): each undecodable byte is percent-encoded
  (U+DCE4, the escaped byte 0xE4, becomes ``%E4``): the same URL to any HTTP client.
  Other lone surrogates are percent-encoded as their ``surrogatepass`` UTF-8 bytes.
- A rejected URL longer than `MAX_STORED_URL_CHARS` (a ``data:`` URL can be megabytes) is
  stored as its first characters, then ``...[truncated: N chars, sha256 H]``: distinct URLs
  stay distinct, and the row says what was cut.
- Other fields (author, dates, hashes) that are not valid text are not stored (None).
- Messages (reasons, errors, notices) are for people: undecodable bytes become ``\\xNN``.
- Text fields from sources have length caps (`capped_fields`): a 200,000-char
  author must not make an 800 KB review page. A cut value ends in ``… (+N chars)``.

`url_problem` is the check every media URL passes before it gets a row: ``bad_url`` when it
does not parse (a full-width colon in the host, invalid IDNA, a port out of range),
``bad_scheme`` when it is not http(s) or file. Pure functions; never raise.
"""

from __future__ import annotations

import hashlib
import json
from typing import TypedDict

from yarl import URL

MAX_STORED_URL_CHARS = 2048
MAX_AUTHOR_CHARS = 256
"""Authors, dates, titles: short fields from a source, cut beyond this."""
MAX_POST_URL_CHARS = 4096
"""A post URL is only shown (never fetched); a longer one is cut like a message."""
MAX_LIST_ITEMS = 1024
"""Tags kept per media row (the first ones, in the source's order). High on purpose: a
source tag aliased to a quarantine tag quarantines like a flag, and boorus send hundreds of
tags in alphabetical order; the cap only stops a 200,000-tag post."""
MAX_ITEM_CHARS = 100
"""One tag; a longer one is cut (no real tag is that long)."""
MAX_EXTRA_CHARS = 1024
"""One value of a ref's `extra` pairs."""
STORED_SCHEMES = frozenset({"http", "https", "file"})
_HOSTED_SCHEMES = frozenset({"http", "https"})


def is_text(value: str) -> bool:
    """Whether SQLite can store `value` as TEXT (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_url(url: str) -> str:
    """`url` with every lone surrogate percent-encoded (lossless for an HTTP client)."""
    if is_text(url):
        return url
    parts = []
    for char in url:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            parts.append(f"%{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:
            parts.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            parts.append(char)
    return "".join(parts)


def storable_field(value: str | None) -> str | None:
    """`value` if it is valid text, else None (stored not at all rather than altered)."""
    if value is None or is_text(value):
        return value
    return None


def storable_message(value: str | None) -> str | None:
    """A reason or error text: undecodable bytes written as ``\\xNN`` / ``\\udXXX`` escapes."""
    if value is None or is_text(value):
        return value
    return value.encode("utf-8", "surrogateescape" if _only_escaped_bytes(value)
                        else "backslashreplace").decode("utf-8", "backslashreplace")


def storable_cursor(cursor: str | None) -> str | None:
    """A source's cursor as storable text, losslessly, or None (not stored; keep the old).

    A JSON cursor holding lone surrogates is re-written with JSON ``\\udcXX`` escapes, which
    parse back to the same value; any other cursor that is not valid text is not stored.
    """
    if cursor is None or is_text(cursor):
        return cursor
    try:
        value = json.loads(cursor)
    except (ValueError, RecursionError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def capped_url(url: str) -> str:
    """A URL kept whole up to MAX_STORED_URL_CHARS, else its head and a marked digest."""
    if len(url) <= MAX_STORED_URL_CHARS:
        return url
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{url[:MAX_STORED_URL_CHARS]}...[truncated: {len(url)} chars, sha256 {digest}]"


def url_problem(url: str) -> str | None:
    """``bad_url``, ``bad_scheme`` or None for a media URL a source yielded."""
    if not url or not is_text(url):
        return "bad_url"
    try:
        parsed = URL(url)
        scheme = parsed.scheme.lower()
        host = parsed.host
        port = parsed.port
    except (ValueError, TypeError):
        return "bad_scheme" if _scheme_of(url) not in STORED_SCHEMES | {""} else "bad_url"
    if scheme not in STORED_SCHEMES:
        return "bad_scheme"
    if scheme in _HOSTED_SCHEMES:
        if (not parsed.is_absolute() or not host
                or any(char.isspace() or char == "%" for char in host)):
            return "bad_url"
        if port is None or not 0 < port < 65536:
            return "bad_url"
    return None


def _scheme_of(url: str) -> str:
    head, colon, _ = url.partition(":")
    if not colon or not head[:1].isalpha():
        return ""
    if all(char.isalnum() or char in "+-." for char in head):
        return head.lower()
    return ""


def _only_escaped_bytes(value: str) -> bool:
    return all(not 0xD800 <= ord(char) <= 0xDFFF or 0xDC80 <= ord(char) <= 0xDCFF
               for char in value)


class CappedFields(TypedDict):
    """The text fields of a media ref after `capped_fields` (keyword arguments of replace)."""

    author: str | None
    posted_at: str | None
    post_url: str | None
    tags: tuple[str, ...]
    flags: tuple[str, ...]
    extra: tuple[tuple[str, str], ...]


def capped_text(value: str | None, limit: int) -> str | None:
    """`value` cut to `limit` characters, marked ``… (+N chars)`` when cut; None stays None.

    The one cut of text from sources: storage caps with it, pages (`storage.display.clip`) too.
    """
    if value is None or len(value) <= limit:
        return value
    return f"{value[:limit]}… (+{len(value) - limit} chars)"


def capped_items(items: tuple[str, ...]) -> tuple[str, ...]:
    """At most MAX_LIST_ITEMS tags, each at most MAX_ITEM_CHARS (plus the cut mark)."""
    return tuple(capped_text(item, MAX_ITEM_CHARS) or "" for item in items[:MAX_LIST_ITEMS])


def capped_fields(*, author: str | None, posted_at: str | None, post_url: str | None,
                  tags: tuple[str, ...], flags: tuple[str, ...],
                  extra: tuple[tuple[str, str], ...]) -> CappedFields:
    """The length-capped text fields of one media ref, as keyword arguments for `replace`.

    Caps: author and posted_at `MAX_AUTHOR_CHARS`, post URL `MAX_POST_URL_CHARS`, tags
    `MAX_LIST_ITEMS` x `MAX_ITEM_CHARS`, each `extra` value `MAX_EXTRA_CHARS`. Flags are
    all kept (each cut at `MAX_AUTHOR_CHARS`): dropping one could un-quarantine an image.
    """
    return CappedFields(
        author=capped_text(author, MAX_AUTHOR_CHARS),
        posted_at=capped_text(posted_at, MAX_AUTHOR_CHARS),
        post_url=capped_text(post_url, MAX_POST_URL_CHARS),
        tags=capped_items(tags),
        # Flags are never dropped (one may be what quarantines the image); only absurdly long
        # ones are cut, past any flag a source really produces.
        flags=tuple(capped_text(flag, MAX_AUTHOR_CHARS) or "" for flag in flags),
        extra=tuple((key[:MAX_ITEM_CHARS], capped_text(value, MAX_EXTRA_CHARS) or "")
                    for key, value in extra[:MAX_LIST_ITEMS]),
    )
