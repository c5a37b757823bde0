"""What the review pages read from the catalogue, in a few queries per page.

A list loads every image of one placement with its scores, sources and latest human
labels in four queries (no query per image); the filters run in Python
(crawler/review/queries.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.catalogue_base import CatalogueBase, blob_row, loads_tuple
from storage.records import BlobRow

_FILED = "('library', 'quarantine', 'held')"


@dataclass(frozen=True)
class ReviewItem:
    """One stored image as a review card shows it."""

    sha256: str
    placement: str
    reason: str | None
    format: str | None
    width: int | None
    height: int | None
    tags: tuple[str, ...]
    model_version: str | None
    updated_at: float
    scores: Mapping[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    labels: Mapping[str, bool] = field(default_factory=dict)


class Review(CatalogueBase):
    """Review cards, image-page neighbours, placement counts, servable files."""

    async def _review_items(self, where: str, params: Sequence[Any]) -> list[ReviewItem]:
        blobs = await self._fetchall(
            f"SELECT * FROM blobs b WHERE {where} ORDER BY b.created_at DESC, b.sha256", params)
        scores: dict[str, dict[str, float]] = {}
        for row in await self._fetchall(
            f"""SELECT s.sha256, s.tag, s.score FROM scores s JOIN blobs b
                ON b.sha256 = s.sha256 AND b.model_version = s.model_version WHERE {where}""",
            params,
        ):
            scores.setdefault(row["sha256"], {})[row["tag"]] = row["score"]
        sources: dict[str, set[str]] = {}
        for row in await self._fetchall(
            f"""SELECT DISTINCT m.sha256, m.source FROM media m JOIN blobs b
                ON b.sha256 = m.sha256 WHERE {where}""",
            params,
        ):
            sources.setdefault(row["sha256"], set()).add(row["source"])
        labels: dict[str, dict[str, bool]] = {}
        for row in await self._fetchall(
            f"""SELECT l.sha256, l.tag, l.value FROM labels l JOIN blobs b
                ON b.sha256 = l.sha256 WHERE l.origin = 'human' AND {where} ORDER BY l.id""",
            params,
        ):
            labels.setdefault(row["sha256"], {})[row["tag"]] = bool(row["value"])
        return [
            ReviewItem(
                sha256=row["sha256"], placement=row["placement"], reason=row["reason"],
                format=row["format"], width=row["width"], height=row["height"],
                tags=loads_tuple(row["tags"]), model_version=row["model_version"],
                updated_at=row["updated_at"], scores=scores.get(row["sha256"], {}),
                sources=tuple(sorted(sources.get(row["sha256"], ()))),
                labels=labels.get(row["sha256"], {}),
            )
            for row in blobs
        ]

    async def review_items(self, placement: str) -> list[ReviewItem]:
        """Every image filed at `placement`, newest first, with scores, sources, labels."""
        return await self._review_items("b.placement = ?", (placement,))

    async def filed_review_item(self, sha256: str) -> ReviewItem | None:
        """The review card of a filed image, or None (unknown, rejected, not yet filed)."""
        found = await self._review_items(f"b.sha256 = ? AND b.placement IN {_FILED}", (sha256,))
        return found[0] if found else None

    async def placement_order(self, placement: str) -> list[str]:
        """The sha256 of every image filed at `placement`, in list order (newest first)."""
        rows = await self._fetchall(
            "SELECT sha256 FROM blobs WHERE placement = ? ORDER BY created_at DESC, sha256",
            (placement,))
        return [row["sha256"] for row in rows]

    async def placement_counts(self) -> dict[str, int]:
        """How many stored images each placement (rejected too) holds."""
        rows = await self._fetchall(
            "SELECT placement, count(*) AS n FROM blobs WHERE placement IS NOT NULL "
            "GROUP BY placement")
        return {row["placement"]: row["n"] for row in rows}

    async def source_names(self) -> list[str]:
        """Every source name any media row came from, sorted."""
        rows = await self._fetchall("SELECT DISTINCT source FROM media ORDER BY source")
        return [row["source"] for row in rows]

    async def filed_blob(self, sha256: str) -> BlobRow | None:
        """The stored image if it is filed (library, quarantine, held), else None."""
        row = await self._fetchone(
            f"SELECT * FROM blobs WHERE sha256 = ? AND placement IN {_FILED}", (sha256,))
        return blob_row(row) if row is not None else None
