"""The wiring of a real `megane run`: SIGHUP, the metrics endpoint and the watchdog.

The unit tests exercise each part (config reload, `Metrics`, `ProgressWatchdog`) alone;
these run `python -m crawler.cli run` as a subprocess, as systemd does: signals come from
`kill`, sd_notify messages arrive on a real AF_UNIX socket named by `$NOTIFY_SOCKET`, and
the metrics are scraped over HTTP. Every wait is on a notify message (READY=1, RELOADING=1,
STATUS=) or a process exit, with a deadline; the daemon's JSON log is read afterwards (one
test waits for a log line, by polling the file, to signal the daemon mid-start-up).

`$WATCHDOG_USEC` is set for every daemon here, as the shipped unit does (WatchdogSec=): the
daemon then reports STATUS= every WATCHDOG_USEC/2, which is the event the tests wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crawler.config import Config, load_config
from tests.conftest import MediaServer
from tests.daemon_process import REPOSITORY, DaemonProcess, connect, small_photo

T = TypeVar("T")

WATCHDOG_USEC = 2_000_000
"""systemd kills the unit when no WATCHDOG=1 arrives within this; the daemon pings twice."""

WATCHDOG_ENV = {"WATCHDOG_USEC": str(WATCHDOG_USEC)}

WAIT_S = 90.0


# -- sd_notify messages, as they arrive ------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One sd_notify datagram: arrival time (monotonic) and its KEY=VALUE fields."""

    at: float
    fields: dict[str, str]

    @property
    def status(self) -> dict[str, int]:
        """The counts of a STATUS= line (``library=3, pending=1``), {} without one."""
        text = self.fields.get("STATUS", "")
        counts: dict[str, int] = {}
        for part in filter(None, (item.strip() for item in text.split(","))):
            key, _, value = part.partition("=")
            counts[key] = int(value)
        return counts


@dataclass
class Notifications:
    """Collects the daemon's notify messages in the background; tests wait on them."""

    daemon: DaemonProcess
    messages: list[Message] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self.daemon.notify_socket()
        while True:
            data = await loop.sock_recv(sock, 65536)
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n") if line)
            self.messages.append(Message(time.monotonic(), fields))
            self._arrived.set()

    async def wait_for(self, predicate: Callable[[list[Message]], T | None], what: str,
                       timeout_s: float = WAIT_S) -> T:
        """Wait until `predicate(messages)` is not None; fail if the daemon exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        process = self.daemon.process
        assert process is not None
        while True:
            found = predicate(self.messages)
            if found is not None:
                return found
            if process.returncode is not None:
                raise AssertionError(f"daemon exited with {process.returncode} while waiting "
                                     f"for {what}:\n{log_tail(self.daemon)}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout_s} s:\n{log_tail(self.daemon)}")
            self._arrived.clear()
            exited = asyncio.ensure_future(process.wait())
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({exited, arrived}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                exited.cancel()
                arrived.cancel()

    async def status_where(self, check: Callable[[dict[str, int]], bool], what: str,
                           after: int = 0) -> Message:
        """The first STATUS= message (from index `after` on) whose counts pass `check`."""
        return await self.wait_for(
            lambda messages: next((message for message in messages[after:]
                                   if "STATUS" in message.fields and check(message.status)),
                                  None), what)

    async def ready_after(self, index: int) -> Message:
        """The first READY=1 at or after message `index`."""
        return await self.wait_for(
            lambda messages: next((message for message in messages[index:]
                                   if message.fields.get("READY") == "1"), None),
            "READY=1")


@contextlib.asynccontextmanager
async def running(daemon: DaemonProcess, env: dict[str, str] | None = None, *,
                  wait_ready: bool = True) -> AsyncIterator[Notifications]:
    """Start `megane run` with `env` added and collect its notify messages until it ends."""
    daemon.env.update(env or {})
    notifications = Notifications(daemon)
    daemon.notify_socket()
    collector = asyncio.ensure_future(notifications.collect())
    try:
        await daemon.start("run")
        if wait_ready:
            await notifications.ready_after(0)
        yield notifications
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await daemon.kill()
        daemon.close()


def log_events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, parsed (other lines, e.g. the start markers, skipped)."""
    events = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def named(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    return [entry for entry in log_events(daemon) if entry.get("event") == event]


async def logged(daemon: DaemonProcess, event: str, timeout_s: float = WAIT_S) -> None:
    """Wait until the log has `event`: a file has no change event, so this one polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not named(daemon, event):
        assert daemon.process is not None and daemon.process.returncode is None, \
            log_tail(daemon)
        assert loop.time() < deadline, f"no {event} within {timeout_s} s:\n{log_tail(daemon)}"
        await asyncio.sleep(0.01)  # the poll interval of the log file


def log_tail(daemon: DaemonProcess) -> str:
    return daemon.log_path.read_text(errors="replace")[-3000:] if daemon.log_path.exists() else ""


def seed_model_cache(shared_classifier: Any, data_dir: Path) -> None:
    """Give the daemon the test process's TFLite conversion (no conversion per start)."""
    from tests.test_crash import _seed_model_cache

    _seed_model_cache(shared_classifier, data_dir)


def finished(total: int) -> Callable[[dict[str, int]], bool]:
    """A STATUS check: `total` media URLs, none of them waiting for work."""
    unfinished = ("pending", "downloaded", "decoded", "classified")
    return lambda counts: (sum(counts.values()) == total
                           and not any(counts.get(state) for state in unfinished))


async def megane_json(config_path: Path, *command: str) -> Any:
    """Run `megane COMMAND --config PATH --json` as a subprocess; its stdout, parsed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler.cli", *command, "--config", str(config_path), "--json",
        cwd=REPOSITORY, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


# -- 1. SIGHUP -----------------------------------------------------------------------------


def folder_source(inbox: Path) -> str:
    return f"""
        [[sources]]
        kind = "folder"
        name = "inbox"
        path = "{inbox}"
        settle_s = 0
        interval = "1m"
        """


def nsfw_scores(data_dir: Path) -> dict[str, float]:
    with connect(data_dir / "catalogue.sqlite") as connection:
        return {row["sha256"]: row["score"] for row in connection.execute(
            "SELECT sha256, score FROM scores WHERE tag = 'nsfw'")}


def placed(data_dir: Path) -> dict[str, set[str]]:
    """sha256 -> the top folders (library/<tag>, quarantine, held) holding a file of it."""
    where: dict[str, set[str]] = {}
    for path in data_dir.glob("library/*/*.jpg"):
        where.setdefault(path.stem, set()).add(f"library/{path.parent.name}")
    for folder in ("quarantine", "held"):
        for path in (data_dir / folder).glob("*.jpg"):
            where.setdefault(path.stem, set()).add(folder)
    return where


async def reload_with(notes: Notifications, text: str, event: str) -> dict[str, Any]:
    """Write config.toml, send SIGHUP, wait for READY=1 again; the reload's log `event`."""
    daemon = notes.daemon
    assert daemon.process is not None
    before = len(named(daemon, event))
    daemon.config_path.write_text(text)
    mark = len(notes.messages)
    daemon.process.send_signal(signal.SIGHUP)
    await notes.ready_after(mark)
    assert any(message.fields.get("RELOADING") == "1" for message in notes.messages[mark:])
    entries = named(daemon, event)
    assert len(entries) == before + 1, log_tail(daemon)
    return entries[-1]


class TestSighup:
    async def test_sighup_refiles_rejects_a_bad_config_and_flags_restart_keys(
        self, write_config: Any, shared_classifier: Any, tmp_path: Path,
    ) -> None:
        """SIGHUP to `megane run` re-files by new thresholds, keeps the old config when the new
        one is bad, names keys that need a restart, and SIGTERM then exits 0."""
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        for index in range(4):
            (inbox / f"photo-{index}.jpg").write_bytes(small_photo(index))
        config = write_config("[thresholds]\nnsfw = 0.99\n", sources=folder_source(inbox))
        seed_model_cache(shared_classifier, config.data_dir)
        original = config.path.read_text()
        daemon = DaemonProcess(config.path, tmp_path)
        async with running(daemon, WATCHDOG_ENV) as notes:
            process = daemon.process
            assert process is not None
            await notes.status_where(lambda counts: counts.get("library") == 4,
                                     "STATUS with library=4")
            scores = nsfw_scores(config.data_dir)
            assert len(scores) == 4
            assert placed(config.data_dir) == {sha: {"library/untagged"} for sha in scores}
            # A threshold between the 2nd and 3rd score: exactly the top two must move.
            ordered = sorted(scores.values())
            assert ordered[1] < ordered[2], ordered
            threshold = (ordered[1] + ordered[2]) / 2
            reloaded = await reload_with(
                notes, original.replace("nsfw = 0.99", f"nsfw = {threshold!r}"),
                "config_reloaded")
            assert reloaded["refiled"] == 2 and reloaded["needs_restart"] is None
            expected = {sha: {"quarantine"} if score >= threshold else {"library/untagged"}
                        for sha, score in scores.items()}
            assert placed(config.data_dir) == expected
            assert process.returncode is None

            # A broken config.toml: an out-of-range value beside a threshold of 0, which
            # would quarantine everything if any of it were applied.
            failed = await reload_with(
                notes, original.replace("nsfw = 0.99", "nsfw = 0.0\nmegane = 7"),
                "reload_failed")
            assert failed["path"] == str(config.path)
            assert any("thresholds.megane" in problem for problem in failed["problems"]), failed
            assert failed["action"] == "keeping the running configuration"
            assert placed(config.data_dir) == expected
            assert process.returncode is None

            # A valid config that moves data_dir and changes [review]: the thresholds apply
            # now, the other two are reported as needing a restart, nothing goes elsewhere.
            moved = original.replace(str(config.data_dir), str(tmp_path / "elsewhere"))
            assert moved != original
            moved += "\n[review]\nblur_radius = 3\n"
            reloaded = await reload_with(notes, moved, "config_reloaded")
            assert reloaded["needs_restart"] == ["daemon", "review"], reloaded
            assert reloaded["refiled"] == 2
            assert placed(config.data_dir) == {sha: {"library/untagged"} for sha in scores}
            assert not (tmp_path / "elsewhere").exists()
            # Until the restart, every reload still says so; back to the start-up values,
            # nothing needs a restart.
            again = await reload_with(notes, moved.replace("nsfw = 0.99", "nsfw = 0.98"),
                                      "config_reloaded")
            assert again["needs_restart"] == ["daemon", "review"] and again["refiled"] == 0
            back = await reload_with(notes, original, "config_reloaded")
            assert back["needs_restart"] is None and back["refiled"] == 0
            assert process.returncode is None

            assert await daemon.stop() == 0
            assert named(daemon, "daemon_stopped"), log_tail(daemon)


    async def test_sighup_while_starting_is_a_reload_once_running(
        self, write_config: Any, shared_classifier: Any, tmp_path: Path,
    ) -> None:
        """A SIGHUP that arrives while the daemon loads its model neither kills it nor is lost:
        the daemon reloads once it is running."""
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        config = write_config(sources=folder_source(inbox))
        seed_model_cache(shared_classifier, config.data_dir)
        daemon = DaemonProcess(config.path, tmp_path)
        async with running(daemon, wait_ready=False) as notes:
            process = daemon.process
            assert process is not None
            await logged(daemon, "model_selected")  # logged right before the model loads
            assert not named(daemon, "daemon_started"), "the signal would come too late"
            process.send_signal(signal.SIGHUP)
            first = await notes.ready_after(0)
            await notes.ready_after(notes.messages.index(first) + 1)
            assert any(message.fields.get("RELOADING") == "1" for message in notes.messages)
            [reloaded] = named(daemon, "config_reloaded")
            assert reloaded["needs_restart"] is None
            assert await daemon.stop() == 0


# -- 2. the metrics endpoint ---------------------------------------------------------------


def with_daemon_key(config: Config, line: str) -> Config:
    """Add `line` to the [daemon] table of the config file written by `write_config`."""
    text = config.path.read_text()
    assert "[daemon]\n" in text
    config.path.write_text(text.replace("[daemon]\n", f"[daemon]\n{line}\n", 1))
    return load_config(config.path)


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Scrape:
    """One scrape of /metrics: sample name -> {labels as sorted tuple: value}."""

    samples: dict[str, dict[tuple[tuple[str, str], ...], float]]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name][tuple(sorted(labels.items()))]

    def by(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: value for key, value in self.samples.get(name, {}).items()}


async def scrape(port: int) -> Scrape:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return Scrape(samples)


def metrics_feed(server: MediaServer) -> tuple[str, int, int]:
    """A feed of 3 photos, one adult-rated photo, a 404 and an HTML page served as a JPEG.

    Returns the sources TOML, the number of items and the bytes the server will serve.
    """
    items: list[dict[str, Any]] = []
    served = 0
    for index in range(4):
        body = small_photo(20 + index)
        server.add_bytes(f"/img/{index}.jpg", body)
        served += len(body)
        items.append({"image": f"/img/{index}.jpg", "rating": "adult" if index == 3 else None})
    page = b"<!doctype html><html><body>not an image</body></html>"
    server.add_bytes("/img/page.jpg", page)
    served += len(page)
    items += [{"image": "/img/page.jpg"}, {"image": "/img/missing.jpg"}]
    server.add_feed("/feed.xml", items)
    sources = f"""
        [[sources]]
        kind = "rss"
        name = "feed"
        url = "{server.base_url}/feed.xml"
        interval = "1m"
        """
    return sources, len(items), served


class TestMetricsEndpoint:
    async def test_scrapes_of_a_running_daemon_agree_with_the_catalogue(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        tmp_path: Path,
    ) -> None:
        """/metrics of a running daemon answers while it works and, once it is idle, counts
        what `megane status --json` reports."""
        sources, total, served = metrics_feed(media_server)
        port = free_port()
        config = with_daemon_key(
            write_config(allowed=(media_server.host_port,), sources=sources),
            f"metrics_port = {port}")
        seed_model_cache(shared_classifier, config.data_dir)
        daemon = DaemonProcess(config.path, tmp_path)
        async with running(daemon, WATCHDOG_ENV) as notes:
            early = await scrape(port)
            assert early.value("process_resident_memory_bytes") > 0
            assert set(early.by("megane_items", "state")) >= {
                "pending", "library", "quarantine", "held", "rejected"}

            done = await notes.status_where(finished(total), f"STATUS with {total} final items")
            # The metrics snapshot is refreshed right after each STATUS= line: one more
            # STATUS means the snapshot of the finished state is the one scrapes see.
            await notes.status_where(lambda _counts: True, "the next STATUS",
                                     after=notes.messages.index(done) + 1)
            metrics = await scrape(port)
            status = await megane_json(config.path, "status")

            states = {state: float(count) for state, count in status["states"].items()}
            assert {state: count for state, count in metrics.by("megane_items", "state").items()
                    if count} == states
            assert states == {"library": 3.0, "quarantine": 1.0, "rejected": 2.0}, status
            assert metrics.by("megane_images_by_tag", "tag") == {
                tag: float(count) for tag, count in status["tags"].items()}
            assert metrics.by("megane_items_by_source", "source") == {
                name: float(sum(counts.values()))
                for name, counts in status["by_source"].items()}
            # The files on disk are what the counts say.
            on_disk = placed(config.data_dir)
            assert metrics.by("megane_images_by_tag", "tag") == {
                "untagged": float(sum("library/untagged" in where for where in on_disk.values()))}
            assert metrics.value("megane_items", state="quarantine") == sum(
                "quarantine" in where for where in on_disk.values())
            [feed] = status["sources"]
            assert feed["last_poll_at"] is not None and feed["items_total"] == total

            with connect(config.data_dir / "catalogue.sqlite") as connection:
                classified = connection.execute(
                    "SELECT count(*), min(model_version), max(model_version) FROM blobs "
                    "WHERE model_version IS NOT NULL").fetchone()
            assert metrics.value("megane_classifier_batch_size_sum") == classified[0]
            assert metrics.by("megane_model_info", "version") == {classified[1]: 1.0}
            assert classified[1] == classified[2]
            assert metrics.value("megane_download_bytes_total") == served
            # Every download attempt is timed, the 404 too (the histogram says so).
            attempts = sum(count for path, count in media_server.hits.items()
                           if path.startswith("/img/"))
            assert metrics.value("megane_download_duration_seconds_count") == attempts
            for queue, depth in metrics.by("megane_queue_depth", "queue").items():
                assert depth == 0, queue

            assert await daemon.stop() == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await scrape(port)

    async def test_a_taken_metrics_port_is_a_config_error(
        self, write_config: Any, shared_classifier: Any, tmp_path: Path,
    ) -> None:
        """A metrics_port another process listens on stops `megane run` with exit 1 and a
        message naming the key, the address and the way out."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = with_daemon_key(write_config(), f"metrics_port = {port}")
            seed_model_cache(shared_classifier, config.data_dir)
            daemon = DaemonProcess(config.path, tmp_path)
            try:
                await daemon.start("run")
                assert await daemon.wait(WAIT_S) == 1
            finally:
                await daemon.kill()
                daemon.close()
        output = daemon.log_path.read_text()
        assert f"daemon.metrics_port: cannot listen on 127.0.0.1:{port}" in output, output
        assert str(config.path) in output and "choose a free port" in output


# -- 3. the watchdog -----------------------------------------------------------------------


def slow_feed(server: MediaServer, count: int, delay_s: float) -> str:
    """A feed of `count` photos, each served after `delay_s`: a backlog that takes a while."""

    def slow(body: bytes) -> Callable[[Any], Any]:
        async def handler(_request: Any) -> Any:
            from aiohttp import web

            await asyncio.sleep(delay_s)  # the server is slow; the test waits on events
            return web.Response(body=body, content_type="image/jpeg")

        return handler

    for index in range(count):
        server.routes[f"/slow/{index}.jpg"] = slow(small_photo(40 + index, side=48))
    server.add_feed("/slow.xml", [{"image": f"/slow/{index}.jpg"} for index in range(count)])
    return f"""
        [[sources]]
        kind = "rss"
        name = "slow"
        url = "{server.base_url}/slow.xml"
        interval = "1m"
        """


def pings(messages: list[Message]) -> list[float]:
    return [message.at for message in messages if message.fields.get("WATCHDOG") == "1"]


class TestWatchdog:
    async def test_pings_arrive_within_watchdog_usec_while_working_and_idle(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any,
        tmp_path: Path,
    ) -> None:
        """With $WATCHDOG_USEC set, WATCHDOG=1 arrives at least every WATCHDOG_USEC through a
        backlog and while idle, beside STATUS= counts."""
        total = 12
        config = write_config(allowed=(media_server.host_port,),
                              sources=slow_feed(media_server, total, delay_s=0.5))
        seed_model_cache(shared_classifier, config.data_dir)
        daemon = DaemonProcess(config.path, tmp_path)
        limit_s = WATCHDOG_USEC / 1_000_000
        async with running(daemon, WATCHDOG_ENV) as notes:
            ready_at = next(message.at for message in notes.messages
                            if message.fields.get("READY") == "1")
            done = await notes.status_where(finished(total), f"STATUS with {total} final items")
            done_index = notes.messages.index(done)
            idle_pings = 3
            await notes.wait_for(
                lambda messages: True if len(pings(messages[done_index:])) >= idle_pings
                else None, f"{idle_pings} WATCHDOG=1 after the work")
            assert await daemon.stop() == 0
        messages = notes.messages
        times = pings(messages)
        assert times and times[0] <= ready_at + limit_s, "no ping soon after READY=1"
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        sys.stderr.write(f"watchdog: READY {ready_at - daemon.started_at:.2f} s after spawn, "
                         f"worked {done.at - ready_at:.2f} s, {len(times)} pings, max gap "
                         f"{max(gaps):.2f} s (limit {limit_s} s)\n")
        assert max(gaps) < limit_s, gaps
        working = [at for at in times if ready_at <= at <= done.at]
        # The backlog took a few intervals, and pings went on through it.
        assert done.at - ready_at >= limit_s, done.at - ready_at
        assert len(working) >= int((done.at - ready_at) / limit_s), (working, done.at - ready_at)
        busy = [message for message in messages if message.status.get("pending")]
        assert any(ready_at < message.at < done.at for message in busy), \
            "no STATUS= showed pending work while the daemon worked"
        # STATUS= lines name the states with their counts; the last agrees with the catalogue.
        statuses = [message.status for message in messages if "STATUS" in message.fields]
        assert len(statuses) >= 3
        with connect(config.data_dir / "catalogue.sqlite") as connection:
            final = {row[0]: row[1] for row in connection.execute(
                "SELECT state, count(*) FROM media GROUP BY state")}
        assert statuses[-1] == final and sum(final.values()) == total
        assert messages[-1].fields == {"STOPPING": "1"}

    @pytest.mark.parametrize(("env", "logged"), [
        pytest.param({"WATCHDOG_USEC": "soon"}, True, id="usec-not-a-number"),
        pytest.param({"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"}, False,
                     id="pid-of-another-process"),
    ])
    async def test_a_watchdog_not_meant_for_us_sends_no_pings(
        self, env: dict[str, str], logged: bool, write_config: Any, shared_classifier: Any,
        tmp_path: Path,
    ) -> None:
        """A bad $WATCHDOG_USEC (logged) or another process's $WATCHDOG_PID means no
        WATCHDOG=1, and the daemon runs on."""
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / "photo.jpg").write_bytes(small_photo(60))
        config = write_config(sources=folder_source(inbox))
        seed_model_cache(shared_classifier, config.data_dir)
        daemon = DaemonProcess(config.path, tmp_path)
        async with running(daemon, env) as notes:
            # The report loop pings right before each periodic STATUS=; wait for one.
            await notes.wait_for(
                lambda messages: next((message for message in messages
                                       if "STATUS" in message.fields
                                       and "READY" not in message.fields), None),
                "a periodic STATUS=")
            assert await daemon.stop() == 0
        assert pings(notes.messages) == []
        assert any(message.fields.get("READY") == "1" for message in notes.messages)
        assert notes.messages[-1].fields == {"STOPPING": "1"}
        ignored = named(daemon, "watchdog_ignored")
        if logged:
            assert len(ignored) == 1 and "WATCHDOG_USEC" in ignored[0]["reason"], ignored
        else:
            assert ignored == []
