"""What the daemon reports while it runs: watchdog pings, STATUS= lines and metrics.

`DaemonObserver` feeds pipeline progress to the watchdog and the metrics; `report_loop`
pings the systemd watchdog only while the pipeline makes progress, and refreshes the
STATUS= line and the catalogue gauges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from crawler.metrics import CatalogueCounts, Metrics
from crawler.pipeline import Pipeline
from crawler.sdnotify import Notifier, ProgressWatchdog
from storage.catalogue import Catalogue

log = structlog.get_logger("megane.daemon")


class DaemonObserver:
    """Feeds pipeline progress to the watchdog and the metrics.

    Progress is movement, not success: a stage done, an item reaching any final state
    (rejected too), or a retry scheduled. A backlog of 404s keeps the watchdog fed.
    """

    def __init__(self, watchdog: ProgressWatchdog | None, metrics: Metrics) -> None:
        self.watchdog = watchdog
        self.metrics = metrics

    def progress(self, stage: str, count: int = 1) -> None:
        if self.watchdog is not None:
            self.watchdog.record_progress(time.monotonic())

    def downloaded(self, size_bytes: int, duration_s: float) -> None:
        self.metrics.observe_download(size_bytes, duration_s)

    def batch(self, size: int, duration_s: float) -> None:
        self.metrics.observe_batch(size, duration_s)


async def report_loop(
    catalogue: Catalogue, pipeline: Pipeline, *, notifier: Notifier,
    watchdog: ProgressWatchdog | None, watchdog_interval_s: float | None, metrics: Metrics,
    clock: Callable[[], float],
) -> None:
    """Watchdog pings that depend on progress, STATUS= lines and metrics snapshots."""
    period_s = min(watchdog_interval_s or 15.0, 15.0)
    while True:
        states = await catalogue.counts_by_state()
        pending = await catalogue.count_due(clock())
        if watchdog_interval_s:
            healthy = not pipeline.inference_hung and (
                watchdog is None or watchdog.should_ping(time.monotonic(), pending))
            if healthy:
                notifier.watchdog()
            else:
                log.error("pipeline_stalled", pending=pending,
                          queues=pipeline.queue_depths())
        notifier.status(stats_for_status(states))
        by_source = {name: sum(counts.values())
                     for name, counts in (await catalogue.counts_by_source()).items()}
        metrics.refresh(CatalogueCounts(
            by_state=states, by_tag=await catalogue.counts_by_tag(), by_source=by_source))
        for queue, depth in pipeline.queue_depths().items():
            metrics.set_queue_depth(queue, depth)
        await asyncio.sleep(period_s)


def stats_for_status(counts: Mapping[str, Any]) -> str:
    """A one-line STATUS= text for systemd."""
    return ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))
