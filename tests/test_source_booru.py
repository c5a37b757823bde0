"""The booru source: Danbooru, Gelbooru and Moebooru parsing (pure) and id paging on a fake
board."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from xml.sax.saxutils import quoteattr

import pytest
from aiohttp import web

from crawler.config import SourceConfig
from crawler.errors import SourceError
from crawler.sources import booru
from crawler.sources.base import SourceContext
from crawler.sources.booru import normalize_rating, parse_booru
from tests.sourcehttp import RecordingClient, http_client, serve

BASE = "https://board.example"
NSFW = frozenset({"q", "e"})


class TestRatings:
    @pytest.mark.parametrize(("api", "raw", "expected"), [
        ("danbooru", "g", "g"), ("danbooru", "s", "s"), ("danbooru", "q", "q"),
        ("danbooru", "e", "e"), ("danbooru", "x", None), ("danbooru", None, None),
        ("gelbooru", "general", "g"), ("gelbooru", "sensitive", "s"),
        ("gelbooru", "questionable", "q"), ("gelbooru", "explicit", "e"),
        ("gelbooru", "safe", "g"), ("gelbooru", "s", "g"), ("gelbooru", "Explicit", "e"),
        ("moebooru", "s", "g"), ("moebooru", "q", "q"), ("moebooru", "e", "e"),
    ])
    def test_normalize(self, api: str, raw: str | None, expected: str | None) -> None:
        """Each API's rating spelling maps to one of g/s/q/e."""
        assert normalize_rating(api, raw) == expected


def danbooru_post(post_id: int, *, rating: str = "g", tags: str = "1girl glasses",
                  hidden: bool = False, ext: str = "jpg", deleted: bool = False) -> dict[str, Any]:
    post: dict[str, Any] = {
        "id": post_id, "created_at": "2025-06-01T10:00:00.000-04:00", "rating": rating,
        "tag_string": tags, "tag_string_artist": "someartist", "file_ext": ext,
        "source": "https://pixiv.example/1", "is_deleted": deleted, "is_banned": False,
        "image_width": 800, "image_height": 600,
    }
    if not hidden:
        post |= {"md5": f"{post_id:032x}",
                 "file_url": f"https://cdn.board.example/original/{post_id}.{ext}",
                 "large_file_url": f"https://cdn.board.example/sample/{post_id}.jpg",
                 "preview_file_url": f"https://cdn.board.example/180x180/{post_id}.jpg"}
    return post


def gelbooru_post(post_id: int, *, rating: str = "general", tags: str = "glasses 1girl",
                  style: str = "json25") -> dict[str, Any]:
    if style == "json02":  # safebooru's bare JSON: no file_url, "hash" for md5
        return {"id": post_id, "directory": "1234", "image": f"{post_id}.png",
                "hash": f"{post_id:032x}", "rating": rating, "tags": tags, "owner": "uploader",
                "change": 1750000000}
    return {"id": post_id, "created_at": "Sun Jun 01 10:00:00 -0500 2025", "rating": rating,
            "tags": tags, "md5": f"{post_id:032x}", "owner": "uploader",
            "file_url": f"https://img.board.example/images/aa/bb/{post_id}.jpg",
            "sample_url": "", "source": "", "status": "active"}


def gelbooru_xml(posts: list[dict[str, Any]]) -> bytes:
    rows = "".join("<post " + " ".join(f"{key}={quoteattr(str(value))}"
                                       for key, value in post.items()) + "/>"
                   for post in posts)
    return (f'<?xml version="1.0" encoding="UTF-8"?><posts count="{len(posts)}" offset="0">'
            f"{rows}</posts>").encode()


def moebooru_post(post_id: int, *, rating: str = "s", tags: str = "glasses megane",
                  hidden: bool = False) -> dict[str, Any]:
    post: dict[str, Any] = {"id": post_id, "tags": tags, "created_at": 1750000000,
                            "author": "poster", "rating": rating, "status": "active",
                            "source": "", "file_ext": "png"}
    if not hidden:
        post |= {"md5": f"{post_id:032X}",
                 "file_url": f"https://files.board.example/image/{post_id}.png",
                 "jpeg_url": f"https://files.board.example/jpeg/{post_id}.jpg",
                 "sample_url": f"https://files.board.example/sample/{post_id}.jpg"}
    return post


class TestParse:
    def test_danbooru(self) -> None:
        """Danbooru posts yield the original file, md5, tags, rating tag and the NSFW flag."""
        body = json.dumps([danbooru_post(7, rating="e", tags="Glasses 1girl")]).encode()
        (ref,) = parse_booru(body, api="danbooru", base_url=BASE, source="dan")
        assert ref.url == "https://cdn.board.example/original/7.jpg"
        assert ref.md5 == f"{7:032x}"
        assert ref.post_url == f"{BASE}/posts/7"
        assert ref.tags == ("glasses", "1girl", "rating:e")
        assert ref.flags == ("booru:rating:e",)
        assert ref.author == "someartist"
        assert ref.source == "dan" and ref.skip_reason is None
        assert ("booru_id", "7") in ref.extra

    @pytest.mark.parametrize(("post", "reason"), [
        (danbooru_post(1, hidden=True), "booru: post hidden at this account's level"),
        (danbooru_post(2, ext="mp4"), "booru: not an image (mp4)"),
        (danbooru_post(3, ext="zip"), "booru: not an image (zip)"),
        (danbooru_post(4, deleted=True), "booru: deleted post"),
    ], ids=["hidden", "video", "ugoira", "deleted"])
    def test_danbooru_skips(self, post: dict[str, Any], reason: str) -> None:
        """Hidden, deleted and non-image posts are yielded with a skip reason, not downloaded."""
        (ref,) = parse_booru(json.dumps([post]).encode(), api="danbooru", base_url=BASE,
                             source="dan")
        assert ref.skip_reason is not None and ref.skip_reason.startswith(reason)
        if post.get("file_url") is None:
            assert ref.url == f"{BASE}/posts/{post['id']}"

    @pytest.mark.parametrize(("rating", "ratings", "flags"), [
        ("g", NSFW, ()), ("s", NSFW, ()), ("s", NSFW | {"s"}, ("booru:rating:s",)),
        ("q", NSFW, ("booru:rating:q",)),
    ])
    def test_nsfw_ratings(self, rating: str, ratings: frozenset[str],
                          flags: tuple[str, ...]) -> None:
        """Only ratings listed in nsfw_ratings become flags; every rating becomes a tag."""
        body = json.dumps([danbooru_post(1, rating=rating)]).encode()
        (ref,) = parse_booru(body, api="danbooru", base_url=BASE, source="d",
                             nsfw_ratings=ratings)
        assert ref.flags == flags
        assert f"rating:{rating}" in ref.tags

    def test_gelbooru_json(self) -> None:
        """Gelbooru 0.2.5 JSON: posts under "post"; word ratings; html entities in tags."""
        post = gelbooru_post(5, rating="questionable", tags="glasses o&#039;neill")
        body = json.dumps({"@attributes": {"limit": 100, "offset": 0, "count": 1},
                           "post": [post]}).encode()
        (ref,) = parse_booru(body, api="gelbooru", base_url=BASE, source="gel")
        assert ref.url == "https://img.board.example/images/aa/bb/5.jpg"
        assert ref.post_url == f"{BASE}/index.php?page=post&s=view&id=5"
        assert ref.tags == ("glasses", "o'neill", "rating:q")
        assert ref.flags == ("booru:rating:q",)
        assert ref.posted_at == "2025-06-01T10:00:00-05:00"

    def test_gelbooru_empty_answers(self) -> None:
        """An empty result (no "post" key, or an empty body on 0.2 sites) is no posts."""
        for body in (b'{"@attributes": {"limit": 100, "offset": 0, "count": 0}}', b"", b"[]"):
            assert parse_booru(body, api="gelbooru", base_url=BASE, source="gel") == []

    def test_gelbooru_02_json(self) -> None:
        """Safebooru's bare JSON array builds the file URL from directory and image."""
        body = json.dumps([gelbooru_post(9, rating="safe", style="json02")]).encode()
        (ref,) = parse_booru(body, api="gelbooru", base_url="https://safebooru.example",
                             source="safe")
        assert ref.url == "https://safebooru.example/images/1234/9.png"
        assert ref.md5 == f"{9:032x}"
        assert ref.tags[-1] == "rating:g" and ref.flags == ()

    def test_gelbooru_xml(self) -> None:
        """Gelbooru-0.2 XML posts are read from attributes; old "s" means safe."""
        body = gelbooru_xml([gelbooru_post(3, rating="s"), gelbooru_post(2, rating="e")])
        refs = parse_booru(body, api="gelbooru", base_url=BASE, source="gel")
        assert [ref.url for ref in refs] == ["https://img.board.example/images/aa/bb/3.jpg",
                                             "https://img.board.example/images/aa/bb/2.jpg"]
        assert [ref.flags for ref in refs] == [(), ("booru:rating:e",)]

    @pytest.mark.parametrize(("body", "match"), [
        (b'<?xml version="1.0"?><posts><post id="1" ', "malformed booru XML"),
        (b"<posts><post id='1'></posts>", "malformed booru XML"),
        ((b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
          b'<posts><post id="1" tags="&b;"/></posts>'), "DOCTYPE"),
        (b'<!DOCTYPE posts SYSTEM "http://evil.example/x.dtd"><posts/>', "DOCTYPE"),
        ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><posts/>'
         .encode("utf-16"), "DOCTYPE"),
        (b'<response success="false" reason="Missing authentication"/>', "Missing auth"),
        (b"<html><body>Cloudflare</body></html>", "unexpected booru XML"),
        (b"garbage{", "not JSON"),
    ], ids=["truncated", "mismatched", "entity-bomb", "external-dtd", "utf16-entities",
            "refused", "html", "garbage"])
    def test_bad_gelbooru_bodies(self, body: bytes, match: str) -> None:
        """Malformed XML, DTDs and entity bombs are SourceErrors, decided in bounded time."""
        started = time.monotonic()
        with pytest.raises(SourceError, match=match):
            parse_booru(body, api="gelbooru", base_url=BASE, source="gel")
        assert time.monotonic() - started < 1.0

    def test_moebooru(self) -> None:
        """Moebooru: epoch created_at, "s" (safe) as g, upper-case md5 lower-cased."""
        body = json.dumps([moebooru_post(4), moebooru_post(3, rating="e", hidden=True)]).encode()
        safe, hidden = parse_booru(body, api="moebooru", base_url=BASE, source="moe")
        assert safe.url == "https://files.board.example/image/4.png"
        assert safe.md5 == f"{4:032x}"
        assert safe.posted_at == "2025-06-15T15:06:40Z"
        assert safe.tags == ("glasses", "megane", "rating:g") and safe.flags == ()
        assert hidden.skip_reason and hidden.flags == ("booru:rating:e",)
        assert hidden.url == f"{BASE}/post/show/3"


@dataclass
class FakeBoard:
    """One board speaking all three APIs over the same posts."""

    posts: dict[int, set[str]] = field(default_factory=dict)
    next_id: int = 95
    gelbooru_style: str = "json25"
    throttle: int | None = None
    ignore_id_terms: bool = False
    requests: list[web.Request] = field(default_factory=list)

    def add(self, count: int, tags: str = "glasses") -> list[int]:
        ids = list(range(self.next_id, self.next_id + count))
        for post_id in ids:
            self.posts[post_id] = set(tags.split())
        self.next_id += count
        return ids

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/posts.json", self.danbooru)
        app.router.add_get("/index.php", self.gelbooru)
        app.router.add_get("/post.json", self.moebooru)
        return app

    def _search(self, request: web.Request) -> tuple[list[int], int]:
        """Ids matching the tags (with id:>N / id:<N bounds), newest first; and the limit."""
        self.requests.append(request)
        if "megane-test" not in request.headers.get("User-Agent", ""):
            raise web.HTTPForbidden(text="generic user agents are blocked")
        ids = sorted(self.posts, reverse=True)
        terms = request.query.get("tags", "").split()
        id_terms = [term for term in terms if term.startswith("id:")]
        if request.path == "/post.json":
            id_terms = id_terms[-1:]  # Moebooru keeps only the last id: term
        if self.ignore_id_terms:
            id_terms = []
        for term in id_terms:
            if term.startswith("id:>"):
                ids = [i for i in ids if i > int(term[4:])]
            elif term.startswith("id:<"):
                ids = [i for i in ids if i < int(term[4:])]
            else:
                low, _, high = term[3:].partition("..")
                ids = [i for i in ids if int(low) <= i <= int(high)]
        for term in terms:
            if not term.startswith("id:"):
                ids = [i for i in ids if term in self.posts[i]]
        return ids, int(request.query.get("limit", "20"))

    def _throttled(self) -> web.Response | None:
        if self.throttle is None:
            return None
        return web.Response(status=self.throttle, headers={"Retry-After": "30"})

    async def danbooru(self, request: web.Request) -> web.Response:
        ids, limit = self._search(request)
        if (throttled := self._throttled()) is not None:
            return throttled
        page = request.query.get("page", "")
        if page.startswith("a"):
            ids = sorted(i for i in ids if i > int(page[1:]))[:limit]
            ids.reverse()
        else:
            if page.startswith("b"):
                ids = [i for i in ids if i < int(page[1:])]
            ids = ids[:limit]
        return web.json_response([danbooru_post(i) for i in ids])

    async def gelbooru(self, request: web.Request) -> web.Response:
        ids, limit = self._search(request)
        if (throttled := self._throttled()) is not None:
            return throttled
        ids = ids[int(request.query.get("pid", "0")) * limit:][:limit]
        if self.gelbooru_style == "xml":
            return web.Response(body=gelbooru_xml([gelbooru_post(i) for i in ids]),
                                content_type="text/xml")
        if self.gelbooru_style == "json02":
            if not ids:
                return web.Response(body=b"")
            return web.json_response([gelbooru_post(i, style="json02") for i in ids])
        answer: dict[str, Any] = {"@attributes": {"limit": limit, "offset": 0,
                                                  "count": len(self.posts)}}
        if ids:
            answer["post"] = [gelbooru_post(i) for i in ids]
        return web.json_response(answer)

    async def moebooru(self, request: web.Request) -> web.Response:
        ids, limit = self._search(request)
        if self.throttle is not None:
            return web.Response(status=421, text="Throttled")
        page = int(request.query.get("page", "1"))
        return web.json_response([moebooru_post(i) for i in ids[(page - 1) * limit:][:limit]])


def gelbooru_page(body: bytes) -> web.Application:
    """An app answering every gelbooru API call (/index.php) with `body` as text/xml."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/index.php", page)
    return app


def make_source(base: str, http: RecordingClient, **settings: Any) -> booru.BooruSource:
    table = {"base_url": base, "tags": "glasses", **settings}
    assert booru.validate(table) == []
    config = SourceConfig(kind="booru", name="board", interval_s=60,
                          settings=MappingProxyType(table))
    source = booru.create(config, SourceContext(http=http, user_agent="megane-test/1 (ops@x)"))
    assert isinstance(source, booru.BooruSource)
    return source


def ids_of(result: Any) -> list[int]:
    return sorted(int(dict(ref.extra)["booru_id"]) for ref in result.refs)


API_CASES = [("danbooru", "json25"), ("gelbooru", "json25"), ("gelbooru", "json02"),
             ("gelbooru", "xml"), ("moebooru", "json25")]
API_IDS = ["danbooru", "gelbooru", "gelbooru-0.2-json", "gelbooru-0.2-xml", "moebooru"]


class TestBooruSource:
    @pytest.mark.parametrize(("api", "style"), API_CASES, ids=API_IDS)
    async def test_polls_neither_miss_nor_repeat(self, api: str, style: str) -> None:
        """Backfill takes the newest posts; later polls get exactly the posts added since."""
        board = FakeBoard(gelbooru_style=style)
        board.add(30)                  # ids 95..124 (crosses 100)
        board.add(5, tags="cats")      # other tags never appear
        async with serve(board.app()) as base, http_client(base) as http:
            source = make_source(base, http, api=api, limit=10, backfill=25)
            first = await source.poll(None, now=0.0)
            assert ids_of(first) == list(range(100, 125))

            again = await source.poll(first.cursor, now=0.0)
            assert again.refs == ()

            added = board.add(23)      # more than two pages arrive between polls
            second = await source.poll(again.cursor, now=0.0)
            assert ids_of(second) == added
            assert second.full is False
            assert (await source.poll(second.cursor, now=0.0)).refs == ()

    @pytest.mark.parametrize(("api", "style"), API_CASES, ids=API_IDS)
    async def test_big_backlog_continues(self, api: str, style: str) -> None:
        """A backlog over the per-poll page cap is `full` and finished by the next poll."""
        board = FakeBoard(gelbooru_style=style)
        board.add(1)
        async with serve(board.app()) as base, http_client(base) as http:
            source = make_source(base, http, api=api, limit=5)
            first = await source.poll(None, now=0.0)
            added = board.add(5 * booru.MAX_PAGES_PER_POLL + 7)
            second = await source.poll(first.cursor, now=0.0)
            assert second.full is True
            board.add(2)  # arrives mid-sweep: picked up afterwards, never lost
            third = await source.poll(second.cursor, now=0.0)
            fourth = await source.poll(third.cursor, now=0.0)
            seen = ids_of(second) + ids_of(third) + ids_of(fourth)
            assert sorted(seen) == [*added, added[-1] + 1, added[-1] + 2]
            assert len(seen) == len(set(seen))

    @pytest.mark.parametrize("api", ["danbooru", "gelbooru", "moebooru"])
    async def test_backfill_zero(self, api: str) -> None:
        """backfill = 0 yields nothing on the first poll and everything after it."""
        board = FakeBoard()
        board.add(8)
        async with serve(board.app()) as base, http_client(base) as http:
            source = make_source(base, http, api=api, backfill=0)
            first = await source.poll(None, now=0.0)
            assert first.refs == ()
            added = board.add(2)
            assert ids_of(await source.poll(first.cursor, now=0.0)) == added

    @pytest.mark.parametrize(("api", "status"), [("danbooru", 429), ("gelbooru", 429),
                                                 ("moebooru", 421)])
    async def test_throttled(self, api: str, status: int) -> None:
        """429 (or Moebooru's 421) is a SourceError asking to wait."""
        board = FakeBoard(throttle=status)
        async with serve(board.app()) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="rate limited") as caught:
                await make_source(base, http, api=api).poll(None, now=0.0)
        assert caught.value.retry_after_s == 30.0 or (api == "moebooru"
                                                      and caught.value.retry_after_s)

    @pytest.mark.parametrize("api", ["gelbooru", "moebooru"])
    async def test_board_ignoring_id_bounds(self, api: str) -> None:
        """A board that ignores id bounds fails loudly instead of skipping posts."""
        board = FakeBoard()
        board.add(3)
        async with serve(board.app()) as base, http_client(base) as http:
            source = make_source(base, http, api=api, limit=5)
            first = await source.poll(None, now=0.0)
            board.ignore_id_terms = True
            board.add(12)
            with pytest.raises(SourceError, match="ignores id"):
                await source.poll(first.cursor, now=0.0)

    @pytest.mark.parametrize(("api", "after", "below", "terms"), [
        ("gelbooru", None, None, []),
        ("gelbooru", 5, None, ["id:>5"]),
        ("gelbooru", None, 9, ["id:<9"]),
        ("gelbooru", 5, 9, ["id:>5", "id:<9"]),
        ("moebooru", 5, 9, ["id:6..8"]),
        ("moebooru", 5, None, ["id:>5"]),
    ])
    def test_id_bounds(self, api: str, after: int | None, below: int | None,
                       terms: list[str]) -> None:
        """Id bounds are spelled the way each board's search understands them."""
        assert booru.id_bounds(api, after, below) == terms

    async def test_credentials(self) -> None:
        """Danbooru gets Basic auth, Gelbooru api_key and user_id; errors never show them."""
        board = FakeBoard()
        board.add(2)
        async with serve(board.app()) as base, http_client(base) as http:
            await make_source(base, http, login="me", api_key="dan-key").poll(None, now=0.0)
            auth = board.requests[-1].headers["Authorization"]
            assert base64.b64decode(auth.split()[1]) == b"me:dan-key"
            assert "dan-key" not in board.requests[-1].path_qs
            await make_source(base, http, api="gelbooru", api_key="gel-key",
                              user_id=77).poll(None, now=0.0)
            query = board.requests[-1].query
            assert (query["api_key"], query["user_id"]) == ("gel-key", "77")
            board.throttle = 500
            with pytest.raises(SourceError) as caught:
                await make_source(base, http, api="gelbooru", api_key="gel-key",
                                  user_id=77).poll(None, now=0.0)
            assert "gel-key" not in str(caught.value) and "HTTP 500" in str(caught.value)

    async def test_malformed_xml_from_server(self) -> None:
        """A board answering broken XML fails the poll with a clear SourceError."""
        app = gelbooru_page(b'<?xml version="1.0"?><posts><post id="1"')
        async with serve(app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="malformed booru XML"):
                await make_source(base, http, api="gelbooru").poll(None, now=0.0)

    async def test_query_key(self) -> None:
        """The query key changes with the board, the API and the tags only."""
        async with http_client() as http:
            one = make_source(BASE, http, tags="glasses  1girl", limit=5)
            two = make_source(BASE, http, tags=["glasses", "1girl"])
            three = make_source(BASE, http, tags="glasses")
        assert one.query_key() == two.query_key() != three.query_key()


class TestValidate:
    @pytest.mark.parametrize(("settings", "problem"), [
        ({"base_url": BASE, "tags": "glasses"}, None),
        ({"base_url": BASE, "tags": ["a", "b"], "api": "gelbooru", "api_key": "k",
          "user_id": 1}, None),
        ({"base_url": BASE, "tags": "", "api": "moebooru", "limit": 100,
          "nsfw_ratings": ["s", "q", "e"]}, None),
        ({"tags": "x"}, "base_url: required"),
        ({"base_url": "board.example", "tags": "x"}, "base_url: must be"),
        ({"base_url": BASE}, "tags: required"),
        ({"base_url": BASE, "tags": 3}, "tags: must be"),
        ({"base_url": BASE, "tags": "glasses order:score"}, "tags: leave out order:"),
        ({"base_url": BASE, "tags": ["sort:id:asc"], "api": "gelbooru"}, "tags: leave out"),
        ({"base_url": BASE, "tags": "x", "api": "e621"}, "api: must be one of"),
        ({"base_url": BASE, "tags": "x", "api": "gelbooru", "api_key": "k"}, "user_id: "),
        ({"base_url": BASE, "tags": "x", "login": "me"}, "api_key: give both"),
        ({"base_url": BASE, "tags": "x", "limit": 500}, "limit: "),
        ({"base_url": BASE, "tags": "x", "backfill": "all"}, "backfill: "),
        ({"base_url": BASE, "tags": "x", "nsfw_ratings": ["explicit"]}, "nsfw_ratings: "),
        ({"base_url": BASE, "tags": "x", "url": "y"}, "url: unknown key"),
    ])
    def test_validate(self, settings: dict[str, Any], problem: str | None) -> None:
        """Each problem names its key and what is expected."""
        problems = booru.validate(settings)
        if problem is None:
            assert problems == []
        else:
            assert len(problems) == 1 and problems[0].startswith(problem), problems
