"""Labels in the catalogue: human verdicts (review, `megane label`) and source labels."""

from __future__ import annotations

from dataclasses import dataclass

from storage.catalogue_base import CatalogueBase, loads_tuple


@dataclass(frozen=True)
class LabelRecord:
    """One label row: a verdict on `tag`, where it came from, who gave it and when."""

    tag: str
    value: bool
    origin: str
    who: str | None
    created_at: float


class Labels(CatalogueBase):
    """Add labels and read the latest one per image and tag."""

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

    async def label_counts(self) -> dict[str, dict[str, int]]:
        """Per tag, how many images carry a yes/no human label (latest label wins)."""
        counts: dict[str, dict[str, int]] = {}
        for per_tag in (await self.human_labels()).values():
            for tag, value in per_tag.items():
                bucket = counts.setdefault(tag, {"yes": 0, "no": 0})
                bucket["yes" if value else "no"] += 1
        return counts

    async def label_history(self, sha256: str) -> list[LabelRecord]:
        """Every label ever given to an image (human and source), oldest first."""
        rows = await self._fetchall(
            "SELECT * FROM labels WHERE sha256 = ? ORDER BY id", (sha256,))
        return [LabelRecord(row["tag"], bool(row["value"]), row["origin"], row["who"],
                            row["created_at"]) for row in rows]

    async def source_labels_by_tag(self) -> dict[str, dict[str, bool]]:
        """Labels of origin 'source', per tag: sha256 -> value (the latest label wins)."""
        labels: dict[str, dict[str, bool]] = {}
        for row in await self._fetchall(
            "SELECT sha256, tag, value FROM labels WHERE origin = 'source' ORDER BY id"
        ):
            labels.setdefault(row["tag"], {})[row["sha256"]] = bool(row["value"])
        return labels

    async def stored_image_source_tags(self) -> list[tuple[str, tuple[str, ...]]]:
        """(sha256, source tags) of every URL with tags whose content is stored, not rejected.

        One pair per media row, so an image reached from several URLs appears once for each.
        """
        rows = await self._fetchall(
            """SELECT m.sha256, m.tags FROM media m JOIN blobs b ON b.sha256 = m.sha256
               WHERE m.tags != '[]' AND b.placement IS NOT NULL AND b.placement != 'rejected'"""
        )
        return [(row["sha256"], loads_tuple(row["tags"])) for row in rows]
