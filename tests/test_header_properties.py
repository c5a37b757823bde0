"""Properties over what servers send: arbitrary header bytes, cursors, hosts and schemes.

Each parser yields a value or None (or raises its module's documented error), never
anything else; what is stored reads back unchanged; what is sent back is byte for byte
what came, or not sent at all. End-to-end examples go through a raw asyncio TCP server
(aiohttp.web would refuse to send some of these bytes), the real Fetcher, the real RSS
source and a real SQLite catalogue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.errors import FetchError, SourceError
from crawler.headers import (
    parse_retry_after_s,
    sendable_header_value,
    shown_header_value,
)
from crawler.netguard import check_url
from crawler.sources import bluesky, mastodon
from crawler.sources.base import Document
from crawler.sources.common import dump_cursor, load_cursor, parse_iso_timestamp
from crawler.sources.rss import RssSource
from storage.catalogue import Catalogue
from storage.records import MediaRef
from storage.untrusted import is_text, storable_cursor, storable_url, url_problem
from tests.conftest import rss_feed
from tests.rawhttp import RawResponse, raw_server
from tests.sourcehttp import http_client

NOW = 1_750_000_000.0
# The machine is shared: generation and examples may be slow; that is not a failure.
PURE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
STORED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NETWORK = settings(max_examples=30, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

# Header values as aiohttp hands them over: bytes decoded as UTF-8 with surrogateescape.
header_bytes = st.binary(max_size=80)
header_text = header_bytes.map(lambda raw: raw.decode("utf-8", "surrogateescape"))
# Text that looks like what the parsers look for, with odd bytes mixed in.
near_miss = st.one_of(
    header_text,
    st.from_regex(r"\s*[-+]?[0-9]{0,400}(\.[0-9]*)?([eE][-+]?[0-9]+)?\s*", fullmatch=True),
    st.datetimes().map(lambda when: when.strftime("%a, %d %b %Y %H:%M:%S")),
    st.builds(lambda text, zone: f"{text} {zone}",
              st.datetimes().map(lambda when: when.strftime("%a, %d %b %Y %H:%M:%S")),
              st.sampled_from(["GMT", "+0000", "-2359", "+9999", "UT", "\udce4", ""])),
    st.text(max_size=40),
)


def _no_split_pair(text: str) -> bool:
    """JSON reads a high surrogate escape followed by a low one as one character, so such a
    split pair cannot round-trip; no decoder we use produces one (surrogateescape gives
    low surrogates only)."""
    return not any(0xD800 <= ord(first) <= 0xDBFF and 0xDC00 <= ord(second) <= 0xDFFF
                   for first, second in itertools.pairwise(text))


surrogate_text = st.text(
    alphabet=st.one_of(st.characters(), st.characters(min_codepoint=0xD800,
                                                      max_codepoint=0xDFFF)),
    max_size=30).filter(_no_split_pair)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | surrogate_text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(surrogate_text, children, max_size=4),
    max_leaves=12,
)
cursors = st.dictionaries(surrogate_text, json_values, max_size=5)


def _document(headers: dict[str, str]) -> Document:
    return Document(url="https://example.org/api", status=200, headers=headers, body=b"[]")


class TestRetryAfter:
    @PURE
    @given(value=st.one_of(st.none(), near_miss), now=st.floats(allow_nan=False))
    def test_yields_a_finite_delay_or_none(self, value: str | None, now: float) -> None:
        """Any Retry-After value gives a finite non-negative delay or None, never an error."""
        seconds = parse_retry_after_s(value, now)
        assert seconds is None or (math.isfinite(seconds) and seconds >= 0)

    @PURE
    @given(seconds=st.integers(min_value=0, max_value=10**9))
    def test_delta_seconds_are_read_exactly(self, seconds: int) -> None:
        """Delta-seconds are the number they spell."""
        assert parse_retry_after_s(f" {seconds} ", NOW) == float(seconds)


class TestRateLimitHeaders:
    @PURE
    @given(remaining=st.one_of(st.none(), near_miss), reset=st.one_of(st.none(), near_miss))
    def test_mastodon_and_bluesky_wait_or_none(
        self, remaining: str | None, reset: str | None
    ) -> None:
        """X-RateLimit-* and RateLimit-* values give a finite wait or None, never an error."""
        for module, prefix in ((mastodon, "X-RateLimit-"), (bluesky, "RateLimit-")):
            headers = {f"{prefix}{name}": value for name, value
                       in (("Remaining", remaining), ("Reset", reset)) if value is not None}
            wait = module.rate_limit_wait_s(_document(headers), NOW)
            assert wait is None or (math.isfinite(wait) and wait >= 0)

    @PURE
    @given(value=st.one_of(st.none(), near_miss, st.integers()))
    def test_iso_timestamps_parse_or_none(self, value: Any) -> None:
        """X-RateLimit-Reset times parse to finite epoch seconds or None."""
        seconds = parse_iso_timestamp(value)
        assert seconds is None or math.isfinite(seconds)


class TestSendingBack:
    @PURE
    @given(raw=header_bytes)
    def test_sendable_values_round_trip(self, raw: bytes) -> None:
        """A value is sendable exactly when it goes out as the bytes that came in."""
        value = raw.decode("utf-8", "surrogateescape")
        if sendable_header_value(value):
            assert value.encode("utf-8") == raw
        else:
            assert any(byte in raw for byte in b"\r\n\x00") or not is_text(value)
        assert is_text(shown_header_value(value))


class TestCursors:
    @PURE
    @given(cursor=cursors)
    def test_dump_then_load_is_identity(self, cursor: dict[str, Any]) -> None:
        """load_cursor(dump_cursor(x)) == x, and the dumped text is storable UTF-8."""
        text = dump_cursor(cursor)
        assert is_text(text) and storable_cursor(text) == text
        assert load_cursor(text) == cursor

    @PURE
    @given(text=st.one_of(st.none(), header_text, surrogate_text))
    def test_load_cursor_never_raises(self, text: str | None) -> None:
        """Any stored text loads as a dict (unreadable text is a first poll)."""
        assert isinstance(load_cursor(text), dict)

    @STORED
    @given(cursor=cursors, notice=st.one_of(st.none(), surrogate_text))
    def test_round_trip_through_the_catalogue(
        self, cursor: dict[str, Any], notice: str | None
    ) -> None:
        """A cursor stored by record_poll and read back loads as the same value."""

        async def store_and_read() -> Any:
            with tempfile.TemporaryDirectory() as folder:
                catalogue = await Catalogue.open(Path(folder) / "catalogue.sqlite")
                try:
                    await catalogue.ensure_source("s", "rss", "rss:x")
                    await catalogue.record_poll("s", cursor=dump_cursor(cursor), new_items=0,
                                                next_poll_at=NOW + 60, notice=notice, now=NOW)
                    return await catalogue.source_state("s")
                finally:
                    await catalogue.close()

        state = asyncio.run(store_and_read())
        assert load_cursor(state.cursor) == cursor


schemes = st.one_of(st.sampled_from(["http", "https", "file", "data", "javascript", "ftp",
                                     "HTTP", "", "h\u0442tp"]),
                    st.from_regex(r"[a-zA-Z][a-zA-Z0-9+.\-]{0,8}", fullmatch=True))
hosts = st.one_of(
    st.text(max_size=30),
    surrogate_text,
    st.from_regex(r"[a-z0-9\-.]{1,20}(:[0-9]{0,7})?", fullmatch=True),
    st.sampled_from(["example.com\uff1a8080", "xn--", "xn--zz.example", "[::1", "[::1]:99999",
                     "exa\u00admple.com", "ex ample.com", "a..b", "\udce4.example", "1.2.3.4",
                     "[fe80::1%25eth0]", "%41.example"]),
)
urls = st.one_of(
    st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}", schemes, hosts,
              st.text(max_size=20)),
    st.builds(lambda scheme, rest: f"{scheme}:{rest}", schemes, st.text(max_size=30)),
    surrogate_text,
)


class TestUrls:
    @PURE
    @given(url=urls)
    def test_url_problem_is_a_reason_or_none(self, url: str) -> None:
        """Every URL is admissible or refused as bad_url / bad_scheme, without an error."""
        assert url_problem(storable_url(url)) in (None, "bad_url", "bad_scheme")
        assert is_text(storable_url(url))

    @PURE
    @given(url=urls)
    def test_check_url_raises_only_fetch_errors(self, url: str) -> None:
        """The request guard refuses any URL with a FetchError, never another exception."""
        try:
            check_url(url)
        except FetchError as error:
            assert error.reason

    @STORED
    @given(batch=st.lists(urls, min_size=1, max_size=6))
    def test_every_url_gets_a_row(self, batch: list[str]) -> None:
        """add_media stores every URL given (pending, or rejected with its reason)."""

        async def store() -> list[Any]:
            with tempfile.TemporaryDirectory() as folder:
                catalogue = await Catalogue.open(Path(folder) / "catalogue.sqlite")
                try:
                    await catalogue.add_media(
                        [MediaRef(url=url, source="s", author=url[:10]) for url in batch], NOW)
                    return await catalogue.media_list()
                finally:
                    await catalogue.close()

        rows = asyncio.run(store())
        stored = {storable_url(url) for url in batch}
        assert len(rows) <= len(stored) and rows
        for row in rows:
            assert row["state"] in ("pending", "rejected")
            if row["state"] == "rejected":
                assert row["reason"] in ("bad_url", "bad_scheme")
            else:
                assert url_problem(row["url"]) is None


HEADER_NAMES = (b"Last-Modified", b"ETag", b"Retry-After", b"X-RateLimit-Remaining",
                b"X-RateLimit-Reset", b"RateLimit-Reset", b"RateLimit-Remaining", b"Link")


class TestOverTheWire:
    @NETWORK
    @given(values=st.dictionaries(st.sampled_from(HEADER_NAMES), header_bytes, min_size=1),
           status=st.sampled_from([200, 304, 429, 503]))
    def test_rss_poll_stores_and_sends_back_safely(
        self, values: dict[bytes, bytes], status: int
    ) -> None:
        """Arbitrary header bytes: a poll yields or raises its documented error; the cursor
        stores and reads back; validators sent back are the bytes received, or not sent."""
        asyncio.run(self._poll_twice(values, status))

    async def _poll_twice(self, values: dict[bytes, bytes], status: int) -> None:
        async with raw_server() as server:
            feed = rss_feed(server.base, [{"image": "/img/a.jpg"}])
            server.routes["/feed.xml"] = RawResponse(
                status, [(b"Content-Type", b"application/rss+xml"), *values.items()], feed)
            async with http_client(server.base) as client:
                source = RssSource("feed", f"{server.base}/feed.xml", client, "tests/1")
                try:
                    result = await source.poll(None, NOW)
                except (SourceError, FetchError):
                    return  # the poll's documented failures; the daemon records them
                with tempfile.TemporaryDirectory() as folder:
                    catalogue = await Catalogue.open(Path(folder) / "catalogue.sqlite")
                    try:
                        await catalogue.ensure_source("feed", "rss", source.query_key())
                        await catalogue.add_media(result.refs, NOW)
                        await catalogue.record_poll("feed", cursor=result.cursor, new_items=0,
                                                    next_poll_at=NOW, notice=None, now=NOW)
                        state = await catalogue.source_state("feed")
                    finally:
                        await catalogue.close()
                assert state is not None
                assert load_cursor(state.cursor) == load_cursor(result.cursor)
                with contextlib.suppress(SourceError, FetchError):
                    await source.poll(state.cursor, NOW)
        sent = server.requests[-1].headers
        for request_name, response_name in ((b"if-none-match", b"ETag"),
                                            (b"if-modified-since", b"Last-Modified")):
            if request_name in sent:
                assert sent[request_name] == values[response_name].strip(b" \t")

    @NETWORK
    @given(value=header_bytes, status=st.sampled_from([429, 503]))
    def test_download_retry_after_is_finite_or_none(self, value: bytes, status: int) -> None:
        """A throttled download's Retry-After of any bytes becomes a finite delay or None."""

        async def download() -> None:
            async with raw_server() as server:
                server.routes["/a.jpg"] = RawResponse(status, [(b"Retry-After", value)], b"x")
                async with http_client(server.base) as client:
                    try:
                        await client.inner.download(f"{server.base}/a.jpg")
                    except FetchError as error:
                        retry_after = getattr(error, "retry_after_s", None)
                        assert retry_after is None or (math.isfinite(retry_after)
                                                       and retry_after >= 0)
                    else:
                        raise AssertionError("a 429/503 download must fail")

        asyncio.run(download())

    @NETWORK
    @given(values=st.dictionaries(
        st.sampled_from([b"Location", b"Content-Type", b"Content-Encoding", b"Content-Length",
                         b"Transfer-Encoding", b"Retry-After"]), header_bytes, min_size=1),
        status=st.sampled_from([200, 302, 307, 429]))
    def test_download_with_any_header_bytes(self, values: dict[bytes, bytes], status: int) -> None:
        """Any bytes in Location and content headers: a download succeeds or is a FetchError."""

        async def download() -> None:
            async with raw_server() as server:
                server.routes["/a.png"] = RawResponse(status, list(values.items()), b"\x89PNG")
                async with http_client(server.base) as client:
                    try:
                        result = await client.inner.download(f"{server.base}/a.png")
                    except FetchError as error:
                        assert error.reason and error.url.startswith(server.base)
                    else:
                        result.path.unlink()

        asyncio.run(download())
