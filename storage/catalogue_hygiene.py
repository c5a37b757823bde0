"""Library hygiene in the catalogue: perceptual hashes, blocked hashes, deleted images.

The decisions (what is a near-copy, what to block) live in crawler/hygiene.py; this module
only stores and reads what they need.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.catalogue_base import CatalogueBase, serialized

FILED_PLACEMENTS = ("library", "quarantine", "held")


@dataclass(frozen=True)
class BlockedHash:
    """One row of `blocked_hashes`; `rowid` orders them, so readers can catch up."""

    rowid: int
    phash: str
    sha256: str


@dataclass(frozen=True)
class ImageHash:
    """A stored image's dHash (hex, None when not computed) and its file extension."""

    phash: str | None
    extension: str


@dataclass(frozen=True)
class NearDuplicateRecord:
    """Outcome of recording a media row as a near-copy of a filed original.

    `recorded` is False (nothing changed) when the original is no longer filed;
    `blob_dropped` says the new content's blob row went, so its spool file can go too.
    """

    recorded: bool
    blob_dropped: bool = False


class Hygiene(CatalogueBase):
    """Hashes of filed images, blocked hashes, near-duplicate rows, deletions."""

    async def filed_image_hashes(self) -> list[tuple[str, str]]:
        """(sha256, phash) of every filed image (library, quarantine, held) with a hash."""
        rows = await self._fetchall(
            f"""SELECT sha256, phash FROM blobs WHERE phash IS NOT NULL
                AND placement IN ({",".join("?" * len(FILED_PLACEMENTS))})""",
            FILED_PLACEMENTS,
        )
        return [(row["sha256"], row["phash"]) for row in rows]

    async def blocked_hashes_after(self, rowid: int) -> list[BlockedHash]:
        """Hashes blocked after row `rowid` (by any process), oldest first."""
        rows = await self._fetchall(
            "SELECT rowid, phash, sha256 FROM blocked_hashes WHERE rowid > ? ORDER BY rowid",
            (rowid,),
        )
        return [BlockedHash(int(row["rowid"]), row["phash"], row["sha256"]) for row in rows]

    async def image_hash(self, sha256: str) -> ImageHash | None:
        """The stored dHash and extension of an image, or None for an unknown sha256."""
        row = await self._fetchone(
            "SELECT phash, extension FROM blobs WHERE sha256 = ?", (sha256,)
        )
        return ImageHash(row["phash"], row["extension"]) if row is not None else None

    async def block_hash(self, phash: str, sha256: str, reason: str, now: float) -> None:
        """Block `phash` (of image `sha256`); blocking twice keeps the first reason."""
        await self._write(
            """INSERT OR IGNORE INTO blocked_hashes (phash, sha256, reason, created_at)
               VALUES (?, ?, ?, ?)""",
            (phash, sha256, reason, now),
        )

    @serialized
    async def record_near_duplicate(self, media_id: int, sha256: str, of_sha256: str,
                                    reason: str, now: float) -> NearDuplicateRecord:
        """Media row `media_id` (content `sha256`) becomes a copy of filed `of_sha256`.

        The row takes the original's state and sha256, with `reason`; the new content's
        blob row is dropped unless something else still refers to it.
        """
        original = await self._fetchone(
            "SELECT placement FROM blobs WHERE sha256 = ?", (of_sha256,)
        )
        if original is None or original["placement"] not in FILED_PLACEMENTS:
            return NearDuplicateRecord(recorded=False)
        await self._db.execute(
            """UPDATE media SET state = ?, reason = ?, sha256 = ?, updated_at = ?
               WHERE id = ?""",
            (original["placement"], reason, of_sha256, now, media_id),
        )
        cursor = await self._db.execute(
            """DELETE FROM blobs WHERE sha256 = ? AND placement IS NULL
               AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = ?)
               AND NOT EXISTS (SELECT 1 FROM scores WHERE sha256 = ?)
               AND NOT EXISTS (SELECT 1 FROM features WHERE sha256 = ?)
               AND NOT EXISTS (SELECT 1 FROM labels WHERE sha256 = ?)""",
            (sha256,) * 5,
        )
        return NearDuplicateRecord(recorded=True, blob_dropped=cursor.rowcount > 0)

    @serialized
    async def mark_deleted(self, sha256: str, reason: str, now: float) -> None:
        """The image and every media row carrying it become rejected with `reason`."""
        await self._db.execute(
            """UPDATE blobs SET placement = 'rejected', reason = ?, tags = '[]',
               updated_at = ? WHERE sha256 = ?""",
            (reason, now, sha256),
        )
        await self._db.execute(
            "UPDATE media SET state = 'rejected', reason = ?, updated_at = ? WHERE sha256 = ?",
            (reason, now, sha256),
        )
