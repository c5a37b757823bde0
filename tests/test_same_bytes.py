"""The same bytes from two URLs in one `megane once` run: the log and the catalogue agree.

The row processed first (logged `media_filed`) keeps the decision's reason; every other
row with those bytes is `duplicate_of:<sha256>` with its own final `media_duplicate`
event; no row waits for itself, and the model scores the bytes once. The URL with the
lowest row id is held back until the other URL's bytes are decoded, so the row filed is
not the first row created (the case the catalogue used to get backwards).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger

from crawler.daemon import Daemon
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from tests.conftest import MediaServer, photo
from tests.helpers import catalogue_media, feed_source, rss_source
from tests.classifier_fixtures import RecordingClassifier

FINAL_EVENTS = ("media_filed", "media_duplicate", "media_near_duplicate", "media_rejected")


class DecodedGate:
    """A structlog processor that opens when the given URL's bytes are decoded."""

    def __init__(self) -> None:
        self.url_suffix: tuple[str, ...] = ()
        self.opened = asyncio.Event()

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        if (event.get("event") == "media_decoded" and self.url_suffix
                and str(event.get("url", "")).endswith(self.url_suffix)):
            self.opened.set()
        return event


def _held_bytes(server: MediaServer, path: str, body: bytes, gate: DecodedGate) -> None:
    """Serve `body` at `path` only once `gate` opens."""

    async def handler(_request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(gate.opened.wait(), 30)
        return web.Response(body=body, content_type="image/jpeg")

    server.routes[path] = handler


def same_bytes_at_two_urls(media_server: MediaServer,
                           write_config: Any) -> tuple[Any, DecodedGate]:
    """A feed of two items, the same photo at /img/a.jpg (served once the gate opens, when
    /img/b.jpg is decoded) and /img/b.jpg; the config polling it, and the gate."""
    data = photo("coffee")
    gate = DecodedGate()
    gate.url_suffix = ("/img/b.jpg",)
    _held_bytes(media_server, "/img/a.jpg", data, gate)
    media_server.add_bytes("/img/b.jpg", data)
    media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}, {"image": "/img/b.jpg"}])
    config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))
    return config, gate


async def _run(config: Any, classifier: Any, gate: DecodedGate) -> list[EventDict]:
    counting = RecordingClassifier(classifier)
    with capture_logs(processors=[gate]) as logs:
        assert await Daemon(config, classifier=counting).run(once=True) == 0
    assert counting.images == 1, "the same bytes are classified once"
    return logs


def _assert_agree(media: list[dict[str, Any]], logs: list[EventDict],
                  urls: list[str]) -> None:
    """Rows and events agree: one final event per URL, one original, the rest duplicates."""
    rows = {item["url"]: item for item in media}
    assert sorted(rows) == sorted(urls), rows
    [sha] = {rows[url]["sha256"] for url in urls}
    assert sha is not None
    finals = {url: [e for e in logs if e.get("url") == url and e["event"] in FINAL_EVENTS]
              for url in urls}
    assert all(len(events) == 1 for events in finals.values()), finals
    filed = [url for url in urls if finals[url][0]["event"] == "media_filed"]
    assert len(filed) == 1, finals
    [original] = filed
    assert rows[original]["reason"] == finals[original][0]["reason"]
    assert not rows[original]["reason"].startswith(("duplicate_of:", "near_duplicate_of:"))
    assert rows[original]["state"] == finals[original][0]["placement"]
    for url in urls:
        if url == original:
            continue
        [event] = finals[url]
        assert event["event"] == "media_duplicate", event
        assert rows[url]["reason"] == event["reason"] == f"duplicate_of:{sha}"
        assert rows[url]["state"] == event["state"] == rows[original]["state"]
        if "of" in event:
            assert event["of"] == original
    for event in logs:
        if event["event"] == "media_waiting":
            assert event["waits_for"] not in (None, event["url"]), event
            assert event["original"] != event["sha256"], event
    classified = [e for e in logs if e["event"] == "media_classified"]
    assert [e["sha256"] for e in classified] == [sha]


class TestSameBytesInOneRun:
    async def test_rss_and_folder_with_the_same_bytes(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        tmp_path: Path,
    ) -> None:
        """RSS `cat.jpg` and folder `café.jpg` with identical bytes: log and rows agree."""
        data = photo("chelsea")
        gate = DecodedGate()
        gate.url_suffix = ("caf%C3%A9.jpg", "café.jpg")
        _held_bytes(media_server, "/img/cat.jpg", data, gate)
        media_server.add_feed("/feed.xml", [{"image": "/img/cat.jpg"}])
        folder = tmp_path / "inbox"
        folder.mkdir()
        (folder / "café.jpg").write_bytes(data)
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server) + f"""
            [[sources]]
            kind = "folder"
            name = "inbox"
            path = "{folder}"
            interval = "1m"
            settle_s = 0
            """)

        logs = await _run(config, shared_classifier, gate)

        media = await catalogue_media(config.data_dir)
        urls = [item["url"] for item in media]
        assert any(url.endswith("/img/cat.jpg") for url in urls), urls
        assert any(url.endswith(gate.url_suffix) for url in urls), urls
        _assert_agree(media, logs, urls)
        [cafe] = [item for item in media if item["url"].endswith(gate.url_suffix)]
        assert not cafe["reason"].startswith("duplicate_of:"), "café was decoded first"

    async def test_two_items_of_one_feed_with_the_same_bytes(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Two items of one feed, same bytes at two URLs: the second-created row is filed
        first, and the catalogue says so."""
        config, gate = same_bytes_at_two_urls(media_server, write_config)

        logs = await _run(config, shared_classifier, gate)

        media = await catalogue_media(config.data_dir)
        _assert_agree(media, logs, [item["url"] for item in media])
        by_name = {item["url"].rsplit("/", 1)[-1]: item for item in media}
        assert by_name["a.jpg"]["reason"] == f"duplicate_of:{by_name['a.jpg']['sha256']}"
        assert not by_name["b.jpg"]["reason"].startswith("duplicate_of:")

    async def test_two_rss_sources_with_the_same_bytes(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """The same bytes at URLs of two different feeds: one filed, one its duplicate."""
        data = photo("rocket")
        gate = DecodedGate()
        gate.url_suffix = ("/two/img.jpg",)
        _held_bytes(media_server, "/one/img.jpg", data, gate)
        media_server.add_bytes("/two/img.jpg", data)
        media_server.add_feed("/one.xml", [{"image": "/one/img.jpg"}])
        media_server.add_feed("/two.xml", [{"image": "/two/img.jpg"}])
        config = write_config(allowed=(media_server.host_port,), sources=(
            rss_source(name="one", url=f"{media_server.base_url}/one.xml")
            + rss_source(name="two", url=f"{media_server.base_url}/two.xml")))

        logs = await _run(config, shared_classifier, gate)

        media = await catalogue_media(config.data_dir)
        _assert_agree(media, logs, [item["url"] for item in media])
        [two] = [item for item in media if item["url"].endswith("/two/img.jpg")]
        assert not two["reason"].startswith("duplicate_of:")

    async def test_flagged_repost_of_filed_bytes_logs_what_the_row_holds(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Filed bytes reposted flagged in a later run are re-filed, and the repost's one
        final event is `media_duplicate` of the first URL, as its row says."""
        media_server.add_bytes("/img/a.jpg", photo("rocket"))
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}])
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        media_server.add_bytes("/img/b.jpg", photo("rocket"))
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"},
                                            {"image": "/img/b.jpg", "rating": "adult"}])

        with capture_logs() as logs:
            assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        rows = {item["url"].rsplit("/", 1)[-1]: item
                for item in await catalogue_media(config.data_dir)}
        finals = [e for e in logs if e["event"] in FINAL_EVENTS]
        assert [e["url"].rsplit("/", 1)[-1] for e in finals] == ["b.jpg"], finals
        [event] = finals
        assert event["event"] == "media_duplicate"
        assert event["of"].endswith("/img/a.jpg")
        assert (event["state"], event["reason"]) == (rows["b.jpg"]["state"],
                                                     rows["b.jpg"]["reason"])
        assert rows["b.jpg"]["reason"] == f"duplicate_of:{rows['a.jpg']['sha256']}"
        assert rows["a.jpg"]["reason"] == "source_flag: rss:rating:adult"
