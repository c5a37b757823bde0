"""Where stored images are filed: blobs, placements, re-filing (rescore)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from storage.catalogue_base import blob_row, loads_tuple, serialized
from storage.catalogue_labels import Labels
from storage.errors import UnknownMediaError
from storage.records import BlobRow, Placement

# A media row's reason once it is recorded as a copy of stored content; re-filing the
# content changes the row's state but keeps this reason.
_KEEP_COPY_REASON = "reason GLOB 'duplicate_of:*' OR reason GLOB 'near_duplicate_of:*'"


@dataclass(frozen=True)
class RescoreItem:
    """What re-filing one stored image needs: its current filing, scores and source flags."""

    blob: BlobRow
    scores: dict[str, float]
    flags: tuple[str, ...]
    labels: dict[str, bool]
    source_tags: tuple[str, ...] = ()


class Filing(Labels):
    """Blobs and their placement: record filings, look images up, gather what rescore needs."""

    async def source_tags_for(self, sha256: str) -> tuple[str, ...]:
        """The union of source tags of every URL that carried this content (or a near-copy)."""
        rows = await self._fetchall(
            "SELECT tags FROM media WHERE sha256 = ? AND tags != '[]'", (sha256,))
        tags: set[str] = set()
        for row in rows:
            tags.update(loads_tuple(row["tags"]))
        return tuple(sorted(tags))

    async def flags_for(self, sha256: str) -> tuple[str, ...]:
        """The union of source flags of every URL that carried this content."""
        rows = await self._fetchall("SELECT flags FROM media WHERE sha256 = ?", (sha256,))
        flags: set[str] = set()
        for row in rows:
            flags.update(loads_tuple(row["flags"]))
        return tuple(sorted(flags))

    @serialized
    async def record_placement(
        self, sha256: str, placement: Placement, reason: str, tags: Sequence[str],
        now: float, media_id: int | None = None,
    ) -> int | None:
        """Commit where an image was filed; every row carrying it becomes final there.

        One row holds the decision's reason: a row already filed with it (the same bytes
        came before), else `media_id` (the row just processed). Every other row is
        `duplicate_of:<sha256>`, and a row already recorded as a copy keeps its reason.
        Returns the id of the row holding the decision (None when no row carries it).
        """
        await self._db.execute(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'""",
            (placement.value, reason, json.dumps(list(tags)), now, sha256),
        )
        holder = await self._decision_holder(sha256, media_id)
        await self._db.execute(
            f"""UPDATE media SET state = :state, updated_at = :now, reason = CASE
                  WHEN id = :holder THEN :reason
                  WHEN {_KEEP_COPY_REASON} THEN reason
                  ELSE 'duplicate_of:' || :sha END
               WHERE sha256 = :sha AND (state IN ('downloaded', 'decoded', 'classified',
               'library', 'quarantine', 'held') OR id = :id)""",
            {"state": placement.value, "reason": reason, "now": now, "sha": sha256,
             "id": media_id if media_id is not None else -1,
             "holder": holder if holder is not None else -1},
        )
        await self._db.commit()
        return holder

    async def _decision_holder(self, sha256: str, media_id: int | None) -> int | None:
        """The row that carries the filing decision of `sha256` (see `record_placement`)."""
        not_copy = f"(reason IS NULL OR NOT ({_KEEP_COPY_REASON}))"
        filed = await self._fetchone(
            f"""SELECT min(id) FROM media WHERE sha256 = ? AND id != ? AND {not_copy}
                AND state IN ('library', 'quarantine', 'held')""",
            (sha256, media_id if media_id is not None else -1),
        )
        if filed is not None and filed[0] is not None:
            return int(filed[0])
        if media_id is not None:
            # A row recorded as a copy (re-queued while held, say) never takes the decision
            # over: the first row that is not a copy keeps it.
            own = await self._fetchone(
                f"SELECT 1 FROM media WHERE id = ? AND {not_copy}", (media_id,))
            if own is not None:
                return media_id
        first = await self._fetchone(
            f"""SELECT min(id) FROM media WHERE sha256 = ? AND {not_copy}
                AND state NOT IN ('pending', 'rejected')""",
            (sha256,),
        )
        return int(first[0]) if first is not None and first[0] is not None else None

    async def get_blob(self, sha256: str) -> BlobRow:
        row = await self._fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if row is None:
            raise UnknownMediaError(f"no stored image with sha256 {sha256}")
        return blob_row(row)

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
            flags.setdefault(row["sha256"], set()).update(loads_tuple(row["flags"]))
        source_tags: dict[str, set[str]] = {}
        for row in await self._fetchall(
            "SELECT sha256, tags FROM media WHERE sha256 IS NOT NULL AND tags != '[]'"
        ):
            source_tags.setdefault(row["sha256"], set()).update(loads_tuple(row["tags"]))
        labels = await self.human_labels()
        return [
            RescoreItem(
                blob=blob_row(row), scores=scores.get(row["sha256"], {}),
                flags=tuple(sorted(flags.get(row["sha256"], ()))),
                labels=labels.get(row["sha256"], {}),
                source_tags=tuple(sorted(source_tags.get(row["sha256"], ()))),
            )
            for row in blobs
        ]

    @serialized
    async def record_decisions(
        self, decisions: Sequence[tuple[str, Placement, str, Sequence[str]]], now: float,
        expected_updated_at: Mapping[str, float] | None = None,
    ) -> set[str]:
        """Commit where images are about to be filed, before their files move.

        Committing the decision first means a file never appears under library/ ahead of
        the catalogue saying so; a crash between the two is repaired by re-placing every
        image whose links disagree with its committed placement (rescore.reconcile).
        Returns the images left as they were: rejected content keeps that verdict, and with
        `expected_updated_at` (sha256 -> the updated_at the decision was planned from) an
        image another process re-filed meanwhile (a reviewer's label) keeps its filing.
        """
        expected = expected_updated_at or {}
        await self._db.executemany(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'
                 AND (? IS NULL OR updated_at = ?)""",
            [(p.value, reason, json.dumps(list(tags)), now, sha,
              expected.get(sha), expected.get(sha))
             for sha, p, reason, tags in decisions],
        )
        refused: set[str] = set()
        shas = [sha for sha, *_ in decisions]
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            rows = await self._fetchall(
                f"SELECT sha256 FROM blobs WHERE (placement = 'rejected' OR updated_at != ?) "
                f"AND sha256 IN ({','.join('?' * len(chunk))})", [now, *chunk])
            refused.update(row["sha256"] for row in rows)
        return refused

    @serialized
    async def align_media_states(self, now: float) -> int:
        """Give each filed media row its blob's committed placement and reason (start-up).

        Repairs a crash between a re-file's two commits (blobs first, then media rows):
        without it `status` and `media list --state` would disagree with the files for good.
        Copies keep their duplicate_of:/near_duplicate_of: reason. Returns the rows fixed.
        """
        cursor = await self._db.execute(
            f"""UPDATE media SET
                  state = (SELECT b.placement FROM blobs b WHERE b.sha256 = media.sha256),
                  reason = CASE WHEN {_KEEP_COPY_REASON} THEN reason ELSE
                    (SELECT b.reason FROM blobs b WHERE b.sha256 = media.sha256) END,
                  updated_at = ?
                WHERE state IN ('library', 'quarantine', 'held') AND EXISTS (
                  SELECT 1 FROM blobs b WHERE b.sha256 = media.sha256
                  AND b.placement IN ('library', 'quarantine', 'held')
                  AND b.placement != media.state)""", (now,))
        await self._db.commit()
        return cursor.rowcount

    @serialized
    async def record_placements(
        self, changes: Sequence[tuple[str, Placement, str, Sequence[str]]], now: float
    ) -> None:
        """Commit many re-filings in one transaction (rescore)."""
        await self._db.executemany(
            """UPDATE blobs SET placement = ?, reason = ?, tags = ?, updated_at = ?
               WHERE sha256 = ? AND placement IS NOT 'rejected'""",
            [(p.value, reason, json.dumps(list(tags)), now, sha)
             for sha, p, reason, tags in changes],
        )
        await self._db.executemany(
            f"""UPDATE media SET state = ?, updated_at = ?,
               reason = CASE WHEN {_KEEP_COPY_REASON} THEN reason ELSE ? END
               WHERE sha256 = ? AND state IN ('library', 'quarantine', 'held')""",
            [(p.value, now, reason, sha) for sha, p, reason, _ in changes],
        )
        await self._db.commit()
