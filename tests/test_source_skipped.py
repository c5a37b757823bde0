"""A poll reports the entries it skipped: one bad entry costs itself and is named with a reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from crawler.daemon import Daemon

from tests import test_source_bluesky as bluesky_tests
from tests import test_source_booru as booru_tests
from tests import test_source_mastodon as mastodon_tests
from tests.conftest import photo
from tests.sourcehttp import http_client, serve


def fixed_page(path: str, body: bytes, content_type: str = "application/json") -> web.Application:
    """An app answering `path` (any query) with `body`."""
    app = web.Application()

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)
    app.router.add_get(path, answer)
    return app


async def test_mastodon_poll_reports_skipped() -> None:
    """A junk status and an attachment without any URL are reported; the good media stays."""
    page: list[Any] = [
        mastodon_tests.status(9), {"no": "id"},
        mastodon_tests.status(8, created_at="2020-01-01T00:00:00Z",
                              media=[mastodon_tests.attachment(1, kind="unknown", url=None)]),
        mastodon_tests.status(7)]
    app = fixed_page("/api/v1/timelines/tag/megane", json.dumps(page).encode())
    async with serve(app) as base, http_client(base) as http:
        source = mastodon_tests.make_source(base, http, hashtag="megane", backfill=4)
        result = await source.poll(None, now=mastodon_tests.NOW)
    assert [ref.url for ref in result.refs] == ["https://files.example/media/9.jpg",
                                                "https://files.example/media/7.jpg"]
    assert [reason for _, reason in result.skipped] == [
        "mastodon: not a status (no string id)", "mastodon: unknown attachment without a URL"]



def text_only_status(number: int, reblog: dict[str, Any] | None = None) -> dict[str, Any]:
    """A status as Mastodon's API sends one without media: `media_attachments` is `[]`."""
    wire = mastodon_tests.status(number, media=[], reblog=reblog)
    wire.update({"in_reply_to_id": None, "in_reply_to_account_id": None,
                 "visibility": "public", "language": "en", "replies_count": 0,
                 "reblogs_count": 0, "favourites_count": 0, "edited_at": None,
                 "content": f"<p>just words #{number}</p>", "mentions": [], "emojis": [],
                 "card": None, "poll": None})
    return wire


async def test_mastodon_text_only_statuses_are_counted_as_skipped() -> None:
    """Text-only statuses (a reblog of one too) are reported as skipped; the image is read."""
    page: list[Any] = [mastodon_tests.status(9), text_only_status(8),
                       text_only_status(7, reblog=text_only_status(6)),
                       {**mastodon_tests.status(5), "media_attachments": None}]
    app = fixed_page("/api/v1/timelines/tag/megane", json.dumps(page).encode())
    async with serve(app) as base, http_client(base) as http:
        source = mastodon_tests.make_source(base, http, hashtag="megane", backfill=4)
        result = await source.poll(None, now=mastodon_tests.NOW)
    assert [ref.url for ref in result.refs] == ["https://files.example/media/9.jpg"]
    assert result.skipped == (("8", "mastodon: text-only status (no media attachments)"),
                              ("7", "mastodon: text-only status (no media attachments)"),
                              ("5", "mastodon: media_attachments is not a list"))
    assert json.loads(result.cursor or "{}")["min_id"] == "9"


async def test_mastodon_start_from_now_skips_nothing() -> None:
    """`backfill = 0` only remembers the newest id: its statuses are not counted as skipped."""
    page: list[Any] = [text_only_status(9), mastodon_tests.status(8)]
    app = fixed_page("/api/v1/timelines/tag/megane", json.dumps(page).encode())
    async with serve(app) as base, http_client(base) as http:
        source = mastodon_tests.make_source(base, http, hashtag="megane", backfill=0)
        result = await source.poll(None, now=mastodon_tests.NOW)
    assert result.refs == () and result.skipped == ()
    assert json.loads(result.cursor or "{}")["min_id"] == "9"


async def test_mastodon_text_only_status_is_in_the_poll_summary(
        write_config: Callable[..., Any]) -> None:
    """`megane once`: the source_polled line counts a text-only status among the skipped."""
    image = photo("coffee")
    app = web.Application()
    port: list[int] = []

    async def timeline(request: web.Request) -> web.Response:
        if "max_id" in request.query:  # older than the first page: nothing
            return web.json_response([])
        with_image = mastodon_tests.status(9, media=[mastodon_tests.attachment(
            9, url=f"http://127.0.0.1:{port[0]}/media/9.jpg")])
        return web.json_response([with_image, text_only_status(8)])

    async def picture(_request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")
    app.router.add_get("/api/v1/timelines/tag/megane", timeline)
    app.router.add_get("/media/9.jpg", picture)
    async with serve(app) as base:
        port.append(int(base.rsplit(":", 1)[1]))
        config = write_config(allowed=(f"127.0.0.1:{port[0]}",), sources=f"""
            [[sources]]
            kind = "mastodon"
            name = "masto"
            instance = "{base}"
            hashtag = "megane"
            backfill = 4
            interval = "1m"
            """)
        with capture_logs() as logs:
            assert await Daemon(config, classifier=None, classifier_problem="no_model: test",
                                ).run(once=True) == 0
    polled = next(entry for entry in logs if entry["event"] == "source_polled")
    assert (polled["found"], polled["new"], polled["skipped"]) == (1, 1, 1)
    assert [(entry["item"], entry["reason"]) for entry in logs
            if entry["event"] == "entry_skipped"] == [
        ("8", "mastodon: text-only status (no media attachments)")]

async def test_bluesky_poll_reports_skipped() -> None:
    """A feed item without a post is reported; the posts around it are read."""
    body = json.dumps({"feed": [{"post": bluesky_tests.post(2)}, {"reply": {}},
                                {"post": bluesky_tests.post(1)}]}).encode()
    app = fixed_page("/xrpc/app.bsky.feed.getAuthorFeed", body)
    async with serve(app) as base, http_client(base) as http:
        result = await bluesky_tests.make_source(base, http).poll(None, now=bluesky_tests.NOW)
    assert bluesky_tests.numbers(result) == [1, 2]
    assert result.skipped == (("item #1", "bluesky: feed item without a post uri"),)


async def test_booru_poll_reports_skipped() -> None:
    """A Gelbooru XML post broken beyond repair is reported with the page it was on."""
    rows = [booru_tests.gelbooru_post(3), booru_tests.gelbooru_post(2),
            booru_tests.gelbooru_post(1)]
    body = booru_tests.gelbooru_xml(rows).replace(b'id="2"', b'id="2" source="a & b"')
    app = fixed_page("/index.php", body, "text/xml")
    async with serve(app) as base, http_client(base) as http:
        source = booru_tests.make_source(base, http, api="gelbooru", backfill=3)
        result = await source.poll(None, now=0.0)
    assert booru_tests.ids_of(result) == [1, 3]
    [(where, reason)] = result.skipped
    assert where.startswith(f"post #1 at {base}/index.php?")
    assert reason.startswith("booru: malformed <post> element")
