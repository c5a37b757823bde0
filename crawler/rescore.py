"""Re-filing every stored image from its stored scores (SIGHUP, `megane rescore`, start).

No model call and no decoding: the decision is recomputed from the catalogue (scores,
source flags and source tags of every URL that carried the image, human labels), and only
images whose placement or tags change are moved, in a thread, then committed together.
An image that stays put gets the new reason when its text changes, and a quarantined one
a rewritten sidecar when its content changes (thresholds, review band, reason). A
complete pass records the policy's fingerprint (`crawler.applied_policy`); at start the
daemon re-files when config.toml's policy differs from it (`refile_at_start`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from crawler.applied_policy import (
    applied_fingerprint,
    forget_applied,
    forget_serving,
    policy_fingerprint,
    record_applied,
    record_serving,
    serving_fingerprint,
)
from crawler.decide import Decision, Policy, decide
from storage.catalogue import Catalogue, RescoreItem
from storage.errors import PlacementError
from storage.placement import (
    DataLayout,
    batch_durability,
    place,
    refresh_sidecar,
    remove_everywhere,
)
from storage.records import BlobRow, Placement

log = structlog.get_logger("megane.rescore")
COMMIT_EVERY = 2000


@dataclass(frozen=True)
class RescoreReport:
    changed: int
    unchanged: int
    failed: int
    # Of `unchanged`: rows given the new reason text, sidecars rewritten.
    reworded: int = 0
    sidecars: int = 0


def plan_rescore(items: list[RescoreItem], policy: Policy) -> list[tuple[RescoreItem, Decision]]:
    """The images whose filing changes under `policy` (pure)."""
    return plan_refile(items, policy)[0]


def plan_refile(
    items: list[RescoreItem], policy: Policy,
) -> tuple[list[tuple[RescoreItem, Decision]], list[tuple[RescoreItem, Decision]]]:
    """(images to move, images that stay put) under `policy` (pure)."""
    moves, stays = [], []
    for item in items:
        decision = decide(item.scores or None, item.flags, policy, item.labels,
                          item.source_tags)
        if decision.placement != item.blob.placement or decision.tags != item.blob.tags:
            moves.append((item, decision))
        else:
            stays.append((item, decision))
    return moves, stays


async def rescore(catalogue: Catalogue, layout: DataLayout, policy: Policy,
                  now: float, *, every_sidecar: bool = False) -> RescoreReport:
    """Re-file every stored image whose filing changes under `policy`.

    Per chunk: the decisions are committed, the files moved in one worker thread with one
    sync at the end (not an fsync per file), then the rows are committed. A crash in
    between is repaired at start-up by `reconcile` (the committed decision wins). An image
    another process re-filed after the pass read its rows keeps that filing. With
    `every_sidecar` (after new scores: a promotion) every quarantine sidecar is compared.
    """
    from crawler.pipeline import sidecar_document

    # Until this pass completes, images are not all filed under one known policy.
    policy_changed = await applied_fingerprint(catalogue) != policy_fingerprint(policy)
    if policy_changed:
        await forget_applied(catalogue)
    items = await catalogue.rescore_items()
    changes, stays = plan_refile(items, policy)
    failed = skipped = 0
    for start in range(0, len(changes), COMMIT_EVERY):
        batch = changes[start:start + COMMIT_EVERY]
        # Planned from a snapshot: an image re-filed meanwhile by another process (a
        # reviewer's label, a delete) keeps what that process decided.
        refused = await catalogue.record_decisions(
            [(item.blob.sha256, decision.placement, decision.reason, decision.tags)
             for item, decision in batch], now,
            {item.blob.sha256: item.blob.updated_at for item, _ in batch})
        for sha256 in refused:
            log.info("refile_skipped", sha256=sha256, reason="changed since the pass began")
        skipped += len(refused)
        batch = [(item, decision) for item, decision in batch
                 if item.blob.sha256 not in refused]
        quarantined = [item.blob.sha256 for item, decision in batch
                       if decision.placement is Placement.QUARANTINE]
        rows = await catalogue.media_for_blobs(quarantined) if quarantined else {}
        jobs = [
            (item, decision,
             sidecar_document(item.blob, rows.get(item.blob.sha256, []), decision,
                              item.scores, policy)
             if decision.placement is Placement.QUARANTINE else None)
            for item, decision in batch
        ]
        errors = await asyncio.to_thread(_place_batch, layout, jobs)
        done: list[tuple[str, Placement, str, tuple[str, ...]]] = []
        undo: list[tuple[str, Placement, str, tuple[str, ...]]] = []
        for item, decision in batch:
            sha256 = item.blob.sha256
            if sha256 in errors:
                failed += 1
                log.error("refile_failed", sha256=sha256, reason=errors[sha256])
                # Undo only a move into the library; a move out of it keeps the new
                # decision (fail closed) and reconcile finishes it at the next start.
                if item.blob.placement is not None and decision.placement is Placement.LIBRARY:
                    undo.append((sha256, item.blob.placement, item.blob.reason or "",
                                 item.blob.tags))
                continue
            done.append((sha256, decision.placement, decision.reason, decision.tags))
            log.info("media_refiled", sha256=sha256, placement=decision.placement.value,
                     previous=item.blob.placement.value if item.blob.placement else None,
                     tags=list(decision.tags), reason=decision.reason)
        await catalogue.record_placements(done, now)
        if undo:
            await catalogue.record_decisions(undo, now)
    reworded, sidecars, stay_failed = await _restate(
        catalogue, layout, policy, stays, now, every_sidecar=policy_changed or every_sidecar)
    failed += stay_failed
    if not failed:
        await record_applied(catalogue, policy, now)
    return RescoreReport(changed=len(changes) - failed + stay_failed - skipped,
                         unchanged=len(items) - len(changes), failed=failed,
                         reworded=reworded, sidecars=sidecars)


async def _restate(catalogue: Catalogue, layout: DataLayout, policy: Policy,
                   stays: list[tuple[RescoreItem, Decision]], now: float,
                   every_sidecar: bool) -> tuple[int, int, int]:
    """Images that stay put: new reason text, rewritten quarantine sidecars.

    Sidecars are compared with what they should hold: every one when the policy differs
    from the one last applied (`every_sidecar`), else those whose reason changes.
    Returns (rows reworded, sidecars rewritten, sidecars that could not be written).
    """
    from crawler.pipeline import sidecar_document

    reworded = sidecars = failed = 0
    for start in range(0, len(stays), COMMIT_EVERY):
        batch = stays[start:start + COMMIT_EVERY]
        quarantined = [(item, decision) for item, decision in batch
                       if decision.placement is Placement.QUARANTINE
                       and (every_sidecar or decision.reason != item.blob.reason)]
        rows = (await catalogue.media_for_blobs([item.blob.sha256 for item, _ in quarantined])
                if quarantined else {})
        documents = [(item.blob.sha256, sidecar_document(
            item.blob, rows.get(item.blob.sha256, []), decision, item.scores, policy))
            for item, decision in quarantined]
        if documents:
            written, errors = await asyncio.to_thread(_refresh_sidecars, layout, documents)
            sidecars += written
            failed += len(errors)
            for sha256, reason in errors.items():
                log.error("refile_failed", sha256=sha256, reason=reason)
        changed = [(item.blob.sha256, decision.placement, decision.reason, decision.tags)
                   for item, decision in batch if decision.reason != item.blob.reason]
        if changed:
            await catalogue.record_placements(changed, now)
            reworded += len(changed)
    return reworded, sidecars, failed


def _refresh_sidecars(layout: DataLayout,
                      documents: list[tuple[str, dict[str, Any]]]) -> tuple[int, dict[str, str]]:
    """Rewrite the sidecars whose content differs (blocking); (written, sha256 -> error)."""
    written = 0
    errors: dict[str, str] = {}
    with batch_durability():
        for sha256, document in documents:
            try:
                written += refresh_sidecar(layout, sha256, document)
            except PlacementError as error:
                errors[sha256] = str(error)
    return written, errors


async def release_applied(catalogue: Catalogue, policy: Policy) -> None:
    """At stop: images this process filed follow `policy`; when the recorded policy is
    another (`megane rescore` ran with an edited config meanwhile), forget it so the next
    start re-files."""
    recorded = await applied_fingerprint(catalogue)
    if recorded is not None and recorded != policy_fingerprint(policy):
        await forget_applied(catalogue)
    await forget_serving(catalogue)


async def refile_at_start(catalogue: Catalogue, layout: DataLayout, policy: Policy,
                          now: float, before_pass: Callable[[], object] | None = None,
                          ) -> RescoreReport | None:
    """At start, before anything is served: re-file every stored image when `policy`
    (config.toml) differs from the one they were last filed under, or from the one a daemon
    that died without a clean stop was filing new images under. None when neither does.
    Then records `policy` as the one this daemon serves. `before_pass` is called when a pass
    is about to run (the daemon asks systemd for more start-up time)."""
    fingerprint = policy_fingerprint(policy)
    previous = await applied_fingerprint(catalogue)
    serving = await serving_fingerprint(catalogue)
    if previous == fingerprint and serving in (None, fingerprint):
        await record_serving(catalogue, policy, now)
        return None
    log.info("policy_refile_started", reason=(
        "no policy recorded" if previous is None
        else "the filing policy in config.toml changed since it was last applied"
        if previous != fingerprint
        else "a daemon that did not stop cleanly was filing under another policy"))
    if before_pass is not None:
        before_pass()
    report = await rescore(catalogue, layout, policy, now)
    await record_serving(catalogue, policy, now)
    log.info("policy_refiled", refiled=report.changed, unchanged=report.unchanged,
             reworded=report.reworded, sidecars=report.sidecars, failed=report.failed,
             at_start=True)
    return report


def _place_batch(
    layout: DataLayout,
    jobs: list[tuple[RescoreItem, Decision, dict[str, Any] | None]],
) -> dict[str, str]:
    """Move many images (blocking), made durable by one sync; returns sha256 -> error."""
    errors: dict[str, str] = {}
    with batch_durability():
        for item, decision, sidecar in jobs:
            try:
                place(layout, item.blob.sha256, item.blob.extension, decision.placement,
                      decision.tags, sidecar)
            except PlacementError as error:
                errors[item.blob.sha256] = str(error)
    return errors


def _misplaced(layout: DataLayout, blob: BlobRow) -> bool:
    """Whether an image's files disagree with its committed placement (blocking)."""
    if blob.placement is None:
        return False
    targets = layout.targets(blob.sha256, blob.extension, blob.placement, blob.tags)
    if any(not target.exists() for target in targets):
        return True
    return any(link not in targets for link in layout.existing_links(blob.sha256, blob.extension))


async def reconcile(catalogue: Catalogue, layout: DataLayout, policy: Policy) -> int:
    """At start-up: re-place every image whose files disagree with the catalogue.

    Repairs a crash between committing a decision and moving the files; the committed
    placement wins, so a file is never left visible against the catalogue's word. Media
    rows left behind by a crash between a re-file's two commits get it too.
    """
    from crawler.pipeline import quarantine_sidecar

    # Deleted (or rejected) content must not stay linked anywhere either.
    rejected = [blob for blob in await catalogue.blobs_in(["rejected"]) if blob.extension]
    leftovers = await asyncio.to_thread(
        lambda: [blob for blob in rejected
                 if layout.existing_links(blob.sha256, blob.extension)])
    for blob in leftovers:
        await asyncio.to_thread(remove_everywhere, layout, blob.sha256, blob.extension)
        log.info("media_reconciled", sha256=blob.sha256, placement="rejected")
    blobs = [blob for blob in await catalogue.blobs_in(["library", "quarantine", "held"])
             if blob.extension]
    misplaced = await asyncio.to_thread(
        lambda: [blob for blob in blobs if _misplaced(layout, blob)])
    for blob in misplaced:
        assert blob.placement is not None  # filtered by _misplaced
        sidecar = None
        if blob.placement is Placement.QUARANTINE:
            decision = Decision(blob.placement, blob.tags, blob.reason or "")
            sidecar = await quarantine_sidecar(catalogue, policy, blob.sha256, decision)
        try:
            await asyncio.to_thread(place, layout, blob.sha256, blob.extension, blob.placement,
                                    blob.tags, sidecar)
        except PlacementError as error:
            log.error("reconcile_failed", sha256=blob.sha256, reason=str(error))
            continue
        log.info("media_reconciled", sha256=blob.sha256, placement=blob.placement.value)
    aligned = await catalogue.align_media_states(time.time())
    if aligned:
        log.info("media_states_aligned", rows=aligned)
    return len(misplaced)


async def refile_one(catalogue: Catalogue, layout: DataLayout, policy: Policy, sha256: str,
                     now: float) -> Decision:
    """Re-file one stored image now (after a review decision or a label)."""
    from crawler.pipeline import quarantine_sidecar

    blob = await catalogue.get_blob(sha256)
    scores = await catalogue.scores_for(sha256)
    labels = await catalogue.human_labels_for(sha256)
    flags = await catalogue.flags_for(sha256)
    source_tags = await catalogue.source_tags_for(sha256)
    decision = decide(scores or None, flags, policy, labels, source_tags)
    if blob.placement is None or blob.placement.value == "rejected":
        return decision
    if decision.placement is Placement.HELD and labels:
        # A human decided about an image the model never saw: honour the label.
        nsfw = any(labels.get(tag) for tag in policy.quarantine_tags)
        released = all(labels.get(tag) is False for tag in policy.quarantine_tags)
        if nsfw or released:
            decision = decide({tag: 0.0 for tag in policy.quarantine_tags}, (), policy, labels,
                              source_tags)
    sidecar = None
    if decision.placement is Placement.QUARANTINE:
        sidecar = await quarantine_sidecar(catalogue, policy, sha256, decision, scores)
    # Decision first (reconcile repairs a crash in between), then files, then rows.
    await catalogue.record_decisions(
        [(sha256, decision.placement, decision.reason, decision.tags)], now)
    await asyncio.to_thread(place, layout, sha256, blob.extension, decision.placement,
                            decision.tags, sidecar)
    await catalogue.record_placement(sha256, decision.placement, decision.reason,
                                     decision.tags, now)
    log.info("media_refiled", sha256=sha256, placement=decision.placement.value,
             previous=blob.placement.value, tags=list(decision.tags), reason=decision.reason)
    return decision


async def refresh_contact_sheet(catalogue: Catalogue, layout: DataLayout, config: Any) -> None:
    """Rewrite `quarantine/index.html` and its thumbnails after re-filing outside the daemon
    (`megane rescore`); `config` is crawler.config.Config."""
    from crawler.display import linkable_url
    from crawler.review.settings import ReviewSettings
    from storage.contact_sheet import refresh_quarantine_index

    review = ReviewSettings.from_mapping(config.review, str(config.path))
    await refresh_quarantine_index(catalogue, layout, review.blur_radius, linkable=linkable_url)
