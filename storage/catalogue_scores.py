"""Classifier output in the catalogue: per-image scores and cached backbone features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from storage.catalogue_base import CatalogueBase, serialized

# Rows per `IN (...)` query: well under SQLite's limit on bound parameters.
QUERY_CHUNK = 500


class Scores(CatalogueBase):
    """Scores and features: record a classified batch, read them back."""

    @serialized
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

    async def features_for(self, backbone: str) -> dict[str, bytes]:
        rows = await self._fetchall(
            "SELECT sha256, vector FROM features WHERE backbone = ?", (backbone,)
        )
        return {row["sha256"]: bytes(row["vector"]) for row in rows}

    async def features_of(self, backbone: str, sha256s: Sequence[str]) -> dict[str, bytes]:
        """The stored vectors of `sha256s` only (a library's worth would not fit in memory)."""
        found: dict[str, bytes] = {}
        for start in range(0, len(sha256s), QUERY_CHUNK):
            chunk = list(sha256s[start : start + QUERY_CHUNK])
            rows = await self._fetchall(
                f"SELECT sha256, vector FROM features WHERE backbone = ? "
                f"AND sha256 IN ({','.join('?' * len(chunk))})", [backbone, *chunk])
            found.update((row["sha256"], bytes(row["vector"])) for row in rows)
        return found

    async def store_features(self, backbone: str, vectors: Sequence[tuple[str, bytes]]) -> None:
        """Cache (sha256, vector bytes) pairs of `backbone` in one transaction."""
        async with self._transaction():
            await self._db.executemany(
                "INSERT OR REPLACE INTO features (sha256, backbone, vector) VALUES (?, ?, ?)",
                [(sha256, backbone, vector) for sha256, vector in vectors])
