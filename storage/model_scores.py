"""Catalogue queries of a model promotion: which images another version scored, and moving
them over to the new one (crawler.promotion's backfill and its straggler wait).

Functions over a `Catalogue`, using only its public `fetch_one`/`fetch_all`/`transaction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.catalogue import Catalogue

# Placements of an image that is filed (or held for a model): the ones a new version re-files.
_FILED = "('library', 'quarantine', 'held')"


@dataclass(frozen=True)
class CachedFeatures:
    """A filed image's cached backbone features, and the nsfw score its version gave it."""

    sha256: str
    model_version: str
    vector: bytes
    nsfw: float | None


async def cached_features_to_rescore(
    catalogue: Catalogue, *, backbone: str, nsfw_tag: str, version: str, after: str,
    limit: int,
) -> list[CachedFeatures]:
    """Up to `limit` filed images scored by a version other than `version` that have cached
    `backbone` features, in SHA-256 order after `after` (keyset paging)."""
    rows = await catalogue.fetch_all(
        f"""SELECT b.sha256, b.model_version, f.vector, s.score AS nsfw FROM blobs b
           JOIN features f ON f.sha256 = b.sha256 AND f.backbone = ?
           LEFT JOIN scores s ON s.sha256 = b.sha256 AND s.model_version = b.model_version
                AND s.tag = ?
           WHERE b.placement IN {_FILED}
             AND b.model_version IS NOT NULL AND b.model_version != ? AND b.sha256 > ?
           ORDER BY b.sha256 LIMIT ?""",
        (backbone, nsfw_tag, version, after, limit),
    )
    return [CachedFeatures(row["sha256"], row["model_version"], bytes(row["vector"]),
                           row["nsfw"]) for row in rows]


async def store_version_scores(
    catalogue: Catalogue, version: str, scores: Sequence[tuple[str, str, float]],
    moved: Sequence[tuple[str, str]], now: float,
) -> None:
    """In one transaction: store `scores` (sha256, tag, score) under `version`, and move each
    (sha256, previous version) in `moved` to `version` -- unless its version changed
    meanwhile (the pipeline classified it again), which is then left as it is."""
    async with catalogue.transaction() as connection:
        await connection.executemany(
            "INSERT OR REPLACE INTO scores (sha256, model_version, tag, score) "
            "VALUES (?, ?, ?, ?)",
            [(sha256, version, tag, score) for sha256, tag, score in scores])
        await connection.executemany(
            "UPDATE blobs SET model_version = ?, updated_at = ? "
            "WHERE sha256 = ? AND model_version = ?",
            [(version, now, sha256, previous) for sha256, previous in moved])


async def count_filed_on_other_versions(catalogue: Catalogue, version: str) -> int:
    """How many filed images were scored by a version other than `version`."""
    row = await catalogue.fetch_one(
        f"""SELECT count(*) FROM blobs WHERE placement IN {_FILED}
           AND model_version IS NOT NULL AND model_version != ?""", (version,))
    return int(row[0]) if row else 0


async def count_unplaced_on_other_versions(catalogue: Catalogue, version: str) -> int:
    """How many classified images await placement with scores of a version other than
    `version`."""
    row = await catalogue.fetch_one(
        """SELECT count(*) FROM blobs WHERE placement IS NULL
           AND model_version IS NOT NULL AND model_version != ?""", (version,))
    return int(row[0]) if row else 0
