"""The SQLite catalogue: the durable queue of SPEC §7 and the record of every stored image.

One aiosqlite connection per process (WAL, foreign keys, a busy timeout so a second
process — a CLI command beside the daemon — waits instead of failing). Every state change
is its own short transaction, so a `kill -9` at any moment leaves rows that a restart
resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage.errors import CatalogueError, UnknownMediaError
from storage.records import BlobRow, MediaRef, MediaRow, Placement, State
from storage.redact import redact, redact_value
from storage.schema import MIGRATIONS, SCHEMA_VERSION
from storage.untrusted import (
    capped_fields,
    capped_url,
    storable_cursor,
    storable_field,
    storable_message,
    storable_url,
    url_problem,
)

BUSY_TIMEOUT_MS = 15_000
PRIVATE_FILE_MODE = 0o600
# No retry is ever scheduled further ahead than this; a row due later than now + this was
# scheduled by a clock that has since jumped back, and is due now.
MAX_RETRY_WAIT_S = 4500.0

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def _serialized(method: _Method) -> _Method:
    """Run a multi-statement change as one transaction, under the connection's lock."""

    @functools.wraps(method)
    async def wrapper(self: Catalogue, *args: Any, **kwargs: Any) -> Any:
        async with self._transaction():
            return await method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class SourceState:
    """A source's stored cursor and health."""

    name: str
    kind: str
    query_key: str
    cursor: str | None
    last_poll_at: float | None
    last_success_at: float | None
    last_new_at: float | None
    last_error: str | None
    last_error_at: float | None
    consecutive_errors: int
    empty_polls: int
    next_poll_at: float | None
    notice: str | None
    items_total: int
    first_poll_at: float | None = None


@dataclass(frozen=True)
class RescoreItem:
    """What re-filing one stored image needs: its current filing, scores and source flags."""

    blob: BlobRow
    scores: dict[str, float]
    flags: tuple[str, ...]
    labels: dict[str, bool]
    source_tags: tuple[str, ...] = ()


def _loads_tuple(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()


def _make_private(path: Path) -> None:
    """Create `path` as 0600 if missing; make it and its -wal/-shm 0600 if they exist."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    for companion in (path, path.with_name(path.name + "-wal"),
                      path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, PRIVATE_FILE_MODE)


# A media row's reason once it is recorded as a copy of stored content; re-filing the
# content changes the row's state but keeps this reason.
_KEEP_COPY_REASON = "reason GLOB 'duplicate_of:*' OR reason GLOB 'near_duplicate_of:*'"


def _media_row(row: sqlite3.Row) -> MediaRow:
    return MediaRow(
        id=row["id"], url=row["url"], source=row["source"], state=State(row["state"]),
        reason=row["reason"], sha256=row["sha256"], post_url=row["post_url"],
        author=row["author"], flags=_loads_tuple(row["flags"]), tags=_loads_tuple(row["tags"]),
        attempts=row["attempts"], created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _blob_row(row: sqlite3.Row) -> BlobRow:
    placement = row["placement"]
    return BlobRow(
        sha256=row["sha256"], size=row["size"], format=row["format"], width=row["width"],
        height=row["height"], extension=row["extension"],
        placement=Placement(placement) if placement in Placement.__members__.values() else None,
        reason=row["reason"], tags=_loads_tuple(row["tags"]),
        model_version=row["model_version"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _admissible(ref: MediaRef) -> tuple[MediaRef, str | None]:
    """`ref` with every field storable (see storage.untrusted), and why it is refused, if so.

    A URL that does not parse or is not http(s)/file still gets a row: rejected, with the
    reason ``bad_url`` or ``bad_scheme``, and the URL capped in length.
    """
    url = storable_url(ref.url)
    problem = url_problem(url)
    if problem is not None:
        url = capped_url(url)
    dedup_key = storable_url(ref.dedup_key) if ref.dedup_key is not None else None
    if problem is not None and dedup_key is not None:
        dedup_key = capped_url(dedup_key)
    md5 = storable_field(ref.md5)
    if md5 is not None and not md5.isascii():
        md5 = None
    cleaned = replace(
        ref, url=url, dedup_key=dedup_key, md5=md5,
        **capped_fields(
            author=storable_field(ref.author), posted_at=storable_field(ref.posted_at),
            post_url=storable_url(ref.post_url) if ref.post_url is not None else None,
            tags=ref.tags, flags=ref.flags, extra=ref.extra),
    )
    return cleaned, problem


class Catalogue:
    """Async access to `catalogue.sqlite`. Open with `await Catalogue.open(path)`."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        # One connection is shared by every task: a lock keeps each multi-statement
        # change one transaction (no task commits another's half-done work).
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                yield
                await self._db.commit()
            except sqlite3.OperationalError as error:
                await self._rollback_quietly()
                raise self._operational(error) from error
            except BaseException:
                await self._rollback_quietly()
                raise
            finally:
                self._owner = None

    async def _rollback_quietly(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.rollback()

    def _operational(self, error: sqlite3.OperationalError) -> CatalogueError:
        hint = (" (another process holds it locked; stop it or wait, then try again)"
                if "locked" in str(error) or "busy" in str(error) else "")
        return CatalogueError(f"{self.path}: {error}{hint}")

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Readers wait for another task's open transaction, so they never see half of it."""
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            try:
                yield
            except sqlite3.OperationalError as error:
                raise self._operational(error) from error

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Catalogue:
        """Open (creating and migrating as needed) the catalogue at `path`.

        The file and its -wal/-shm are private (0600) whatever the umask: SQLite creates
        the -wal/-shm files with the database file's mode, so the file is made first.
        """
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
        except OSError as error:
            raise CatalogueError(f"{path}: cannot open the catalogue: {error}") from error
        connection = aiosqlite.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            await connection
        except BaseException as error:
            # Stop the worker thread (or it keeps the process alive at exit), and wait for
            # it, so it never reports back to an event loop that has closed meanwhile.
            started = connection._thread.is_alive()
            stopping = connection.stop()
            if stopping is not None and started:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stopping, 5.0)
            if isinstance(error, sqlite3.Error):
                raise CatalogueError(f"{path}: cannot open the catalogue: {error}") from error
            raise
        connection.row_factory = sqlite3.Row
        catalogue = cls(connection, path)
        try:
            await catalogue._prepare()
        except BaseException:
            await connection.close()
            raise
        return catalogue

    async def _prepare(self) -> None:
        try:
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.OperationalError as error:
            raise CatalogueError(
                f"{self.path}: {error} (is another process holding the catalogue locked?)"
            ) from error
        except sqlite3.DatabaseError as error:
            raise CatalogueError(f"{self.path}: not a usable catalogue: {error}") from error

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise CatalogueError(
                f"{self.path}: schema version {version} is newer than this program's "
                f"{SCHEMA_VERSION}; upgrade megane-crawler"
            )
        for number in range(version, SCHEMA_VERSION):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                if await self.schema_version() > number:
                    await self._db.execute("ROLLBACK")
                    continue
                for statement in MIGRATIONS[number]:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number + 1}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._db.close()

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._reading(), self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._reading(), self._db.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    # Public query seams for modules that keep their own SQL beside the catalogue
    # (review, training). Writes go through `transaction()` so they stay atomic.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._fetchall(sql, params)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return await self._fetchone(sql, params)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection's lock for one transaction; commit on success."""
        async with self._transaction():
            yield self._db

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._transaction():
            cursor = await self._db.execute(sql, params)
        return cursor.rowcount

    # -- the queue ---------------------------------------------------------------

    @_serialized
    async def add_media(self, refs: Iterable[MediaRef], now: float) -> list[MediaRow]:
        """Record new media URLs; returns the rows created (known URLs/keys are skipped).

        A ref with `skip_reason` is recorded straight as rejected. A ref whose `md5` or
        dedup key matches stored content is recorded with the state of that content
        without downloading it again.
        """
        created: list[int] = []
        for ref in refs:
            ref, problem = _admissible(ref)
            existing = await self._fetchone(
                "SELECT id FROM media WHERE url = ? OR dedup_key = ?", (ref.url, ref.key)
            )
            if existing is not None:
                continue
            state, reason, sha256 = State.PENDING, None, None
            if problem is not None:
                state, reason = State.REJECTED, problem
            elif ref.skip_reason:
                state, reason = State.REJECTED, storable_message(redact(ref.skip_reason))
            elif ref.md5 and not ref.flags:
                # A flagged URL is downloaded and decided even when its bytes are known.
                known = await self._known_by_md5(ref.md5)
                if known is not None:
                    state, reason, sha256 = known
            cursor = await self._db.execute(
                """INSERT OR IGNORE INTO media (url, dedup_key, source, post_url, author,
                   posted_at, md5, flags, tags, extra, state, reason, sha256, created_at,
                   updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                # The URL is what is fetched and stays as given; the post URL is only shown.
                (ref.url, ref.key, ref.source,
                 redact(ref.post_url) if ref.post_url is not None else None,
                 ref.author, ref.posted_at,
                 ref.md5.lower() if ref.md5 else None, json.dumps(list(ref.flags)),
                 json.dumps(list(ref.tags)), json.dumps(redact_value(dict(ref.extra))),
                 state.value, reason,
                 sha256, now, now),
            )
            if cursor.rowcount and cursor.lastrowid is not None:
                created.append(cursor.lastrowid)
        await self._db.commit()
        if not created:
            return []
        marks = ",".join("?" * len(created))
        rows = await self._fetchall(f"SELECT * FROM media WHERE id IN ({marks})", created)
        return [_media_row(row) for row in rows]

    async def _known_by_md5(self, md5: str) -> tuple[State, str, str | None] | None:
        row = await self._fetchone(
            """SELECT m.sha256, b.placement, b.reason FROM media m
               JOIN blobs b ON b.sha256 = m.sha256
               WHERE m.md5 = ? AND b.placement IS NOT NULL LIMIT 1""",
            (md5.lower(),),
        )
        if row is None:
            return None
        placement = row["placement"]
        if placement == "rejected":
            return State.REJECTED, f"known_rejected_content: {row['reason']}", None
        return State(placement), f"duplicate_of:{row['sha256']}", row["sha256"]

    async def media_in_states(
        self, states: Sequence[State], *, limit: int, now: float | None = None,
        exclude: Iterable[int] = (),
    ) -> list[MediaRow]:
        """Rows in `states`, oldest first; with `now`, only those due (next_attempt_at)."""
        excluded = list(exclude)
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM media WHERE state IN ({marks})"
        params: list[Any] = [state.value for state in states]
        if now is not None:
            sql += " AND (next_attempt_at <= ? OR next_attempt_at > ?)"
            params.extend((now, now + MAX_RETRY_WAIT_S))
        if excluded:
            sql += f" AND id NOT IN ({','.join('?' * len(excluded))})"
            params.extend(excluded)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [_media_row(row) for row in await self._fetchall(sql, params)]

    async def count_unfinished(self) -> int:
        row = await self._fetchone(
            "SELECT count(*) FROM media WHERE state IN "
            "('pending', 'downloaded', 'decoded', 'classified')"
        )
        return int(row[0]) if row else 0

    async def count_due(self, now: float) -> int:
        """Unfinished rows that can be worked on now (not waiting out a retry backoff)."""
        row = await self._fetchone(
            "SELECT count(*) FROM media WHERE state IN "
            "('pending', 'downloaded', 'decoded', 'classified') "
            "AND (next_attempt_at <= ? OR next_attempt_at > ?)",
            (now, now + MAX_RETRY_WAIT_S),
        )
        return int(row[0]) if row else 0

    async def next_attempt_at(self, now: float | None = None) -> float | None:
        """The earliest time an unfinished row becomes due, if any (never beyond the cap)."""
        row = await self._fetchone(
            "SELECT min(next_attempt_at) FROM media WHERE state IN "
            "('pending', 'downloaded', 'decoded', 'classified')"
        )
        if not row or row[0] is None:
            return None
        due = float(row[0])
        return min(due, now + MAX_RETRY_WAIT_S) if now is not None else due

    async def get_media(self, media_id: int) -> MediaRow:
        row = await self._fetchone("SELECT * FROM media WHERE id = ?", (media_id,))
        if row is None:
            raise UnknownMediaError(f"no media row with id {media_id}")
        return _media_row(row)

    @_serialized
    async def record_download(
        self, media_id: int, sha256: str, size: int, now: float
    ) -> BlobRow | None:
        """Mark a row downloaded; returns the existing blob when this content is known.

        When the content is already filed (or rejected), the row goes straight to that
        final state and the caller drops its spool file. A URL carrying an NSFW flag, or
        bytes another row is still processing, go on as new content instead: the pipeline
        then decides with every URL's flags and places idempotently.
        """
        existing = await self._fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if existing is not None and existing["placement"] not in (None, "rejected"):
            # Known, filed content is a plain duplicate only when nothing could change its
            # filing: no other row still working on the same bytes (it may be mid-placement
            # and need spool/), and no NSFW flag on this URL that the filing has not seen.
            busy = await self._fetchone(
                """SELECT 1 FROM media WHERE sha256 = ? AND id != ? AND state IN
                   ('downloaded', 'decoded', 'classified') LIMIT 1""",
                (sha256, media_id),
            )
            flags = await self._fetchone("SELECT flags FROM media WHERE id = ?", (media_id,))
            if busy is not None or (flags is not None and _loads_tuple(flags["flags"])):
                existing = None
        if existing is not None and existing["placement"] is None:
            existing = None  # another row is processing the same bytes: go on as new
        if existing is None:
            await self._db.execute(
                """INSERT OR IGNORE INTO blobs (sha256, size, created_at, updated_at)
                   VALUES (?, ?, ?, ?)""",
                (sha256, size, now, now),
            )
        blob = _blob_row(existing) if existing is not None else None
        raw_placement = existing["placement"] if existing is not None else None
        if raw_placement == "rejected":
            await self._db.execute(
                """UPDATE media SET state = 'rejected', reason = ?, sha256 = ?,
                   updated_at = ? WHERE id = ?""",
                (existing["reason"] if existing else None, sha256, now, media_id),
            )
        elif blob is not None and blob.placement is not None:
            await self._db.execute(
                """UPDATE media SET state = ?, reason = ?, sha256 = ?,
                   updated_at = ? WHERE id = ?""",
                (blob.placement.value, f"duplicate_of:{sha256}", sha256, now, media_id),
            )
        else:
            await self._db.execute(
                """UPDATE media SET state = 'downloaded', sha256 = ?, reason = NULL,
                   updated_at = ? WHERE id = ?""",
                (sha256, now, media_id),
            )
        await self._db.commit()
        if raw_placement is not None:
            return blob if blob is not None else _blob_row(existing)  # type: ignore[arg-type]
        return None

    async def record_retry(
        self, media_id: int, reason: str, next_attempt_at: float, now: float
    ) -> None:
        """A transient failure: back to pending, one attempt more, due at `next_attempt_at`."""
        reason = redact(reason)
        await self._write(
            """UPDATE media SET state = 'pending', reason = ?, attempts = attempts + 1,
               next_attempt_at = ?, updated_at = ? WHERE id = ?""",
            (storable_message(reason), next_attempt_at, now, media_id),
        )

    async def defer(self, media_id: int, reason: str, next_attempt_at: float, now: float) -> None:
        """Keep the row's state but try it again no earlier than `next_attempt_at`."""
        reason = redact(reason)
        await self._write(
            "UPDATE media SET reason = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (storable_message(reason), next_attempt_at, now, media_id),
        )

    @_serialized
    async def reject(self, media_id: int, reason: str, now: float,
                     sha256: str | None = None) -> None:
        """A permanent failure: the row is final as rejected; its content, if any, too."""
        # an error text may quote credentials or undecodable bytes
        reason = storable_message(redact(reason)) or ""
        if sha256 is not None:
            await self._db.execute(
                """UPDATE blobs SET placement = 'rejected', reason = ?, updated_at = ?
                   WHERE sha256 = ?""",
                (reason, now, sha256),
            )
            await self._db.execute(
                """UPDATE media SET state = 'rejected', reason = ?, updated_at = ?
                   WHERE sha256 = ? AND state IN ('downloaded', 'decoded', 'classified')""",
                (reason, now, sha256),
            )
        await self._db.execute(
            """UPDATE media SET state = 'rejected', reason = ?, attempts = attempts + 1,
               updated_at = ? WHERE id = ?""",
            (reason, now, media_id),
        )

    @_serialized
    async def record_decoded(
        self, media_id: int, sha256: str, *, format: str, width: int, height: int,
        extension: str, phash: str | None, now: float,
    ) -> None:
        await self._db.execute(
            """UPDATE blobs SET format = ?, width = ?, height = ?, extension = ?, phash = ?,
               updated_at = ? WHERE sha256 = ?""",
            (format, width, height, extension, phash, now, sha256),
        )
        await self._db.execute(
            "UPDATE media SET state = 'decoded', updated_at = ? WHERE id = ?", (now, media_id)
        )

    @_serialized
    async def record_scores(
        self,
        items: Sequence[tuple[int, str, Mapping[str, float], bytes | None]],
        model_version: str,
        backbone: str,
        now: float,
    ) -> None:
        """Store the scores (and features) of a batch and mark its rows classified."""
        for media_id, sha256, scores, features in items:
            await self._db.executemany(
                """INSERT OR REPLACE INTO scores (sha256, model_version, tag, score)
                   VALUES (?, ?, ?, ?)""",
                [(sha256, model_version, tag, float(score)) for tag, score in scores.items()],
            )
            if features is not None:
                await self._db.execute(
                    "INSERT OR REPLACE INTO features (sha256, backbone, vector) VALUES (?, ?, ?)",
                    (sha256, backbone, features),
                )
            await self._db.execute(
                "UPDATE blobs SET model_version = ?, updated_at = ? WHERE sha256 = ?",
                (model_version, now, sha256),
            )
            await self._db.execute(
                "UPDATE media SET state = 'classified', updated_at = ? WHERE id = ?",
                (now, media_id),
            )
        await self._db.commit()

    async def scores_for(self, sha256: str, model_version: str | None = None) -> dict[str, float]:
        """Stored scores of one image (of `model_version`, default the one it was filed by)."""
        if model_version is None:
            row = await self._fetchone(
                "SELECT model_version FROM blobs WHERE sha256 = ?", (sha256,)
            )
            model_version = row["model_version"] if row else None
        rows = await self._fetchall(
            "SELECT tag, score FROM scores WHERE sha256 = ? AND model_version = ?",
            (sha256, model_version),
        )
        return {row["tag"]: row["score"] for row in rows}

    async def source_tags_for(self, sha256: str) -> tuple[str, ...]:
        """The union of source tags of every URL that carried this content (or a near-copy)."""
        rows = await self._fetchall(
            "SELECT tags FROM media WHERE sha256 = ? AND tags != '[]'", (sha256,))
        tags: set[str] = set()
        for row in rows:
            tags.update(_loads_tuple(row["tags"]))
        return tuple(sorted(tags))

    async def flags_for(self, sha256: str) -> tuple[str, ...]:
        """The union of source flags of every URL that carried this content."""
        rows = await self._fetchall("SELECT flags FROM media WHERE sha256 = ?", (sha256,))
        flags: set[str] = set()
        for row in rows:
            flags.update(_loads_tuple(row["flags"]))
        return tuple(sorted(flags))

    @_serialized
    async def record_placement(
        self, sha256: str, placement: Placement, reason: str, tags: Sequence[str],
        now: float, media_id: int | None = None,
    ) -> None:
        """Commit where an image was filed; every row carrying it becomes final there."""
        await self._db.execute(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'""",
            (placement.value, reason, json.dumps(list(tags)), now, sha256),
        )
        # The first row to carry the content gets the decision's reason; every other row
        # (the same bytes from another URL) is `duplicate_of:<sha256>`, and a row already
        # recorded as a copy keeps its reason.
        await self._db.execute(
            f"""UPDATE media SET state = :state, updated_at = :now, reason = CASE
                  WHEN {_KEEP_COPY_REASON} THEN reason
                  WHEN id = (SELECT min(id) FROM media AS first WHERE first.sha256 = :sha
                             AND first.state NOT IN ('pending', 'rejected')
                             AND (first.reason IS NULL OR NOT (
                                 first.reason GLOB 'duplicate_of:*'
                                 OR first.reason GLOB 'near_duplicate_of:*')))
                    THEN :reason
                  ELSE 'duplicate_of:' || :sha END
               WHERE sha256 = :sha AND (state IN ('downloaded', 'decoded', 'classified',
               'library', 'quarantine', 'held') OR id = :id)""",
            {"state": placement.value, "reason": reason, "now": now, "sha": sha256,
             "id": media_id if media_id is not None else -1},
        )
        await self._db.commit()

    async def get_blob(self, sha256: str) -> BlobRow:
        row = await self._fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if row is None:
            raise UnknownMediaError(f"no stored image with sha256 {sha256}")
        return _blob_row(row)

    async def resolve_sha(self, prefix: str) -> str:
        """The full sha256 of the stored image whose hash starts with `prefix`."""
        cleaned = prefix.strip().lower()
        if not cleaned or any(ch not in "0123456789abcdef" for ch in cleaned):
            raise UnknownMediaError(f"{prefix!r} is not a sha256 (prefix) of hex digits")
        rows = await self._fetchall(
            "SELECT sha256 FROM blobs WHERE sha256 LIKE ? LIMIT 2", (cleaned + "%",)
        )
        if not rows:
            raise UnknownMediaError(
                f"no stored image has a sha256 starting with {cleaned!r}; "
                "see `megane media list` or `megane quarantine list`"
            )
        if len(rows) > 1:
            raise UnknownMediaError(
                f"sha256 prefix {cleaned!r} is ambiguous; give more digits"
            )
        return str(rows[0]["sha256"])

    # -- re-filing ---------------------------------------------------------------

    async def rescore_items(self) -> list[RescoreItem]:
        """Every classified, filed image with its scores, source flags and tags, human labels."""
        blobs = await self._fetchall(
            """SELECT * FROM blobs WHERE placement IN ('library', 'quarantine', 'held')
               AND model_version IS NOT NULL"""
        )
        scores: dict[str, dict[str, float]] = {}
        for row in await self._fetchall(
            """SELECT s.sha256, s.tag, s.score FROM scores s JOIN blobs b
               ON b.sha256 = s.sha256 AND b.model_version = s.model_version"""
        ):
            scores.setdefault(row["sha256"], {})[row["tag"]] = row["score"]
        flags: dict[str, set[str]] = {}
        for row in await self._fetchall(
            "SELECT sha256, flags FROM media WHERE sha256 IS NOT NULL AND flags != '[]'"
        ):
            flags.setdefault(row["sha256"], set()).update(_loads_tuple(row["flags"]))
        source_tags: dict[str, set[str]] = {}
        for row in await self._fetchall(
            "SELECT sha256, tags FROM media WHERE sha256 IS NOT NULL AND tags != '[]'"
        ):
            source_tags.setdefault(row["sha256"], set()).update(_loads_tuple(row["tags"]))
        labels = await self.human_labels()
        return [
            RescoreItem(
                blob=_blob_row(row), scores=scores.get(row["sha256"], {}),
                flags=tuple(sorted(flags.get(row["sha256"], ()))),
                labels=labels.get(row["sha256"], {}),
                source_tags=tuple(sorted(source_tags.get(row["sha256"], ()))),
            )
            for row in blobs
        ]

    @_serialized
    async def record_decisions(
        self, decisions: Sequence[tuple[str, Placement, str, Sequence[str]]], now: float
    ) -> set[str]:
        """Commit where images are about to be filed, before their files move.

        Committing the decision first means a file never appears under library/ ahead of
        the catalogue saying so; a crash between the two is repaired by re-placing every
        image whose links disagree with its committed placement (rescore.reconcile).
        """
        await self._db.executemany(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'""",
            [(p.value, reason, json.dumps(list(tags)), now, sha)
             for sha, p, reason, tags in decisions],
        )
        # Content rejected meanwhile (deleted by a reviewer) keeps that verdict: say which.
        refused: set[str] = set()
        shas = [sha for sha, *_ in decisions]
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            rows = await self._fetchall(
                f"SELECT sha256 FROM blobs WHERE placement = 'rejected' "
                f"AND sha256 IN ({','.join('?' * len(chunk))})", chunk)
            refused.update(row["sha256"] for row in rows)
        return refused

    @_serialized
    async def record_placements(
        self, changes: Sequence[tuple[str, Placement, str, Sequence[str]]], now: float
    ) -> None:
        """Commit many re-filings in one transaction (rescore)."""
        await self._db.executemany(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'""",
            [(p.value, reason, json.dumps(list(tags)), now, sha) for sha, p, reason, tags in changes],
        )
        await self._db.executemany(
            f"""UPDATE media SET state = ?, updated_at = ?,
               reason = CASE WHEN {_KEEP_COPY_REASON} THEN reason ELSE ? END
               WHERE sha256 = ? AND state IN ('library', 'quarantine', 'held')""",
            [(p.value, now, reason, sha) for sha, p, reason, _ in changes],
        )
        await self._db.commit()

    # -- labels --------------------------------------------------------------------

    async def add_label(
        self, sha256: str, tag: str, value: bool, *, origin: str, who: str | None, now: float
    ) -> None:
        await self._write(
            """INSERT INTO labels (sha256, tag, value, origin, who, created_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (sha256, tag, int(value), origin, who, now),
        )

    async def human_labels(self) -> dict[str, dict[str, bool]]:
        """The latest human label per image and tag."""
        rows = await self._fetchall(
            """SELECT sha256, tag, value FROM labels WHERE origin = 'human' ORDER BY id"""
        )
        labels: dict[str, dict[str, bool]] = {}
        for row in rows:
            labels.setdefault(row["sha256"], {})[row["tag"]] = bool(row["value"])
        return labels

    async def human_labels_for(self, sha256: str) -> dict[str, bool]:
        rows = await self._fetchall(
            "SELECT tag, value FROM labels WHERE origin = 'human' AND sha256 = ? ORDER BY id",
            (sha256,),
        )
        return {row["tag"]: bool(row["value"]) for row in rows}

    @_serialized
    async def requeue_unclassified_held(self, now: float) -> int:
        """Held images that were never classified go back to the decode stage."""
        cursor = await self._db.execute(
            """UPDATE media SET state = 'downloaded', updated_at = ? WHERE state = 'held'
               AND sha256 IN (SELECT sha256 FROM blobs WHERE placement = 'held'
               AND model_version IS NULL)""",
            (now,),
        )
        await self._db.commit()
        return cursor.rowcount

    async def label_counts(self) -> dict[str, dict[str, int]]:
        """Per tag, how many images carry a yes/no human label (latest label wins)."""
        counts: dict[str, dict[str, int]] = {}
        for per_tag in (await self.human_labels()).values():
            for tag, value in per_tag.items():
                bucket = counts.setdefault(tag, {"yes": 0, "no": 0})
                bucket["yes" if value else "no"] += 1
        return counts

    # -- sources -------------------------------------------------------------------

    async def source_state(self, name: str) -> SourceState | None:
        row = await self._fetchone("SELECT * FROM sources WHERE name = ?", (name,))
        return SourceState(**dict(row)) if row is not None else None

    async def all_source_states(self) -> list[SourceState]:
        return [SourceState(**dict(row))
                for row in await self._fetchall("SELECT * FROM sources ORDER BY name")]

    async def ensure_source(self, name: str, kind: str, query_key: str) -> SourceState:
        """Register a source; reset its cursor when its query changed since last time.

        The query key is stored redacted (a feed URL may carry ``?token=``); a change of
        credentials alone therefore keeps the cursor. A folder path may hold undecodable
        bytes (stored percent-encoded).
        """
        query_key = storable_url(redact(query_key))
        state = await self.source_state(name)
        if state is None:
            await self._write(
                "INSERT INTO sources (name, kind, query_key) VALUES (?, ?, ?)",
                (name, kind, query_key),
            )
        elif state.query_key != query_key or state.kind != kind:
            await self._write(
                """UPDATE sources SET kind = ?, query_key = ?, cursor = NULL, empty_polls = 0,
                   next_poll_at = NULL, notice = NULL WHERE name = ?""",
                (kind, query_key, name),
            )
        result = await self.source_state(name)
        assert result is not None
        return result

    async def record_poll(
        self, name: str, *, cursor: str | None, new_items: int, next_poll_at: float,
        notice: str | None, now: float,
    ) -> None:
        await self._write(
            """UPDATE sources SET cursor = COALESCE(?, cursor), last_poll_at = ?,
               first_poll_at = COALESCE(first_poll_at, ?),
               last_success_at = ?, last_new_at = CASE WHEN ? > 0 THEN ? ELSE last_new_at END,
               consecutive_errors = 0, last_error = NULL,
               empty_polls = CASE WHEN ? > 0 THEN 0 ELSE empty_polls + 1 END,
               next_poll_at = ?, notice = ?, items_total = items_total + ? WHERE name = ?""",
            (storable_cursor(cursor), now, now, now, new_items, now, new_items, next_poll_at,
             storable_message(redact(notice)) if notice is not None else None, new_items, name),
        )

    async def record_poll_error(
        self, name: str, error: str, *, next_poll_at: float, now: float
    ) -> None:
        await self._write(
            """UPDATE sources SET last_poll_at = ?, first_poll_at = COALESCE(first_poll_at, ?),
               last_error = ?, last_error_at = ?,
               consecutive_errors = consecutive_errors + 1, next_poll_at = ? WHERE name = ?""",
            (now, now, storable_message(redact(error)), now, next_poll_at, name),
        )

    # -- reporting -----------------------------------------------------------------

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT state, count(*) AS n FROM media GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    async def counts_by_tag(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self._fetchall(
            "SELECT tags FROM blobs WHERE placement = 'library'"
        ):
            for tag in _loads_tuple(row["tags"]) or ("untagged",):
                counts[tag] = counts.get(tag, 0) + 1
        return counts

    async def counts_by_source(self) -> dict[str, dict[str, int]]:
        rows = await self._fetchall(
            "SELECT source, state, count(*) AS n FROM media GROUP BY source, state"
        )
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["source"], {})[row["state"]] = row["n"]
        return counts

    async def media_list(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every media URL with its state, reason, sha256, source, flags and tags."""
        sql = "SELECT * FROM media"
        params: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            params = (state,)
        sql += " ORDER BY id"
        return [
            {
                "url": row["url"], "state": row["state"], "reason": row["reason"],
                "sha256": row["sha256"], "source": row["source"],
                "flags": list(_loads_tuple(row["flags"])),
                "tags": list(_loads_tuple(row["tags"])), "post_url": row["post_url"],
                "author": row["author"], "attempts": row["attempts"],
            }
            for row in await self._fetchall(sql, params)
        ]

    async def blobs_in(self, placements: Sequence[str]) -> list[BlobRow]:
        marks = ",".join("?" * len(placements))
        rows = await self._fetchall(
            f"SELECT * FROM blobs WHERE placement IN ({marks}) ORDER BY updated_at DESC",
            list(placements),
        )
        return [_blob_row(row) for row in rows]

    async def media_for_blob(self, sha256: str) -> list[MediaRow]:
        rows = await self._fetchall("SELECT * FROM media WHERE sha256 = ? ORDER BY id", (sha256,))
        return [_media_row(row) for row in rows]

    async def media_for_blobs(self, sha256s: Sequence[str]) -> dict[str, list[MediaRow]]:
        """The media rows of many images at once, by sha256 (rows in id order)."""
        found: dict[str, list[MediaRow]] = {sha: [] for sha in sha256s}
        for start in range(0, len(sha256s), 500):
            chunk = list(sha256s[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for row in await self._fetchall(
                f"SELECT * FROM media WHERE sha256 IN ({marks}) ORDER BY id", chunk
            ):
                found[row["sha256"]].append(_media_row(row))
        return found

    async def features_for(self, backbone: str) -> dict[str, bytes]:
        rows = await self._fetchall(
            "SELECT sha256, vector FROM features WHERE backbone = ?", (backbone,)
        )
        return {row["sha256"]: bytes(row["vector"]) for row in rows}

    async def spool_references(self) -> set[str]:
        """sha256 of rows whose file still waits in spool/ (not yet placed)."""
        rows = await self._fetchall(
            """SELECT DISTINCT sha256 FROM media WHERE sha256 IS NOT NULL
               AND state IN ('downloaded', 'decoded', 'classified')"""
        )
        return {row["sha256"] for row in rows}

    async def reset_unfinished_without_file(self, sha256: str, now: float) -> None:
        """Rows whose downloaded file vanished go back to pending (downloaded again)."""
        await self._write(
            """UPDATE media SET state = 'pending', sha256 = NULL, updated_at = ?
               WHERE sha256 = ? AND state IN ('downloaded', 'decoded', 'classified')""",
            (now, sha256),
        )
