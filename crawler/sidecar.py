"""The JSON sidecar written beside a quarantined image for file-manager reviewers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crawler.decide import Decision, Policy
from storage.catalogue import Catalogue
from storage.records import BlobRow, MediaRow


async def quarantine_sidecar(
    catalogue: Catalogue, policy: Policy, sha256: str, decision: Decision,
    scores: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON written beside a quarantined image for file-manager reviewers."""
    blob = await catalogue.get_blob(sha256)
    rows = await catalogue.media_for_blob(sha256)
    if scores is None:
        scores = await catalogue.scores_for(sha256)
    return sidecar_document(blob, rows, decision, scores, policy)


def sidecar_document(
    blob: BlobRow, rows: Sequence[MediaRow], decision: Decision,
    scores: Mapping[str, float], policy: Policy,
) -> dict[str, Any]:
    """The sidecar's content (pure): scores, thresholds, source, post, flags, reason."""
    first = rows[0] if rows else None
    return {
        "sha256": blob.sha256,
        "reason": decision.reason,
        "scores": dict(scores),
        "model_version": blob.model_version,
        "thresholds": dict(policy.thresholds),
        "review_band": list(policy.review_band) if policy.review_band else None,
        "source": first.source if first else None,
        "url": first.url if first else None,
        "post_url": first.post_url if first else None,
        "author": first.author if first else None,
        "flags": sorted({flag for row in rows for flag in row.flags}),
        "first_seen": first.created_at if first else None,
        "format": blob.format, "width": blob.width, "height": blob.height,
    }
