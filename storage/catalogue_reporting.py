"""Read-only views of the catalogue for status, listings and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.catalogue_base import CatalogueBase, blob_row, loads_tuple, media_row
from storage.records import BlobRow, MediaRow


class Reporting(CatalogueBase):
    """Counts by state, tag and source; media and blob listings."""

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT state, count(*) AS n FROM media GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    async def counts_by_tag(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self._fetchall(
            "SELECT tags FROM blobs WHERE placement = 'library'"
        ):
            for tag in loads_tuple(row["tags"]) or ("untagged",):
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
                "flags": list(loads_tuple(row["flags"])),
                "tags": list(loads_tuple(row["tags"])), "post_url": row["post_url"],
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
        return [blob_row(row) for row in rows]

    async def media_for_blob(self, sha256: str) -> list[MediaRow]:
        rows = await self._fetchall("SELECT * FROM media WHERE sha256 = ? ORDER BY id", (sha256,))
        return [media_row(row) for row in rows]

    async def media_for_blobs(self, sha256s: Sequence[str]) -> dict[str, list[MediaRow]]:
        """The media rows of many images at once, by sha256 (rows in id order)."""
        found: dict[str, list[MediaRow]] = {sha: [] for sha in sha256s}
        for start in range(0, len(sha256s), 500):
            chunk = list(sha256s[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for row in await self._fetchall(
                f"SELECT * FROM media WHERE sha256 IN ({marks}) ORDER BY id", chunk
            ):
                found[row["sha256"]].append(media_row(row))
        return found
