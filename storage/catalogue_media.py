"""The catalogue's durable queue (SPEC §7): media rows from arrival to a final state.

A row is added pending, downloaded (or recorded straight as a copy of known content),
decoded, and retried, deferred or rejected on the way; every state change is its own short
transaction, so a `kill -9` at any moment leaves rows that a restart resumes from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from storage.catalogue_base import CatalogueBase, blob_row, loads_tuple, media_row, serialized
from storage.errors import UnknownMediaError
from storage.records import BlobRow, MediaRef, MediaRow, State
from storage.redact import redact, redact_value
from storage.untrusted import (
    capped_fields,
    capped_url,
    storable_field,
    storable_message,
    storable_url,
    url_problem,
)

# No retry is ever scheduled further ahead than this; a row due later than now + this was
# scheduled by a clock that has since jumped back, and is due now.
MAX_RETRY_WAIT_S = 4500.0


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


class MediaQueue(CatalogueBase):
    """Media rows: add, pick due work, record each stage, retry, defer, reject."""

    @serialized
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
        return [media_row(row) for row in rows]

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
        return [media_row(row) for row in await self._fetchall(sql, params)]

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
        return media_row(row)

    @serialized
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
            if busy is not None or (flags is not None and loads_tuple(flags["flags"])):
                existing = None
        if existing is not None and existing["placement"] is None:
            existing = None  # another row is processing the same bytes: go on as new
        if existing is None:
            await self._db.execute(
                """INSERT OR IGNORE INTO blobs (sha256, size, created_at, updated_at)
                   VALUES (?, ?, ?, ?)""",
                (sha256, size, now, now),
            )
        blob = blob_row(existing) if existing is not None else None
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
            return blob if blob is not None else blob_row(existing)  # type: ignore[arg-type]
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

    @serialized
    async def reject(self, media_id: int, reason: str, now: float,
                     sha256: str | None = None) -> None:
        """A permanent failure: the row is final as rejected; its content, if any, too."""
        # an error text may quote credentials or undecodable bytes
        reason = storable_message(redact(reason)) or ""
        filed = sha256 is not None and await self._fetchone(
            "SELECT 1 FROM blobs WHERE sha256 = ? AND placement IS NOT NULL", (sha256,))
        if sha256 is not None and not filed:
            # Only content not filed yet is rejected with its rows: a failing repost, or a
            # copy re-queued at start, must never un-file bytes another row already filed
            # (reconcile would then remove them from library/ and store/).
            await self._db.execute(
                """UPDATE blobs SET placement = 'rejected', reason = ?, updated_at = ?
                   WHERE sha256 = ? AND placement IS NULL""",
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

    @serialized
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

    @serialized
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
