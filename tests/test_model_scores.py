"""storage.model_scores: the catalogue queries of a model promotion, on a real SQLite file."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from storage.catalogue import Catalogue
from storage.model_scores import (
    cached_features_to_rescore,
    count_filed_on_other_versions,
    count_unplaced_on_other_versions,
    store_version_scores,
)
from storage.placement import DataLayout
from storage.records import MediaRef
from tests.training_fixtures import generated_pictures, jpeg_bytes, store_image

BACKBONE = "open_nsfw"


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[tuple[Catalogue, DataLayout]]:
    """A fresh catalogue and data layout under tmp_path."""
    layout = DataLayout(tmp_path / "data")
    layout.ensure()
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        yield catalogue, layout
    finally:
        await catalogue.close()


def _vector(seed: int) -> bytes:
    return np.random.default_rng(seed).random(8).astype(np.float16).tobytes()


async def _classified(catalogue: Catalogue, sha256: str, version: str, nsfw: float,
                      features: bytes | None) -> None:
    """Record scores (and features) of `version` for a stored image, as the pipeline does."""
    row = await catalogue.fetch_one("SELECT id FROM media WHERE sha256 = ?", (sha256,))
    assert row is not None
    await catalogue.record_scores([(int(row[0]), sha256, {"nsfw": nsfw}, features)],
                                  version, BACKBONE, 1000.0)


async def _filed(catalogue: Catalogue, layout: DataLayout, count: int) -> list[str]:
    shas = [await store_image(catalogue, layout, image, f"https://example.org/{index}.jpg")
            for index, image in enumerate(generated_pictures(count))]
    return sorted(shas)


async def _filed_on(catalogue: Catalogue, layout: DataLayout, *versions: str) -> list[str]:
    """One filed image per version, classified by it (nsfw 0.1, features _vector(1), ...)."""
    shas = await _filed(catalogue, layout, len(versions))
    for index, (sha256, version) in enumerate(zip(shas, versions, strict=True)):
        await _classified(catalogue, sha256, version, 0.1, _vector(index + 1))
    return shas


async def _unplaced(catalogue: Catalogue, layout: DataLayout, version: str) -> str:
    """An image classified by `version` that still awaits placement."""
    [image] = generated_pictures(1, seed=9)
    data = jpeg_bytes(image)
    sha256 = hashlib.sha256(data).hexdigest()
    [row] = await catalogue.add_media([MediaRef(url="https://example.org/u.jpg",
                                                source="test")], 1000.0)
    layout.spool_file(sha256).write_bytes(data)
    await catalogue.record_download(row.id, sha256, len(data), 1000.0)
    await catalogue.record_decoded(row.id, sha256, format="JPEG", width=image.width,
                                   height=image.height, extension=".jpg", phash=None,
                                   now=1000.0)
    await catalogue.record_scores([(row.id, sha256, {"nsfw": 0.5}, _vector(99))], version,
                                  BACKBONE, 1000.0)
    return sha256


class TestCachedFeaturesToRescore:
    async def test_pages_filed_images_of_other_versions_with_features(
        self, stored: tuple[Catalogue, DataLayout]
    ) -> None:
        """Filed images with features on another version come in SHA order, paged by `after`."""
        catalogue, layout = stored
        first, second, third, without, current = await _filed(catalogue, layout, 5)
        for index, sha in enumerate((first, second, third)):
            await _classified(catalogue, sha, "v1", 0.1 * (index + 1), _vector(index))
        await _classified(catalogue, without, "v1", 0.9, None)
        await _classified(catalogue, current, "v2", 0.9, _vector(7))

        page = await cached_features_to_rescore(
            catalogue, backbone=BACKBONE, nsfw_tag="nsfw", version="v2", after="", limit=2)
        assert [row.sha256 for row in page] == [first, second]
        assert [row.model_version for row in page] == ["v1", "v1"]
        assert page[0].vector == _vector(0)
        assert page[1].nsfw == pytest.approx(0.2)
        rest = await cached_features_to_rescore(
            catalogue, backbone=BACKBONE, nsfw_tag="nsfw", version="v2",
            after=page[-1].sha256, limit=2)
        assert [row.sha256 for row in rest] == [third]

    async def test_missing_nsfw_score_is_none(
        self, stored: tuple[Catalogue, DataLayout]
    ) -> None:
        """An image whose version stored no nsfw score comes back with `nsfw` None."""
        catalogue, layout = stored
        [sha] = await _filed(catalogue, layout, 1)
        row = await catalogue.fetch_one("SELECT id FROM media WHERE sha256 = ?", (sha,))
        assert row is not None
        await catalogue.record_scores([(int(row[0]), sha, {"cat": 0.3}, _vector(1))], "v1",
                                      BACKBONE, 1000.0)
        [found] = await cached_features_to_rescore(
            catalogue, backbone=BACKBONE, nsfw_tag="nsfw", version="v2", after="", limit=10)
        assert found.nsfw is None


class TestStoreVersionScores:
    async def test_moves_blobs_unless_their_version_changed_meanwhile(
        self, stored: tuple[Catalogue, DataLayout]
    ) -> None:
        """Scores land under the new version; a blob reclassified meanwhile keeps its version."""
        catalogue, layout = stored
        # `raced` was reclassified under v3 by the pipeline, meanwhile.
        moved, raced = await _filed_on(catalogue, layout, "v1", "v3")

        await store_version_scores(
            catalogue, "v2", [(moved, "nsfw", 0.25), (moved, "cat", 0.75), (raced, "nsfw", 0.5)],
            [(moved, "v1"), (raced, "v1")], 2000.0)

        assert await catalogue.scores_for(moved, "v2") == {"nsfw": 0.25, "cat": 0.75}
        versions = {row["sha256"]: row["model_version"] for row in await catalogue.fetch_all(
            "SELECT sha256, model_version FROM blobs")}
        assert versions == {moved: "v2", raced: "v3"}


class TestCounts:
    async def test_filed_and_unplaced_images_on_other_versions(
        self, stored: tuple[Catalogue, DataLayout]
    ) -> None:
        """Filed and awaiting-placement images are counted apart, the serving version not."""
        catalogue, layout = stored
        await _filed_on(catalogue, layout, "v1", "v2")  # one filed on v1, one on v2
        await _unplaced(catalogue, layout, "v1")

        assert await count_filed_on_other_versions(catalogue, "v2") == 1
        assert await count_filed_on_other_versions(catalogue, "v1") == 1
        assert await count_unplaced_on_other_versions(catalogue, "v2") == 1
        assert await count_unplaced_on_other_versions(catalogue, "v1") == 0

    async def test_empty_catalogue_counts_zero(
        self, stored: tuple[Catalogue, DataLayout]
    ) -> None:
        """With nothing stored, both counts are zero."""
        catalogue, _ = stored
        assert await count_filed_on_other_versions(catalogue, "v2") == 0
        assert await count_unplaced_on_other_versions(catalogue, "v2") == 0
