"""The state every pipeline stage shares, and the steps common to them.

`PipelineCore` holds the queues between stages, the rows in flight, the thread runners,
the serving classifier and policy, and the copies parked while their original is in flight.
Its helpers end an item's flight (`_done`), reject it, and re-file an original when a copy
brings source tags that matter. The stages (`crawler.stage_*`) subclass it, and
`crawler.pipeline.Pipeline` combines them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt
import structlog

from classifier.base import Classifier, ClassifyResult
from crawler.aio import DaemonThreadRunner, ThreadLimiter
from crawler.decide import Policy
from crawler.hygiene import PhashIndex
from crawler.pipeline_work import (
    DISK_RETRY_S,
    Downloader,
    NullObserver,
    PipelineObserver,
    PipelineSettings,
    Work,
)
from crawler.rescore import refile_one
from storage.catalogue import Catalogue
from storage.errors import PlacementError
from storage.placement import DataLayout
from storage.records import MediaRow

log = structlog.get_logger("megane.pipeline")


class PipelineCore:
    """What the stages share; see `crawler.pipeline.Pipeline` for the whole."""

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        layout: DataLayout,
        fetcher: Downloader,
        classifier: Classifier | None,
        classifier_problem: str | None,
        policy: Policy,
        settings: PipelineSettings,
        local_sources: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
        observer: PipelineObserver | None = None,
        hashes: PhashIndex | None = None,
        near_duplicate_distance: int = 6,
        on_quarantine: Callable[[], None] | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.layout = layout
        self.fetcher = fetcher
        self.classifier = classifier
        self.classifier_problem = classifier_problem or "no_model"
        self.policy = policy
        self.settings = settings
        self.local_sources = local_sources
        self.clock = clock
        self.observer: PipelineObserver = observer or NullObserver()
        self.hashes = hashes
        self.near_duplicate_distance = near_duplicate_distance
        self.on_quarantine = on_quarantine
        size = settings.queue_size
        self.download_queue: asyncio.Queue[Work] = asyncio.Queue(size)
        self.decode_queue: asyncio.Queue[Work] = asyncio.Queue(size)
        self.batch_queue: asyncio.Queue[Work] = asyncio.Queue(max(size, settings.batch_size * 2))
        self.place_queue: asyncio.Queue[Work] = asyncio.Queue(size)
        self.in_flight: set[int] = set()
        # sha256 of an image in flight -> copies (same bytes or near) waiting for its filing.
        self._waiting: dict[str, list[Work]] = {}
        # sha256 of an image in flight -> the work holding its claim (what copies wait for).
        self._claimants: dict[str, Work] = {}
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.sources_done = asyncio.Event()
        self._decode_threads = ThreadLimiter(settings.decode_workers, "decode")
        self._io_threads = ThreadLimiter(4, "place")
        self._model_thread = DaemonThreadRunner("inference")
        self.inference_hung = False
        self.batches_run = 0
        self.until_idle = False
        # Called after each classified batch with (tensors, result, sha256s), e.g. to run a
        # candidate model in shadow. A listener's failure is logged and never costs the batch.
        self.batch_listeners: list[
            Callable[[npt.NDArray[np.float32], ClassifyResult, list[str]], Awaitable[None]]
        ] = []

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    def swap_classifier(self, classifier: Classifier) -> None:
        """Use `classifier` from the next batch on (the current batch finishes with the old)."""
        self.classifier = classifier

    def notify(self) -> None:
        """New rows may be due (a source added media)."""
        self.wakeup.set()

    def queue_depths(self) -> dict[str, int]:
        return {
            "download": self.download_queue.qsize(), "decode": self.decode_queue.qsize(),
            "batch": self.batch_queue.qsize(), "place": self.place_queue.qsize(),
            "in_flight": len(self.in_flight),
        }

    def _done(self, work: Work) -> None:
        self.in_flight.discard(work.row.id)
        if work.claimed and self.hashes is not None and work.sha256 is not None:
            self.hashes.release(work.sha256, work.row.id)
            self._claimants.pop(work.sha256, None)
            work.claimed = False
            # The original was not filed (or they were not settled): the waiting copies go
            # back to the feeder, which reads their rows again and checks them afresh.
            for waiting in self._waiting.pop(work.sha256, []):
                self.in_flight.discard(waiting.row.id)
        self.wakeup.set()

    async def _reject(self, work: Work, reason: str, sha256: str | None = None) -> None:
        try:
            await self.catalogue.reject(work.row.id, reason, self.clock(), sha256=sha256)
            if sha256 is not None:
                self._discard_spool(sha256)
            self.observer.progress("reject")  # a final state is progress, whatever the outcome
            log.info("media_rejected", url=work.row.url, sha256=sha256, reason=reason)
        finally:
            # Even when the verdict cannot be recorded, the item and its waiting copies
            # leave flight (the feeder reads their rows again).
            self._done(work)

    async def _failed_internally(self, work: Work, stage: str, error: Exception,
                                 sha256: str | None = None) -> None:
        """A bug met while handling one item (call it in the `except`): logged, item rejected."""
        log.exception("media_failed", url=work.row.url, stage=stage)
        await self._reject(work, f"internal_error: {type(error).__name__}: {error}",
                           sha256=sha256)

    async def _defer(self, work: Work, reason: str) -> None:
        """Our disk failed, not the item: keep its committed state, try it again later."""
        now = self.clock()
        try:
            await self.catalogue.defer(work.row.id, reason, now + DISK_RETRY_S, now)
        finally:
            self._done(work)

    def _discard_spool(self, sha256: str) -> None:
        """Remove the spooled download of `sha256`, if it is still there."""
        with contextlib.suppress(FileNotFoundError):
            self.layout.spool_file(sha256).unlink()

    def _tags_matter(self, row: MediaRow) -> bool:
        return bool(self.policy.source_tag_matches(row.tags))

    async def _refile_for_copy(self, row: MediaRow, original: str) -> None:
        """A copy filed under `original` brings source tags that may add a tag: re-file it.

        Re-filing reads every URL's tags, as `megane rescore` does, so both agree.
        """
        if self._tags_matter(row):
            await self._refile(original)

    async def _refile(self, sha256: str) -> None:
        try:
            await refile_one(self.catalogue, self.layout, self.policy, sha256, self.clock())
        except PlacementError as error:
            # The copy is recorded either way; the next rescore or start files it again.
            log.error("refile_failed", sha256=sha256, reason=str(error))
