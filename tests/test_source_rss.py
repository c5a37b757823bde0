"""The rss source: feed parsing (pure) and conditional polling against a real test server."""

from __future__ import annotations

import json
import time
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from crawler.config import SourceConfig
from crawler.errors import FetchError, SourceError
from crawler.sources import rss
from crawler.sources.base import SourceContext
from crawler.sources.item_pictures import ItemPictures, clean_text
from tests.sourcehttp import http_client, serve

BASE = "https://example.org/feed.xml"
MEDIA_NS = 'xmlns:media="http://search.yahoo.com/mrss/"'


def rss_feed(items: str, channel_extra: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" {MEDIA_NS}>'
            f"<channel><title>t</title><link>https://example.org/</link>{channel_extra}"
            f"{items}</channel></rss>").encode()


def item(link: str, body: str = "") -> str:
    return f"<item><title>x</title><link>{link}</link>{body}</item>"


def truncated_feed(enclosure: str) -> bytes:
    """A feed cut off in its second item."""
    whole = rss_feed(item("/p/1", f'<enclosure url="{enclosure}" type="image/jpeg"/>'))
    return whole[: -len(b"</channel></rss>")] + b"<item><title>broken"


def urls(body: bytes) -> list[str]:
    return [ref.url for ref in rss.parse_feed(body, source="feed", base_url=BASE)]


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>&lol9;</title>
<item><title>&lol9;</title><link>https://example.org/a</link>
<enclosure url="https://example.org/a.jpg" type="image/jpeg"/></item></channel></rss>"""

QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "' + b"x" * 100_000
             + b'">]><rss version="2.0"><channel><title>' + b"&big;" * 10_000
             + b"</title></channel></rss>")


class TestParseFeed:
    @pytest.mark.parametrize(("items", "expected"), [
        (item("https://example.org/p/1",
              '<enclosure url="https://cdn.example.org/1.jpg" type="image/jpeg" length="9"/>'),
         ["https://cdn.example.org/1.jpg"]),
        (item("https://example.org/p/1",
              '<enclosure url="https://cdn.example.org/1.mp4" type="video/mp4" length="9"/>'),
         []),
        (item("https://example.org/p/1", '<enclosure url="/img/2.png" type="image/png"/>'),
         ["https://example.org/img/2.png"]),
        (item("https://example.org/p/1",
              '<media:group><media:content url="https://cdn.example.org/big.jpg" '
              'medium="image" width="2000"/></media:group>'
              '<media:thumbnail url="https://cdn.example.org/thumb.jpg"/>'),
         ["https://cdn.example.org/big.jpg"]),
        (item("https://example.org/p/1",
              '<media:content url="https://cdn.example.org/clip.webm" medium="video"/>'
              '<media:thumbnail url="https://cdn.example.org/thumb.jpg"/>'),
         ["https://cdn.example.org/thumb.jpg"]),
        (item("https://example.org/p/1",
              '<media:content url="https://cdn.example.org/noext"  type="image/webp"/>'),
         ["https://cdn.example.org/noext"]),
        (item("https://example.org/posts/7/",
              "<description>&lt;p&gt;&lt;img src=&quot;pics/a.jpg&quot;&gt;"
              "&lt;img src=&quot;data:image/png;base64,AAAA&quot;&gt;"
              "&lt;img src=&quot;https://t.example.org/px.gif&quot; width=&quot;1&quot; "
              "height=&quot;1&quot;&gt;&lt;/p&gt;</description>"),
         ["https://example.org/posts/7/pics/a.jpg", "data:image/png;base64,AAAA"]),
        (item("https://example.org/p/1",
              '<enclosure url="ftp://example.org/1.jpg" type="image/jpeg"/>'
              '<enclosure url="javascript:alert(1)" type="image/jpeg"/>'),
         ["ftp://example.org/1.jpg", "javascript:alert(1)"]),
        (item("https://example.org/p/1",
              '<enclosure url="https://cdn.example.org/1.jpg" type="image/jpeg"/>')
         + item("https://example.org/p/2",
                '<enclosure url="https://cdn.example.org/1.jpg" type="image/jpeg"/>'),
         ["https://cdn.example.org/1.jpg"]),
        (item("https://example.org/p/1",
              '<media:group>'
              '<media:content url="https://c.example/s.jpg?a=1&amp;b=2" medium="image" '
              'width="320" height="240"/>'
              '<media:content url="https://c.example/l.jpg" medium="image" width="2048" '
              'height="1536"/>'
              "<media:content url='https://c.example/m.jpg' medium='image' width='1024' "
              "height='768' isDefault='true'/>"
              '</media:group>'
              '<media:group><media:content url="https://c.example/other-a.jpg" fileSize="10"/>'
              '<media:content url="https://c.example/other-b.jpg" fileSize="99"/></media:group>'
              '<media:content url="https://c.example/loose-1.jpg" medium="image"/>'
              '<media:content url="https://c.example/loose-2.jpg" medium="image"/>'),
         ["https://c.example/l.jpg", "https://c.example/other-b.jpg",
          "https://c.example/loose-1.jpg", "https://c.example/loose-2.jpg"]),
    ], ids=["enclosure", "video-enclosure", "relative-enclosure", "group-not-thumbnail",
            "thumbnail-when-nothing-larger", "typed-media-content", "html-images",
            "other-schemes-yielded", "same-url-once", "largest-rendition-per-group"])
    def test_media_found(self, items: str, expected: list[str]) -> None:
        """Each kind of media reference yields exactly the image URLs it names, any scheme.

        URLs that are not http(s) are yielded for the pipeline to record as rejected
        (`bad_scheme`), never dropped here.
        """
        assert urls(rss_feed(items)) == expected

    @pytest.mark.parametrize(("channel", "item_rating", "flagged"), [
        ("", "", False),
        ("", '<media:rating scheme="urn:simple">adult</media:rating>', True),
        ('<media:rating scheme="urn:simple">adult</media:rating>', "", True),
        ('<media:rating scheme="urn:simple">adult</media:rating>',
         '<media:rating scheme="urn:simple">nonadult</media:rating>', False),
        ("", "<media:rating>nonadult</media:rating>", False),
    ], ids=["none", "item-adult", "channel-adult", "item-overrides-channel", "nonadult"])
    def test_media_rating_flag(self, channel: str, item_rating: str, flagged: bool) -> None:
        """A Media RSS adult rating (item, else channel) becomes the rss:rating:adult flag."""
        body = rss_feed(item("https://example.org/p/1",
                             '<enclosure url="https://e.org/1.jpg" type="image/jpeg"/>'
                             + item_rating), channel)
        (ref,) = rss.parse_feed(body, source="feed", base_url=BASE)
        assert ref.flags == (("rss:rating:adult",) if flagged else ())

    def test_post_fields(self) -> None:
        """Categories become lower-case tags; the post link, author and date are kept."""
        body = rss_feed(item(
            "https://example.org/p/1",
            "<category>Megane</category><category>cat</category><category>megane</category>"
            "<author>ann@example.org (Ann)</author>"
            "<pubDate>Tue, 10 Jun 2025 04:00:00 GMT</pubDate>"
            '<enclosure url="https://e.org/1.jpg" type="image/jpeg"/>'))
        (ref,) = rss.parse_feed(body, source="feed", base_url=BASE)
        assert ref.source == "feed"
        assert ref.tags == ("megane", "cat")
        assert ref.post_url == "https://example.org/p/1"
        assert ref.author and "ann" in ref.author.lower()
        assert ref.posted_at == "2025-06-10T04:00:00Z"

    def test_atom(self) -> None:
        """Atom enclosure links and HTML content images resolve against the feed's base."""
        body = b"""<?xml version="1.0" encoding="utf-8"?>
        <feed xmlns="http://www.w3.org/2005/Atom"><title>x</title><id>urn:f</id>
        <updated>2025-01-01T00:00:00Z</updated>
        <entry><title>e</title><id>urn:1</id><updated>2025-01-01T00:00:00Z</updated>
        <link href="https://a.example/e1"/>
        <link rel="enclosure" type="image/png" href="i.png"/>
        <category term="Glasses"/>
        <content type="html">&lt;img src="/rel.jpg"&gt;</content></entry></feed>"""
        refs = rss.parse_feed(body, source="atom", base_url="https://a.example/feed/atom.xml",
                              content_type="application/atom+xml")
        assert [ref.url for ref in refs] == ["https://a.example/feed/i.png",
                                             "https://a.example/rel.jpg"]
        assert refs[0].tags == ("glasses",)
        assert refs[0].posted_at == "2025-01-01T00:00:00Z"

    def test_bozo_feed_yields_what_parsed(self) -> None:
        """A truncated feed reports its problem and still yields the items before the break."""
        result = rss.read_feed(truncated_feed("https://e.org/1.jpg"), source="feed",
                               base_url=BASE)
        assert [ref.url for ref in result.refs] == ["https://e.org/1.jpg"]
        assert result.problem

    @pytest.mark.parametrize("body", [
        b"<html><head><title>Not a feed</title></head><body><p>hello</body></html>",
        b"\x00\x01\x02garbage\xff\xfe",
        b"",
        b'{"items": []}',
    ], ids=["html", "garbage", "empty", "json"])
    def test_not_a_feed(self, body: bytes) -> None:
        """A body that is not a feed at all is a SourceError, not an empty result."""
        with pytest.raises(SourceError, match="not an RSS or Atom feed"):
            rss.parse_feed(body, source="feed", base_url=BASE)

    def test_empty_feed(self) -> None:
        """A valid feed with no items yields nothing and no error."""
        assert urls(rss_feed("")) == []

    @pytest.mark.parametrize("body", [
        b"<media:group " * 400_000,
        b"<media:group><media:content url='x' " * 200_000,
        b"<m:group>" + b"<m:content url='a'" * 300_000 + b"</m:group>",
    ], ids=["unclosed-groups", "unclosed-contents", "unclosed-content-in-group"])
    def test_group_scan_is_linear(self, body: bytes) -> None:
        """The media:group scan of hostile bytes finishes in bounded time."""
        started = time.monotonic()
        rss.smaller_renditions(body)
        assert time.monotonic() - started < 2.0

    @pytest.mark.parametrize("body", [BOMB, QUADRATIC, BOMB.decode().encode("utf-16")],
                             ids=["billion-laughs", "quadratic", "utf-16-bomb"])
    def test_entity_bombs_refused(self, body: bytes) -> None:
        """Entity declarations are refused at once, in bounded time, with a clear error."""
        started = time.monotonic()
        with pytest.raises(SourceError, match="declares XML entities"):
            rss.parse_feed(body, source="feed", base_url=BASE)
        assert time.monotonic() - started < 1.0


class TestValidate:
    @pytest.mark.parametrize(("settings", "problem"), [
        ({"url": "https://example.org/feed"}, None),
        ({}, "url: required"),
        ({"url": "file:///etc/passwd"}, "url: must be an http(s) URL"),
        ({"url": 3}, "url: must be an http(s) URL"),
        ({"url": "https://example.org/feed", "hashtag": "x"}, "hashtag: unknown key"),
    ])
    def test_validate(self, settings: dict[str, object], problem: str | None) -> None:
        """Each problem names its key and what is expected."""
        problems = rss.validate(settings)
        if problem is None:
            assert problems == []
        else:
            assert len(problems) == 1 and problems[0].startswith(problem)


class FeedServer:
    """A feed whose items grow over time, with ETag / Last-Modified validation."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.status_override: tuple[int, dict[str, str]] | None = None
        self.body_override: bytes | None = None
        self.requests: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/feed.xml", self.handle)

    def add(self, number: int) -> None:
        self.items.insert(0, item(f"/p/{number}",
                                  f'<enclosure url="/img/{number}.jpg" type="image/jpeg"/>'))

    @property
    def etag(self) -> str:
        return f'"v{len(self.items)}"'

    @property
    def last_modified(self) -> str:
        return f"Tue, 10 Jun 2025 04:{len(self.items):02d}:00 GMT"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.status_override:
            status, headers = self.status_override
            return web.Response(status=status, headers=headers)
        if self.body_override is not None:
            return web.Response(body=self.body_override, content_type="application/rss+xml")
        if (request.headers.get("If-None-Match") == self.etag
                or request.headers.get("If-Modified-Since") == self.last_modified):
            return web.Response(status=304)
        return web.Response(body=rss_feed("".join(self.items)),
                            content_type="application/rss+xml",
                            headers={"ETag": self.etag, "Last-Modified": self.last_modified})


def make_source(base: str, http: object, name: str = "feed",
                **context_settings: Any) -> rss.RssSource:
    config = SourceConfig(kind="rss", name=name, interval_s=60,
                          settings=MappingProxyType({"url": f"{base}/feed.xml"}))
    context = SourceContext(http=http, user_agent="megane-test/1",  # type: ignore[arg-type]
                            settings=context_settings)
    source = rss.create(config, context)
    assert isinstance(source, rss.RssSource)
    return source


class TestRssSource:
    async def test_conditional_polls_neither_miss_nor_repeat(self) -> None:
        """Unchanged feeds answer 304 (no refs); new items appear on the next poll."""
        server = FeedServer()
        server.add(1)
        server.add(2)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http)
            first = await source.poll(None, now=1000.0)
            assert [ref.url for ref in first.refs] == [f"{base}/img/2.jpg", f"{base}/img/1.jpg"]
            assert first.refs[0].post_url == f"{base}/p/2"
            assert http.requests[0][1]["User-Agent"] == "megane-test/1"

            unchanged = await source.poll(first.cursor, now=1060.0)
            assert unchanged.refs == () and unchanged.cursor is None
            assert server.requests[-1]["If-None-Match"] == '"v2"'
            assert server.requests[-1]["If-Modified-Since"] == server.last_modified

            server.add(3)
            third = await source.poll(first.cursor, now=1120.0)
            assert f"{base}/img/3.jpg" in [ref.url for ref in third.refs]
            seen = {ref.url for ref in first.refs} | {ref.url for ref in third.refs}
            assert seen == {f"{base}/img/{n}.jpg" for n in (1, 2, 3)}
            assert third.cursor is not None
            assert json.loads(third.cursor)["etag"] == '"v3"'

    async def test_rate_limited(self) -> None:
        """A 429 is a SourceError carrying the server's Retry-After."""
        server = FeedServer()
        server.status_override = (429, {"Retry-After": "120"})
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError) as caught:
                await make_source(base, http).poll(None, now=0.0)
        assert caught.value.retry_after_s == 120.0

    async def test_server_error(self) -> None:
        """A 500 is a SourceError naming the status."""
        server = FeedServer()
        server.status_override = (500, {})
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="HTTP 500"):
                await make_source(base, http).poll(None, now=0.0)

    async def test_malformed_feed_logs_and_yields(self) -> None:
        """A malformed feed logs one warning and still yields the items that parsed."""
        server = FeedServer()
        server.body_override = truncated_feed("/img/1.jpg")
        async with serve(server.app) as base, http_client(base) as http:
            with capture_logs() as logs:
                result = await make_source(base, http).poll(None, now=0.0)
        assert [ref.url for ref in result.refs] == [f"{base}/img/1.jpg"]
        assert [entry["event"] for entry in logs] == ["feed_malformed"]
        assert logs[0]["source"] == "feed"

    async def test_bomb_over_http(self) -> None:
        """An entity-expansion bomb served as a feed fails the poll quickly and clearly."""
        server = FeedServer()
        server.body_override = BOMB
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="declares XML entities"):
                await make_source(base, http).poll(None, now=0.0)

    async def test_body_capped(self) -> None:
        """A feed over the byte cap fails the poll through the fetcher's cap, unparsed."""
        server = FeedServer()
        huge = item("/p/1", "<description>" + "x" * (2 * 1024 * 1024) + "</description>")
        server.body_override = rss_feed(huge)
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(FetchError) as caught:
                await make_source(base, http, max_feed_bytes=1024 * 1024).poll(None, now=0.0)
        assert caught.value.reason == "too_large"

    async def test_external_dtd_never_fetched(self) -> None:
        """A DOCTYPE naming an external DTD is parsed without fetching the DTD."""
        server = FeedServer()
        dtd_requests: list[str] = []

        async def dtd(request: web.Request) -> web.Response:
            dtd_requests.append(request.path)
            return web.Response(text='<!ENTITY leak "leaked">')
        server.app.router.add_get("/evil.dtd", dtd)
        async with serve(server.app) as base, http_client(base) as http:
            server.body_override = (
                f'<?xml version="1.0"?><!DOCTYPE rss SYSTEM "{base}/evil.dtd">'.encode()
                + rss_feed(item("/p/1", '<enclosure url="/1.jpg" type="image/jpeg"/>'))
                .split(b"?>", 1)[1])
            result = await make_source(base, http).poll(None, now=0.0)
        assert [ref.url for ref in result.refs] == [f"{base}/1.jpg"]
        assert dtd_requests == []

    async def test_html_page(self) -> None:
        """An HTML page where the feed should be is a SourceError."""
        server = FeedServer()
        server.body_override = b"<!doctype html><html><body><h1>Moved</h1></body></html>"
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="not an RSS or Atom feed"):
                await make_source(base, http).poll(None, now=0.0)

    async def test_query_key(self) -> None:
        """The query key changes with the URL and nothing else."""
        async with http_client() as http:
            assert (make_source("https://a.example", http, "x").query_key()
                    == make_source("https://a.example", http, "y").query_key())
            assert (make_source("https://a.example", http).query_key()
                    != make_source("https://b.example", http).query_key())


class TestIsolation:
    @staticmethod
    def failing_on_second_post(monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the real entry reader fail on the entry linking /p/2, as a bug would."""
        real = rss._entry_refs

        def entry_refs(entry: Any, **keywords: Any) -> Any:
            if str(entry.get("link", "")).endswith("/p/2"):
                raise RuntimeError("boom in entry 2")
            return real(entry, **keywords)
        monkeypatch.setattr(rss, "_entry_refs", entry_refs)

    def test_failing_entry_costs_that_entry(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An entry that fails is reported with its reason; the entries around it still yield."""
        self.failing_on_second_post(monkeypatch)
        body = rss_feed("".join(
            item(f"https://example.org/p/{number}",
                 f'<enclosure url="https://e.org/{number}.jpg" type="image/jpeg"/>')
            for number in (1, 2, 3)))
        result = rss.read_feed(body, source="feed", base_url=BASE)
        assert [ref.url for ref in result.refs] == ["https://e.org/1.jpg", "https://e.org/3.jpg"]
        assert result.failed_entries == (("https://example.org/p/2",
                                          "RuntimeError: boom in entry 2"),)

    async def test_failing_entry_logged_and_counted(self,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """A poll with a failing entry succeeds, logs the entry and lists it as skipped."""
        self.failing_on_second_post(monkeypatch)
        server = FeedServer()
        for number in (1, 2, 3):
            server.add(number)
        async with serve(server.app) as base, http_client(base) as http:
            with capture_logs() as logs:
                result = await make_source(base, http).poll(None, now=0.0)
        assert [ref.url for ref in result.refs] == [f"{base}/img/3.jpg", f"{base}/img/1.jpg"]
        (failed,) = [entry for entry in logs if entry["event"] == "feed_entry_failed"]
        assert failed["entry"] == f"{base}/p/2" and "boom" in failed["reason"]
        assert result.skipped == ((f"{base}/p/2", "entry_failed: RuntimeError: boom in entry 2"),)
        assert result.cursor is not None

    def test_feedparser_failure_is_source_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Should feedparser itself raise on a body, the poll fails with a SourceError naming
        the feed, never with feedparser's exception."""
        def broken_parse(*arguments: Any, **keywords: Any) -> Any:
            raise IndexError("feedparser bug")
        monkeypatch.setattr(rss.feedparser, "parse", broken_parse)
        with pytest.raises(SourceError, match=r"feed\.xml could not be parsed.*IndexError"):
            rss.parse_feed(rss_feed(""), source="feed", base_url=BASE)

    def test_unencodable_url_dropped(self) -> None:
        """A URL that cannot be stored as UTF-8 (a lone surrogate) is dropped and reported;
        other text is made storable with U+FFFD."""
        pictures = ItemPictures()
        pictures.add("https://e.org/a\ud800.jpg", [BASE])
        pictures.add("https://e.org/ok.jpg", [BASE])
        assert pictures.best() == ["https://e.org/ok.jpg"]
        assert [item.why for item in pictures.dropped] == ["unencodable"]
        assert clean_text("tag\ud800") == "tag\ufffd"
        assert clean_text("\U0001f453 ok") == "\U0001f453 ok"

    async def test_dropped_images_logged_with_a_cap(self) -> None:
        """Dropped images are counted in full and listed up to the cap, at info; they are
        the normal case, not entries skipped as unreadable."""
        server = FeedServer()
        buttons = "".join(f'&lt;img src="https://feeds.example.org/~ff/Blog?d={number}"&gt;'
                          for number in range(rss.MAX_LOGGED_DROPS + 10))
        server.body_override = rss_feed(item("/p/1", f"<description>{buttons}</description>"
                                             '<enclosure url="/1.jpg" type="image/jpeg"/>'))
        async with serve(server.app) as base, http_client(base) as http:
            with capture_logs() as logs:
                result = await make_source(base, http).poll(None, now=0.0)
        assert [ref.url for ref in result.refs] == [f"{base}/1.jpg"]
        (dropped,) = [entry for entry in logs if entry["event"] == "feed_images_dropped"]
        assert dropped["counts"] == {"feedflare": rss.MAX_LOGGED_DROPS + 10}
        assert len(dropped["dropped"]) == rss.MAX_LOGGED_DROPS
        assert dropped["log_level"] == "info"
        assert result.skipped == ()
