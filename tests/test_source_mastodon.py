"""The mastodon source: status parsing (pure) and min_id polling against a fake Mastodon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from crawler.config import SourceConfig
from crawler.errors import SourceError
from crawler.sources import mastodon
from crawler.sources.base import SourceContext
from crawler.sources.mastodon import id_key, parse_statuses
from tests.sourcehttp import RecordingClient, http_client, serve

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
INSTANCE = "https://mastodon.example"


def attachment(number: int, kind: str = "image", url: str | None = "default",
               remote_url: str | None = None) -> dict[str, Any]:
    return {"id": f"9{number}", "type": kind,
            "url": f"https://files.example/media/{number}.jpg" if url == "default" else url,
            "remote_url": remote_url, "preview_url": f"https://files.example/small/{number}.jpg",
            "description": f"alt {number}"}


def status(number: int, *, media: list[dict[str, Any]] | None = None, sensitive: bool = False,
           spoiler: str = "", tags: tuple[str, ...] = ("Megane",),
           acct: str = "alice@remote.example", created_at: str = "2025-06-15T15:00:00.000Z",
           reblog: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(number),
        "uri": f"https://remote.example/users/alice/statuses/{number}",
        "url": f"https://remote.example/@alice/{number}",
        "created_at": created_at,
        "sensitive": sensitive,
        "spoiler_text": spoiler,
        "account": {"id": "1", "acct": acct, "username": acct.split("@")[0]},
        "media_attachments": [attachment(number)] if media is None else media,
        "tags": [{"name": tag, "url": f"{INSTANCE}/tags/{tag}"} for tag in tags],
        "reblog": reblog,
    }


def parse(statuses: list[dict[str, Any]], now: float = NOW) -> list[Any]:
    return parse_statuses(json.dumps(statuses).encode(), source="masto", instance=INSTANCE,
                          now=now)


class TestIds:
    @pytest.mark.parametrize(("smaller", "larger"), [
        ("99", "100"), ("109999999999999999", "110000000000000000"), ("5", "6"),
    ])
    def test_numeric_order(self, smaller: str, larger: str) -> None:
        """Ids compare as numbers whatever their length."""
        assert id_key(smaller) < id_key(larger)


class TestParseStatuses:
    def test_image_fields(self) -> None:
        """An image attachment carries the post, author, hashtags, alt text and a dedup key."""
        (ref,) = parse([status(7, tags=("Megane", "GLASSES"))])
        assert ref.url == "https://files.example/media/7.jpg"
        assert ref.source == "masto"
        assert ref.post_url == "https://remote.example/@alice/7"
        assert ref.author == "alice@remote.example"
        assert ref.tags == ("megane", "glasses")
        assert ref.flags == ()
        assert ref.dedup_key == "https://remote.example/users/alice/statuses/7#media0"
        assert ref.posted_at == "2025-06-15T15:00:00.000Z"
        assert ("description", "alt 7") in ref.extra
        assert ref.skip_reason is None

    def test_local_acct_gets_host(self) -> None:
        """A local account's acct is qualified with the instance's host."""
        (ref,) = parse([status(7, acct="bob")])
        assert ref.author == "bob@mastodon.example"

    def test_sensitive_flags_every_attachment(self) -> None:
        """`sensitive` flags every attachment of the status; the spoiler text goes in extra."""
        refs = parse([status(7, sensitive=True, spoiler="lewd",
                             media=[attachment(1), attachment(2)])])
        assert [ref.flags for ref in refs] == [("mastodon:sensitive",)] * 2
        assert all(("spoiler_text", "lewd") in ref.extra for ref in refs)

    @pytest.mark.parametrize(("kind", "reason"), [
        ("video", "mastodon: video attachment"),
        ("gifv", "mastodon: gifv attachment (an MP4 video)"),
        ("audio", "mastodon: audio attachment"),
    ])
    def test_non_images_skipped_with_reason(self, kind: str, reason: str) -> None:
        """Video, gifv and audio attachments are yielded with a skip reason, and logged."""
        with capture_logs() as logs:
            (ref,) = parse([status(7, media=[attachment(1, kind=kind)])])
        assert ref.skip_reason == reason
        assert [entry["reason"] for entry in logs
                if entry["event"] == "mastodon_media_skipped"] == [reason]

    @pytest.mark.parametrize("kind", ["unknown", None, "", "Unknown", "document", 7])
    def test_unknown_type_fetches_remote_url(self, kind: object) -> None:
        """An unknown (or missing, or unfamiliar) type is fetched from remote_url; bytes decide."""
        item = attachment(1, kind="image", url="https://mastodon.example/media_proxy/1/original",
                          remote_url="https://remote.example/media/1.jpg")
        item["type"] = kind
        (ref,) = parse([status(7, media=[item])])
        assert ref.url == "https://remote.example/media/1.jpg"
        assert ref.skip_reason is None

    def test_unknown_type_without_remote_url_uses_url(self) -> None:
        """An unknown attachment with no remote_url is fetched from url."""
        (ref,) = parse([status(7, media=[attachment(1, kind="unknown")])])
        assert ref.url == "https://files.example/media/1.jpg" and ref.skip_reason is None

    @pytest.mark.parametrize("url", ["javascript:alert(1)", "data:image/png;base64,AAAA",
                                     "file:///etc/passwd", "ftp://files.example/1.jpg"])
    def test_other_schemes_are_yielded(self, url: str) -> None:
        """A media URL with another scheme is yielded, for the pipeline to reject, not dropped."""
        (ref,) = parse([status(7, media=[attachment(1, url=url)])])
        assert ref.url == url

    def test_http_candidate_wins_over_other_scheme(self) -> None:
        """When url has another scheme and remote_url is http(s), the http(s) one is fetched."""
        (ref,) = parse([status(7, media=[attachment(
            1, url="javascript:alert(1)", remote_url="https://remote.example/1.jpg")])])
        assert ref.url == "https://remote.example/1.jpg"

    def test_odd_attachments_cost_only_themselves(self) -> None:
        """Odd attachment shapes cost only that attachment; the good ones of the status stay."""
        odd: list[Any] = [
            None, "junk", 5, ["nested"],
            {"id": "1", "type": "unknown", "url": None, "remote_url": None},
            {"id": "2", "type": "image", "url": None, "remote_url": None,
             "preview_url": "https://files.example/small/2.jpg"},
            {"id": "3", "type": "image", "url": "https://files.example/3.jpg", "meta": {}},
            {"id": "4", "type": ["image"], "url": 17, "remote_url": "https://r.example/4.jpg"},
            {"id": "5", "type": "video", "url": ""},
        ]
        statuses = [status(7, created_at="2020-01-01T00:00:00Z", media=odd)]
        with capture_logs() as logs:
            media = mastodon.status_media(statuses, source="m", instance=INSTANCE, now=NOW)
        assert [ref.url for ref in media.refs] == ["https://files.example/3.jpg",
                                                   "https://r.example/4.jpg"]
        reasons = [reason for _, reason in media.skipped]
        assert reasons.count("mastodon: attachment is not an object") == 4
        assert {"mastodon: unknown attachment without a URL",
                "mastodon: image attachment without a URL",
                "mastodon: video attachment without a URL"} <= set(reasons)
        assert sum(entry["event"] == "mastodon_media_without_url" for entry in logs) == 3

    @pytest.mark.parametrize("field", ["media_attachments", "tags", "account", "uri",
                                       "created_at", "spoiler_text"])
    @pytest.mark.parametrize("value", [5, "text", {"a": 1}, [None, 3], None, 10**30])
    def test_wrong_types_in_a_status_cost_nothing_else(self, field: str, value: object) -> None:
        """A wrong type in any field of one status never loses the other statuses of the page."""
        bad = status(8)
        bad[field] = value
        refs = parse([status(7), bad, status(9)])
        urls = [ref.url for ref in refs]
        assert urls[0] == "https://files.example/media/7.jpg"
        assert urls[-1] == "https://files.example/media/9.jpg"

    def test_remote_url_fallback(self) -> None:
        """A null `url` falls back to `remote_url`."""
        (ref,) = parse([status(7, media=[attachment(
            1, url=None, remote_url="https://remote.example/orig/1.png")])])
        assert ref.url == "https://remote.example/orig/1.png"

    def test_missing_url_waits_then_gives_up(self) -> None:
        """An image with no URL at all is not yielded; it is pending while recent."""
        statuses = [status(7, media=[attachment(1, url=None)])]
        media = mastodon.status_media(statuses, source="m", instance=INSTANCE, now=NOW)
        assert media.refs == [] and media.pending_ids == ["7"]
        late = mastodon.status_media(statuses, source="m", instance=INSTANCE, now=NOW + 86400)
        assert late.refs == [] and late.pending_ids == []

    def test_reblog_resolved(self) -> None:
        """A reblog yields the original status's media, keyed by the original's uri."""
        original = status(5, acct="carol@elsewhere.example", sensitive=True)
        (ref,) = parse([status(8, media=[], reblog=original)])
        assert ref.post_url == "https://remote.example/@alice/5"
        assert ref.author == "carol@elsewhere.example"
        assert ref.flags == ("mastodon:sensitive",)
        assert ref.dedup_key == "https://remote.example/users/alice/statuses/5#media0"

    @pytest.mark.parametrize("body", [b"{}", b"not json", b'{"error": "x"}'])
    def test_bad_bodies(self, body: bytes) -> None:
        """A body that is not an array of statuses is a SourceError."""
        with pytest.raises(SourceError):
            parse_statuses(body, source="m", instance=INSTANCE, now=NOW)

    def test_junk_entries_ignored(self) -> None:
        """Entries that are not statuses are skipped, not fatal."""
        assert [ref.url for ref in parse([None, {"id": 3}, status(7)])] == [  # type: ignore[list-item]
            "https://files.example/media/7.jpg"]


class FakeMastodon:
    """Enough of the Mastodon API for the source: timelines with min_id/max_id paging."""

    def __init__(self, *, first_id: int = 990) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.next_id = first_id
        self.requests: list[web.Request] = []
        self.rate_remaining: int | None = None
        self.rate_reset = "2025-06-15T15:11:40.000Z"  # NOW + 300 s
        self.refuse: int | None = None
        self.timelines_access: dict[str, Any] | None = None
        self.token = "s3cret-token"
        self.app = web.Application()
        router = self.app.router
        router.add_get("/api/v1/timelines/tag/{tag}", self.timeline)
        router.add_get("/api/v1/timelines/public", self.timeline)
        router.add_get("/api/v1/timelines/list/{list_id}", self.list_timeline)
        router.add_get("/api/v1/accounts/lookup", self.lookup)
        router.add_get("/api/v1/accounts/{account_id}/statuses", self.timeline)
        router.add_get("/api/v2/instance", self.instance)

    def add(self, count: int = 1, **kwargs: Any) -> list[str]:
        ids = []
        for _ in range(count):
            self.statuses.append(status(self.next_id, **kwargs))
            ids.append(str(self.next_id))
            self.next_id += 1
        return ids

    def paths(self, prefix: str = "") -> list[str]:
        return [request.path_qs for request in self.requests if request.path.startswith(prefix)]

    def _headers(self) -> dict[str, str]:
        if self.rate_remaining is None:
            return {}
        return {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": str(self.rate_remaining),
                "X-RateLimit-Reset": self.rate_reset}

    async def timeline(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if self.refuse:
            return web.json_response({"error": "This method requires an authenticated user"},
                                     status=self.refuse)
        if self.rate_remaining == -1:
            return web.json_response({"error": "Too many requests"}, status=429,
                                     headers={"X-RateLimit-Remaining": "0",
                                              "X-RateLimit-Reset": self.rate_reset})
        query = request.query
        limit = min(int(query.get("limit", "20")), 40)
        items = list(self.statuses)
        if query.get("only_media") == "true":
            items = [item for item in items if item["media_attachments"] or item["reblog"]]

        def key(item: dict[str, Any]) -> tuple[int, str]:
            return id_key(item["id"])

        if "min_id" in query:
            floor = id_key(query["min_id"])
            page = sorted((item for item in items if key(item) > floor), key=key)[:limit]
            page.reverse()  # newest first, as Mastodon answers
        else:
            items.sort(key=key, reverse=True)
            if "max_id" in query:
                ceiling = id_key(query["max_id"])
                items = [item for item in items if key(item) < ceiling]
            page = items[:limit]
        return web.json_response(page, headers=self._headers())

    async def list_timeline(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.requests.append(request)
            return web.json_response({"error": "The access token is invalid"}, status=401)
        return await self.timeline(request)

    async def lookup(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if request.query.get("acct") != "alice@remote.example":
            return web.json_response({"error": "Record not found"}, status=404)
        return web.json_response({"id": "4242", "acct": "alice@remote.example"})

    async def instance(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        configuration: dict[str, Any] = {"statuses": {"max_characters": 500}}
        if self.timelines_access is not None:
            configuration["timelines_access"] = self.timelines_access
        return web.json_response({"domain": "mastodon.example", "version": "4.4.0",
                                  "configuration": configuration})


def make_source(base: str, http: RecordingClient, **settings: Any) -> mastodon.MastodonSource:
    table = {"instance": base, **settings}
    assert mastodon.validate(table) == []
    config = SourceConfig(kind="mastodon", name="masto", interval_s=60,
                          settings=MappingProxyType(table))
    source = mastodon.create(config, SourceContext(http=http, user_agent="megane-test/1"))
    assert isinstance(source, mastodon.MastodonSource)
    return source


def post_numbers(result: Any) -> list[int]:
    return sorted(int(ref.post_url.rsplit("/", 1)[1]) for ref in result.refs)


@pytest.fixture
def server() -> Iterator[FakeMastodon]:
    yield FakeMastodon()


class TestMastodonSource:
    async def test_backfill_then_catch_up(self, server: FakeMastodon) -> None:
        """The first poll backfills the newest `backfill`; later polls miss and repeat nothing."""
        server.add(100)  # ids 990..1089: crosses a digit boundary
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, hashtag="#Megane", backfill=50)
            first = await source.poll(None, now=NOW)
            assert post_numbers(first) == list(range(1040, 1090))
            assert json.loads(first.cursor or "{}")["min_id"] == "1089"
            assert all("only_media=true" in path for path in server.paths("/api/v1/timelines"))

            server.add(95)  # more than two pages arrive between polls
            second = await source.poll(first.cursor, now=NOW)
            assert post_numbers(second) == list(range(1090, 1185))
            assert second.full is False
            assert "min_id=1089" in server.paths("/api/v1/timelines")[-4]

            third = await source.poll(second.cursor, now=NOW)
            assert third.refs == ()

            server.add(3)
            fourth = await source.poll(third.cursor, now=NOW)
            assert post_numbers(fourth) == [1185, 1186, 1187]

    async def test_big_backlog_is_full(self, server: FakeMastodon) -> None:
        """A backlog over the per-poll page cap returns `full` and continues where it stopped."""
        server.add(1)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, timeline="public")
            first = await source.poll(None, now=NOW)
            server.add(450)
            second = await source.poll(first.cursor, now=NOW)
            assert second.full is True
            assert len(second.refs) == mastodon.MAX_PAGES_PER_POLL * mastodon.PAGE_LIMIT
            third = await source.poll(second.cursor, now=NOW)
            assert third.full is False
            assert (sorted(post_numbers(second) + post_numbers(third))
                    == list(range(991, 991 + 450)))

    async def test_backfill_zero_starts_now(self, server: FakeMastodon) -> None:
        """With backfill = 0 the first poll yields nothing but remembers where "now" is."""
        server.add(10)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, hashtag="megane", backfill=0)
            first = await source.poll(None, now=NOW)
            assert first.refs == ()
            server.add(2)
            assert post_numbers(await source.poll(first.cursor, now=NOW)) == [1000, 1001]

    async def test_deleted_and_reblogged(self, server: FakeMastodon) -> None:
        """Deleted statuses vanish harmlessly; a reblog yields its original once."""
        server.add(3)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, hashtag="megane")
            first = await source.poll(None, now=NOW)
            original = server.statuses[0]
            del server.statuses[1]  # deleted after we saw it
            server.add(1, media=[], reblog=original)
            server.add(1)
            second = await source.poll(first.cursor, now=NOW)
            assert post_numbers(second) == [990, 994]
            reblogged = [ref for ref in second.refs if ref.post_url == original["url"]]
            seen = [ref for ref in first.refs if ref.post_url == original["url"]]
            assert [ref.dedup_key for ref in reblogged] == [ref.dedup_key for ref in seen]

    async def test_pending_media_holds_cursor(self, server: FakeMastodon) -> None:
        """A status whose image is still processing is retried until it has a URL."""
        server.add(1)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, hashtag="megane")
            first = await source.poll(None, now=NOW)
            server.add(1, media=[attachment(1, url=None)])
            server.add(1)
            second = await source.poll(first.cursor, now=NOW)
            assert post_numbers(second) == [992]
            assert json.loads(second.cursor or "{}")["min_id"] == "990"
            server.statuses[1]["media_attachments"] = [attachment(991)]
            third = await source.poll(second.cursor, now=NOW)
            assert post_numbers(third) == [991, 992]
            assert json.loads(third.cursor or "{}")["min_id"] == "992"

    async def test_rate_limit_headers(self, server: FakeMastodon) -> None:
        """X-RateLimit-Remaining 0 stops paging and asks to wait until X-RateLimit-Reset."""
        server.add(5)
        server.rate_remaining = 0
        async with serve(server.app) as base, http_client(base) as http:
            result = await make_source(base, http, hashtag="megane").poll(None, now=NOW)
        assert len(result.refs) == 5
        assert result.retry_after_s == pytest.approx(300.0)

    async def test_429(self, server: FakeMastodon) -> None:
        """A 429 (which Mastodon sends without Retry-After) waits until X-RateLimit-Reset."""
        server.rate_remaining = -1
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError) as caught:
                await make_source(base, http, hashtag="megane").poll(None, now=NOW)
        assert caught.value.retry_after_s == pytest.approx(300.0)

    async def test_public_timeline_refused(self, server: FakeMastodon) -> None:
        """A 422 on the public timeline reads the instance once and reports a notice."""
        server.refuse = 422
        server.timelines_access = {"live_feeds": {"local": "public", "remote": "authenticated"},
                                   "hashtag_feeds": {"local": "public", "remote": "public"}}
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, timeline="public")
            first = await source.poll(None, now=NOW)
            second = await source.poll(None, now=NOW)
        assert first.refs == () and first.notice and "authenticated" in first.notice
        assert second.notice == first.notice
        assert len(server.paths("/api/v2/instance")) == 1

    async def test_empty_first_poll_checks_instance(self, server: FakeMastodon) -> None:
        """An empty first page is checked against the instance's timeline access."""
        server.timelines_access = {"live_feeds": {"local": "disabled", "remote": "disabled"},
                                   "hashtag_feeds": {"local": "public", "remote": "public"}}
        async with serve(server.app) as base, http_client(base) as http:
            local = await make_source(base, http, timeline="local").poll(None, now=NOW)
            tag = await make_source(base, http, hashtag="megane").poll(None, now=NOW)
        assert local.notice and "disabled" in local.notice
        assert tag.notice is None
        assert "local=true" in server.paths("/api/v1/timelines/public")[0]

    async def test_account_resolved_once(self, server: FakeMastodon) -> None:
        """An account is looked up once; its id is kept in the cursor."""
        server.add(2)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, account="@alice@remote.example")
            first = await source.poll(None, now=NOW)
            server.add(1)
            second = await source.poll(first.cursor, now=NOW)
        assert post_numbers(first) == [990, 991] and post_numbers(second) == [992]
        assert len(server.paths("/api/v1/accounts/lookup")) == 1
        assert all(path.startswith("/api/v1/accounts/4242/statuses")
                   for path in server.paths("/api/v1/accounts/4"))

    async def test_unknown_account(self, server: FakeMastodon) -> None:
        """An account the server does not know is a SourceError naming it."""
        async with serve(server.app) as base, http_client(base) as http:
            with pytest.raises(SourceError, match="nobody"):
                await make_source(base, http, account="nobody").poll(None, now=NOW)

    async def test_list_sends_token_never_logs_it(self, server: FakeMastodon) -> None:
        """A list timeline sends the Bearer token, and the token appears in no log or repr."""
        server.add(2)
        async with serve(server.app) as base, http_client(base) as http:
            source = make_source(base, http, list="17", access_token=server.token)
            with capture_logs() as logs:
                result = await source.poll(None, now=NOW)
        assert post_numbers(result) == [990, 991]
        assert server.token not in repr(source) and server.token not in repr(logs)
        assert "only_media" not in server.paths("/api/v1/timelines/list")[0]

    async def test_query_key(self) -> None:
        """The query key follows the instance and the timeline, not the token or backfill."""
        async with http_client() as http:
            one = make_source(INSTANCE, http, hashtag="megane", backfill=5)
            two = make_source(INSTANCE, http, hashtag="#megane")
            three = make_source(INSTANCE, http, hashtag="cats")
        assert one.query_key() == two.query_key() != three.query_key()


class TestValidate:
    @pytest.mark.parametrize(("settings", "problem"), [
        ({"instance": INSTANCE, "hashtag": "megane"}, None),
        ({"instance": INSTANCE, "timeline": "local", "only_media": False}, None),
        ({"instance": INSTANCE, "account": "alice@remote.example", "backfill": 0}, None),
        ({"instance": INSTANCE, "list": 17, "access_token": "t"}, None),
        ({"hashtag": "megane"}, "instance: required"),
        ({"instance": "mastodon.social", "hashtag": "megane"}, "instance: must be"),
        ({"instance": f"{INSTANCE}/web", "hashtag": "megane"}, "instance: must be"),
        ({"instance": INSTANCE}, "hashtag: give exactly one"),
        ({"instance": INSTANCE, "hashtag": "a", "timeline": "public"}, "timeline: give exactly"),
        ({"instance": INSTANCE, "timeline": "home"}, "timeline: must be"),
        ({"instance": INSTANCE, "hashtag": "two words"}, "hashtag: "),
        ({"instance": INSTANCE, "account": "a b"}, "account: "),
        ({"instance": INSTANCE, "list": "17"}, "access_token: required"),
        ({"instance": INSTANCE, "hashtag": "x", "only_media": "yes"}, "only_media: "),
        ({"instance": INSTANCE, "hashtag": "x", "backfill": -1}, "backfill: "),
        ({"instance": INSTANCE, "hashtag": "x", "feed": "y"}, "feed: unknown key"),
    ])
    def test_validate(self, settings: dict[str, Any], problem: str | None) -> None:
        """Each problem names its key and what is expected."""
        problems = mastodon.validate(settings)
        if problem is None:
            assert problems == []
        else:
            assert len(problems) == 1 and problems[0].startswith(problem), problems
