"""Booru pages with one bad post: the bad post costs itself, never the page; XML is defused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from crawler.errors import SourceError
from crawler.sources import booru_posts
from crawler.sources.booru import parse_booru
from crawler.sources.xmlsafe import clean_xml_text, xml_text
from storage.redact import REDACTED
from tests.sourcehttp import http_client, serve
from tests.test_source_booru import (
    BASE,
    danbooru_post,
    gelbooru_page,
    gelbooru_post,
    make_source,
    moebooru_post,
)

POST_FACTORIES = {"danbooru": danbooru_post, "gelbooru": gelbooru_post,
                  "moebooru": moebooru_post}


def booru_ids(refs: list[Any]) -> list[int]:
    return [int(dict(ref.extra)["booru_id"]) for ref in refs]


def xml_page(*rows: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?><posts count="3" offset="0">'
            + "".join(rows) + "</posts>").encode()


def xml_row(post_id: int, **overrides: str) -> str:
    fields = {"id": str(post_id), "md5": f"{post_id:032x}", "rating": "s",
              "tags": "glasses", "file_url": f"https://img.board.example/{post_id}.jpg",
              "source": f"https://example.net/{post_id}"} | overrides
    return "<post " + " ".join(f'{key}="{value}"' for key, value in fields.items()) + "/>"


class TestXmlText:
    @pytest.mark.parametrize(("text", "expected"), [
        ("a\x0bb", "a\ufffdb"), ("a\x00b\x1f", "a\ufffdb\ufffd"),
        ("tab\tnl\ncr\r", "tab\tnl\ncr\r"),
        ("&#11;&#x1F;&#0;", "&#xFFFD;&#xFFFD;&#xFFFD;"), ("&#65;&#x1F600;", "&#65;&#x1F600;"),
        ("&#1114112;&#x110000;", "&#xFFFD;&#xFFFD;"), ("&#xD800;", "&#xFFFD;"),
        ("\ufffe\uffff", "\ufffd\ufffd"), ("&#99999999999999999999;", "&#xFFFD;"),
    ], ids=["vtab", "nul-and-us", "allowed-whitespace", "illegal-refs", "legal-refs",
            "out-of-range-refs", "surrogate-ref", "non-characters", "huge-ref"])
    def test_clean(self, text: str, expected: str) -> None:
        """Characters and character references XML 1.0 forbids become U+FFFD; others stay."""
        assert clean_xml_text(text) == expected

    @pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be",
                                          "utf-32", "iso-8859-1"])
    def test_encodings(self, encoding: str) -> None:
        """The encoding is read from the BOM, the first bytes or the declaration."""
        declared = encoding.split("-le")[0].split("-be")[0]
        document = f'<?xml version="1.0" encoding="{declared}"?><posts a="Brillé"/>'
        assert xml_text(document.encode(encoding)) == '<posts a="Brillé"/>'

    def test_undecodable_byte(self) -> None:
        """A byte that is not UTF-8 becomes U+FFFD instead of failing the document."""
        assert xml_text(b'<posts a="\xff"/>') == '<posts a="\ufffd"/>'


class TestGelbooruXml:
    @pytest.mark.parametrize("bad", ["Artist page \x0b https://example.net/a",
                                     "nul\x00here", "ref &#11; here", "ref &#x0; here",
                                     "bad byte \udcff here"],
                             ids=["vertical-tab", "nul", "illegal-ref", "nul-ref", "latin1-byte"])
    def test_control_character_costs_nothing(self, bad: str) -> None:
        """A control character (raw or referenced) in one post keeps every post of the page."""
        body = xml_page(xml_row(303), xml_row(302, source="SOURCE"), xml_row(301))
        body = body.replace(b"SOURCE", bad.encode("utf-8", errors="surrogateescape"))
        refs = parse_booru(body, api="gelbooru", base_url=BASE, source="gel")
        assert booru_ids(refs) == [303, 302, 301]
        assert "\ufffd" in dict(refs[1].extra)["source_url"]

    @pytest.mark.parametrize("row", [
        xml_row(302, source="&lt;!ENTITY x SYSTEM &quot;file:///etc/passwd&quot;&gt;"),
        xml_row(302, tags="&lt;!DOCTYPE posts&gt; glasses"),
    ], ids=["entity-in-attribute", "doctype-in-attribute"])
    def test_quoted_declarations_are_text(self, row: str) -> None:
        """A quoted <!ENTITY or <!DOCTYPE inside an attribute is text, not an attack."""
        refs = parse_booru(xml_page(xml_row(303), row, xml_row(301)), api="gelbooru",
                           base_url=BASE, source="gel")
        assert booru_ids(refs) == [303, 302, 301]

    def test_cdata_with_entity_is_text(self) -> None:
        """A CDATA section quoting <!ENTITY (Gelbooru 0.2.5 children) does not lose the page."""
        body = (b'<?xml version="1.0"?><posts><post><id>5</id><md5>ab</md5>'
                b"<file_url>https://img.board.example/5.jpg</file_url>"
                b'<source><![CDATA[<!ENTITY a "b"> & <b>]]></source><rating>general</rating>'
                b"<tags>glasses</tags></post></posts>")
        (ref,) = parse_booru(body, api="gelbooru", base_url=BASE, source="gel")
        assert ref.url == "https://img.board.example/5.jpg"
        assert dict(ref.extra)["source_url"] == '<!ENTITY a "b"> & <b>'
        assert ref.tags == ("glasses", "rating:g")

    def test_broken_post_costs_only_itself(self) -> None:
        """A post that is not well-formed (a raw & or <) is skipped; the others are read."""
        body = xml_page(xml_row(303), xml_row(302, source="a & b <c"), xml_row(301))
        with capture_logs() as logs:
            page = booru_posts.read_posts(body, api="gelbooru", base_url=BASE, source="gel",
                                          url=f"{BASE}/index.php?api_key=secret")
        assert [post.id for post in page.posts] == [303, 301]
        [(where, reason)] = page.skipped
        assert reason.startswith("booru: malformed <post> element")
        assert where == f"post #1 at {BASE}/index.php?api_key={REDACTED}"
        assert [entry["event"] for entry in logs] == ["booru_xml_recovered",
                                                      "source_entry_skipped"]

    @pytest.mark.parametrize("body", [
        (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "x">]><posts><post id="1" tags="&a;"/>'
         b'<post id="2" tags="a & b"/></posts>'),
        b'<!DOCTYPE posts SYSTEM "http://evil.example/x.dtd"><posts><post id="1"/></posts>',
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "x">]><posts><post id="1"',
    ], ids=["entities-and-broken-post", "external-dtd", "entities-truncated"])
    def test_real_declarations_refused(self, body: bytes) -> None:
        """A real DTD or entity declaration refuses the page, even when it is also malformed."""
        with pytest.raises(SourceError, match="DOCTYPE or entities; refused"):
            parse_booru(body, api="gelbooru", base_url=BASE, source="gel")

    def test_html_page_named(self) -> None:
        """An HTML page (a bot challenge) is reported as HTML, not as an entity attack."""
        body = b"<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head></html>"
        with pytest.raises(SourceError, match="answered an HTML page"):
            parse_booru(body, api="gelbooru", base_url=BASE, source="gel")

    async def test_refusal_names_the_url(self) -> None:
        """Through the real source, an entity declaration is a SourceError naming the page."""
        app = gelbooru_page(b'<!DOCTYPE p [<!ENTITY a "x">]><posts/>')
        async with serve(app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match=r"from http://127\.0\.0\.1:\d+/index\.php"):
                await make_source(base, http, api="gelbooru").poll(None, now=0.0)


BAD_FIELDS: list[tuple[str, object]] = [
    ("id", None), ("id", "abc"), ("id", "²"), ("id", "9" * 5000), ("id", 10**30), ("id", -4),
    ("id", True), ("id", [1]), ("tags", 5), ("tags", ["a", "b"]), ("rating", {"x": 1}),
    ("file_url", 5), ("file_url", "http://[::1"), ("file_url", "\x00\x0b"),
    ("md5", 12), ("created_at", 10**400), ("created_at", float("nan")), ("created_at", "x"),
    ("source", ["x"]), ("status", None), ("directory", 5), ("image", None),
]


class TestOneBadPost:
    @pytest.mark.parametrize("api", ["danbooru", "gelbooru", "moebooru"])
    @pytest.mark.parametrize(("key", "value"), BAD_FIELDS,
                             ids=[f"{key}={str(value)[:12]!r}" for key, value in BAD_FIELDS])
    def test_wrong_field_costs_at_most_that_post(self, api: str, key: str,
                                                 value: object) -> None:
        """A missing or wrongly typed field in one post never loses its neighbours."""
        bad = POST_FACTORIES[api](7)
        bad[key] = value
        body = json.dumps([POST_FACTORIES[api](9), bad, POST_FACTORIES[api](5)]).encode()
        if api == "gelbooru":
            body = json.dumps({"post": json.loads(body)}).encode()
        refs = parse_booru(body, api=api, base_url=BASE, source="b")
        ids = booru_ids(refs)
        assert ids[0] == 9 and ids[-1] == 5
        assert len(ids) in (2, 3)

    def test_skipped_posts_reported_by_the_poll(self) -> None:
        """Posts without a usable id are reported with a reason, not silently dropped."""
        body = json.dumps([danbooru_post(9), {"id": "x"}, "junk", danbooru_post(5)]).encode()
        page = booru_posts.read_posts(body, api="danbooru", base_url=BASE, source="d")
        assert [post.id for post in page.posts] == [9, 5]
        assert page.skipped == [
            (f"post x at {BASE}", "booru: not a post with a valid id"),
            (f"post #2 at {BASE}", "booru: not a post with a valid id")]

    @pytest.mark.parametrize("api", ["danbooru", "gelbooru", "moebooru"])
    @pytest.mark.parametrize("url", ["javascript:alert(1)", "data:image/png;base64,AAAA",
                                     "file:///etc/passwd", "ftp://files.example/1.jpg"])
    def test_other_schemes_are_yielded(self, api: str, url: str) -> None:
        """A file URL with another scheme is yielded for the pipeline to reject, not dropped."""
        post = POST_FACTORIES[api](7)
        post["file_url"] = url
        (ref,) = parse_booru(json.dumps([post]).encode(), api=api, base_url=BASE, source="b")
        assert ref.url == url

    @pytest.mark.parametrize(("url", "expected"), [
        ("//cdn.board.example/1.jpg", "https://cdn.board.example/1.jpg"),
        ("/images/1.jpg", f"{BASE}/images/1.jpg"),
        ("images/1.jpg", f"{BASE}/images/1.jpg"),
        ("  https://cdn.board.example/1.jpg\n", "https://cdn.board.example/1.jpg"),
    ])
    def test_relative_urls_resolved(self, url: str, expected: str) -> None:
        """Relative file URLs are resolved against the board's base URL."""
        post = danbooru_post(7)
        post["file_url"] = url
        (ref,) = parse_booru(json.dumps([post]).encode(), api="danbooru", base_url=BASE,
                             source="b")
        assert ref.url == expected

    def test_missing_md5_still_fetched(self) -> None:
        """A post with a file URL but no md5 is fetched (md5 only helps deduplication)."""
        post = danbooru_post(7)
        del post["md5"]
        (ref,) = parse_booru(json.dumps([post]).encode(), api="danbooru", base_url=BASE,
                             source="b")
        assert ref.skip_reason is None and ref.md5 is None

    @pytest.mark.parametrize(("api", "body"), [
        ("gelbooru", b'{"post": 5}'), ("gelbooru", b'{"post": "x"}'), ("gelbooru", b"5"),
        ("danbooru", b'{"success": false}'), ("moebooru", b"[" * 100_000),
        ("danbooru", b"1" * 5000),
    ], ids=["post-int", "post-string", "bare-number", "object", "deep-nesting", "huge-int"])
    def test_bad_page_is_a_source_error(self, api: str, body: bytes) -> None:
        """A page of the wrong shape is a SourceError naming the board, never another error."""
        with pytest.raises(SourceError, match=r"board\.example"):
            parse_booru(body, api=api, base_url=BASE, source="b")
