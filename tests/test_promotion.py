"""Promotion: ACTIVE, a swap under a running daemon, backfill, shadow runs, TFLite export."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from classifier.errors import ModelError
from classifier.models import write_model_version
from crawler.cli import main
from crawler.daemon import Daemon
from crawler.promotion import (
    ActiveModel,
    follow_promotions,
    load_active_model,
    promote,
    read_active,
    serving_version,
    write_active,
)
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from storage.records import MediaRef
from tests.conftest import MediaServer, photo
from tests.helpers import feed_source
from tests.training_fixtures import generated_pictures, photo_variants, store_image

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _always_head(models_dir: Path, version: str, tag: str = "photo") -> None:
    """A version whose `tag` head says yes to everything (weights 0, bias +8)."""
    write_model_version(models_dir, version, {tag: (np.zeros(1024, np.float32), 8.0)},
                        {"metrics": {tag: {"average_precision": 1.0}}}, created_at=NOW)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    """Poll durable state (the catalogue, files) until `check` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _blobs(daemon: Daemon) -> list[Any]:
    assert daemon.catalogue is not None
    return list(await daemon.catalogue.fetch_all(
        "SELECT sha256, placement, model_version, tags FROM blobs"))


async def _all_final(daemon: Daemon, count: int) -> bool:
    assert daemon.catalogue is not None
    states = await daemon.catalogue.counts_by_state()
    return sum(states.get(s, 0) for s in ("library", "quarantine", "held")) >= count


class RunningDaemon:
    """A daemon running in the background on a local feed, with a promotion follower."""

    def __init__(self, config: Any, classifier: Any) -> None:
        self.daemon = Daemon(config, classifier=classifier)
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Daemon:
        self.tasks.append(asyncio.create_task(self.daemon.run()))
        await asyncio.wait_for(self.daemon.ready.wait(), 60)
        self.tasks.append(asyncio.create_task(
            follow_promotions(self.daemon, poll_interval_s=0.05)))
        return self.daemon

    async def __aexit__(self, *exc: object) -> None:
        self.tasks[1].cancel()
        self.daemon.stop_requested.set()
        assert await asyncio.wait_for(self.tasks[0], 60) == 0
        # Cancelled, or already returned: a daemon that follows ACTIVE itself leaves the
        # second follower nothing to do.
        with contextlib.suppress(asyncio.CancelledError):
            await self.tasks[1]


def _serve(server: MediaServer, names: tuple[str, ...]) -> None:
    items = []
    for name in names:
        server.add_bytes(f"/img/{name}.jpg", photo(name))
        items.append({"image": f"/img/{name}.jpg", "title": name})
    server.add_feed("/feed.xml", items)


async def _add_new_media(daemon: Daemon, server: MediaServer, names: tuple[str, ...]) -> None:
    """New URLs reach the running pipeline (as a poll would add them)."""
    assert daemon.catalogue is not None and daemon.pipeline is not None
    refs = []
    for name in names:
        server.add_bytes(f"/new/{name}.jpg", photo(name, size=(300, 200)))
        refs.append(MediaRef(url=f"{server.base_url}/new/{name}.jpg", source="feed"))
    await daemon.catalogue.add_media(refs, daemon.clock())
    daemon.pipeline.notify()


class TestPromoteUnderRunningDaemon:
    async def test_swap_then_backfill_and_refile(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """After promote, the next batch uses the new version and the library is re-filed."""
        _serve(media_server, ("chelsea", "rocket", "coffee"))
        config = write_config("[quarantine]\nreview_band = []\n",
                              allowed=(media_server.host_port,),
                              sources=feed_source(media_server, interval="1h"))
        layout = DataLayout(config.data_dir)
        async with RunningDaemon(config, shared_classifier) as daemon:
            await _eventually(lambda: _all_final(daemon, 3))
            before = {row["sha256"]: row for row in await _blobs(daemon)}
            assert {row["model_version"] for row in before.values()} == {"builtin"}
            assert not (layout.library / "photo").exists()
            _always_head(layout.models, "v2")

            promote(layout.models, "v2", configured=None, now=NOW)

            async def backfilled() -> bool:
                rows = await _blobs(daemon)
                return all(row["model_version"] == "v2" for row in rows)

            await _eventually(backfilled)
            assert daemon.classifier is not None and daemon.classifier.version == "v2"
            library = [sha for sha, row in before.items() if row["placement"] == "library"]
            assert library
            await _eventually(lambda: _exists_all(layout.library / "photo", library))
            assert daemon.catalogue is not None
            for sha in before:
                new_scores = await daemon.catalogue.scores_for(sha, "v2")
                old_scores = await daemon.catalogue.scores_for(sha, "builtin")
                assert new_scores["nsfw"] == old_scores["nsfw"]  # carried from the backbone
                assert new_scores["photo"] > 0.99

            await _add_new_media(daemon, media_server, ("astronaut",))
            await _eventually(lambda: _all_final(daemon, 4))
            [new] = [row for row in await _blobs(daemon) if row["sha256"] not in before]
            assert new["model_version"] == "v2"
            if new["placement"] == "library":
                assert json.loads(new["tags"]) == ["photo"]

    async def test_shadow_reports_then_switches(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """--shadow N runs the candidate on the next N images, writes shadow.json, switches."""
        _serve(media_server, ("chelsea",))
        config = write_config("[quarantine]\nreview_band = []\n",
                              allowed=(media_server.host_port,),
                              sources=feed_source(media_server, interval="1h"))
        layout = DataLayout(config.data_dir)
        async with RunningDaemon(config, shared_classifier) as daemon:
            await _eventually(lambda: _all_final(daemon, 1))
            _always_head(layout.models, "v3")

            active = promote(layout.models, "v3", configured=None, now=NOW,
                             shadow_images=2)
            assert active.previous == "builtin"
            assert serving_version(layout.models, None) == ("builtin", "active")
            assert daemon.pipeline is not None

            async def shadow_listening() -> bool:
                return bool(daemon.pipeline.batch_listeners)

            await _eventually(shadow_listening)
            await asyncio.sleep(0.3)  # several polls: nothing switches before N images
            assert daemon.classifier is not None and daemon.classifier.version == "builtin"

            await _add_new_media(daemon, media_server, ("rocket", "coffee"))
            report_path = layout.models / "v3" / "shadow.json"

            async def switched() -> bool:
                active = read_active(layout.models)
                return report_path.exists() and daemon.classifier is not None \
                    and daemon.classifier.version == "v3" \
                    and active is not None and active.shadow_images is None

            await _eventually(switched)
            report = json.loads(report_path.read_text())
            assert report["candidate"] == "v3" and report["active"] == "builtin"
            assert report["images"] == 2
            assert report["per_tag"]["photo"]["newly_over_threshold"] == 2
            assert report["per_tag"]["nsfw"]["max_abs_difference"] == 0.0
            library_rows = [e for e in report["examples"] if e["active"]["placement"] == "library"]
            assert report["disagreements"] == len(library_rows)
            final = read_active(layout.models)
            assert final is not None and final.shadow_images is None
            assert final.shadow_report == str(report_path)


async def _exists_all(folder: Path, sha256s: list[str]) -> bool:
    return all((folder / f"{sha}.jpg").exists() for sha in sha256s)


class TestActiveFile:
    def test_promote_refuses_unknown_versions(self, tmp_path: Path) -> None:
        """Promoting a version that does not exist fails and writes nothing."""
        with pytest.raises(ModelError, match="not found"):
            promote(tmp_path, "nope", configured=None, now=NOW)
        assert read_active(tmp_path) is None

    def test_round_trip_and_serving(self, tmp_path: Path) -> None:
        """Unset config: ACTIVE, else builtin; a set `model` pins; a pending shadow keeps
        serving the previous one."""
        _always_head(tmp_path, "v1")
        assert serving_version(tmp_path, None) == ("builtin", "builtin")
        promote(tmp_path, "v1", configured=None, now=NOW)
        assert serving_version(tmp_path, None) == ("v1", "active")
        assert serving_version(tmp_path, "builtin") == ("builtin", "config")
        write_active(tmp_path, ActiveModel("v1", "t", shadow_images=5, previous="builtin"))
        assert serving_version(tmp_path, None) == ("builtin", "active")
        assert read_active(tmp_path) == ActiveModel("v1", "t", 5, "builtin")

    def test_promote_refuses_when_the_config_pins_another_version(self, tmp_path: Path) -> None:
        """With `[classifier] model` set, promoting another version fails naming the key."""
        _always_head(tmp_path, "v1")
        with pytest.raises(ModelError, match=r"\[classifier\] model = 'builtin'.*remove the key"):
            promote(tmp_path, "v1", configured="builtin", now=NOW)
        assert read_active(tmp_path) is None
        promote(tmp_path, "v1", configured="v1", now=NOW)
        assert read_active(tmp_path) is not None

    @pytest.mark.parametrize("text", ["{", "[]", '{"version": 3}',
                                      '{"version": "v", "shadow": {"images": 0}}'])
    def test_unreadable_active_falls_back_to_builtin(self, tmp_path: Path, text: str) -> None:
        """A damaged ACTIVE raises on reading; serving falls back to builtin, naming it."""
        from crawler.serving import resolve_serving

        (tmp_path / "ACTIVE").write_text(text)
        with pytest.raises(ModelError):
            read_active(tmp_path)
        serving = resolve_serving(None, tmp_path)
        assert (serving.version, serving.origin) == ("builtin", "builtin")
        assert serving.problem is not None and str(tmp_path / "ACTIVE") in serving.problem

    def test_daemon_start_loads_active(self, write_config: Any) -> None:
        """At start the daemon's model is ACTIVE's version when the file exists."""
        config = write_config()
        layout = DataLayout(config.data_dir)
        _always_head(layout.models, "v1")
        write_active(layout.models, ActiveModel("v9", "t"))
        classifier, problem = load_active_model(config, layout)
        assert classifier is None and problem is not None and "'v9' not found" in problem


class TestModelsCommands:
    @pytest.fixture(autouse=True)
    def reset_logging(self) -> Iterator[None]:
        """The commands configure structlog onto the captured output; undo it afterwards."""
        yield
        structlog.reset_defaults()

    async def test_list_json_and_export_tflite(
        self, tmp_path: Path, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """`models list --json` marks the active version; export-tflite matches TensorFlow."""
        config = write_config()
        layout = DataLayout(config.data_dir)
        layout.ensure()
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            images = photo_variants(2) + generated_pictures(2)
            for index, image in enumerate(images):
                await store_image(catalogue, layout, image, f"https://example.org/{index}")
        finally:
            await catalogue.close()
        generator = np.random.default_rng(3)
        write_model_version(layout.models, "v1", {
            "photo": (generator.normal(0, 0.05, 1024).astype(np.float32), -0.5),
            "cat": (generator.normal(0, 0.05, 1024).astype(np.float32), 0.2),
        }, {"metrics": {"photo": {"average_precision": 0.97}}}, created_at=NOW)
        promote(layout.models, "v1", configured=None, now=NOW)
        capfd.readouterr()  # the promotion's log line

        assert await asyncio.to_thread(main, ["models", "list", "--json",
                                              "--config", str(config.path)]) == 0
        listing = json.loads(capfd.readouterr().out)
        by_version = {entry["version"]: entry for entry in listing}
        assert by_version["v1"]["active"] is True and by_version["builtin"]["active"] is False
        assert by_version["v1"]["metrics"]["photo"]["average_precision"] == 0.97
        assert by_version["v1"]["tags"] == ["nsfw", "photo", "cat"]

        code = await asyncio.to_thread(main, ["models", "export-tflite", "v1", "--json",
                                              "--config", str(config.path)])
        report = json.loads(capfd.readouterr().out)
        print(f"\nTFLite max |diff| = {report['max_abs_difference']:.2e}")
        assert code == 0
        assert report["image_source"] == "store" and report["parity_images"] == 4
        assert report["max_abs_difference"] < 1e-3
        assert report["tags"] == ["nsfw", "photo", "cat"]
        exported = (layout.models / "v1" / "model.tflite").stat()
        assert exported.st_size == report["bytes"]
        assert exported.st_mode & 0o777 == 0o600  # private, like the rest of data_dir
