"""End to end: a local RSS feed, real downloads, the real model, real SQLite and files."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from classifier.base import ClassifyResult
from crawler.daemon import Daemon
from tests.conftest import PHOTOS, MediaServer, photo, rss_feed
from tests.helpers import catalogue_media, feed_source


def _library_files(data_dir: Path) -> list[Path]:
    return [path for path in (data_dir / "library").rglob("*") if path.is_file()]


def _serve_photos(server: MediaServer, names: tuple[str, ...] = PHOTOS) -> list[dict[str, Any]]:
    items = []
    for name in names:
        server.add_bytes(f"/img/{name}.jpg", photo(name))
        items.append({"image": f"/img/{name}.jpg", "title": name})
    return items


class TestOnce:
    async def test_every_url_reaches_a_final_state(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """`once` files good photos and rejects hostile items, each with a reason."""
        items = _serve_photos(media_server)
        media_server.add_bytes("/img/page.jpg", b"<!doctype html><html><body>hi</body></html>")
        media_server.add_bytes("/img/truncated.jpg", photo("coffee")[:5000])
        items += [{"image": "/img/page.jpg"}, {"image": "/img/truncated.jpg"},
                  {"image": "/img/missing.jpg"}]
        media_server.add_feed("/feed.xml", items)
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        media = {item["url"].rsplit("/", 1)[-1]: item
                 for item in await catalogue_media(config.data_dir)}
        assert len(media) == len(PHOTOS) + 3
        for name in PHOTOS:
            assert media[f"{name}.jpg"]["state"] in ("library", "quarantine"), media[f"{name}.jpg"]
            assert media[f"{name}.jpg"]["reason"]
        assert media["page.jpg"] == media["page.jpg"] | {"state": "rejected"}
        assert media["page.jpg"]["reason"] == "not_an_image"
        assert media["truncated.jpg"]["state"] == "rejected"
        assert "truncated" in media["truncated.jpg"]["reason"]
        assert media["missing.jpg"]["state"] == "rejected"
        assert media["missing.jpg"]["reason"] == "http_404"
        library = _library_files(config.data_dir)
        assert library, "some photo should be in the library"
        for path in library:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644

    async def test_trusted_source_flag_quarantines(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A Media RSS adult rating quarantines the image whatever the model says."""
        media_server.add_bytes("/img/coffee.jpg", photo("coffee"))
        media_server.add_feed("/feed.xml", [{"image": "/img/coffee.jpg", "rating": "adult"}])
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=shared_classifier).run(once=True)

        [item] = await catalogue_media(config.data_dir)
        assert item["state"] == "quarantine"
        assert item["reason"].startswith("source_flag: rss:rating:adult")
        assert _library_files(config.data_dir) == []
        quarantine = config.data_dir / "quarantine"
        assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
        sidecar = json.loads((quarantine / f"{item['sha256']}.json").read_text())
        assert sidecar["reason"] == item["reason"] and "nsfw" in sidecar["scores"]
        image = quarantine / f"{item['sha256']}.jpg"
        assert stat.S_IMODE(image.stat().st_mode) == 0o600

    async def test_same_bytes_stored_once(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Two URLs with identical bytes make one stored file and two final rows."""
        media_server.add_bytes("/img/a.jpg", photo("chelsea"))
        media_server.add_bytes("/img/b.jpg", photo("chelsea"))
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}, {"image": "/img/b.jpg"}])
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = await catalogue_media(config.data_dir)
        assert {item["sha256"] for item in media} == {media[0]["sha256"]}
        assert all(item["state"] in ("library", "quarantine") for item in media)
        stored = list((config.data_dir / "store").rglob("*.jpg"))
        assert len(stored) == 1

    async def test_second_run_fetches_nothing_again(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """The same URL is fetched once: a second poll of the same feed downloads nothing."""
        items = _serve_photos(media_server, ("rocket",))
        media_server.add_feed("/feed.xml", items)
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=shared_classifier).run(once=True)
        await Daemon(config, classifier=shared_classifier).run(once=True)

        assert media_server.hits["/img/rocket.jpg"] == 1
        assert len(await catalogue_media(config.data_dir)) == 1

    async def test_private_address_is_refused(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A feed pointing at a loopback address that is not allowed costs one item."""
        media_server.add_bytes("/img/rocket.jpg", photo("rocket"))
        # The same server, addressed as 127.0.0.2: not in allowed_private_hosts.
        other = f"http://127.0.0.2:{media_server.server.port}"
        media_server.add_bytes("/feed.xml", rss_feed(other, [{"image": "/img/rocket.jpg"}]),
                               "application/rss+xml")
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=shared_classifier).run(once=True)

        [item] = await catalogue_media(config.data_dir)
        assert item["state"] == "rejected"
        assert item["reason"].startswith("blocked_address")
        assert "/img/rocket.jpg" not in media_server.hits


class FailingClassifier:
    """Wraps the real classifier; raises on the batches it is told to fail."""

    def __init__(self, inner: Any, fail: bool = True) -> None:
        self.inner = inner
        self.version = inner.version
        self.tags = inner.tags
        self.batch_size = inner.batch_size
        self.fail = fail

    def classify(self, batch: np.ndarray) -> ClassifyResult:
        if self.fail:
            raise RuntimeError("device lost")
        return self.inner.classify(batch)


class GatedClassifier(FailingClassifier):
    """Wraps the real classifier; blocks inside inference until released."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, fail=False)
        self.entered = threading.Event()
        self.release = threading.Event()

    def classify(self, batch: np.ndarray) -> ClassifyResult:
        self.entered.set()
        self.release.wait(30)
        return self.inner.classify(batch)


class TestFailClosed:
    async def test_without_a_model_everything_is_held(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """No model: images go to held/ (0600), never the library; a model later files them."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server, ("chelsea", "coffee")))
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=None, classifier_problem="no_model: test").run(once=True)

        media = await catalogue_media(config.data_dir)
        assert {item["state"] for item in media} == {"held"}
        assert all(item["reason"] == "no_model: test" for item in media)
        assert _library_files(config.data_dir) == []
        held = list((config.data_dir / "held").iterdir())
        assert len(held) == 2
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in held)

        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = await catalogue_media(config.data_dir)
        assert {item["state"] for item in media} <= {"library", "quarantine"}
        assert list((config.data_dir / "held").iterdir()) == []

    async def test_inference_error_holds_the_batch(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A model that fails mid-batch sends that batch to held/ and the daemon finishes."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server, ("rocket", "camera")))
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        code = await Daemon(config, classifier=FailingClassifier(shared_classifier)).run(once=True)

        assert code == 0
        media = await catalogue_media(config.data_dir)
        assert {item["state"] for item in media} == {"held"}
        assert all(item["reason"].startswith("inference_failed: RuntimeError") for item in media)


class TestResume:
    async def test_restart_mid_batch_resumes_from_the_rows(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Stopping the daemon during inference loses nothing: a restart finishes every row."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server))
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))
        gated = GatedClassifier(shared_classifier)
        daemon = Daemon(config, classifier=gated)
        task = asyncio.create_task(daemon.run(once=True))
        await asyncio.to_thread(gated.entered.wait, 60)
        task.cancel()
        gated.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        states = {item["state"] for item in await catalogue_media(config.data_dir)}
        assert states & {"pending", "downloaded", "decoded", "classified"}, states

        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = await catalogue_media(config.data_dir)
        assert len(media) == len(PHOTOS)
        assert {item["state"] for item in media} <= {"library", "quarantine"}
        requests = sum(media_server.hits.get(f"/img/{name}.jpg", 0) for name in PHOTOS)
        assert requests <= 2 * len(PHOTOS)
        assert not list((config.data_dir / "spool").iterdir())


class TestLiveThresholds:
    async def test_reload_refiles_from_stored_scores(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Lowering the nsfw threshold and reloading moves library images to quarantine."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server, ("chelsea", "rocket")))
        config = write_config(
            "[quarantine]\nreview_band = []\n",
            allowed=(media_server.host_port,), sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        assert _library_files(config.data_dir)

        text = config.path.read_text().replace(
            "[quarantine]", "[thresholds]\nnsfw = 0.0\n\n[quarantine]")
        config.path.write_text(text)
        daemon = Daemon(config, classifier=FailingClassifier(shared_classifier))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 30)
        assert await daemon.reload() is True
        daemon.stop_requested.set()
        assert await task == 0

        media = await catalogue_media(config.data_dir)
        assert {item["state"] for item in media} == {"quarantine"}
        assert _library_files(config.data_dir) == []

    async def test_bad_config_on_reload_keeps_the_old_one(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A reload with an invalid config.toml changes nothing and reports failure."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server, ("chelsea",)))
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        before = await catalogue_media(config.data_dir)
        config.path.write_text(config.path.read_text() + "\n[thresholds]\nnsfw = 7\n")

        daemon = Daemon(config, classifier=shared_classifier)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 30)
        assert await daemon.reload() is False
        daemon.stop_requested.set()
        await task

        assert await catalogue_media(config.data_dir) == before
        assert daemon.config is config


class TestHygiene:
    async def test_reencoded_copy_is_recorded_as_a_duplicate(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A re-encoded copy of a stored photo is recorded as its near-duplicate, not stored."""
        import io

        from PIL import Image

        original = photo("astronaut")
        buffer = io.BytesIO()
        Image.open(io.BytesIO(original)).save(buffer, "JPEG", quality=55)
        media_server.add_bytes("/img/a.jpg", original)
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}])
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media_server.add_bytes("/img/b.jpg", buffer.getvalue())
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}, {"image": "/img/b.jpg"}])
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = {item["url"].rsplit("/", 1)[-1]: item
                 for item in await catalogue_media(config.data_dir)}
        assert media["b.jpg"]["reason"] == f"near_duplicate_of:{media['a.jpg']['sha256']}"
        assert media["b.jpg"]["state"] == media["a.jpg"]["state"]
        assert len(list((config.data_dir / "store").rglob("*.jpg"))) == 1

    async def test_quarantine_contact_sheet_is_written(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """After a run that quarantines an image, quarantine/index.html links it."""
        media_server.add_bytes("/img/coffee.jpg", photo("coffee"))
        media_server.add_feed("/feed.xml", [{"image": "/img/coffee.jpg", "rating": "adult"}])
        config = write_config(allowed=(media_server.host_port,), sources=feed_source(media_server))

        await Daemon(config, classifier=shared_classifier).run(once=True)

        [item] = await catalogue_media(config.data_dir)
        index = config.data_dir / "quarantine" / "index.html"
        assert item["sha256"] in index.read_text()
        assert stat.S_IMODE(index.stat().st_mode) == 0o600


class TestInferenceTimeout:
    async def test_a_batch_that_takes_too_long_is_held(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Inference over inference_timeout_s holds the batch (fail closed) and the run ends."""
        media_server.add_feed("/feed.xml", _serve_photos(media_server, ("rocket",)))
        config = write_config("inference_timeout_s = 0.5\n", allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        gated = GatedClassifier(shared_classifier)
        daemon = Daemon(config, classifier=gated)
        try:
            assert await daemon.run(once=True) == 0
        finally:
            gated.release.set()
        assert daemon.pipeline is not None and daemon.pipeline.inference_hung
        assert daemon.pipeline.classifier is None  # no more batches fed to a wedged engine

        [item] = await catalogue_media(config.data_dir)
        assert item["state"] == "held"
        assert item["reason"].startswith("inference_failed: TimeoutError")
        assert _library_files(config.data_dir) == []
