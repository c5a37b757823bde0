"""The SQLite catalogue: schema and migrations, the durable queue, dedup, labels, sources.

Every test runs against a real SQLite file under tmp_path.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import storage.catalogue as catalogue_module
from storage.catalogue import Catalogue
from storage.errors import CatalogueError, UnknownMediaError
from storage.records import MediaRef, MediaRow, Placement, State
from storage.schema import SCHEMA_VERSION

NOW = 1_700_000_000.0


def sha(text: str) -> str:
    """A deterministic sha256 hex digest of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()


def ref(url: str, **fields: object) -> MediaRef:
    """A MediaRef from source `feed` for `url`."""
    return MediaRef(url=url, source=str(fields.pop("source", "feed")), **fields)  # type: ignore[arg-type]


FileMedia = Callable[..., Awaitable[MediaRow]]


@pytest.fixture
def file_media(catalogue: Catalogue) -> FileMedia:
    """Factory: take one URL through download, decode, scores and placement."""

    async def make(url: str, content: str, *, scores: dict[str, float] | None = None,
                   placement: Placement = Placement.LIBRARY, tags: tuple[str, ...] = (),
                   flags: tuple[str, ...] = (), md5: str | None = None,
                   model_version: str | None = "v1") -> MediaRow:
        (row,) = await catalogue.add_media([ref(url, flags=flags, md5=md5)], NOW)
        digest = sha(content)
        assert await catalogue.record_download(row.id, digest, len(content), NOW) is None
        await catalogue.record_decoded(row.id, digest, format="JPEG", width=4, height=3,
                                       extension=".jpg", phash="0" * 16, now=NOW)
        if model_version is not None:
            await catalogue.record_scores(
                [(row.id, digest, scores or {"nsfw": 0.1}, b"\x00" * 8)], model_version,
                "open_nsfw", NOW)
        await catalogue.record_placement(digest, placement, "test", tags, NOW, media_id=row.id)
        return await catalogue.get_media(row.id)

    return make


class TestOpen:
    """Catalogue.open: WAL, foreign keys, schema version, refusals."""

    async def test_fresh_catalogue(self, tmp_path: Path) -> None:
        """A new file is created (with its folder) in WAL mode, foreign keys on, latest schema."""
        path = tmp_path / "nested" / "dir" / "catalogue.sqlite"
        catalogue = await Catalogue.open(path)
        try:
            assert path.exists()
            assert await catalogue.schema_version() == SCHEMA_VERSION
            assert (await catalogue.fetch_one("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
            assert (await catalogue.fetch_one("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
            assert await catalogue.integrity_check() == "ok"
            tables = {row[0] for row in await catalogue.fetch_all(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"media", "blobs", "scores", "features", "labels", "sources"} <= tables
        finally:
            await catalogue.close()

    async def test_reopen_keeps_rows(self, tmp_path: Path) -> None:
        """Reopening an existing catalogue migrates nothing and keeps its rows."""
        path = tmp_path / "catalogue.sqlite"
        first = await Catalogue.open(path)
        await first.add_media([ref("https://e.org/a.jpg")], NOW)
        await first.close()
        second = await Catalogue.open(path)
        try:
            assert await second.schema_version() == SCHEMA_VERSION
            assert [item["url"] for item in await second.media_list()] == ["https://e.org/a.jpg"]
        finally:
            await second.close()

    async def test_foreign_keys_enforced(self, catalogue: Catalogue) -> None:
        """A score for an image that is not stored is refused by a foreign key."""
        with pytest.raises(sqlite3.IntegrityError):
            async with catalogue.transaction() as connection:
                await connection.execute(
                    "INSERT INTO scores (sha256, model_version, tag, score) VALUES (?, ?, ?, ?)",
                    (sha("ghost"), "v1", "nsfw", 0.5))
        assert await catalogue.fetch_all("SELECT * FROM scores") == []

    async def test_newer_schema_refused(self, tmp_path: Path) -> None:
        """A catalogue written by a newer program is refused, naming the path and versions."""
        path = tmp_path / "catalogue.sqlite"
        await (await Catalogue.open(path)).close()
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
        connection.close()
        with pytest.raises(CatalogueError, match="newer than this program") as caught:
            await Catalogue.open(path)
        assert str(path) in str(caught.value)
        assert str(SCHEMA_VERSION + 5) in str(caught.value)

    @pytest.mark.parametrize(
        "garbage",
        [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    )
    async def test_corrupt_file(self, tmp_path: Path, garbage: bytes) -> None:
        """A file that is not a usable SQLite database is a CatalogueError naming the path."""
        path = tmp_path / "catalogue.sqlite"
        path.write_bytes(garbage)
        with pytest.raises(CatalogueError) as caught:
            await Catalogue.open(path)
        assert str(path) in str(caught.value)

    async def test_unopenable_path(self, tmp_path: Path) -> None:
        """A folder where the file should be is a CatalogueError naming the path."""
        path = tmp_path / "catalogue.sqlite"
        path.mkdir()
        with pytest.raises(CatalogueError) as caught:
            await Catalogue.open(path)
        assert str(path) in str(caught.value)

    async def test_cancelled_open_leaves_no_worker_thread(self, tmp_path: Path) -> None:
        """An open cancelled while connecting closes its connection promptly: no thread stays."""
        before = set(threading.enumerate())
        opening = asyncio.ensure_future(Catalogue.open(tmp_path / "catalogue.sqlite"))
        await asyncio.sleep(0)  # let it start connecting on aiosqlite's worker thread
        started = time.monotonic()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert time.monotonic() - started < 4.0, "the cancelled open waited out a timeout"
        for thread in set(threading.enumerate()) - before:
            await asyncio.to_thread(thread.join, 5.0)
            assert not thread.is_alive(), f"{thread.name} outlived the cancelled open"

    async def test_migration_applied_in_order(self, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """A catalogue at version N gets migration N+1 applied and user_version bumped."""
        path = tmp_path / "catalogue.sqlite"
        await (await Catalogue.open(path)).close()
        extra = (*catalogue_module.MIGRATIONS, ("CREATE TABLE extra (id INTEGER PRIMARY KEY)",))
        monkeypatch.setattr(catalogue_module, "MIGRATIONS", extra)
        monkeypatch.setattr(catalogue_module, "SCHEMA_VERSION", len(extra))
        catalogue = await Catalogue.open(path)
        try:
            assert await catalogue.schema_version() == SCHEMA_VERSION + 1
            assert await catalogue.fetch_all("SELECT * FROM extra") == []
        finally:
            await catalogue.close()

    async def test_failed_migration_rolls_back(self, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """A migration that fails half-way leaves no trace and the old version in place."""
        path = tmp_path / "catalogue.sqlite"
        await (await Catalogue.open(path)).close()
        extra = (*catalogue_module.MIGRATIONS,
                 ("CREATE TABLE half (id INTEGER)", "THIS IS NOT SQL"))
        monkeypatch.setattr(catalogue_module, "MIGRATIONS", extra)
        monkeypatch.setattr(catalogue_module, "SCHEMA_VERSION", len(extra))
        with pytest.raises(CatalogueError, match=str(path).replace("/", "/")):
            await Catalogue.open(path)
        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
        finally:
            connection.close()


LOCK_HOLDER = textwrap.dedent("""\
    import sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    connection.execute("COMMIT")
    connection.close()
    print("released", flush=True)
""")


class LockHolder:
    """Another process holding an exclusive SQLite lock until told to release it."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)  # also closes the pipes


class TestLocking:
    """A catalogue another process holds locked."""

    async def test_open_waits_for_the_lock(self, tmp_path: Path) -> None:
        """Opening waits while another process migrates/holds the file, then succeeds."""
        path = tmp_path / "catalogue.sqlite"
        holder = LockHolder(path)
        try:
            opening = asyncio.ensure_future(Catalogue.open(path))
            done, _ = await asyncio.wait([opening], timeout=0.5)
            assert not done, "open should wait for the lock, not fail"
            await asyncio.to_thread(holder.release)
            catalogue = await asyncio.wait_for(opening, timeout=10)
            assert await catalogue.schema_version() == SCHEMA_VERSION
            await catalogue.close()
        finally:
            holder.stop()

    async def test_open_gives_a_clear_error_when_the_lock_stays(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When the lock outlasts the busy timeout, the error names the path and the lock."""
        monkeypatch.setattr(catalogue_module, "BUSY_TIMEOUT_MS", 200)
        path = tmp_path / "catalogue.sqlite"
        holder = LockHolder(path)
        try:
            with pytest.raises(CatalogueError, match="another process holds it locked") as caught:
                await Catalogue.open(path)
            assert str(path) in str(caught.value)
        finally:
            holder.stop()

    async def test_two_connections_write_concurrently(self, tmp_path: Path) -> None:
        """Two catalogues on one file (a CLI beside the daemon) both get their writes in."""
        path = tmp_path / "catalogue.sqlite"
        first, second = await Catalogue.open(path), await Catalogue.open(path)
        try:
            await asyncio.gather(*(
                (first if index % 2 else second).add_media([ref(f"https://e.org/{index}.jpg")], NOW)
                for index in range(40)
            ))
            assert len(await first.media_list()) == 40
            assert len(await second.media_list()) == 40
        finally:
            await first.close()
            await second.close()


class TestAddMedia:
    """add_media: the queue's entry, with dedup by URL, dedup key and announced md5."""

    async def test_new_rows_are_pending(self, catalogue: Catalogue) -> None:
        """New URLs become pending rows carrying the source's flags and tags."""
        rows = await catalogue.add_media([
            ref("https://e.org/a.jpg", post_url="https://e.org/p/1", author="ann",
                flags=("mastodon:sensitive",), tags=("megane", "cat")),
            ref("https://e.org/b.jpg"),
        ], NOW)
        assert [row.url for row in rows] == ["https://e.org/a.jpg", "https://e.org/b.jpg"]
        first = rows[0]
        assert first.state is State.PENDING and first.reason is None and first.sha256 is None
        assert first.flags == ("mastodon:sensitive",) and first.tags == ("megane", "cat")
        assert (first.post_url, first.author, first.attempts) == ("https://e.org/p/1", "ann", 0)
        assert first.created_at == NOW == first.updated_at
        assert await catalogue.count_unfinished() == 2

    async def test_same_url_is_recorded_once(self, catalogue: Catalogue) -> None:
        """A URL seen again (in the same batch or later) creates no row."""
        rows = await catalogue.add_media([ref("https://e.org/a.jpg"), ref("https://e.org/a.jpg")],
                                         NOW)
        assert len(rows) == 1
        assert await catalogue.add_media([ref("https://e.org/a.jpg", source="other")], NOW) == []
        assert len(await catalogue.media_list()) == 1

    async def test_same_dedup_key_is_recorded_once(self, catalogue: Catalogue) -> None:
        """The same media under another URL (same dedup key) is skipped."""
        await catalogue.add_media([ref("https://a.example/1.jpg", dedup_key="uri:1")], NOW)
        assert await catalogue.add_media(
            [ref("https://b.example/mirror.jpg", dedup_key="uri:1")], NOW) == []
        assert await catalogue.add_media([ref("uri:1")], NOW) == []
        assert len(await catalogue.media_list()) == 1

    async def test_skip_reason_is_rejected(self, catalogue: Catalogue) -> None:
        """A ref the source already refused is recorded rejected with its reason."""
        (row,) = await catalogue.add_media(
            [ref("https://e.org/v.mp4", skip_reason="unsupported_media: video")], NOW)
        assert row.state is State.REJECTED
        assert row.reason == "unsupported_media: video"
        assert await catalogue.count_unfinished() == 0

    async def test_md5_of_known_content_is_final_without_download(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """A ref announcing the md5 of stored content takes that content's filing at once."""
        filed = await file_media("https://e.org/a.jpg", "A", md5="ABCDEF",
                                 placement=Placement.QUARANTINE)
        (row,) = await catalogue.add_media([ref("https://mirror.org/a.jpg", md5="abcdef")], NOW)
        assert row.state is State.QUARANTINE
        assert row.reason == f"duplicate_of:{filed.sha256}"
        assert row.sha256 == filed.sha256
        assert await catalogue.count_unfinished() == 0

    async def test_md5_of_rejected_content_is_rejected(self, catalogue: Catalogue) -> None:
        """A ref announcing the md5 of content once rejected is rejected, naming why."""
        (first,) = await catalogue.add_media([ref("https://e.org/a.jpg", md5="feed")], NOW)
        await catalogue.record_download(first.id, sha("bad"), 3, NOW)
        await catalogue.reject(first.id, "decode_error: truncated", NOW, sha256=sha("bad"))
        (row,) = await catalogue.add_media([ref("https://e.org/b.jpg", md5="FEED")], NOW)
        assert row.state is State.REJECTED
        assert row.reason == "known_rejected_content: decode_error: truncated"
        assert row.sha256 is None

    async def test_md5_of_content_in_progress_is_pending(self, catalogue: Catalogue) -> None:
        """An md5 whose content is not filed yet gives a normal pending row."""
        (first,) = await catalogue.add_media([ref("https://e.org/a.jpg", md5="abc")], NOW)
        await catalogue.record_download(first.id, sha("x"), 1, NOW)
        (row,) = await catalogue.add_media([ref("https://e.org/b.jpg", md5="abc")], NOW)
        assert row.state is State.PENDING

    async def test_media_in_states_due_and_excluded(self, catalogue: Catalogue) -> None:
        """media_in_states returns oldest first, only due rows with `now`, minus excluded ids."""
        rows = await catalogue.add_media([ref(f"https://e.org/{n}.jpg") for n in range(4)], NOW)
        await catalogue.record_retry(rows[1].id, "http_503", NOW + 100, NOW)
        due = await catalogue.media_in_states([State.PENDING], limit=10, now=NOW)
        assert [row.id for row in due] == [rows[0].id, rows[2].id, rows[3].id]
        assert [row.id for row in await catalogue.media_in_states(
            [State.PENDING], limit=2, exclude=[rows[0].id])] == [rows[1].id, rows[2].id]
        assert await catalogue.next_attempt_at() == 0.0


class TestDownloadAndRetry:
    """record_download, record_retry, defer and reject."""

    async def test_download_stores_blob(self, catalogue: Catalogue) -> None:
        """A first download creates the blob and marks the row downloaded."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        assert await catalogue.record_download(row.id, sha("A"), 1234, NOW + 1) is None
        media = await catalogue.get_media(row.id)
        assert (media.state, media.sha256, media.updated_at) == (
            State.DOWNLOADED, sha("A"), NOW + 1)
        blob = await catalogue.get_blob(sha("A"))
        assert blob.size == 1234 and blob.placement is None
        assert await catalogue.spool_references() == {sha("A")}

    async def test_duplicate_content_goes_straight_to_its_filing(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Bytes already filed: the new row takes that filing and the stored blob is returned."""
        await file_media("https://e.org/a.jpg", "A", tags=("cat",))
        (row,) = await catalogue.add_media([ref("https://e.org/copy.jpg")], NOW)
        known = await catalogue.record_download(row.id, sha("A"), 1, NOW)
        assert known is not None and known.placement is Placement.LIBRARY
        assert known.tags == ("cat",)
        media = await catalogue.get_media(row.id)
        assert (media.state, media.reason, media.sha256) == (
            State.LIBRARY, f"duplicate_of:{sha('A')}", sha("A"))
        assert len(await catalogue.fetch_all("SELECT * FROM blobs")) == 1

    async def test_duplicate_of_rejected_content_is_rejected(self, catalogue: Catalogue) -> None:
        """Bytes once rejected: the new row is rejected with the same reason."""
        (first, second) = await catalogue.add_media(
            [ref("https://e.org/a.jpg"), ref("https://e.org/b.jpg")], NOW)
        await catalogue.record_download(first.id, sha("bad"), 1, NOW)
        await catalogue.reject(first.id, "too_many_pixels", NOW, sha256=sha("bad"))
        known = await catalogue.record_download(second.id, sha("bad"), 1, NOW)
        assert known is not None and known.placement is None  # 'rejected' is no Placement
        media = await catalogue.get_media(second.id)
        assert (media.state, media.reason) == (State.REJECTED, "too_many_pixels")

    async def test_same_bytes_in_flight_both_proceed(self, catalogue: Catalogue) -> None:
        """Two rows downloading the same bytes before either is filed share one blob."""
        first, second = await catalogue.add_media(
            [ref("https://e.org/a.jpg"), ref("https://e.org/b.jpg")], NOW)
        assert await catalogue.record_download(first.id, sha("A"), 1, NOW) is None
        assert await catalogue.record_download(second.id, sha("A"), 1, NOW) is None
        await catalogue.record_placement(sha("A"), Placement.HELD, "no_model", (), NOW)
        assert {(await catalogue.get_media(row.id)).state for row in (first, second)} == {
            State.HELD}

    async def test_retry_counts_and_delays(self, catalogue: Catalogue) -> None:
        """A retry puts the row back to pending, counts the attempt and sets when it is due."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        await catalogue.record_retry(row.id, "http_503", NOW + 60, NOW + 1)
        await catalogue.record_retry(row.id, "timeout", NOW + 120, NOW + 2)
        media = await catalogue.get_media(row.id)
        assert (media.state, media.reason, media.attempts) == (State.PENDING, "timeout", 2)
        assert await catalogue.next_attempt_at() == NOW + 120
        assert await catalogue.media_in_states([State.PENDING], limit=5, now=NOW + 119) == []

    async def test_defer_keeps_state_and_attempts(self, catalogue: Catalogue) -> None:
        """defer changes when a row is due, not its state or attempts."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        await catalogue.record_download(row.id, sha("A"), 1, NOW)
        await catalogue.defer(row.id, "host_busy", NOW + 30, NOW)
        media = await catalogue.get_media(row.id)
        assert (media.state, media.reason, media.attempts) == (State.DOWNLOADED, "host_busy", 0)
        assert await catalogue.media_in_states([State.DOWNLOADED], limit=5, now=NOW) == []

    async def test_reject_without_content(self, catalogue: Catalogue) -> None:
        """A permanent failure before download rejects only that row."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        await catalogue.reject(row.id, "http_404", NOW)
        media = await catalogue.get_media(row.id)
        assert (media.state, media.reason, media.attempts) == (State.REJECTED, "http_404", 1)

    async def test_reject_content_rejects_its_unfinished_rows(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Rejecting content rejects every unfinished row carrying it, not finished ones."""
        first, second = await catalogue.add_media(
            [ref("https://e.org/a.jpg"), ref("https://e.org/b.jpg")], NOW)
        await catalogue.record_download(first.id, sha("X"), 1, NOW)
        await catalogue.record_download(second.id, sha("X"), 1, NOW)
        await catalogue.reject(first.id, "decode_error", NOW, sha256=sha("X"))
        assert (await catalogue.get_media(second.id)).state is State.REJECTED
        assert (await catalogue.get_blob(sha("X"))).placement is None
        row = await catalogue.fetch_one("SELECT placement FROM blobs WHERE sha256 = ?", (sha("X"),))
        assert row is not None and row["placement"] == "rejected"

    async def test_reject_never_unfiles_filed_content(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """A failing repost of bytes already filed rejects only its own row; the content and
        its other rows stay filed (reconcile would otherwise delete the visible image)."""
        filed = await file_media("https://e.org/a.jpg", "X")
        repost, waiting = await catalogue.add_media(
            [ref("https://e.org/repost.jpg"), ref("https://e.org/copy.jpg")], NOW)
        await catalogue.record_download(repost.id, sha("X"), 1, NOW)
        await catalogue.record_download(waiting.id, sha("X"), 1, NOW)
        await catalogue.reject(repost.id, "internal_error: boom", NOW, sha256=sha("X"))
        assert (await catalogue.get_media(repost.id)).state is State.REJECTED
        assert (await catalogue.get_media(filed.id)).state is State.LIBRARY
        assert (await catalogue.get_blob(sha("X"))).placement is Placement.LIBRARY
        assert (await catalogue.get_media(waiting.id)).state is not State.REJECTED

    async def test_unknown_media_id(self, catalogue: Catalogue) -> None:
        """get_media of an unknown id raises UnknownMediaError."""
        with pytest.raises(UnknownMediaError):
            await catalogue.get_media(12345)


class TestClassifyAndPlace:
    """record_decoded, record_scores, record_placement(s), scores and flags."""

    async def test_stages_move_the_row(self, catalogue: Catalogue) -> None:
        """decoded → classified → final, with blob metadata, scores and features stored."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg", flags=("f:1",))], NOW)
        await catalogue.record_download(row.id, sha("A"), 10, NOW)
        await catalogue.record_decoded(row.id, sha("A"), format="PNG", width=640, height=480,
                                       extension=".png", phash="ab" * 8, now=NOW)
        assert (await catalogue.get_media(row.id)).state is State.DECODED
        blob = await catalogue.get_blob(sha("A"))
        assert (blob.format, blob.width, blob.height, blob.extension) == ("PNG", 640, 480, ".png")
        await catalogue.record_scores([(row.id, sha("A"), {"nsfw": 0.25, "cat": 0.75},
                                        b"\x01\x02")], "v7", "open_nsfw", NOW)
        assert (await catalogue.get_media(row.id)).state is State.CLASSIFIED
        assert await catalogue.scores_for(sha("A")) == {"nsfw": 0.25, "cat": 0.75}
        assert await catalogue.scores_for(sha("A"), "other") == {}
        assert await catalogue.features_for("open_nsfw") == {sha("A"): b"\x01\x02"}
        assert await catalogue.flags_for(sha("A")) == ("f:1",)
        await catalogue.record_placement(sha("A"), Placement.LIBRARY, "clean", ("cat",), NOW,
                                         media_id=row.id)
        media = await catalogue.get_media(row.id)
        assert (media.state, media.reason) == (State.LIBRARY, "clean")
        blob = await catalogue.get_blob(sha("A"))
        assert (blob.placement, blob.tags, blob.model_version) == (
            Placement.LIBRARY, ("cat",), "v7")
        assert await catalogue.spool_references() == set()

    async def test_rescoring_with_a_new_model_keeps_both(self, catalogue: Catalogue,
                                                         file_media: FileMedia) -> None:
        """Scores are kept per model version; scores_for defaults to the filing model."""
        media = await file_media("https://e.org/a.jpg", "A", scores={"nsfw": 0.1})
        assert media.sha256 is not None
        await catalogue.record_scores([(media.id, media.sha256, {"nsfw": 0.9}, None)], "v2",
                                      "open_nsfw", NOW)
        assert await catalogue.scores_for(media.sha256) == {"nsfw": 0.9}
        assert await catalogue.scores_for(media.sha256, "v1") == {"nsfw": 0.1}

    async def test_placement_moves_every_row_of_the_content(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Re-filing content moves every non-rejected row that carries it."""
        media = await file_media("https://e.org/a.jpg", "A")
        (copy,) = await catalogue.add_media([ref("https://e.org/copy.jpg")], NOW)
        await catalogue.record_download(copy.id, sha("A"), 1, NOW)
        await catalogue.record_placement(sha("A"), Placement.QUARANTINE, "score", (), NOW)
        for row_id in (media.id, copy.id):
            assert (await catalogue.get_media(row_id)).state is State.QUARANTINE

    async def test_record_placements_in_one_transaction(
            self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Many re-filings are committed together, final rows following their blobs."""
        first = await file_media("https://e.org/a.jpg", "A")
        second = await file_media("https://e.org/b.jpg", "B", placement=Placement.QUARANTINE)
        await catalogue.record_placements([
            (sha("A"), Placement.QUARANTINE, "score: nsfw", ()),
            (sha("B"), Placement.LIBRARY, "human_label", ("cat", "megane")),
        ], NOW + 5)
        assert (await catalogue.get_media(first.id)).state is State.QUARANTINE
        assert (await catalogue.get_media(second.id)).reason == "human_label"
        assert (await catalogue.get_blob(sha("B"))).tags == ("cat", "megane")

    async def test_flags_union_over_urls(self, catalogue: Catalogue) -> None:
        """flags_for unites the flags of every URL that carried the content."""
        first, second = await catalogue.add_media([
            ref("https://e.org/a.jpg", flags=("b:rating:q",)),
            ref("https://e.org/b.jpg", flags=("a:sensitive", "b:rating:q")),
        ], NOW)
        await catalogue.record_download(first.id, sha("A"), 1, NOW)
        await catalogue.record_download(second.id, sha("A"), 1, NOW)
        assert await catalogue.flags_for(sha("A")) == ("a:sensitive", "b:rating:q")


class TestResolveSha:
    """resolve_sha: a unique prefix of hex digits names one stored image."""

    async def test_unique_prefix(self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """A unique prefix, in any case and with spaces around, resolves to the full hash."""
        await file_media("https://e.org/a.jpg", "A")
        full = sha("A")
        assert await catalogue.resolve_sha(full) == full
        assert await catalogue.resolve_sha(f"  {full[:6].upper()} ") == full

    async def test_unknown_prefix(self, catalogue: Catalogue) -> None:
        """A prefix nothing matches raises UnknownMediaError pointing at the list commands."""
        with pytest.raises(UnknownMediaError, match=r"no stored image.*megane media list"):
            await catalogue.resolve_sha("abc123")

    async def test_ambiguous_prefix(self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """A prefix shared by two images is refused as ambiguous."""
        contents = {}
        for index in range(64):
            digest = sha(str(index))
            if digest[0] in contents:
                other = contents[digest[0]]
                break
            contents[digest[0]] = str(index)
        await file_media("https://e.org/1.jpg", other)
        await file_media("https://e.org/2.jpg", str(index))
        with pytest.raises(UnknownMediaError, match="ambiguous"):
            await catalogue.resolve_sha(digest[0])

    @pytest.mark.parametrize("prefix", ["", "   ", "xyz", "ab%", "ab_c", "'; DROP TABLE blobs;--"])
    async def test_not_hex(self, catalogue: Catalogue, file_media: FileMedia,
                           prefix: str) -> None:
        """Empty or non-hex input (including LIKE wildcards) is refused before any query."""
        await file_media("https://e.org/a.jpg", "A")
        with pytest.raises(UnknownMediaError, match="not a sha256"):
            await catalogue.resolve_sha(prefix)

    async def test_get_blob_unknown(self, catalogue: Catalogue) -> None:
        """get_blob of an unknown hash raises UnknownMediaError."""
        with pytest.raises(UnknownMediaError):
            await catalogue.get_blob(sha("nothing"))


class TestLabels:
    """Human and source labels."""

    async def test_latest_human_label_wins(self, catalogue: Catalogue,
                                           file_media: FileMedia) -> None:
        """The latest human label per image and tag is the one in force; source labels are not."""
        await file_media("https://e.org/a.jpg", "A")
        await catalogue.add_label(sha("A"), "nsfw", True, origin="human", who="ann", now=NOW)
        await catalogue.add_label(sha("A"), "nsfw", False, origin="human", who="bob", now=NOW + 1)
        await catalogue.add_label(sha("A"), "cat", True, origin="source", who=None, now=NOW)
        await catalogue.add_label(sha("A"), "megane", True, origin="human", who="ann", now=NOW)
        assert await catalogue.human_labels_for(sha("A")) == {"nsfw": False, "megane": True}
        assert await catalogue.human_labels() == {sha("A"): {"nsfw": False, "megane": True}}
        assert await catalogue.label_counts() == {"nsfw": {"yes": 0, "no": 1},
                                                  "megane": {"yes": 1, "no": 0}}

    async def test_label_for_unknown_image_refused(self, catalogue: Catalogue) -> None:
        """A label must belong to a stored image (foreign key)."""
        with pytest.raises(sqlite3.IntegrityError):
            await catalogue.add_label(sha("ghost"), "nsfw", True, origin="human", who=None,
                                      now=NOW)

    async def test_bad_origin_refused(self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """A label's origin is human or source, nothing else."""
        await file_media("https://e.org/a.jpg", "A")
        with pytest.raises(sqlite3.IntegrityError):
            await catalogue.add_label(sha("A"), "nsfw", True, origin="robot", who=None, now=NOW)


class TestSources:
    """Per-source cursor and health."""

    async def test_register_poll_error(self, catalogue: Catalogue) -> None:
        """A source is registered once; polls and errors update its health."""
        state = await catalogue.ensure_source("feed", "rss", "https://e.org/feed")
        assert (state.cursor, state.consecutive_errors, state.items_total) == (None, 0, 0)
        await catalogue.record_poll("feed", cursor="c1", new_items=3, next_poll_at=NOW + 60,
                                    notice=None, now=NOW)
        await catalogue.record_poll_error("feed", "http_500", next_poll_at=NOW + 120, now=NOW + 1)
        await catalogue.record_poll_error("feed", "timeout", next_poll_at=NOW + 240, now=NOW + 2)
        state = await catalogue.source_state("feed")
        assert state is not None
        assert (state.cursor, state.items_total, state.last_new_at) == ("c1", 3, NOW)
        assert (state.last_error, state.consecutive_errors, state.next_poll_at) == (
            "timeout", 2, NOW + 240)
        await catalogue.record_poll("feed", cursor=None, new_items=0, next_poll_at=NOW + 600,
                                    notice="quiet", now=NOW + 3)
        state = await catalogue.source_state("feed")
        assert state is not None
        assert (state.cursor, state.last_error, state.consecutive_errors) == ("c1", None, 0)
        assert (state.empty_polls, state.notice, state.last_new_at) == (1, "quiet", NOW)

    async def test_cursor_kept_when_query_unchanged(self, catalogue: Catalogue) -> None:
        """Re-registering with the same query keeps the cursor."""
        await catalogue.ensure_source("feed", "rss", "q1")
        await catalogue.record_poll("feed", cursor="c1", new_items=1, next_poll_at=NOW,
                                    notice=None, now=NOW)
        assert (await catalogue.ensure_source("feed", "rss", "q1")).cursor == "c1"

    @pytest.mark.parametrize(("kind", "query_key"), [("rss", "q2"), ("mastodon", "q1")])
    async def test_cursor_reset_when_query_changes(self, catalogue: Catalogue, kind: str,
                                                   query_key: str) -> None:
        """A changed query (or kind) under the same name starts from a fresh cursor."""
        await catalogue.ensure_source("feed", "rss", "q1")
        await catalogue.record_poll("feed", cursor="c1", new_items=0, next_poll_at=NOW + 9,
                                    notice="n", now=NOW)
        state = await catalogue.ensure_source("feed", kind, query_key)
        assert (state.cursor, state.empty_polls, state.next_poll_at, state.notice) == (
            None, 0, None, None)
        assert (state.kind, state.query_key) == (kind, query_key)

    async def test_all_source_states_sorted(self, catalogue: Catalogue) -> None:
        """all_source_states lists sources by name; an unknown one is None."""
        for name in ("zeta", "alpha"):
            await catalogue.ensure_source(name, "rss", name)
        assert [state.name for state in await catalogue.all_source_states()] == ["alpha", "zeta"]
        assert await catalogue.source_state("nope") is None


class TestReporting:
    """media_list and the counts."""

    async def test_media_list_documented_keys(self, catalogue: Catalogue,
                                              file_media: FileMedia) -> None:
        """media_list has url, state, reason, sha256, source, flags and tags per URL, in order."""
        await file_media("https://e.org/a.jpg", "A", flags=("m:sensitive",),
                         placement=Placement.QUARANTINE)
        await catalogue.add_media([ref("https://e.org/b.jpg", tags=("cat",))], NOW)
        items = await catalogue.media_list()
        assert [item["url"] for item in items] == ["https://e.org/a.jpg", "https://e.org/b.jpg"]
        assert {"url", "state", "reason", "sha256", "source", "flags", "tags"} <= set(items[0])
        assert items[0]["flags"] == ["m:sensitive"] and items[0]["state"] == "quarantine"
        assert items[1] == {**items[1], "state": "pending", "sha256": None, "tags": ["cat"],
                            "source": "feed", "flags": []}
        assert [item["url"] for item in await catalogue.media_list("pending")] == [
            "https://e.org/b.jpg"]
        assert await catalogue.media_list("library") == []

    async def test_counts(self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Counts per state, per library tag (untagged included) and per source."""
        await file_media("https://e.org/a.jpg", "A", tags=("cat", "megane"))
        await file_media("https://e.org/b.jpg", "B", tags=())
        await file_media("https://e.org/c.jpg", "C", tags=("cat",))
        await file_media("https://e.org/d.jpg", "D", placement=Placement.QUARANTINE)
        await catalogue.add_media([ref("https://e.org/e.jpg", source="other")], NOW)
        assert await catalogue.counts_by_state() == {"library": 3, "quarantine": 1, "pending": 1}
        assert await catalogue.counts_by_tag() == {"cat": 2, "megane": 1, "untagged": 1}
        assert await catalogue.counts_by_source() == {
            "feed": {"library": 3, "quarantine": 1}, "other": {"pending": 1}}
        assert [blob.sha256 for blob in await catalogue.blobs_in(["quarantine"])] == [sha("D")]


class TestRefiling:
    """rescore_items and requeue_unclassified_held."""

    async def test_rescore_items(self, catalogue: Catalogue, file_media: FileMedia) -> None:
        """Every classified filed image comes with its scores, flags and human labels."""
        await file_media("https://e.org/a.jpg", "A", scores={"nsfw": 0.3, "cat": 0.9},
                         flags=("m:sensitive",), tags=("cat",))
        await file_media("https://e.org/b.jpg", "B", placement=Placement.HELD,
                         model_version=None)
        await catalogue.add_label(sha("A"), "cat", False, origin="human", who=None, now=NOW)
        (item,) = await catalogue.rescore_items()
        assert item.blob.sha256 == sha("A")
        assert item.scores == {"nsfw": 0.3, "cat": 0.9}
        assert item.flags == ("m:sensitive",)
        assert item.labels == {"cat": False}

    async def test_rescore_items_skip_rejected(self, catalogue: Catalogue) -> None:
        """Rejected content is never re-filed."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        await catalogue.record_download(row.id, sha("A"), 1, NOW)
        await catalogue.record_scores([(row.id, sha("A"), {"nsfw": 0.1}, None)], "v1", "b", NOW)
        await catalogue.reject(row.id, "x", NOW, sha256=sha("A"))
        assert await catalogue.rescore_items() == []

    async def test_requeue_unclassified_held(self, catalogue: Catalogue,
                                             file_media: FileMedia) -> None:
        """Held images never classified go back to `downloaded`; classified held ones stay."""
        never = await file_media("https://e.org/a.jpg", "A", placement=Placement.HELD,
                                 model_version=None)
        classified = await file_media("https://e.org/b.jpg", "B", placement=Placement.HELD)
        assert await catalogue.requeue_unclassified_held(NOW + 1) == 1
        assert (await catalogue.get_media(never.id)).state is State.DOWNLOADED
        assert (await catalogue.get_media(classified.id)).state is State.HELD
        assert await catalogue.requeue_unclassified_held(NOW + 2) == 0


class TestConcurrency:
    """Many tasks sharing one catalogue: each change stays one transaction."""

    async def test_many_tasks_take_items_through(self, catalogue: Catalogue) -> None:
        """Fifty tasks adding, downloading and filing at once leave a consistent catalogue."""

        async def one(index: int) -> None:
            (row,) = await catalogue.add_media([ref(f"https://e.org/{index}.jpg")], NOW)
            content = sha(str(index % 10))  # ten distinct contents, five URLs each
            await catalogue.record_download(row.id, content, 1, NOW)
            await catalogue.record_placement(content, Placement.LIBRARY, "clean", (), NOW,
                                             media_id=row.id)

        await asyncio.gather(*(one(index) for index in range(50)))
        assert await catalogue.counts_by_state() == {"library": 50}
        assert len(await catalogue.fetch_all("SELECT * FROM blobs")) == 10
        assert await catalogue.integrity_check() == "ok"

    async def test_failed_change_rolls_back_alone(self, catalogue: Catalogue) -> None:
        """A transaction that fails is rolled back whole while the others commit."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)

        async def failing() -> None:
            async with catalogue.transaction() as connection:
                await connection.execute("UPDATE media SET reason = 'half' WHERE id = ?",
                                         (row.id,))
                raise RuntimeError("boom")

        results = await asyncio.gather(
            failing(),
            *(catalogue.add_media([ref(f"https://e.org/{n}.jpg")], NOW) for n in range(10)),
            return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert (await catalogue.get_media(row.id)).reason is None
        assert len(await catalogue.media_list()) == 11

    async def test_cancelled_change_rolls_back(self, catalogue: Catalogue) -> None:
        """A task cancelled inside a transaction leaves nothing half-written."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        inside = asyncio.Event()
        never = asyncio.Event()

        async def cancelled() -> None:
            async with catalogue.transaction() as connection:
                await connection.execute("UPDATE media SET reason = 'half' WHERE id = ?",
                                         (row.id,))
                inside.set()
                await never.wait()

        task = asyncio.ensure_future(cancelled())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await catalogue.get_media(row.id)).reason is None
        await catalogue.add_media([ref("https://e.org/b.jpg")], NOW)
        assert len(await catalogue.media_list()) == 2

    async def test_readers_do_not_see_uncommitted_changes(self, catalogue: Catalogue) -> None:
        """A reader never sees a change another task has not committed."""
        (row,) = await catalogue.add_media([ref("https://e.org/a.jpg")], NOW)
        inside = asyncio.Event()
        finish = asyncio.Event()

        async def writer() -> None:
            async with catalogue.transaction() as connection:
                await connection.execute("UPDATE media SET state = 'library' WHERE id = ?",
                                         (row.id,))
                inside.set()
                await finish.wait()
                raise RuntimeError("rolled back")

        task = asyncio.ensure_future(writer())
        await inside.wait()
        reading = asyncio.ensure_future(catalogue.get_media(row.id))
        done, _ = await asyncio.wait([reading], timeout=1.0)
        assert not done, "a read must wait while another task's transaction is open"
        finish.set()
        with pytest.raises(RuntimeError):
            await task
        seen = await reading
        assert seen.state is State.PENDING, "the reader saw a state that was rolled back"


class TestMigrations:
    async def test_a_version_1_catalogue_is_migrated_in_place(self, tmp_path: Path) -> None:
        """Opening a schema-1 catalogue adds first_poll_at, filled from last_poll_at."""
        import sqlite3

        from storage.schema import MIGRATIONS, SCHEMA_VERSION

        path = tmp_path / "catalogue.sqlite"
        with sqlite3.connect(path) as connection:
            for statement in MIGRATIONS[0]:
                connection.execute(statement)
            connection.execute("PRAGMA user_version = 1")
            connection.execute(
                "INSERT INTO sources (name, kind, query_key, last_poll_at) VALUES (?, ?, ?, ?)",
                ("feed", "rss", "q", 1234.5))
        connection.close()

        catalogue = await Catalogue.open(path)
        try:
            assert await catalogue.schema_version() == SCHEMA_VERSION >= 2
            state = await catalogue.source_state("feed")
            assert state is not None and state.first_poll_at == 1234.5
        finally:
            await catalogue.close()
