"""Backfill: re-score every filed image from its cached features under a new version.

No image is decoded: the new heads score the cached open_nsfw features, the nsfw score is
the backbone's (carried over from the old version's row, or computed from the features),
the scores are stored under the new version, and everything is re-filed under the
thresholds in force. `backfill_at_start` applies the same to a version promoted while the
daemon was stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog

from classifier.base import Classifier
from crawler.decide import Policy
from crawler.rescore import rescore
from storage.model_scores import (
    cached_features_to_rescore,
    count_filed_on_other_versions,
    store_version_scores,
)
from storage.placement import DataLayout

if TYPE_CHECKING:
    from classifier.models import Heads
    from storage.catalogue import Catalogue

log = structlog.get_logger("megane.promotion")

BACKFILL_CHUNK = 500
BACKBONE = "open_nsfw"
NSFW_TAG = "nsfw"


@dataclass(frozen=True)
class BackfillReport:
    rescored: int
    without_features: int
    refiled: int
    unchanged: int
    failed: int


async def backfill(
    catalogue: Catalogue, layout: DataLayout, version: str, heads: Heads, policy: Policy,
    now: float,
) -> BackfillReport:
    """Score every filed image with cached features under `version`, then re-file all.

    Reads in keyset-paged chunks (memory stays bounded); each chunk's scores and its
    blobs' new model version commit together. A blob whose model version changed meanwhile
    (the pipeline classified it again) is left as the pipeline wrote it.
    """
    from classifier.training.trainer import nsfw_scores

    after = ""
    rescored = 0
    while True:
        rows = await cached_features_to_rescore(
            catalogue, backbone=BACKBONE, nsfw_tag=NSFW_TAG, version=version, after=after,
            limit=BACKFILL_CHUNK)
        if not rows:
            break
        after = rows[-1].sha256
        features = np.stack([
            np.frombuffer(row.vector, dtype=np.float16).astype(np.float32) for row in rows])
        head_scores = heads.scores(features)
        carried = np.array([np.nan if row.nsfw is None else row.nsfw for row in rows])
        if np.isnan(carried).any():
            carried = np.where(np.isnan(carried), nsfw_scores(features), carried)
        scores: list[tuple[str, str, float]] = []
        for index, row in enumerate(rows):
            scores.append((row.sha256, NSFW_TAG, float(carried[index])))
            scores.extend((row.sha256, tag, float(head_scores[index, column]))
                          for column, tag in enumerate(heads.tags))
        await store_version_scores(catalogue, version, scores,
                                   [(row.sha256, row.model_version) for row in rows], now)
        rescored += len(rows)
    left = await count_filed_on_other_versions(catalogue, version)
    # New scores (model_version, head scores) go into every quarantine sidecar.
    report = await rescore(catalogue, layout, policy, now, every_sidecar=True)
    return BackfillReport(rescored, left, report.changed, report.unchanged, report.failed)


async def backfill_at_start(
    catalogue: Catalogue, layout: DataLayout, classifier: Classifier, policy: Policy,
    now: float,
) -> BackfillReport | None:
    """At daemon start: bring images scored by another version over to the serving one.

    A version promoted while the daemon was stopped (or a changed `[classifier] model`)
    is applied exactly as a live promotion applies it (`backfill`: re-score from cached
    features, then re-file). None when every filed image is already on the serving version.
    """
    from classifier.models import Heads, LoadedClassifier

    version = classifier.version
    waiting = await count_filed_on_other_versions(catalogue, version)
    if not waiting:
        return None
    heads = classifier.heads if isinstance(classifier, LoadedClassifier) else Heads()
    log.info("model_backfill_started", version=version, images=waiting)
    report = await backfill(catalogue, layout, version, heads, policy, now)
    log.info("model_backfilled", version=version, rescored=report.rescored,
             without_features=report.without_features, refiled=report.refiled,
             unchanged=report.unchanged, failed=report.failed, at_start=True)
    return report

