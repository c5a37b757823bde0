"""Copies waiting for an original in flight are always released, and never take its decision.

A failure while settling one waiting copy must not strand the copies after it (the feeder
skips rows in flight, so `megane once` would never go idle), nor undo the original's
committed filing. A row recorded as a copy, re-queued from held at start, stays a copy.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy.typing as npt
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger

from classifier.base import ClassifyResult
from crawler.daemon import Daemon
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from storage.records import MediaRef, Placement, State
from tests.conftest import MediaServer, photo
from tests.helpers import catalogue_media, feed_source, rss_source
from tests.test_same_bytes import DecodedGate, _held_bytes, same_bytes_at_two_urls

COPIES = ("b.jpg", "c.jpg", "d.jpg")
SIZES = ((440, 290), (430, 280), (420, 270))


class WaitingWatch:
    """A structlog processor noting, in order, the URLs that wait for an original."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.urls: list[str] = []
        self.all_waiting = threading.Event()

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        if event.get("event") == "media_waiting":
            self.urls.append(str(event["url"]))
            if len(self.urls) >= self.expected:
                self.all_waiting.set()
        return event


class RefuseFirstWaiter:
    """The real classifier; before scoring, it waits for every copy to be waiting and makes
    the catalogue refuse to record the first waiting copy as a near-duplicate (a trigger)."""

    def __init__(self, inner: Any, watch: WaitingWatch, catalogue_path: Path) -> None:
        self.inner = inner
        self.version = inner.version
        self.tags = inner.tags
        self.batch_size = inner.batch_size
        self.watch = watch
        self.catalogue_path = catalogue_path
        self.refused_url: str | None = None

    def classify(self, batch: npt.NDArray[Any]) -> ClassifyResult:
        if self.refused_url is None:
            assert self.watch.all_waiting.wait(60), f"copies waiting: {self.watch.urls}"
            self.refused_url = self.watch.urls[0]
            with sqlite3.connect(self.catalogue_path, timeout=30) as connection:
                connection.execute(
                    f"""CREATE TRIGGER refuse_waiter BEFORE UPDATE OF reason ON media
                        WHEN NEW.url = '{self.refused_url}'
                        AND NEW.reason LIKE 'near_duplicate_of:%'
                        BEGIN SELECT RAISE(ABORT, 'near copy refused'); END""")
            connection.close()
        result: ClassifyResult = self.inner.classify(batch)
        return result


class TestWaitingCopiesReleased:
    async def test_failure_settling_one_waiter_releases_the_others(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Settling waiter 1 of 3 fails: waiters 2 and 3 are recorded, the run ends, X stays
        `library` with its reason, and waiter 1 ends on its own with its reason."""
        media_server.add_bytes("/img/a.jpg", photo("chelsea"))
        gate = DecodedGate()
        gate.url_suffix = ("/img/a.jpg",)
        for name, size in zip(COPIES, SIZES, strict=True):
            _held_bytes(media_server, f"/img/{name}", photo("chelsea", size=size), gate)
        media_server.add_feed("/feed.xml", [{"image": f"/img/{name}"}
                                            for name in ("a.jpg", *COPIES)])
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        watch = WaitingWatch(len(COPIES))
        classifier = RefuseFirstWaiter(shared_classifier, watch,
                                       DataLayout(config.data_dir).catalogue)

        with capture_logs(processors=[gate, watch]) as logs:
            code = await asyncio.wait_for(
                Daemon(config, classifier=classifier).run(once=True), 180)

        assert code == 0
        rows = {item["url"].rsplit("/", 1)[-1]: item
                for item in await catalogue_media(config.data_dir)}
        [filed] = [e for e in logs if e["event"] == "media_filed"]
        assert filed["url"].endswith("/img/a.jpg"), filed
        original = rows["a.jpg"]
        assert original["state"] == Placement.LIBRARY.value == filed["placement"]
        assert original["reason"] == filed["reason"]
        assert classifier.refused_url is not None
        refused = classifier.refused_url.rsplit("/", 1)[-1]
        unsettled = [e for e in logs if e["event"] == "media_waiting_unsettled"]
        assert [e["url"] for e in unsettled] == [classifier.refused_url]
        assert rows[refused]["state"] == "rejected", rows[refused]
        assert "near copy refused" in rows[refused]["reason"], rows[refused]
        for name in COPIES:
            if name == refused:
                continue
            assert rows[name]["state"] == original["state"], rows[name]
            assert rows[name]["reason"] == f"near_duplicate_of:{original['sha256']}"
        assert not [e for e in logs if e["event"] == "media_failed"
                    and str(e.get("url", "")).endswith("/img/a.jpg")]


class TestHeldCopyRequeued:
    async def test_held_copy_requeued_at_start_stays_a_copy(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Same bytes held without a model, re-queued at start: the copy keeps
        `duplicate_of:` and the original keeps the decision, whichever is decoded first."""
        config, gate = same_bytes_at_two_urls(media_server, write_config)
        with capture_logs(processors=[gate]):
            assert await Daemon(config, classifier=None,
                                classifier_problem="no_model: test").run(once=True) == 0
        held = {item["url"].rsplit("/", 1)[-1]: item
                for item in await catalogue_media(config.data_dir)}
        sha = held["b.jpg"]["sha256"]
        # The lower row id is the copy (b was decoded first), so a restart decodes it first.
        assert held["a.jpg"]["reason"] == f"duplicate_of:{sha}", held
        assert held["b.jpg"]["state"] == "held", held

        with capture_logs() as logs:
            code = await asyncio.wait_for(
                Daemon(config, classifier=shared_classifier).run(once=True), 180)

        assert code == 0
        rows = {item["url"].rsplit("/", 1)[-1]: item
                for item in await catalogue_media(config.data_dir)}
        assert rows["a.jpg"]["reason"] == f"duplicate_of:{sha}", rows
        assert rows["b.jpg"]["reason"] != held["b.jpg"]["reason"], "b was classified"
        assert not rows["b.jpg"]["reason"].startswith(("duplicate_of:", "near_duplicate_of:"))
        assert rows["a.jpg"]["state"] == rows["b.jpg"]["state"] != "held"
        finals = {e["url"].rsplit("/", 1)[-1]: e for e in logs
                  if e["event"] in ("media_filed", "media_duplicate")}
        assert finals["b.jpg"]["event"] == "media_filed", finals
        assert finals["b.jpg"]["reason"] == rows["b.jpg"]["reason"]
        assert finals["a.jpg"]["event"] == "media_duplicate", finals


class TestDecisionHolder:
    async def test_copy_row_processed_never_takes_the_decision(
        self, catalogue: Catalogue
    ) -> None:
        """Filing bytes through a `duplicate_of:` row gives the decision to the first row
        that is not a copy, and the copy keeps its reason."""
        sha = "ab" * 32
        created = await catalogue.add_media(
            [MediaRef(url=f"https://example.test/{name}", source="feed")
             for name in ("a.jpg", "b.jpg")], now=1.0)
        [first, copy] = sorted(row.id for row in created)
        for media_id in (first, copy):
            await catalogue.record_download(media_id, sha, 1, now=1.0)
        # As a restart leaves them: both re-queued from held, the second recorded a copy.
        async with catalogue.transaction() as connection:
            await connection.execute(
                "UPDATE media SET reason = CASE id WHEN ? THEN 'duplicate_of:' || ? "
                "ELSE 'no_model: test' END", (copy, sha))

        holder = await catalogue.record_placement(
            sha, Placement.LIBRARY, "safe", (), now=2.0, media_id=copy)

        assert holder == first
        rows = {media_id: await catalogue.get_media(media_id) for media_id in (first, copy)}
        assert rows[first].reason == "safe"
        assert rows[copy].reason == f"duplicate_of:{sha}"
        assert rows[first].state == rows[copy].state == State.LIBRARY
