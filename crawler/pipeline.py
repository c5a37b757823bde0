"""The pipeline of SPEC §7: catalogue → download → decode → batch → classify → decide → place.

The catalogue is the queue. A feeder reads rows that are due and not in flight and hands
them to the stage their state calls for, through bounded queues (a slow classifier slows
the crawler; it never grows memory). Each stage commits the row's new state before
handing it on, so a restart resumes from the rows. One TaskGroup, owned by `run`, holds
every task of the pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from crawler.aio import wait_event
from crawler.pipeline_work import (
    DISK_RETRY_S,
    RETRY_BASE_S,
    RETRY_MAX_S,
    UNFINISHED,
    Downloader,
    PipelineObserver,
    PipelineSettings,
    Work,
)
from crawler.sidecar import quarantine_sidecar, sidecar_document
from crawler.stage_classify import ClassifyStage
from crawler.stage_decode import DecodeStage, _decode_and_prepare
from crawler.stage_download import DownloadStage
from crawler.stage_place import PlaceStage
from storage.records import MediaRef, State

__all__ = [
    "DISK_RETRY_S",
    "RETRY_BASE_S",
    "RETRY_MAX_S",
    "UNFINISHED",
    "Downloader",
    "Pipeline",
    "PipelineObserver",
    "PipelineSettings",
    "Work",
    "_decode_and_prepare",
    "quarantine_sidecar",
    "screen_refs",
    "sidecar_document",
]


def screen_refs(refs: Sequence[MediaRef], local_sources: frozenset[str]) -> list[MediaRef]:
    """`refs`, with a ``file:`` URL from a source that is not a local folder refused.

    Refused refs still get a row (rejected, reason ``bad_scheme``), never a request. The
    catalogue refuses every other scheme and every URL that does not parse the same way
    (storage.untrusted.url_problem), so each URL a source yields reaches a final state.
    """
    screened = []
    for ref in refs:
        if (ref.source not in local_sources and not ref.skip_reason
                and ref.url[:5].lower() == "file:"):
            ref = replace(ref, skip_reason="bad_scheme")
        screened.append(ref)
    return screened


class Pipeline(DownloadStage, DecodeStage, ClassifyStage, PlaceStage):
    """Moves rows from pending to a final state. `run()` until cancelled, or until idle.

    The stages live in their own modules (`crawler.stage_download`, `stage_decode`,
    `stage_classify`, `stage_place`) over the shared state of `crawler.pipeline_core`.
    """

    async def run(self, *, until_idle: bool = False) -> None:
        """Run every stage. With `until_idle`, return once sources are done and nothing is left.

        With `until_idle`, retries are scheduled at most `once_max_retry_delay_s` ahead and
        waited for, so an item still failing after `max_attempts` ends rejected.
        """
        self.until_idle = until_idle
        try:
            async with asyncio.TaskGroup() as group:
                feeder = group.create_task(self._feed(until_idle), name="feeder")
                workers = [
                    group.create_task(self._download_worker(), name=f"download-{n}")
                    for n in range(self.settings.download_workers)
                ]
                workers += [
                    group.create_task(self._decode_worker(), name=f"decode-{n}")
                    for n in range(self.settings.decode_workers)
                ]
                workers.append(group.create_task(self._classify_worker(), name="classify"))
                workers.append(group.create_task(self._place_worker(), name="place"))
                await feeder
                for worker in workers:
                    worker.cancel()
        finally:
            self._decode_threads.shutdown()
            self._io_threads.shutdown()

    # -- feeding -------------------------------------------------------------------

    async def _feed(self, until_idle: bool) -> None:
        queues = {
            State.PENDING: self.download_queue,
            State.DOWNLOADED: self.decode_queue,
            State.DECODED: self.decode_queue,
            State.CLASSIFIED: self.place_queue,
        }
        while True:
            self.wakeup.clear()
            now = self.clock()
            rows = await self.catalogue.media_in_states(
                UNFINISHED, limit=self.settings.queue_size, now=now, exclude=self.in_flight
            )
            for row in rows:
                self.in_flight.add(row.id)
                await queues[row.state].put(Work(row=row, sha256=row.sha256))
            if rows:
                continue
            due = await self.catalogue.next_attempt_at(now)
            # In `once` mode, retries this run scheduled are waited for; only rows put off
            # further (a full disk, a retry from an earlier `run`) stay for later.
            if (until_idle and self.sources_done.is_set() and not self.in_flight
                    and (due is None or due > now + self.settings.once_max_retry_delay_s + 1.0)):
                self.idle.set()
                return
            timeout = 5.0 if due is None else min(max(due - now, 0.05), 5.0)
            await wait_event(self.wakeup, timeout)
