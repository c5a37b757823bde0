"""Labels in the catalogue: human verdicts (review, `megane label`) and source labels."""

from __future__ import annotations

from dataclasses import dataclass

from storage.catalogue_base import CatalogueBase


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
