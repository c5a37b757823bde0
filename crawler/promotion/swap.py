"""Following `models/ACTIVE` in the running daemon: the live swap between batches.

`follow_promotions` polls the file every few seconds; on a change it:

1. loads the new version in a thread (heads only: every version shares the open_nsfw
   backbone, so the running engine is reused and nothing is converted again),
2. swaps it into the pipeline, which uses it from the next batch (the batch in flight
   finishes with the old one: nothing is lost),
3. backfills (`crawler.promotion.backfill`) and re-files under the thresholds in force.

With a shadow request the candidate first runs beside the active model on the next N
classified images (`crawler.promotion.shadow`), and its report is written and logged
before the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from classifier.base import Classifier
from classifier.errors import ClassifierError, ModelError
from crawler.aio import wait_event
from crawler.promotion.active import (
    SHADOW_FILENAME,
    ActiveModel,
    read_active,
    write_active,
    write_json_atomic,
)
from crawler.promotion.backfill import backfill
from crawler.promotion.loading import ModelLoader, reusing_loader
from crawler.promotion.shadow import ShadowRun
from storage.model_scores import count_unplaced_on_other_versions
from storage.placement import DataLayout

if TYPE_CHECKING:
    from crawler.config import Config
    from storage.catalogue import Catalogue

log = structlog.get_logger("megane.promotion")

POLL_INTERVAL_S = 2.0
STRAGGLER_WAIT_S = 30.0
STRAGGLER_POLL_S = 0.2


class PromotionHost(Protocol):
    """What following promotions needs from the daemon (crawler.daemon.Daemon)."""

    config: Config
    layout: DataLayout
    catalogue: Catalogue | None
    pipeline: Any
    classifier: Classifier | None
    clock: Callable[[], float]


_followed: set[int] = set()


async def follow_promotions(
    host: PromotionHost, *, poll_interval_s: float = POLL_INTERVAL_S,
    loader: ModelLoader | None = None,
) -> None:
    """Poll ACTIVE and apply promotions to the running daemon, until cancelled.

    One follower per daemon: a second one for the same host returns at once.
    """
    if id(host) in _followed:
        return
    _followed.add(id(host))
    try:
        await _follow(host, poll_interval_s, loader)
    finally:
        _followed.discard(id(host))


async def _follow(host: PromotionHost, poll_interval_s: float,
                  loader: ModelLoader | None) -> None:
    applied: tuple[str, str, int | None] | None = None
    broken: str | None = None
    while True:
        try:
            active = await asyncio.to_thread(read_active, host.layout.models)
            broken = None
        except ModelError as error:
            if str(error) != broken:
                log.error("active_model_unreadable", reason=str(error))
            broken, active = str(error), None
        if host.config.classifier.model is not None:
            active = None  # [classifier] model pins the version (crawler.serving)
        if active is not None and active.key != applied and host.pipeline is not None:
            applied = active.key
            current = host.classifier.version if host.classifier is not None else None
            try:
                if active.shadow_images:
                    latest = await _shadow_then_activate(host, active, loader, poll_interval_s)
                    applied = latest.key if latest is not None else applied
                elif active.version != current:
                    await activate(host, active.version, loader)
            except ClassifierError as error:
                log.error("model_promotion_failed", version=active.version, reason=str(error),
                          serving=current)
        await asyncio.sleep(poll_interval_s)


async def activate(host: PromotionHost, version: str, loader: ModelLoader | None) -> None:
    """Swap `version` into the pipeline (from its next batch), then backfill and re-file."""
    from classifier.models import read_model_version
    from crawler.daemon import policy_of

    load = loader or reusing_loader(host.classifier, host.config, host.layout,
                                    getattr(host, "cache_dir", None))
    previous = host.classifier.version if host.classifier is not None else None
    classifier = await asyncio.to_thread(load, version)
    _, heads = await asyncio.to_thread(read_model_version, host.layout.models, version)
    host.pipeline.swap_classifier(classifier)
    host.classifier = classifier
    metrics = getattr(host, "metrics", None)
    if metrics is not None:
        metrics.set_model_version(version)
    log.info("model_promoted", version=version, previous=previous)
    catalogue = host.catalogue
    if catalogue is None:
        return
    if previous is None:
        requeued = await catalogue.requeue_unclassified_held(host.clock())
        if requeued:
            host.pipeline.notify()
            log.info("held_requeued", count=requeued)
    report = await backfill(catalogue, host.layout, version, heads, policy_of(host.config),
                            host.clock())
    log.info("model_backfilled", version=version, rescored=report.rescored,
             without_features=report.without_features, refiled=report.refiled,
             unchanged=report.unchanged, failed=report.failed)
    # Images the old model classified just before the swap are still on their way to
    # placement; once they are filed, bring them over too.
    if await _wait_for_unplaced(catalogue, version, STRAGGLER_WAIT_S):
        report = await backfill(catalogue, host.layout, version, heads,
                                policy_of(host.config), host.clock())
        log.info("model_backfilled", version=version, rescored=report.rescored,
                 without_features=report.without_features, refiled=report.refiled,
                 unchanged=report.unchanged, failed=report.failed, stragglers=True)


async def _wait_for_unplaced(catalogue: Catalogue, version: str, timeout_s: float) -> bool:
    """Wait (bounded) until no image scored by another version awaits placement; True if
    there were some."""
    if not await count_unplaced_on_other_versions(catalogue, version):
        return False
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(STRAGGLER_POLL_S)
        if not await count_unplaced_on_other_versions(catalogue, version):
            break
    return True


async def _shadow_then_activate(
    host: PromotionHost, active: ActiveModel, loader: ModelLoader | None,
    poll_interval_s: float,
) -> ActiveModel | None:
    """Run the shadow, write its report, switch, and mark ACTIVE done. None if superseded."""
    from classifier.models import read_model_version
    from crawler.daemon import policy_of

    _, heads = await asyncio.to_thread(read_model_version, host.layout.models, active.version)
    serving = host.classifier.version if host.classifier is not None else "none"
    run = ShadowRun(active.version, serving, heads, policy_of(host.config),
                    active.shadow_images or 1, host.clock())
    log.info("shadow_started", candidate=active.version, active=serving,
             images=active.shadow_images)
    host.pipeline.batch_listeners.append(run.listen)
    try:
        while not await wait_event(run.done, poll_interval_s):
            latest = await asyncio.to_thread(_read_quietly, host.layout.models)
            if latest is None or latest.key != active.key:
                log.warning("shadow_abandoned", candidate=active.version,
                            reason="ACTIVE changed during the shadow run", images=run.seen)
                return None
    finally:
        with contextlib.suppress(ValueError):
            host.pipeline.batch_listeners.remove(run.listen)
    report = run.report(host.clock())
    path = host.layout.models / active.version / SHADOW_FILENAME
    await asyncio.to_thread(write_json_atomic, path, report)
    log.info("shadow_report", candidate=active.version, active=serving, images=run.seen,
             disagreements=run.disagreements, placement_changes=run.placement_changes,
             report=str(path))
    # Marked done first: a restart from here on serves the candidate without a new shadow.
    done = ActiveModel(active.version, active.promoted_at, shadow_report=str(path))
    await asyncio.to_thread(write_active, host.layout.models, done)
    await activate(host, active.version, loader)
    return done


def _read_quietly(models_dir: Path) -> ActiveModel | None:
    try:
        return read_active(models_dir)
    except ModelError:
        return None

