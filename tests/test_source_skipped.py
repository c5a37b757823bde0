"""A poll reports the entries it skipped: one bad entry costs itself and is named with a reason."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests import test_source_bluesky as bluesky_tests
from tests import test_source_booru as booru_tests
from tests import test_source_mastodon as mastodon_tests
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
