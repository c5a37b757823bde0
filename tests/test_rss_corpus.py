"""The regression corpus of feeds in publishers' real shapes (tests/rss_corpus/).

Each `<name>.xml` is a small feed written in the structure a publisher really uses
(WordPress, Blogger, Tumblr, Flickr, YouTube, news sites, podcasts, Pixiv and booru
bridges, FeedBurner, Medium, Substack, Reddit, DeviantArt, Mastodon...); `<name>.json`
holds what a person would save from it: the exact media URLs in order with their post,
flags and tags, and how many images were dropped for each reason. `{BASE}` in an expected
value is the local server the feed was fetched from.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from crawler.config import SourceConfig
from crawler.sources import rss
from crawler.sources.base import SourceContext
from tests.sourcehttp import http_client, serve

CORPUS = Path(__file__).parent / "rss_corpus"
FEEDS = sorted(path.stem for path in CORPUS.glob("*.xml"))


def feed_app(body: bytes, content_type: str) -> web.Application:
    """Serves `body` at /feeds/feed with the publisher's content type."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})
    app = web.Application()
    app.router.add_get("/feeds/feed", answer)
    return app


def fill_base(value: Any, base: str) -> Any:
    """`value` with every "{BASE}" in its strings replaced by `base`."""
    if isinstance(value, str):
        return value.replace("{BASE}", base)
    if isinstance(value, list):
        return [fill_base(item, base) for item in value]
    if isinstance(value, dict):
        return {key: fill_base(item, base) for key, item in value.items()}
    return value


def test_corpus_is_large_enough() -> None:
    """The corpus holds at least 30 feeds, each with its expected results."""
    assert len(FEEDS) >= 30
    assert all((CORPUS / f"{name}.json").is_file() for name in FEEDS)


@pytest.mark.parametrize("name", FEEDS)
async def test_feed(name: str) -> None:
    """The real RSS source yields exactly the expected media, flags, tags and drops."""
    expected = json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))
    body = (CORPUS / f"{name}.xml").read_bytes()
    async with serve(feed_app(body, expected["content_type"])) as base, \
            http_client(base) as http:
        config = SourceConfig(kind="rss", name="corpus", interval_s=60,
                              settings=MappingProxyType({"url": f"{base}/feeds/feed"}))
        source = rss.create(config, SourceContext(http=http, user_agent="megane-test/1"))
        with capture_logs() as logs:
            result = await source.poll(None, now=0.0)
    got = [{"url": ref.url, "post_url": ref.post_url, "flags": list(ref.flags),
            "tags": list(ref.tags)} for ref in result.refs]
    assert got == fill_base(expected["refs"], base)
    drops = [entry for entry in logs if entry["event"] == "feed_images_dropped"]
    assert (drops[0]["counts"] if drops else {}) == expected["dropped"]
    assert all(ref.source == "corpus" for ref in result.refs)
    assert not [entry for entry in logs if entry["event"] == "feed_entry_failed"]
