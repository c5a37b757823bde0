"""Re-filing every stored image from its stored scores (SIGHUP, `megane rescore`).

No model call and no decoding: the decision is recomputed from the catalogue, and only
images whose placement or tags change are moved, in a thread, then committed together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from crawler.decide import Decision, Policy, decide
from storage.catalogue import Catalogue, RescoreItem
from storage.errors import PlacementError
from storage.placement import DataLayout, place
from storage.records import Placement

log = structlog.get_logger("megane.rescore")
COMMIT_EVERY = 2000


@dataclass(frozen=True)
class RescoreReport:
    changed: int
    unchanged: int
    failed: int


def plan_rescore(items: list[RescoreItem], policy: Policy) -> list[tuple[RescoreItem, Decision]]:
    """The images whose filing changes under `policy` (pure)."""
    changes = []
    for item in items:
        decision = decide(item.scores or None, item.flags, policy, item.labels)
        if decision.placement != item.blob.placement or decision.tags != item.blob.tags:
            changes.append((item, decision))
    return changes


async def rescore(catalogue: Catalogue, layout: DataLayout, policy: Policy,
                  now: float) -> RescoreReport:
    from crawler.pipeline import quarantine_sidecar

    items = await catalogue.rescore_items()
    changes = plan_rescore(items, policy)
    failed = 0
    pending: list[tuple[str, Placement, str, tuple[str, ...]]] = []
    for item, decision in changes:
        sha256 = item.blob.sha256
        sidecar = None
        if decision.placement is Placement.QUARANTINE:
            sidecar = await quarantine_sidecar(catalogue, policy, sha256, decision, item.scores)
        try:
            await asyncio.to_thread(place, layout, sha256, item.blob.extension,
                                    decision.placement, decision.tags, sidecar)
        except PlacementError as error:
            failed += 1
            log.error("refile_failed", sha256=sha256, reason=str(error))
            continue
        pending.append((sha256, decision.placement, decision.reason, decision.tags))
        log.info("media_refiled", sha256=sha256, placement=decision.placement.value,
                 previous=item.blob.placement.value if item.blob.placement else None,
                 tags=list(decision.tags), reason=decision.reason)
        if len(pending) >= COMMIT_EVERY:
            await catalogue.record_placements(pending, now)
            pending = []
    if pending:
        await catalogue.record_placements(pending, now)
    return RescoreReport(changed=len(changes) - failed, unchanged=len(items) - len(changes),
                         failed=failed)


async def refile_one(catalogue: Catalogue, layout: DataLayout, policy: Policy, sha256: str,
                     now: float) -> Decision:
    """Re-file one stored image now (after a review decision or a label)."""
    from crawler.pipeline import quarantine_sidecar

    blob = await catalogue.get_blob(sha256)
    scores = await catalogue.scores_for(sha256)
    labels = await catalogue.human_labels_for(sha256)
    flags = await catalogue.flags_for(sha256)
    decision = decide(scores or None, flags, policy, labels)
    if blob.placement is None or blob.placement.value == "rejected":
        return decision
    if decision.placement is Placement.HELD and labels:
        # A human decided about an image the model never saw: honour the label.
        nsfw = any(labels.get(tag) for tag in policy.quarantine_tags)
        released = all(labels.get(tag) is False for tag in policy.quarantine_tags)
        if nsfw or released:
            decision = decide({tag: 0.0 for tag in policy.quarantine_tags}, (), policy, labels)
    sidecar = None
    if decision.placement is Placement.QUARANTINE:
        sidecar = await quarantine_sidecar(catalogue, policy, sha256, decision, scores)
    await asyncio.to_thread(place, layout, sha256, blob.extension, decision.placement,
                            decision.tags, sidecar)
    await catalogue.record_placement(sha256, decision.placement, decision.reason,
                                     decision.tags, now)
    log.info("media_refiled", sha256=sha256, placement=decision.placement.value,
             previous=blob.placement.value, tags=list(decision.tags), reason=decision.reason)
    return decision
