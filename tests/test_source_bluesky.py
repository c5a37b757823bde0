"""The bluesky source: post views (pure) and top-down paging against a fake AppView."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from crawler.config import SourceConfig
from crawler.errors import SourceError
from crawler.sources import bluesky
from crawler.sources.base import SourceContext
from crawler.sources.bluesky import active_labels, parse_feed
from tests.sourcehttp import RecordingClient, http_client, serve

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
DID = "did:plc:abcdefghijklmnopqrstuvwx"
LABELER = "did:plc:ar7c4by46qjdydhdevvrndac"


def images(*numbers: int) -> dict[str, Any]:
    return {"$type": "app.bsky.embed.images#view", "images": [
        {"thumb": f"https://cdn.bsky.app/img/feed_thumbnail/plain/{DID}/cid{n}@jpeg",
         "fullsize": f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/cid{n}@jpeg",
         "alt": f"alt {n}", "aspectRatio": {"width": 4, "height": 3}} for n in numbers]}


def post(number: int, *, embed: dict[str, Any] | None = None, labels: list[Any] | None = None,
         author_labels: list[Any] | None = None, self_labels: list[str] | None = None,
         hashtags: tuple[str, ...] = ("Megane",)) -> dict[str, Any]:
    uri = f"at://{DID}/app.bsky.feed.post/3l{number:08d}"
    text = " ".join(f"#{tag}" for tag in hashtags)
    record: dict[str, Any] = {
        "$type": "app.bsky.feed.post", "text": text, "createdAt": "2025-06-15T15:00:00.000Z",
        "facets": [{"index": {"byteStart": 0, "byteEnd": len(tag) + 1},
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": tag}]}
                   for tag in hashtags],
        "embed": {"$type": "app.bsky.embed.images", "images": []},
    }
    if self_labels:
        record["labels"] = {"$type": "com.atproto.label.defs#selfLabels",
                            "values": [{"val": value} for value in self_labels]}
    return {
        "uri": uri, "cid": f"bafyrei{number}",
        "author": {"did": DID, "handle": "megane.example.com", "displayName": "M",
                   "labels": author_labels or []},
        "record": record, "embed": images(number) if embed is None else embed,
        "replyCount": 0, "repostCount": 0, "likeCount": 0,
        "indexedAt": "2025-06-15T15:00:01.000Z", "labels": labels or [],
    }


def label(value: str, *, neg: bool = False, exp: str | None = None,
          src: str = LABELER, cts: str = "2025-06-01T00:00:00.000Z") -> dict[str, Any]:
    item: dict[str, Any] = {"src": src, "uri": "at://x", "val": value, "cts": cts}
    if neg:
        item["neg"] = True
    if exp:
        item["exp"] = exp
    return item


def page(*posts: dict[str, Any], cursor: str | None = None) -> bytes:
    body: dict[str, Any] = {"feed": [{"post": item} for item in posts]}
    if cursor:
        body["cursor"] = cursor
    return json.dumps(body).encode()


class TestLabels:
    @pytest.mark.parametrize(("labels", "active"), [
        ([], set()),
        ([label("porn")], {"porn"}),
        ([label("porn"), label("porn", neg=True)], set()),
        ([label("porn"), label("porn", neg=True, src="did:plc:other")], {"porn"}),
        ([label("nudity", exp="2025-06-15T15:00:00Z")], set()),
        ([label("nudity", exp="2025-06-16T00:00:00Z")], {"nudity"}),
        ([label("sexual"), label("graphic-media"), {"val": 3}, "junk"],
         {"sexual", "graphic-media"}),
        ([label("porn", cts="2025-06-01T00:00:00Z"),
          label("porn", neg=True, cts="2025-06-02T00:00:00Z"),
          label("porn", cts="2025-06-03T00:00:00Z")], {"porn"}),
        ([label("porn", neg=True, cts="2025-06-02T00:00:00Z"),
          label("porn", cts="2025-06-01T00:00:00Z")], set()),
        ([label("porn", cts="2025-06-03T00:00:00Z"),
          label("porn", neg=True, cts="2025-06-02T00:00:00Z")], {"porn"}),
        ([label("porn"), label("porn", neg=True, exp="2025-06-01T00:00:00Z")], {"porn"}),
        ([label("Sexual-Figurative")], {"sexual-figurative"}),
    ], ids=["none", "one", "negated", "negated-by-other-labeler", "expired", "not-expired",
            "junk-ignored", "reapplied-after-negation", "negation-after-label-by-cts",
            "negation-before-label-by-cts", "expired-negation", "case"])
    def test_active_labels(self, labels: list[Any], active: set[str]) -> None:
        """Labels count unless expired or negated by the labeler that applied them."""
        assert active_labels(labels, NOW) == active


class TestParseFeed:
    def test_images(self) -> None:
        """Each image of an images#view is yielded by its fullsize URL, with post and tags."""
        refs = parse_feed(page(post(1, embed=images(1, 2), hashtags=("Megane", "glasses"))),
                          source="sky", now=NOW)
        assert [ref.url for ref in refs] == [
            f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/cid1@jpeg",
            f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/cid2@jpeg"]
        ref = refs[0]
        assert ref.post_url == "https://bsky.app/profile/megane.example.com/post/3l00000001"
        assert ref.author == "megane.example.com" and ref.source == "sky"
        assert ref.tags == ("megane", "glasses")
        assert ref.flags == ()
        assert ("description", "alt 1") in ref.extra
        assert ref.dedup_key == f"at://{DID}/app.bsky.feed.post/3l00000001#media0"
        assert ref.posted_at == "2025-06-15T15:00:00.000Z"

    @pytest.mark.parametrize(("embed", "expected"), [
        ({"$type": "app.bsky.embed.recordWithMedia#view",
          "record": {"record": {"$type": "app.bsky.embed.record#viewRecord"}},
          "media": images(7)}, ["cid7"]),
        ({"$type": "app.bsky.embed.gallery#view", "items": [
            {"fullsize": f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/cid8@jpeg"},
            {"thumb": "https://cdn.bsky.app/thumb-only"}]}, ["cid8"]),
        ({"$type": "app.bsky.embed.external#view",
          "external": {"uri": "https://example.org", "thumb": "https://cdn.bsky.app/x"}}, []),
        ({"$type": "app.bsky.embed.record#view", "record": {}}, []),
        ({"$type": "app.bsky.embed.images#view",
          "images": [{"fullsize": ""}, {"fullsize": None}, {"thumb": "https://x.example/t"},
                     "junk", {"fullsize": 5}]}, []),
    ], ids=["record-with-media", "gallery", "external", "quote", "no-url"])
    def test_embeds(self, embed: dict[str, Any], expected: list[str]) -> None:
        """Images are found in images, recordWithMedia and gallery views, and nowhere else."""
        refs = parse_feed(page(post(1, embed=embed)), source="sky", now=NOW)
        assert [ref.url.rsplit("/", 1)[1].split("@")[0] for ref in refs] == expected

    @pytest.mark.parametrize("url", ["javascript:alert(1)", "data:image/png;base64,AAAA",
                                     "file:///etc/passwd", "ftp://cdn.example/1.jpg"])
    def test_other_schemes_are_yielded(self, url: str) -> None:
        """A fullsize URL with another scheme is yielded for the pipeline to reject, not dropped."""
        embed = {"$type": "app.bsky.embed.images#view", "images": [{"fullsize": url}]}
        (ref,) = parse_feed(page(post(1, embed=embed)), source="sky", now=NOW)
        assert ref.url == url and ref.skip_reason is None

    def test_malformed_item_costs_only_itself(self) -> None:
        """Junk items and a post with wrong types among good ones never lose the good ones."""
        bad = post(2)
        bad |= {"author": 5, "labels": {"val": "porn"}, "record": [1],
                "embed": {"$type": 7, "images": "x"}}
        body = json.dumps({"feed": [{"post": post(1)}, None, {"post": {"uri": 3}}, {"x": 1},
                                    {"post": bad}, {"post": post(3)}]}).encode()
        page_read = bluesky.read_page(body, source="sky", now=NOW)
        refs = parse_feed(body, source="sky", now=NOW)
        assert [ref.url.rsplit("/", 1)[1] for ref in refs] == ["cid1@jpeg", "cid3@jpeg"]
        assert [reason for _, reason in page_read.skipped] == [
            "bluesky: feed item without a post uri"] * 3

    def test_video_skipped(self) -> None:
        """A video embed is yielded with a skip reason."""
        embed = {"$type": "app.bsky.embed.video#view", "cid": "v",
                 "playlist": "https://video.bsky.app/watch/x/playlist.m3u8"}
        (ref,) = parse_feed(page(post(1, embed=embed)), source="sky", now=NOW)
        assert ref.skip_reason == "bluesky: video"

    @pytest.mark.parametrize(("kwargs", "flags"), [
        ({}, ()),
        ({"labels": [label("porn")]}, ("bluesky:label:porn",)),
        ({"labels": [label("porn"), label("porn", neg=True)]}, ()),
        ({"labels": [label("sexual", exp="2020-01-01T00:00:00Z")]}, ()),
        ({"author_labels": [label("nudity")]}, ("bluesky:label:nudity",)),
        ({"self_labels": ["graphic-media"]}, ("bluesky:label:graphic-media",)),
        ({"labels": [label("spam"), label("!hide")]}, ()),
        ({"labels": [label("sexual")], "self_labels": ["porn"]},
         ("bluesky:label:porn", "bluesky:label:sexual")),
    ], ids=["none", "post-label", "negated", "expired", "account-label", "self-label",
            "not-nsfw", "several"])
    def test_label_flags(self, kwargs: dict[str, Any], flags: tuple[str, ...]) -> None:
        """Post, account and self labels in the NSFW set become flags on every image."""
        refs = parse_feed(page(post(1, embed=images(1, 2), **kwargs)), source="sky", now=NOW)
        assert [ref.flags for ref in refs] == [flags, flags]

    @pytest.mark.parametrize("value", ["porn", "sexual", "sexual-figurative", "nudity",
                                       "graphic-media", "gore", "nsfw"])
    @pytest.mark.parametrize("where", ["labels", "author_labels", "self_labels"])
    def test_whole_vocabulary_flags(self, value: str, where: str) -> None:
        """Every adult/graphic label flags the post, wherever it sits."""
        labels: list[Any] = [value] if where == "self_labels" else [label(value)]
        (ref,) = parse_feed(page(post(1, **{where: labels})), source="sky", now=NOW)
        assert ref.flags == (f"bluesky:label:{value}",)

    @pytest.mark.parametrize("where", ["labels", "author_labels"])
    def test_negated_or_expired_figurative_does_not_flag(self, where: str) -> None:
        """A negated or expired sexual-figurative label on the post or author flags nothing."""
        negated = [label("sexual-figurative"), label("sexual-figurative", neg=True)]
        expired = [label("sexual-figurative", exp="2025-06-15T15:06:39Z")]
        for labels in (negated, expired):
            (ref,) = parse_feed(page(post(1, **{where: labels})), source="sky", now=NOW)
            assert ref.flags == ()

    def test_self_labels_without_type(self) -> None:
        """Self-labels are read from record.labels.values even without a $type."""
        item = post(1)
        item["record"]["labels"] = {"values": [{"val": "porn"}, {"val": 3}, "junk"]}
        (ref,) = parse_feed(page(item), source="sky", now=NOW)
        assert ref.flags == ("bluesky:label:porn",)

    def test_vocabulary_is_documented(self) -> None:
        """Every label that quarantines is named in README.md and config.toml."""
        root = Path(__file__).resolve().parent.parent
        for document in ("README.md", "config.toml"):
            text = (root / document).read_text()
            assert all(value in text for value in bluesky.NSFW_LABELS), document

    @pytest.mark.parametrize("body", [b"[]", b"nope", b'{"feed": 3}'])
    def test_bad_bodies(self, body: bytes) -> None:
        """A body that is not a feed page is a SourceError."""
        with pytest.raises(SourceError):
            parse_feed(body, source="sky", now=NOW)


@dataclass
class FakeAppView:
    """Feeds newest first, paged with an opaque cursor, as the AppView serves them."""

    items: list[dict[str, Any]] = field(default_factory=list)  # newest first
    next_number: int = 1
    requests: list[web.Request] = field(default_factory=list)
    rate_remaining: int | None = None
    throttled: bool = False

    def add(self, count: int, **kwargs: Any) -> list[int]:
        numbers = list(range(self.next_number, self.next_number + count))
        for number in numbers:
            self.items.insert(0, {"post": post(number, **kwargs)})
        self.next_number += count
        return numbers

    def repost(self, number: int) -> None:
        original = next(item["post"] for item in self.items
                        if item["post"]["uri"].endswith(f"/3l{number:08d}"))
        self.items.insert(0, {"post": original, "reason": {
            "$type": "app.bsky.feed.defs#reasonRepost",
            "by": {"did": DID, "handle": "megane.example.com"},
            "indexedAt": "2025-06-15T15:05:00.000Z"}})

    def app(self) -> web.Application:
        app = web.Application()
        for method in ("getAuthorFeed", "getFeed", "getListFeed"):
            app.router.add_get(f"/xrpc/app.bsky.feed.{method}", self.feed)
        return app

    @staticmethod
    def _number(item: dict[str, Any]) -> int:
        return int(item["post"]["uri"].rsplit("/3l", 1)[1])

    async def feed(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if self.throttled:
            return web.json_response({"error": "RateLimitExceeded"}, status=429,
                                     headers={"RateLimit-Remaining": "0",
                                              "RateLimit-Reset": str(int(NOW) + 120)})
        if request.query.get("actor") == "nobody.example.com":
            return web.json_response({"error": "InvalidRequest",
                                      "message": "Profile not found"}, status=400)
        # Like the AppView's, the cursor names a place in time (here: the last post's
        # number), so posts added at the top do not shift the pages below.
        limit = int(request.query.get("limit", "50"))
        items = self.items
        if "cursor" in request.query:
            below = int(request.query["cursor"])
            items = [item for item in items if self._number(item) < below]
        chunk = items[:limit]
        body: dict[str, Any] = {"feed": chunk}
        if len(items) > limit:
            body["cursor"] = str(self._number(chunk[-1]))
        headers = {}
        if self.rate_remaining is not None:
            headers = {"RateLimit-Limit": "3000", "RateLimit-Remaining": str(self.rate_remaining),
                       "RateLimit-Reset": str(int(NOW) + 60), "RateLimit-Policy": "3000;w=300"}
        return web.json_response(body, headers=headers)


def make_source(base: str, http: RecordingClient, **settings: Any) -> bluesky.BlueskySource:
    table = {"service": base, **settings}
    if not any(key in table for key in bluesky.SELECTORS):
        table["actor"] = "megane.example.com"
    assert bluesky.validate(table) == []
    config = SourceConfig(kind="bluesky", name="sky", interval_s=60,
                          settings=MappingProxyType(table))
    source = bluesky.create(config, SourceContext(http=http, user_agent="megane-test/1"))
    assert isinstance(source, bluesky.BlueskySource)
    return source


def numbers(result: Any) -> list[int]:
    return sorted(int(ref.post_url.rsplit("/3l", 1)[1]) for ref in result.refs)


class TestBlueskySource:
    async def test_backfill_then_only_new(self) -> None:
        """The first poll takes `backfill` newest posts; later polls exactly what was added."""
        view = FakeAppView()
        view.add(250)
        async with serve(view.app()) as base, http_client(base) as http:
            source = make_source(base, http, backfill=120)
            first = await source.poll(None, now=NOW)
            assert numbers(first) == list(range(131, 251))
            query = view.requests[0].query
            assert (query["actor"], query["filter"]) == ("megane.example.com",
                                                         "posts_with_media")

            requests_before = len(view.requests)
            nothing = await source.poll(first.cursor, now=NOW)
            assert nothing.refs == () and len(view.requests) == requests_before + 1

            view.add(130)  # more than a page
            second = await source.poll(nothing.cursor, now=NOW)
            assert numbers(second) == list(range(251, 381))
            assert second.full is False

    async def test_repost_does_not_stop_paging(self) -> None:
        """A repost lifting a seen post to the top does not hide the new posts beneath it."""
        view = FakeAppView()
        view.add(5)
        async with serve(view.app()) as base, http_client(base) as http:
            source = make_source(base, http)
            first = await source.poll(None, now=NOW)
            view.add(3)
            view.repost(2)
            second = await source.poll(first.cursor, now=NOW)
        assert numbers(second) == [6, 7, 8]

    async def test_burst_over_budget_is_finished_later(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A burst bigger than one poll's page budget is `full`, then finished with no gap."""
        monkeypatch.setattr(bluesky, "MAX_PAGES_PER_POLL", 2)
        view = FakeAppView()
        view.add(3)
        async with serve(view.app()) as base, http_client(base) as http:
            source = make_source(base, http)
            first = await source.poll(None, now=NOW)
            burst = view.add(260)
            second = await source.poll(first.cursor, now=NOW)
            assert second.full is True and len(second.refs) == 200
            later = view.add(4)
            third = await source.poll(second.cursor, now=NOW)
            fourth = await source.poll(third.cursor, now=NOW)
        seen = numbers(second) + numbers(third) + numbers(fourth)
        assert sorted(seen) == burst + later and len(seen) == len(set(seen))
        assert fourth.full is False

    async def test_backfill_zero(self) -> None:
        """backfill = 0 yields nothing at first, then only newer posts."""
        view = FakeAppView()
        view.add(10)
        async with serve(view.app()) as base, http_client(base) as http:
            source = make_source(base, http, backfill=0)
            first = await source.poll(None, now=NOW)
            view.add(2)
            second = await source.poll(first.cursor, now=NOW)
        assert first.refs == () and numbers(second) == [11, 12]

    async def test_ranked_feed_read_whole_page(self) -> None:
        """In a feed generator's ranked page, new posts below a seen one are still taken."""
        view = FakeAppView()
        view.add(3)
        feed_uri = f"at://{DID}/app.bsky.feed.generator/hot"
        async with serve(view.app()) as base, http_client(base) as http:
            source = make_source(base, http, feed=feed_uri)
            first = await source.poll(None, now=NOW)
            view.add(2)
            hot = view.items.pop(-1)  # post 1, still "hot", ranked first
            view.items.insert(0, hot)
            second = await source.poll(first.cursor, now=NOW)
            assert numbers(second) == [4, 5]
            author = make_source(base, http)  # time-ordered: stops at the first seen post
            third = await author.poll(first.cursor, now=NOW)
            assert numbers(third) == []

    async def test_feed_and_list_endpoints(self) -> None:
        """Feed generators and lists use getFeed and getListFeed with their URIs."""
        view = FakeAppView()
        view.add(2)
        feed_uri = f"at://{DID}/app.bsky.feed.generator/megane"
        list_uri = f"at://{DID}/app.bsky.graph.list/3kabc"
        async with serve(view.app()) as base, http_client(base) as http:
            await make_source(base, http, feed=feed_uri).poll(None, now=NOW)
            await make_source(base, http, list=list_uri).poll(None, now=NOW)
        assert view.requests[0].path.endswith("getFeed")
        assert view.requests[0].query["feed"] == feed_uri
        assert view.requests[1].path.endswith("getListFeed")
        assert view.requests[1].query["list"] == list_uri
        assert "filter" not in view.requests[1].query

    async def test_rate_limit_headers(self) -> None:
        """RateLimit-Remaining 0 asks to wait until RateLimit-Reset (epoch seconds)."""
        view = FakeAppView(rate_remaining=0)
        view.add(3)
        async with serve(view.app()) as base, http_client(base) as http:
            result = await make_source(base, http).poll(None, now=NOW)
        assert len(result.refs) == 3 and result.retry_after_s == pytest.approx(60.0)

    async def test_429(self) -> None:
        """A 429 is a SourceError waiting until RateLimit-Reset."""
        view = FakeAppView(throttled=True)
        async with serve(view.app()) as base, http_client(base) as http:
            with pytest.raises(SourceError) as caught:
                await make_source(base, http).poll(None, now=NOW)
        assert caught.value.retry_after_s == pytest.approx(120.0)

    async def test_unknown_actor(self) -> None:
        """An XRPC error is a SourceError carrying the server's message."""
        view = FakeAppView()
        async with serve(view.app()) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="Profile not found"):
                await make_source(base, http, actor="nobody.example.com").poll(None, now=NOW)

    async def test_query_key(self) -> None:
        """The query key follows the service and the feed, not the backfill."""
        async with http_client() as http:
            one = make_source("https://a.example", http, actor="@x.example.com", backfill=3)
            two = make_source("https://a.example", http, actor="x.example.com")
            three = make_source("https://a.example", http, actor="y.example.com")
        assert one.query_key() == two.query_key() != three.query_key()


class TestValidate:
    @pytest.mark.parametrize(("settings", "problem"), [
        ({"actor": "bsky.app"}, None),
        ({"actor": DID, "service": "https://api.example", "backfill": 0}, None),
        ({"feed": f"at://{DID}/app.bsky.feed.generator/whats-hot"}, None),
        ({"list": f"at://{DID}/app.bsky.graph.list/3kabc"}, None),
        ({}, "actor: give exactly one"),
        ({"actor": "bsky.app", "feed": f"at://{DID}/app.bsky.feed.generator/x"},
         "feed: give exactly one"),
        ({"actor": "not a handle"}, "actor: "),
        ({"feed": "https://bsky.app/profile/x/feed/y"}, "feed: "),
        ({"list": f"at://{DID}/app.bsky.feed.generator/x"}, "list: "),
        ({"actor": "bsky.app", "service": "ftp://x"}, "service: "),
        ({"actor": "bsky.app", "backfill": -3}, "backfill: "),
        ({"actor": "bsky.app", "hashtag": "x"}, "hashtag: unknown key"),
    ])
    def test_validate(self, settings: dict[str, Any], problem: str | None) -> None:
        """Each problem names its key and what is expected."""
        problems = bluesky.validate(settings)
        if problem is None:
            assert problems == []
        else:
            assert len(problems) == 1 and problems[0].startswith(problem), problems
