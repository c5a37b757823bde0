"""The fault suite: a full disk, a locked catalogue, a failing model, a garbage source, clock jumps.

Real filesystems (a tmpfs mounted as root stands in for a full disk), real SQLite locks
held by a second connection, real feed servers on 127.0.0.1 and the real model. Where a
fault needs time to pass (retry backoffs, poll schedules) the daemon gets a clock the test
moves; the pipeline's own waits are bounded and do not depend on it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from classifier.base import ClassifyResult
from crawler.daemon import Daemon
from tests.conftest import MediaServer, photo
from tests.daemon_process import REPOSITORY, DaemonProcess, connect, files_under, sha256_of

FINAL = ("library", "quarantine", "held", "rejected")
SAFE_PHOTOS = ("chelsea", "coffee", "rocket", "camera")


class JumpingClock:
    """Wall-clock time plus an offset the test changes (a clock that jumps)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def jump(self, seconds: float) -> None:
        self.offset_s += seconds


def _rss(server: MediaServer, name: str = "feed", path: str = "/feed.xml",
         interval: str = "1m") -> str:
    return f"""
        [[sources]]
        kind = "rss"
        name = "{name}"
        url = "{server.base_url}{path}"
        interval = "{interval}"
        """


def _serve(server: MediaServer, names: tuple[str, ...] = SAFE_PHOTOS) -> list[dict[str, Any]]:
    items = []
    for name in names:
        server.add_bytes(f"/img/{name}.jpg", photo(name))
        items.append({"image": f"/img/{name}.jpg", "title": name})
    return items


def _rows(data_dir: Path) -> dict[str, dict[str, Any]]:
    with connect(data_dir / "catalogue.sqlite") as connection:
        return {row["url"].rsplit("/", 1)[1]: dict(row)
                for row in connection.execute("SELECT * FROM media")}


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll a condition that lives outside the test's reach (server hits, rows, files)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of a given size on a folder (skips when the sandbox refuses mounts)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to make a full disk: {result.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file until the filesystem of `folder` refuses, then leave some room."""
    ballast = folder / "ballast"
    with ballast.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    if leave_bytes:
        size = ballast.stat().st_size
        with ballast.open("r+b") as handle:
            handle.truncate(max(size - leave_bytes, 0))
    return ballast


class TestDiskFull:
    async def test_full_library_disk_defers_until_space_is_freed(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        mount_tmpfs: Callable[[Path, str], Path],
    ) -> None:
        """ENOSPC while filing leaves no partial file and no lost row; freed space files them
        all."""
        media_server.add_feed("/feed.xml", _serve(media_server))
        config = write_config("[quarantine]\nreview_band = []\n",
                              allowed=(media_server.host_port,), sources=_rss(media_server))
        library = mount_tmpfs(config.data_dir / "library", "256k")
        ballast = _fill(library)
        clock = JumpingClock()

        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert len(rows) == len(SAFE_PHOTOS)
        unfinished = {name: row for name, row in rows.items() if row["state"] not in FINAL}
        assert unfinished, rows
        assert all(row["reason"].startswith("place_failed") for row in unfinished.values()), rows
        assert [path.name for path in files_under(library)] == ["ballast"]
        for row in rows.values():
            if row["state"] not in FINAL:
                stored = next((config.data_dir / "store").rglob(f"{row['sha256']}*"))
                assert sha256_of(stored) == row["sha256"]

        ballast.unlink()
        clock.jump(3600)
        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows
        for row in rows.values():
            if row["state"] == "library":
                [path] = [path for path in files_under(library)
                          if path.name.startswith(row["sha256"])]
                assert sha256_of(path) == row["sha256"]
        assert not [path for path in files_under(config.data_dir) if ".tmp-" in path.name]

    async def test_full_spool_disk_loses_nothing(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        mount_tmpfs: Callable[[Path, str], Path],
    ) -> None:
        """ENOSPC while downloading rejects nothing: rows wait and finish once space is back."""
        media_server.add_feed("/feed.xml", _serve(media_server))
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        spool = mount_tmpfs(config.data_dir / "spool", "256k")
        # In a subfolder: start-up sweeps unreferenced files out of spool/ itself.
        (spool / "ballast").mkdir()
        ballast = _fill(spool / "ballast")
        clock = JumpingClock()

        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rejected = {name: row["reason"] for name, row in _rows(config.data_dir).items()
                    if row["state"] == "rejected"}
        assert list(files_under(config.data_dir / "library")) == []
        ballast.unlink()
        # Back on the data_dir's own filesystem (spool -> store is a rename).
        subprocess.run(["umount", "-l", str(spool)], check=True)
        clock.jump(3600)
        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert set(rows) == {f"{name}.jpg" for name in SAFE_PHOTOS}
        assert rejected == {}
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows


class CatalogueLock:
    """A second process's view: one sqlite3 connection holding `BEGIN EXCLUSIVE` in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        connection = connect(self.path)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            self.held.set()
            self.release.wait(120)
            connection.rollback()
        finally:
            connection.close()

    def __enter__(self) -> CatalogueLock:
        self.thread.start()
        assert self.held.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.thread.join(30)


class TestLockedCatalogue:
    async def test_daemon_waits_for_a_short_lock(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """A lock held for a moment by another process only delays the daemon."""
        media_server.add_feed("/feed.xml", _serve(media_server, ("chelsea", "coffee")))
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)  # creates the catalogue
        media_server.add_feed("/feed.xml", _serve(media_server, ("chelsea", "coffee", "rocket")))

        with CatalogueLock(config.data_dir / "catalogue.sqlite") as lock:
            task = asyncio.create_task(Daemon(config, classifier=shared_classifier).run(once=True))
            await asyncio.sleep(2.0)  # the lock's duration: the daemon must be blocked meanwhile
            assert not task.done()
            lock.release.set()
            assert await asyncio.wait_for(task, 120) == 0

        rows = _rows(config.data_dir)
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows
        assert len(rows) == 3

    async def test_daemon_fails_cleanly_when_the_lock_stays(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        tmp_path: Path,
    ) -> None:
        """A lock that outlasts the busy timeout: exit 2 with one message naming the catalogue."""
        media_server.add_feed("/feed.xml", _serve(media_server, ("chelsea",)))
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        from tests.test_crash import _seed_model_cache

        _seed_model_cache(shared_classifier, config.data_dir)
        daemon = DaemonProcess(config.path, tmp_path)
        with CatalogueLock(config.data_dir / "catalogue.sqlite"):
            await daemon.start("once")
            try:
                code = await daemon.wait(90)
            finally:
                await daemon.kill()
                daemon.close()
        output = daemon.log_path.read_text()
        catalogue = str(config.data_dir / "catalogue.sqlite")
        assert code == 2, output[-3000:]
        assert catalogue in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]


class FailingOnceClassifier:
    """The real classifier, except that its second batch raises (a device lost mid-run)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.version = inner.version
        self.tags = inner.tags
        self.batch_size = 2
        self.calls = 0

    def classify(self, batch: np.ndarray) -> ClassifyResult:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("device lost")
        return self.inner.classify(batch)


class TestModelFailure:
    async def test_one_failed_batch_is_held_and_filed_after_restart(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """A batch failing between good ones is held (unseen); the next start files it."""
        media_server.add_feed("/feed.xml", _serve(media_server))
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        classifier = FailingOnceClassifier(shared_classifier)

        assert await Daemon(config, classifier=classifier).run(once=True) == 0

        rows = _rows(config.data_dir)
        held = {name for name, row in rows.items() if row["state"] == "held"}
        # Batches form as images arrive: the failed one holds one or two of them.
        assert 1 <= len(held) <= 2, rows
        assert {rows[name]["state"] for name in set(rows) - held} <= {"library", "quarantine"}
        library_names = {path.name for path in files_under(config.data_dir / "library")}
        assert not {rows[name]["sha256"] for name in held} & {
            name.split(".")[0] for name in library_names}

        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows
        assert list((config.data_dir / "held").iterdir()) == []


async def _status_json(config_path: Path) -> dict[str, Any]:
    """`megane status --json` in a subprocess, beside the running daemon."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler.cli", "status", "--config", str(config_path), "--json",
        cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    document: dict[str, Any] = json.loads(stdout)
    return document


GARBAGE = (
    b"<!doctype html><html><body>502 Bad Gateway</body></html>",
    bytes(range(256)) * 8,
    b"",
    b'{"error": "not a feed"}',
)


class TestGarbageSource:
    async def test_garbage_source_backs_off_while_others_go_on(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """A source answering garbage poll after poll backs off, shows its error, and stops no
        one."""
        polls: list[float] = []

        async def garbage(_request: web.Request) -> web.StreamResponse:
            polls.append(time.monotonic())
            if len(polls) % 5 == 0:
                return web.Response(status=500, text="oops")
            return web.Response(body=GARBAGE[len(polls) % len(GARBAGE)],
                                content_type="application/rss+xml")

        media_server.routes["/garbage.xml"] = garbage
        media_server.add_feed("/good.xml", _serve(media_server, ("chelsea",)))
        config = write_config(
            allowed=(media_server.host_port,),
            sources=_rss(media_server, "garbage", "/garbage.xml", "0.2s")
            + _rss(media_server, "good", "/good.xml", "0.5s"))
        daemon = Daemon(config, classifier=shared_classifier)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 60)
            await _wait_for(lambda: len(polls) >= 6, 60)
            media_server.add_feed("/good.xml", _serve(media_server, ("chelsea", "coffee")))
            await _wait_for(lambda: _rows(config.data_dir).get("coffee.jpg", {}).get("state")
                            in FINAL, 60)
            status = await _status_json(config.path)
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(task, 60) == 0

        sources = {source["name"]: source for source in status["sources"]}
        assert sources["garbage"]["last_error"], sources["garbage"]
        assert sources["garbage"]["consecutive_errors"] >= 5, sources["garbage"]
        assert sources["good"]["last_error"] is None and sources["good"]["consecutive_errors"] == 0
        gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
        assert gaps[-1] > 4 * gaps[0], gaps  # exponential backoff, not a fixed beat
        rows = _rows(config.data_dir)
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows


class TestClockJumps:
    def _flaky(self, server: MediaServer, failures: int) -> None:
        """/img/flaky.jpg answers 503 `failures` times, then the photo."""
        body = photo("rocket")

        async def handler(_request: web.Request) -> web.StreamResponse:
            served = server.hits.get("/img/flaky.jpg", 0)
            if served <= failures:
                return web.Response(status=503, text="busy")
            return web.Response(body=body, content_type="image/jpeg")

        server.routes["/img/flaky.jpg"] = handler
        server.add_feed("/feed.xml", [{"image": "/img/flaky.jpg"}])

    async def _until_retry_scheduled(self, config: Any, classifier: Any,
                                     clock: JumpingClock) -> None:
        """`megane run` until the first attempt failed and a retry is scheduled, then stop.

        (`once` waits for its own retries, so the scheduled retry is left by `run`.)
        """
        daemon = Daemon(config, classifier=classifier, clock=clock)
        task = asyncio.create_task(daemon.run())
        try:
            await daemon.ready.wait()
            await _wait_for(lambda: _rows(config.data_dir).get("flaky.jpg", {})
                            .get("attempts") == 1)
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(task, 60) == 0

    async def test_forward_jump_makes_a_retry_due(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """A retry scheduled for later is done once the clock has jumped past it."""
        self._flaky(media_server, failures=2)
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        clock = JumpingClock()

        await self._until_retry_scheduled(config, shared_classifier, clock)
        row = _rows(config.data_dir)["flaky.jpg"]
        assert row["state"] == "pending" and row["attempts"] == 1, row
        assert 0 < row["next_attempt_at"] - clock() <= 3600

        clock.jump(3600)
        await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True)
        assert _rows(config.data_dir)["flaky.jpg"]["state"] in ("library", "quarantine")

    async def test_backward_jump_keeps_a_retry_within_the_longest_backoff(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """After the clock jumps back a day, a retry still happens within the longest backoff."""
        self._flaky(media_server, failures=2)
        config = write_config(allowed=(media_server.host_port,), sources=_rss(media_server))
        clock = JumpingClock(offset_s=86400)  # the machine's clock was a day ahead

        await self._until_retry_scheduled(config, shared_classifier, clock)
        assert _rows(config.data_dir)["flaky.jpg"]["state"] == "pending"

        clock.jump(-86400 + 2 * 3600)  # corrected, and then two hours pass
        await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True)
        assert _rows(config.data_dir)["flaky.jpg"]["state"] in ("library", "quarantine")

    async def test_backward_jump_does_not_park_a_source(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
    ) -> None:
        """After the clock jumps back a day, a source is polled again within its longest
        interval."""
        media_server.add_feed("/feed.xml", _serve(media_server, ("chelsea",)))
        config = write_config(allowed=(media_server.host_port,),
                              sources=_rss(media_server, interval="0.5s"))
        ahead = Daemon(config, classifier=shared_classifier, clock=JumpingClock(86400))
        task = asyncio.create_task(ahead.run())
        await _wait_for(lambda: media_server.hits.get("/feed.xml", 0) >= 1)
        await _wait_for(lambda: _rows(config.data_dir).get("chelsea.jpg", {}).get("state")
                        in FINAL)
        ahead.stop_requested.set()
        await asyncio.wait_for(task, 60)
        polls_before = media_server.hits["/feed.xml"]

        corrected = Daemon(config, classifier=shared_classifier, clock=JumpingClock())
        task = asyncio.create_task(corrected.run())
        try:
            # max_interval defaults to 8 x interval = 4 s; allow a generous margin.
            await _wait_for(lambda: media_server.hits["/feed.xml"] > polls_before, 20)
        finally:
            corrected.stop_requested.set()
            await asyncio.wait_for(task, 60)
