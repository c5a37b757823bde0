"""Pooled open_nsfw features per image, cached in the catalogue's `features` table.

The daemon stores the features of every image it classifies (backbone "open_nsfw", float16),
so retraining usually reads them all from SQLite and takes seconds. Images without cached
features (imported before features were stored, or labelled from elsewhere) are decoded from
the store exactly as the pipeline decodes them, run through the backbone in batches, and
cached for next time. A rich progress bar shows on a terminal (on stderr, so `--json` output
stays clean).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from classifier.base import FEATURE_SIZE
from classifier.decode import DecodeLimits, decode_image
from classifier.errors import ClassifierError
from classifier.preprocess import RESIZE_SIZE, preprocess
from storage.errors import UnknownMediaError
from storage.placement import DataLayout

log = structlog.get_logger("megane.training")

BACKBONE = "open_nsfw"
FeatureMatrix = npt.NDArray[np.float32]
Extractor = Callable[[npt.NDArray[np.float32]], FeatureMatrix]


class FeatureStore(Protocol):
    """What feature caching needs from the catalogue (storage.catalogue.Catalogue)."""

    async def features_of(self, backbone: str, sha256s: Sequence[str]) -> dict[str, bytes]: ...

    async def store_features(
        self, backbone: str, vectors: Sequence[tuple[str, bytes]]
    ) -> None: ...

    async def get_blob(self, sha256: str) -> Any: ...


@dataclass(frozen=True)
class FeatureSet:
    """Features [1024] float32 per image, and why the others have none."""

    vectors: dict[str, npt.NDArray[np.float32]]
    missing: dict[str, str] = field(default_factory=dict)
    computed: int = 0

    def matrix(self, sha256s: Sequence[str]) -> FeatureMatrix:
        if not sha256s:
            return np.zeros((0, FEATURE_SIZE), np.float32)
        return np.stack([self.vectors[sha] for sha in sha256s]).astype(np.float32)


def vector_of(blob: bytes) -> npt.NDArray[np.float32]:
    """A stored feature vector (float16 bytes) as float32 [1024]."""
    vector = np.frombuffer(blob, dtype=np.float16)
    if vector.shape != (FEATURE_SIZE,):
        raise ValueError(f"a stored feature vector has {vector.size} values")
    return vector.astype(np.float32)


async def cached_features(catalogue: FeatureStore, sha256s: Sequence[str]) -> dict[str, bytes]:
    """The stored vectors of `sha256s` (only those: a library's worth would not fit)."""
    return await catalogue.features_of(BACKBONE, sha256s)


def classifier_extractor(classifier: Any) -> Extractor:
    """The backbone features of a loaded classifier (any `Classifier`)."""

    def extract(batch: npt.NDArray[np.float32]) -> FeatureMatrix:
        return np.asarray(classifier.classify(batch).features, dtype=np.float32)

    return extract


def _prepare(path: Path, limits: DecodeLimits, jpeg_draft: bool) -> npt.NDArray[np.float32]:
    draft = (RESIZE_SIZE, RESIZE_SIZE) if jpeg_draft else None
    return preprocess(decode_image(path, limits, draft_size=draft).image)


def _progress(enabled: bool | None) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    show = console.is_terminal if enabled is None else enabled
    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                    disable=not show, transient=False)


async def load_features(
    catalogue: FeatureStore,
    layout: DataLayout,
    sha256s: Iterable[str],
    *,
    extractor_factory: Callable[[], Extractor],
    batch_size: int = 16,
    limits: DecodeLimits | None = None,
    jpeg_draft: bool = True,
    progress: bool | None = None,
) -> FeatureSet:
    """Features of `sha256s`: cached ones, plus the missing ones computed and cached.

    `extractor_factory` is called only when something must be computed (it may load the
    model, which takes seconds). Images whose file is gone or no longer decodes are left
    out, with the reason, rather than failing the whole run.
    """
    limits = limits or DecodeLimits()
    wanted = sorted(set(sha256s))
    cached = await cached_features(catalogue, wanted)
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    missing: dict[str, str] = {}
    to_compute: list[tuple[str, Path]] = []
    for sha256 in wanted:
        if sha256 in cached:
            try:
                vectors[sha256] = vector_of(cached[sha256])
                continue
            except ValueError:
                pass  # a damaged row: compute it again
        try:
            blob = await catalogue.get_blob(sha256)
        except UnknownMediaError:
            missing[sha256] = "unknown_image"
            continue
        path = layout.content_file(sha256, blob.extension)
        if path is None:
            missing[sha256] = "no_file"
            continue
        to_compute.append((sha256, path))
    if not to_compute:
        return FeatureSet(vectors, missing)
    extractor = await asyncio.to_thread(extractor_factory)
    computed = 0
    with _progress(progress) as bar:
        task = bar.add_task("features", total=len(to_compute))
        for start in range(0, len(to_compute), batch_size):
            chunk = to_compute[start : start + batch_size]
            tensors, names = [], []
            for sha256, path in chunk:
                try:
                    tensors.append(await asyncio.to_thread(_prepare, path, limits, jpeg_draft))
                    names.append(sha256)
                except (ClassifierError, OSError) as error:
                    missing[sha256] = f"undecodable: {error}"
                    log.warning("training_image_skipped", sha256=sha256, reason=str(error))
            if names:
                batch = await asyncio.to_thread(extractor, np.stack(tensors))
                rows = []
                for sha256, vector in zip(names, batch, strict=True):
                    stored = np.asarray(vector).astype(np.float16)
                    # Through float16 like the cached ones, so both train the same way.
                    vectors[sha256] = stored.astype(np.float32)
                    rows.append((sha256, stored.tobytes()))
                await catalogue.store_features(BACKBONE, rows)
                computed += len(names)
            bar.advance(task, len(chunk))
    log.info("training_features_computed", computed=computed, cached=len(wanted) - computed
             - len(missing), skipped=len(missing))
    return FeatureSet(vectors, missing, computed)
