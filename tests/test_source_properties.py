"""Properties of the mastodon, bluesky and booru page parsers, over inputs Hypothesis builds.

Each parser either yields MediaRefs or raises SourceError, never anything else, for any
bytes and for documents shaped like the real APIs with any type or value in any field; no
entry needs the last-resort isolation (`source_entry_failed`); and one malformed entry among
good ones never costs the good ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import quoteattr

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from crawler.errors import SourceError
from crawler.sources.bluesky import parse_feed
from crawler.sources.booru import parse_booru
from crawler.sources.mastodon import parse_statuses
from storage.records import MediaRef
from tests.test_source_bluesky import images, post
from tests.test_source_booru import danbooru_post, gelbooru_post, moebooru_post
from tests.test_source_mastodon import attachment, status

NOW = 1_750_000_000.0
PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
APIS = ("danbooru", "gelbooru", "moebooru")

ODD_STRINGS = st.sampled_from([
    "", " ", "\x00", "\x0b", "\t\n", "\ud800", "\ufffe", "²", "٣", "9" * 30, "-4", "1e9",
    "javascript:alert(1)", "data:image/png;base64,AAAA", "file:///etc/passwd", "ftp://x/y.jpg",
    "http://[::1", "http://exa mple.com/x.jpg", "https://ｅｘａｍｐｌｅ.com/a.jpg", "//cdn/x.jpg",
    "/rel/x.jpg", "rel.jpg", "http://127.0.0.1:0/x", "https://[fe80::1%eth0]/x",
    "http://user:pw@host/x", "https://host:99999/x", "http://xn--/x", "https://a/" + "b" * 3000,
    "2025-06-15T15:00:00Z", "9999-99-99T99:99:99Z", "Sun Jun 01 10:00:00 -0500 2025",
    "image", "video", "gifv", "audio", "unknown", "porn", "sexual-figurative", "deleted",
    "at://did:plc:x/app.bsky.feed.post/1", "app.bsky.embed.images#view",
    "com.atproto.label.defs#selfLabels", "&#11;", "<!ENTITY a 'b'>", "]]>",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), ODD_STRINGS,
)
JUNK = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=8)
URLS = st.one_of(ODD_STRINGS, st.builds("https://files.example/{}.jpg".format,
                                        st.integers(0, 10**6)))


def field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: usually plausible, often any JSON value at all."""
    return st.one_of(plausible, JUNK)


def shaped(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({key: field(value) for key, value in required.items()},
                                 optional={key: field(value) for key, value in optional.items()})


MASTODON_ATTACHMENT = shaped({}, {
    "id": st.text(max_size=5), "type": ODD_STRINGS, "url": URLS, "remote_url": URLS,
    "preview_url": URLS, "description": st.text(max_size=10),
    "meta": st.dictionaries(st.text(max_size=5), SCALARS, max_size=2)})
MASTODON_STATUS_FIELDS: dict[str, Any] = {
    "uri": URLS, "url": URLS, "created_at": ODD_STRINGS, "sensitive": st.booleans(),
    "spoiler_text": st.text(max_size=10),
    "account": shaped({}, {"acct": st.text(max_size=10), "id": st.text(max_size=3)}),
    "tags": st.lists(shaped({}, {"name": st.text(max_size=10)}), max_size=3),
    "media_attachments": st.lists(MASTODON_ATTACHMENT, max_size=3),
}
MASTODON_STATUS = shaped({"id": st.integers(0, 10**20).map(str)}, {
    **MASTODON_STATUS_FIELDS, "reblog": shaped({}, MASTODON_STATUS_FIELDS)})

BLUESKY_LABEL = shaped({}, {"src": st.text(max_size=5), "val": ODD_STRINGS, "neg": st.booleans(),
                            "exp": ODD_STRINGS, "cts": ODD_STRINGS, "uri": URLS})
BLUESKY_IMAGE = shaped({}, {"fullsize": URLS, "thumb": URLS, "alt": st.text(max_size=10)})
BLUESKY_EMBED = shaped({}, {
    "$type": ODD_STRINGS, "images": st.lists(BLUESKY_IMAGE, max_size=2),
    "items": st.lists(BLUESKY_IMAGE, max_size=2), "playlist": URLS,
    "media": shaped({}, {"$type": ODD_STRINGS, "images": st.lists(BLUESKY_IMAGE, max_size=2)})})
BLUESKY_POST = shaped({"uri": st.text(max_size=30)}, {
    "author": shaped({}, {"did": st.text(max_size=10), "handle": ODD_STRINGS,
                          "labels": st.lists(BLUESKY_LABEL, max_size=2)}),
    "record": shaped({}, {
        "createdAt": ODD_STRINGS, "tags": st.lists(st.text(max_size=8), max_size=2),
        "labels": shaped({}, {"$type": ODD_STRINGS,
                              "values": st.lists(shaped({}, {"val": ODD_STRINGS}), max_size=2)}),
        "facets": st.lists(shaped({}, {"features": st.lists(shaped({}, {
            "$type": st.just("app.bsky.richtext.facet#tag"), "tag": st.text(max_size=8)}),
            max_size=2)}), max_size=2)}),
    "embed": BLUESKY_EMBED, "labels": st.lists(BLUESKY_LABEL, max_size=3),
    "indexedAt": ODD_STRINGS})
BLUESKY_ITEM = shaped({"post": BLUESKY_POST}, {"reason": shaped({}, {"$type": ODD_STRINGS})})

BOORU_POST = shaped({"id": st.integers(0, 10**6)}, {
    "file_url": URLS, "md5": st.text(max_size=32), "rating": ODD_STRINGS,
    "tags": st.text(max_size=20), "tag_string": st.text(max_size=20),
    "tag_string_artist": st.text(max_size=10), "created_at": ODD_STRINGS,
    "file_ext": st.sampled_from(["jpg", "png", "mp4", "zip", ""]), "source": URLS,
    "is_deleted": st.booleans(), "status": ODD_STRINGS, "author": st.text(max_size=5),
    "owner": st.text(max_size=5), "directory": st.text(max_size=5), "image": st.text(max_size=8),
    "hash": st.text(max_size=32)})
XML_TEXT = st.text(alphabet=st.characters(max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
                   max_size=20) | ODD_STRINGS.filter(lambda text: "\ud800" not in text)


def outcome(parse: Callable[[], list[MediaRef]]) -> list[MediaRef] | None:
    """The refs `parse` yields, None for a SourceError; no entry may need the last resort."""
    with capture_logs() as logs:
        try:
            refs = parse()
        except SourceError:
            refs = None
    assert not [entry for entry in logs if entry["event"] == "source_entry_failed"], logs
    for ref in refs or []:
        assert isinstance(ref, MediaRef) and isinstance(ref.url, str) and ref.url
        assert storable(ref), ref
    return refs


def storable(ref: MediaRef) -> bool:
    """Whether every text of `ref` can be stored as UTF-8 (no lone surrogate)."""
    texts = [ref.url, ref.source, ref.post_url, ref.author, ref.dedup_key, ref.md5,
             ref.posted_at, ref.skip_reason, *ref.flags, *ref.tags,
             *(text for pair in ref.extra for text in pair)]
    try:
        for text in texts:
            if text is not None:
                text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def mastodon(body: bytes) -> list[MediaRef] | None:
    return outcome(lambda: parse_statuses(body, source="m", instance="https://m.example",
                                          now=NOW))


def bluesky(body: bytes) -> list[MediaRef] | None:
    return outcome(lambda: parse_feed(body, source="b", now=NOW))


def booru(body: bytes, api: str) -> list[MediaRef] | None:
    return outcome(lambda: parse_booru(body, api=api, base_url="https://board.example",
                                       source="b"))


def booru_ids(refs: list[MediaRef] | None) -> list[str]:
    assert refs is not None
    return [dict(ref.extra)["booru_id"] for ref in refs]


class TestAnyBytes:
    @PROPERTY
    @given(body=st.binary(max_size=300))
    def test_mastodon(self, body: bytes) -> None:
        """Any bytes: statuses or a SourceError."""
        mastodon(body)

    @PROPERTY
    @given(body=st.binary(max_size=300))
    def test_bluesky(self, body: bytes) -> None:
        """Any bytes: a feed page or a SourceError."""
        bluesky(body)

    @PROPERTY
    @given(body=st.binary(max_size=300), api=st.sampled_from(APIS))
    def test_booru(self, body: bytes, api: str) -> None:
        """Any bytes, for each API: posts or a SourceError."""
        booru(body, api)

    @PROPERTY
    @given(document=JUNK)
    def test_any_json(self, document: Any) -> None:
        """Any JSON document at all: items or a SourceError from every parser."""
        body = json.dumps(document).encode()
        mastodon(body)
        bluesky(body)
        for api in APIS:
            booru(body, api)


class TestShapedLikeTheApis:
    @PROPERTY
    @given(page=st.lists(st.one_of(MASTODON_STATUS, JUNK), max_size=4))
    def test_mastodon_page(self, page: list[Any]) -> None:
        """A timeline page with any value in any field always yields (it is an array)."""
        assert mastodon(json.dumps(page).encode()) is not None

    @PROPERTY
    @given(items=st.lists(st.one_of(BLUESKY_ITEM, JUNK), max_size=4),
           cursor=field(st.text(max_size=5)))
    def test_bluesky_page(self, items: list[Any], cursor: Any) -> None:
        """A feed page with any value in any field always yields (it has a feed array)."""
        assert bluesky(json.dumps({"feed": items, "cursor": cursor}).encode()) is not None

    @PROPERTY
    @given(posts=st.lists(st.one_of(BOORU_POST, JUNK), max_size=4),
           api=st.sampled_from(APIS), wrapped=st.booleans())
    def test_booru_page(self, posts: list[Any], api: str, wrapped: bool) -> None:
        """A posts array (or Gelbooru's {"post": [...]}) with any values always yields."""
        document: Any = {"post": posts} if wrapped and api == "gelbooru" else posts
        assert booru(json.dumps(document).encode(), api) is not None

    @PROPERTY
    @given(rows=st.lists(st.dictionaries(
        st.sampled_from(["id", "file_url", "md5", "rating", "tags", "source", "created_at",
                         "status", "directory", "image"]), XML_TEXT, max_size=6), max_size=4),
        children=st.booleans())
    def test_gelbooru_xml_page(self, rows: list[dict[str, str]], children: bool) -> None:
        """Gelbooru XML with any characters (control ones too) in any field always yields."""
        if children:
            posts = "".join("<post>" + "".join(
                f"<{key}>{quoteattr(value)[1:-1]}</{key}>" for key, value in row.items())
                + "</post>" for row in rows)
        else:
            posts = "".join("<post " + " ".join(f"{key}={quoteattr(value)}"
                                                for key, value in row.items()) + "/>"
                            for row in rows)
        body = f'<?xml version="1.0" encoding="UTF-8"?><posts>{posts}</posts>'
        assert booru(body.encode("utf-8", errors="surrogatepass"), "gelbooru") is not None

    @PROPERTY
    @given(text=st.text(alphabet='<>/="\' &;#!postidx0123[]CDATA-\x0b\x00', max_size=80))
    def test_xml_like_text(self, text: str) -> None:
        """Text made of XML's own punctuation: posts or a SourceError, never another error."""
        booru(f"<posts>{text}</posts>".encode(), "gelbooru")
        booru(text.encode(), "gelbooru")


class TestOneBadEntryAmongGood:
    @PROPERTY
    @given(bad=st.one_of(MASTODON_STATUS, JUNK), position=st.integers(0, 2))
    def test_mastodon(self, bad: Any, position: int) -> None:
        """One malformed status among good ones still yields every good attachment."""
        good = [status(7, media=[attachment(1), attachment(2)]), status(8)]
        page: list[Any] = list(good)
        page.insert(position, bad)
        refs = mastodon(json.dumps(page).encode())
        assert refs is not None
        urls = [ref.url for ref in refs]
        expected = ["https://files.example/media/1.jpg", "https://files.example/media/2.jpg",
                    "https://files.example/media/8.jpg"]
        assert [url for url in urls if url in expected] == expected

    @PROPERTY
    @given(bad=st.one_of(BLUESKY_ITEM, JUNK), position=st.integers(0, 2))
    def test_bluesky(self, bad: Any, position: int) -> None:
        """One malformed feed item among good ones still yields every good image."""
        items: list[Any] = [{"post": post(1, embed=images(1, 2))}, {"post": post(2)}]
        items.insert(position, bad)
        refs = bluesky(json.dumps({"feed": items}).encode())
        assert refs is not None
        found = [ref.url.rsplit("/", 1)[-1] for ref in refs if "cdn.bsky.app" in ref.url]
        assert [name for name in found if name in ("cid1@jpeg", "cid2@jpeg")] == [
            "cid1@jpeg", "cid2@jpeg", "cid2@jpeg"]

    @PROPERTY
    @given(bad=st.one_of(BOORU_POST, JUNK), position=st.integers(0, 2),
           api=st.sampled_from(APIS))
    def test_booru(self, bad: Any, position: int, api: str) -> None:
        """One malformed post among good ones still yields every good post."""
        make = {"danbooru": danbooru_post, "gelbooru": gelbooru_post,
                "moebooru": moebooru_post}[api]
        posts: list[Any] = [make(2_000_001), make(2_000_000)]
        posts.insert(position, bad)
        ids = booru_ids(booru(json.dumps(posts).encode(), api))
        assert [item for item in ids if item in ("2000001", "2000000")] == [
            "2000001", "2000000"]

    @PROPERTY
    @given(bad=XML_TEXT, key=st.sampled_from(["source", "tags", "file_url", "rating", "md5"]),
           raw=st.booleans())
    def test_gelbooru_xml(self, bad: str, key: str, raw: bool) -> None:
        """One post with any text in a field (raw, even unescaped) keeps the other posts."""
        value = f'"{bad}"' if raw else quoteattr(bad)
        rows = ['<post id="3" file_url="https://img.example/3.jpg" md5="ab"/>',
                f'<post id="2" {key}={value} file_url="https://img.example/2.jpg"/>',
                '<post id="1" file_url="https://img.example/1.jpg" md5="cd"/>']
        body = ('<?xml version="1.0" encoding="UTF-8"?><posts>' + "".join(rows)
                + "</posts>").encode("utf-8", errors="surrogatepass")
        ids = booru_ids(booru(body, "gelbooru"))
        assert ids[0] == "3" and ids[-1] == "1"


class TestStorable:
    def test_lone_surrogates_become_replacement_characters(self) -> None:
        """A lone surrogate escaped in an API's JSON reaches no MediaRef field."""
        lone = "x\ud800y"
        masto = status(7, tags=(lone,), acct=lone, media=[attachment(1, url=f"https://a/{lone}")])
        sky = post(1, hashtags=(lone,))
        sky["author"]["handle"] = lone
        danbooru = danbooru_post(7, tags=lone)
        danbooru["file_url"] = f"https://a/{lone}"
        results = [mastodon(json.dumps([masto]).encode()),
                   bluesky(json.dumps({"feed": [{"post": sky}]}).encode()),
                   booru(json.dumps([danbooru]).encode(), "danbooru")]
        for refs in results:
            assert refs
            assert any("x\ufffdy" in " ".join([ref.url, *ref.tags, ref.author or ""])
                       for ref in refs)

