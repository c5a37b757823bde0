"""Isolation: nothing from input data stops the daemon, and one bad item costs one item.

Real servers on 127.0.0.1 (a raw asyncio one where header bytes matter), a real SQLite
catalogue, `megane once` as a real subprocess for the shared case.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from crawler.daemon import Daemon
from crawler.errors import SourceError
from crawler.sources.base import PollResult
from crawler.sources.common import dump_cursor
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from storage.records import MediaRef
from storage.untrusted import MAX_STORED_URL_CHARS
from tests.conftest import photo, rss_feed
from tests.daemon_process import REPOSITORY
from tests.helpers import catalogue_media, rss_source
from tests.rawhttp import RawResponse, raw_server, routes_from_case

CASES = Path(__file__).parent / "cases"
NOW = 1_750_000_000.0


async def _media(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {row["url"]: row for row in await catalogue_media(data_dir)}


async def _source_state(data_dir: Path, name: str) -> Any:
    catalogue = await Catalogue.open(DataLayout(data_dir).catalogue)
    try:
        return await catalogue.source_state(name)
    finally:
        await catalogue.close()


class TestLatin1LastModifiedCase:
    """The shared case rss_last_modified_latin1_crash, through `megane once` for real."""

    async def test_megane_once_files_the_image_and_exits_0(self, tmp_path: Path) -> None:
        """A raw 0xE4 byte in Last-Modified: `once` exits 0 with the image filed, no error kept."""
        case = CASES / "rss_last_modified_latin1_crash"
        async with raw_server() as server:
            server.routes.update(routes_from_case(case / "site", server.port))
            config_text = (case / "config.toml").read_text()
            config_path = tmp_path / "config.toml"
            config_path.write_text(config_text.replace("{WORK}", str(tmp_path))
                                   .replace("{PORT}", str(server.port)))
            from tests.classifier_fixtures import tflite_cache_directory

            cache = tmp_path / "data" / "cache"
            cache.mkdir(parents=True)
            for path in tflite_cache_directory().glob("*.tflite"):
                shutil.copy2(path, cache / path.name)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "crawler.cli", "once", "--config", str(config_path),
                cwd=REPOSITORY, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), 240)
            text = output.decode(errors="replace")
            assert process.returncode == 0, text[-3000:]
            assert "internal_error" not in text, text[-3000:]
            rows = await _media(tmp_path / "data")
            photo_url = f"{server.base}/img/photo.jpg"
            assert rows[photo_url]["state"] in ("library", "quarantine"), rows
            state = await _source_state(tmp_path / "data", "feed")
            assert state.last_error is None and state.consecutive_errors == 0

            # The next poll sends the ETag back; the Last-Modified with its raw byte cannot
            # go out unchanged, so it is left out rather than sent altered.
            from crawler.config import load_config

            config = load_config(config_path)
            with capture_logs() as logs:
                code = await Daemon(config, classifier=None,
                                    classifier_problem="no_model: test").run(once=True)
            assert code == 0
            dropped = [entry for entry in logs if entry["event"] == "header_dropped"]
            assert [entry["header"] for entry in dropped] == ["If-Modified-Since"]
            assert dropped[0]["value"] == "Mi, 05 M\\xe4r 2025 10:00:00 GMT"
            feed_requests = [request for request in server.requests
                             if request.path == "/feed.xml"]
            assert len(feed_requests) == 2
            assert feed_requests[1].headers.get(b"if-none-match") == b'"v1"'
            assert b"if-modified-since" not in feed_requests[1].headers
            assert "header_dropped" not in text  # first run had nothing to send back


@dataclass
class ScriptedSource:
    """A real Source (the Protocol the daemon polls) whose polls follow a script.

    Each step is a PollResult to return or an exception to raise; the last step repeats.
    """

    name: str
    steps: list[PollResult | BaseException]
    kind: str = "rss"
    cursors_seen: list[str | None] = field(default_factory=list)

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        self.cursors_seen.append(cursor)
        step = self.steps[min(len(self.cursors_seen) - 1, len(self.steps) - 1)]
        if isinstance(step, BaseException):
            raise step
        return step

    def query_key(self) -> str:
        return f"scripted:{self.name}"


class TestPollIsolation:
    async def test_any_failure_costs_only_that_poll(
        self, write_config: Callable[..., Any]
    ) -> None:
        """A source raising an unexpected error records last_error; the other source's rows land."""
        config = write_config(sources=rss_source(name="broken", url="http://127.0.0.1:9/a.xml")
                              + rss_source(name="good", url="http://127.0.0.1:9/b.xml"))
        broken = ScriptedSource("broken", [KeyError("entries")])
        good = ScriptedSource("good", [PollResult(
            refs=(MediaRef(url="http://127.0.0.1:9/x.jpg", source="good"),), cursor=None)])
        daemon = Daemon(config, classifier=None, classifier_problem="no_model: test",
                        sources=[broken, good])
        assert await daemon.run(once=True) == 0
        state = await _source_state(config.data_dir, "broken")
        assert state.last_error.startswith("internal_error: KeyError")
        assert state.consecutive_errors == 1 and state.next_poll_at > state.last_poll_at
        rows = await _media(config.data_dir)
        assert rows["http://127.0.0.1:9/x.jpg"]["state"] == "rejected"  # port 9: refused

    async def test_a_storage_error_while_storing_a_poll_costs_that_poll(
        self, write_config: Callable[..., Any]
    ) -> None:
        """SQLite refusing a poll's cursor or rows (a trigger here) is that poll's last_error."""
        config = write_config(sources=rss_source(name="cursor", url="http://127.0.0.1:9/a.xml")
                              + rss_source(name="rows", url="http://127.0.0.1:9/b.xml")
                              + rss_source(name="good", url="http://127.0.0.1:9/c.xml"))
        layout = DataLayout(config.data_dir)
        layout.ensure()
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            async with catalogue.transaction() as connection:
                await connection.execute(
                    """CREATE TRIGGER refuse_cursor BEFORE UPDATE OF cursor ON sources
                       WHEN NEW.cursor LIKE '%refused%'
                       BEGIN SELECT RAISE(ABORT, 'cursor refused'); END""")
                await connection.execute(
                    """CREATE TRIGGER refuse_row BEFORE INSERT ON media
                       WHEN NEW.url LIKE '%refused%'
                       BEGIN SELECT RAISE(ABORT, 'row refused'); END""")
        finally:
            await catalogue.close()
        sources = [
            ScriptedSource("cursor", [PollResult(refs=(), cursor='{"etag":"refused"}')]),
            ScriptedSource("rows", [PollResult(refs=(
                MediaRef(url="http://127.0.0.1:9/refused.jpg", source="rows"),))]),
            ScriptedSource("good", [PollResult(refs=(
                MediaRef(url="http://127.0.0.1:9/fine.jpg", source="good"),))]),
        ]
        code = await Daemon(config, classifier=None, classifier_problem="no_model: test",
                            sources=sources).run(once=True)
        assert code == 0
        for name, message in (("cursor", "cursor refused"), ("rows", "row refused")):
            state = await _source_state(config.data_dir, name)
            assert state.last_error == f"internal_error: IntegrityError: {message}"
            assert state.consecutive_errors == 1
        assert (await _source_state(config.data_dir, "good")).last_error is None
        assert set(await _media(config.data_dir)) == {"http://127.0.0.1:9/fine.jpg"}

    async def test_unstorable_cursor_and_names_do_not_stop_the_daemon(
        self, write_config: Callable[..., Any]
    ) -> None:
        """Lone surrogates in a cursor, URL and author are stored losslessly; the poll succeeds."""
        config = write_config(sources=rss_source(name="odd", url="http://127.0.0.1:9/a.xml"))
        cursor = dump_cursor({"last_modified": "Mi, 05 M\udce4r 2025", "etag": '"v1"'})
        source = ScriptedSource("odd", [PollResult(refs=(
            MediaRef(url="http://127.0.0.1:9/caf\udce9.jpg", source="odd",
                     author="J\udcf6rg", post_url="http://127.0.0.1:9/p/\udce9"),
        ), cursor=cursor)])
        daemon = Daemon(config, classifier=None, classifier_problem="no_model: test",
                        sources=[source])
        assert await daemon.run(once=True) == 0
        state = await _source_state(config.data_dir, "odd")
        assert state.last_error is None
        from crawler.sources.common import load_cursor

        assert load_cursor(state.cursor) == load_cursor(cursor)
        rows = await _media(config.data_dir)
        row = rows["http://127.0.0.1:9/caf%E9.jpg"]
        assert row["post_url"] == "http://127.0.0.1:9/p/%E9" and row["author"] is None

    async def test_skipped_entries_cost_only_themselves(
        self, write_config: Callable[..., Any]
    ) -> None:
        """Entries a source could not read are logged with their reason and counted."""
        config = write_config(sources=rss_source(name="feed", url="http://127.0.0.1:9/a.xml"))
        source = ScriptedSource("feed", [PollResult(
            refs=(MediaRef(url="http://127.0.0.1:9/ok.jpg", source="feed"),), cursor=None,
            skipped=(("entry 2", "bad character reference"), ("entry 5", "no media")))])
        with capture_logs() as logs:
            await Daemon(config, classifier=None, classifier_problem="no_model: test",
                         sources=[source]).run(once=True)
        skipped = [(entry["item"], entry["reason"]) for entry in logs
                   if entry["event"] == "entry_skipped"]
        assert skipped == [("entry 2", "bad character reference"), ("entry 5", "no media")]
        polled = next(entry for entry in logs if entry["event"] == "source_polled")
        assert (polled["new"], polled["skipped"]) == (1, 2)
        state = await _source_state(config.data_dir, "feed")
        assert state.last_error is None

    async def test_a_cursor_that_is_neither_text_nor_json_is_not_stored(
        self, write_config: Callable[..., Any]
    ) -> None:
        """A non-JSON cursor with undecodable bytes keeps the previous cursor, logged."""
        config = write_config(sources=rss_source(name="odd", url="http://127.0.0.1:9/a.xml"))
        source = ScriptedSource("odd", [PollResult(refs=(), cursor='{"page":1}'),
                                        PollResult(refs=(), cursor="page=M\udce4r")])
        for _ in range(2):
            with capture_logs() as logs:
                await Daemon(config, classifier=None, classifier_problem="no_model: test",
                             sources=[source]).run(once=True)
        assert [entry["event"] for entry in logs].count("cursor_not_stored") == 1
        state = await _source_state(config.data_dir, "odd")
        assert state.cursor == '{"page":1}' and state.last_error is None
        assert source.cursors_seen == [None, '{"page":1}']

    async def test_a_source_error_keeps_its_retry_after(
        self, write_config: Callable[..., Any]
    ) -> None:
        """A SourceError's Retry-After sets the next poll no sooner than it asks."""
        config = write_config(sources=rss_source(name="slow", url="http://127.0.0.1:9/a.xml"))
        source = ScriptedSource("slow", [SourceError(
            "slow", "rate limited", retry_after_s=900, reason="rate_limited",
            url="https://e.org/api")])
        with capture_logs() as logs:
            await Daemon(config, classifier=None, classifier_problem="no_model: test",
                         sources=[source]).run(once=True)
        failed = next(entry for entry in logs if entry["event"] == "source_failed")
        assert (failed["reason"], failed["url"]) == ("rate_limited", "https://e.org/api")
        state = await _source_state(config.data_dir, "slow")
        assert state.last_error == "source 'slow': rate limited"
        assert state.next_poll_at - state.last_poll_at >= 900


class TestEveryUrlGetsARow:
    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
            ("javascript:alert(1)", "bad_scheme"),
            ("ftp://example.com/a.jpg", "bad_scheme"),
            ("gopher://example.com/a.jpg", "bad_scheme"),
            ("example.com/a.jpg", "bad_scheme"),
            ("http://example.com\uff1a8080/a.jpg", "bad_url"),
            ("http://exa\u00admple.com/a.jpg", "bad_url"),
            ("http://a.example:99999/a.jpg", "bad_url"),
            ("http://a.example:port/a.jpg", "bad_url"),
            ("http://[::1/a.jpg", "bad_url"),
            ("http:///a.jpg", "bad_url"),
            ("http://\udce4.example/a.jpg", "bad_url"),
        ],
    )
    async def test_catalogue_rejects_with_reason(
        self, tmp_path: Path, url: str, reason: str
    ) -> None:
        """A URL refused before any request is recorded as rejected with its reason."""
        catalogue = await Catalogue.open(tmp_path / "catalogue.sqlite")
        try:
            rows = await catalogue.add_media([MediaRef(url=url, source="s")], NOW)
        finally:
            await catalogue.close()
        assert len(rows) == 1
        assert (rows[0].state.value, rows[0].reason) == ("rejected", reason)

    async def test_a_huge_data_url_is_stored_capped(self, tmp_path: Path) -> None:
        """A multi-megabyte data: URL gets a row, cut to the cap with its length and digest."""
        url = "data:image/png;base64," + "A" * 3_000_000
        other = url[:-1] + "B"
        catalogue = await Catalogue.open(tmp_path / "catalogue.sqlite")
        try:
            rows = await catalogue.add_media(
                [MediaRef(url=url, source="s"), MediaRef(url=other, source="s")], NOW)
        finally:
            await catalogue.close()
        assert len(rows) == 2 and {row.reason for row in rows} == {"bad_scheme"}
        assert all(len(row.url) < MAX_STORED_URL_CHARS + 120 for row in rows)
        assert "[truncated: 3000022 chars, sha256 " in rows[0].url
        assert rows[0].url != rows[1].url

    async def test_daemon_records_file_urls_from_a_feed_as_bad_scheme(
        self, write_config: Callable[..., Any]
    ) -> None:
        """file:, data: and javascript: URLs from a non-folder source become rejected rows."""
        config = write_config(sources=rss_source(name="feed", url="http://127.0.0.1:9/a.xml"))
        urls = ("file:///etc/passwd", "data:image/gif;base64,R0lGOD", "javascript:void(0)",
                "http://exa mple.com/a.jpg")
        source = ScriptedSource("feed", [PollResult(
            refs=tuple(MediaRef(url=url, source="feed") for url in urls), cursor=None)])
        await Daemon(config, classifier=None, classifier_problem="no_model: test",
                     sources=[source]).run(once=True)
        rows = await _media(config.data_dir)
        assert {url: rows[url]["reason"] for url in urls} == {
            "file:///etc/passwd": "bad_scheme", "data:image/gif;base64,R0lGOD": "bad_scheme",
            "javascript:void(0)": "bad_scheme", "http://exa mple.com/a.jpg": "bad_url"}
        assert {rows[url]["state"] for url in urls} == {"rejected"}

    async def test_folder_source_with_undecodable_file_name(
        self, write_config: Callable[..., Any], tmp_path: Path
    ) -> None:
        """A folder holding a file whose name is not UTF-8: `once` ends 0, every file final."""
        folder = tmp_path / "in"
        folder.mkdir()
        undecodable = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.jpg")))
        undecodable.write_bytes(photo("chelsea"))
        (folder / "plain.jpg").write_bytes(photo("coffee"))
        config = write_config(sources=f"""
            [[sources]]
            kind = "folder"
            name = "inbox"
            path = "{folder}"
            interval = "1m"
            settle_s = 0
            """)
        code = await Daemon(config, classifier=None,
                            classifier_problem="no_model: test").run(once=True)
        assert code == 0
        rows = await _media(config.data_dir)
        assert len(rows) == 2, rows
        assert {row["state"] for row in rows.values()} <= {"held", "rejected"}
        state = await _source_state(config.data_dir, "inbox")
        assert state.last_error is None


class TestStorageBoundary:
    async def test_reasons_and_errors_quoting_raw_bytes_are_stored_escaped(
        self, tmp_path: Path
    ) -> None:
        """A reason or error quoting undecodable bytes is stored with \\xNN escapes."""
        catalogue = await Catalogue.open(tmp_path / "catalogue.sqlite")
        try:
            first, second = await catalogue.add_media(
                [MediaRef(url="https://e.org/a.jpg", source="s"),
                 MediaRef(url="https://e.org/b.jpg", source="s",
                          skip_reason="not an image (M\udce4r)")], NOW)
            await catalogue.record_retry(first.id, "bad_header: M\udce4r", NOW + 5, NOW)
            assert (await catalogue.get_media(first.id)).reason == "bad_header: M\\xe4r"
            await catalogue.reject(first.id, "internal_error: M\udce4r", NOW)
            assert (await catalogue.get_media(first.id)).reason == "internal_error: M\\xe4r"
            assert second.reason == "not an image (M\\xe4r)"
            await catalogue.ensure_source("s", "folder", "folder:/in/caf\udce9")
            await catalogue.record_poll_error("s", "HTTP 500: M\udce4r", next_poll_at=NOW,
                                              now=NOW)
            state = await catalogue.source_state("s")
            assert state is not None and state.last_error == "HTTP 500: M\\xe4r"
            assert state.query_key == "folder:/in/caf%E9"
        finally:
            await catalogue.close()


class TestOnceEndsFinal:
    async def test_a_dripping_server_ends_rejected_as_timeout(
        self, write_config: Callable[..., Any]
    ) -> None:
        """An image dripped a byte a second past timeout_s, retried, ends rejected 'timeout'."""
        async with raw_server() as server:
            server.routes["/img/slow.jpg"] = RawResponse(
                200, [(b"Content-Type", b"image/jpeg")], photo("rocket"), drip_s=1.0)
            server.routes["/feed.xml"] = RawResponse(
                200, [(b"Content-Type", b"application/rss+xml")],
                rss_feed(server.base, [{"image": "/img/slow.jpg"}]))
            config = write_config(allowed=(server.host_port,),
                                  daemon="max_attempts = 2",
                                  http="timeout_s = 1.0\nmax_retries = 0",
                                  sources=rss_source(name="feed", url=f"{server.base}/feed.xml"))
            started = time.monotonic()
            code = await Daemon(config, classifier=None,
                                classifier_problem="no_model: test").run(once=True)
            elapsed = time.monotonic() - started
        assert code == 0
        row = (await _media(config.data_dir))[f"{server.base}/img/slow.jpg"]
        assert (row["state"], row["reason"], row["attempts"]) == ("rejected", "timeout", 2)
        assert sum(request.path == "/img/slow.jpg" for request in server.requests) == 2
        assert elapsed < 20


class TestWatchdogCountsProgress:
    async def test_a_backlog_of_404s_keeps_the_pings_going(
        self, tmp_path: Path, write_config: Callable[..., Any]
    ) -> None:
        """Rejections are progress: while 404s drain slowly, WATCHDOG=1 keeps arriving."""
        count = 24
        async with raw_server() as server:
            server.routes["/feed.xml"] = RawResponse(
                200, [(b"Content-Type", b"application/rss+xml")],
                rss_feed(server.base, [{"image": f"/gone/{n}.jpg"} for n in range(count)]))
            config = write_config(allowed=(server.host_port,),
                                  http="per_host_rate = 8.0",
                                  sources=rss_source(name="feed", url=f"{server.base}/feed.xml"))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(tmp_path / "notify.sock"))
            sock.setblocking(False)
            environ = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                       "WATCHDOG_USEC": "250000", "WATCHDOG_PID": str(os.getpid())}
            daemon = Daemon(config, classifier=None, classifier_problem="no_model: test",
                            environ=environ)
            task = asyncio.create_task(daemon.run())
            loop = asyncio.get_running_loop()
            pings: list[float] = []
            try:
                while True:
                    message = await asyncio.wait_for(loop.sock_recv(sock, 65536), 30)
                    fields = message.decode().split("\n")
                    if "WATCHDOG=1" in fields:
                        pings.append(time.monotonic())
                    if f"STATUS=rejected={count}" in fields:
                        break
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(task, 30) == 0
                sock.close()
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert len(pings) >= 8, pings
        assert max(gaps) < 1.0, gaps
