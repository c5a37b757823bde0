"""The pipeline of SPEC §7: catalogue → download → decode → batch → classify → decide → place.

The catalogue is the queue. A feeder reads rows that are due and not in flight and hands
them to the stage their state calls for, through bounded queues (a slow classifier slows
the crawler; it never grows memory). Each stage commits the row's new state before
handing it on, so a restart resumes from the rows. One TaskGroup, owned by `run`, holds
every task of the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from classifier.base import Classifier, ClassifyResult
from classifier.decode import DecodeLimits, decode_image
from classifier.errors import DecodeError
from crawler.aio import DaemonThreadRunner, ThreadLimiter, shielded, wait_event
from crawler.decide import Decision, Policy, decide
from crawler.errors import FetchError, PermanentFetchError, RetryableFetchError
from crawler.hygiene import PhashIndex, Verdict, check_arrival, record_near_duplicate
from crawler.localcopy import copy_to_spool
from crawler.rescore import refile_one
from crawler.schedule import retry_delay_s
from storage.catalogue import Catalogue
from storage.errors import PlacementError
from storage.placement import DataLayout, place
from storage.records import BlobRow, MediaRef, MediaRow, Placement, State

log = structlog.get_logger("megane.pipeline")

UNFINISHED = (State.PENDING, State.DOWNLOADED, State.DECODED, State.CLASSIFIED)
RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0
DISK_RETRY_S = 60.0


class Downloader(Protocol):
    """The fetch seam (crawler.fetch.Fetcher)."""

    async def download(self, url: str) -> Any: ...


@dataclass
class Work:
    """One media row moving through the stages (in memory only while in flight)."""

    row: MediaRow
    sha256: str | None = None
    extension: str = ""
    tensor: npt.NDArray[np.float32] | None = None
    scores: dict[str, float] | None = None
    held_reason: str | None = None
    phash: str | None = None
    # Downloaded by this process just now: its bytes are in spool/, so decoding skips
    # looking up the stored copy.
    fresh: bool = False
    # Holds the PhashIndex claim on its sha256 (released in _done).
    claimed: bool = False
    # While waiting for an in-flight original: how near it is (bits).
    waiting_distance: int = 0
    started_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class PipelineSettings:
    download_workers: int = 16
    decode_workers: int = 2
    queue_size: int = 64
    batch_size: int = 16
    max_batch_delay_s: float = 0.2
    inference_timeout_s: float = 120.0
    max_attempts: int = 5
    max_bytes: int = 50 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    limits: DecodeLimits = DecodeLimits()
    jpeg_draft: bool = True
    # With `run(until_idle=True)` (`megane once`) a retry waits at most this long, so every
    # item reaches a final state before the run ends.
    once_max_retry_delay_s: float = 10.0


class PipelineObserver(Protocol):
    """Hooks for metrics and the watchdog; every method must be cheap and never raise.

    `progress` is called when a stage finishes an item, when an item reaches a final state
    (``reject`` included) and when a retry is scheduled (``retry``).
    """

    def progress(self, stage: str, count: int = 1) -> None: ...

    def downloaded(self, size_bytes: int, duration_s: float) -> None: ...

    def batch(self, size: int, duration_s: float) -> None: ...


class _NullObserver:
    def progress(self, stage: str, count: int = 1) -> None:
        return None

    def downloaded(self, size_bytes: int, duration_s: float) -> None:
        return None

    def batch(self, size: int, duration_s: float) -> None:
        return None


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


class Pipeline:
    """Moves rows from pending to a final state. `run()` until cancelled, or until idle."""

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
        self.observer: PipelineObserver = observer or _NullObserver()
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

    def _done(self, work: Work) -> None:
        self.in_flight.discard(work.row.id)
        if work.claimed and self.hashes is not None and work.sha256 is not None:
            self.hashes.release(work.sha256, work.row.id)
            work.claimed = False
            # The original was not filed (or they were not settled): the waiting copies go
            # back to the feeder, which reads their rows again and checks them afresh.
            for waiting in self._waiting.pop(work.sha256, []):
                self.in_flight.discard(waiting.row.id)
        self.wakeup.set()

    # -- download ------------------------------------------------------------------

    async def _download_worker(self) -> None:
        while True:
            work = await self.download_queue.get()
            try:
                await self._download(work)
            except FetchError as error:
                await self._fetch_failed(work, error)
            except OSError as error:
                # Our disk (spool full, permissions), not the item: keep it and retry later.
                now = self.clock()
                reason = f"disk_error: {error.strerror or error}"
                await self.catalogue.defer(work.row.id, reason, now + DISK_RETRY_S, now)
                log.error("media_deferred", url=work.row.url, reason=reason,
                          retry_in_s=DISK_RETRY_S)
                self._done(work)
            except Exception as error:  # noqa: BLE001 - one item, never the daemon
                log.exception("media_failed", url=work.row.url, stage="download")
                await self._reject(work, f"internal_error: {type(error).__name__}: {error}")

    async def _download(self, work: Work) -> None:
        row = work.row
        started = time.monotonic()
        try:
            if row.url.startswith("file:"):
                if row.source not in self.local_sources:
                    raise PermanentFetchError(row.url, "bad_scheme",
                                              "file:// only from folder sources")
                copy = await self._io_threads.run(
                    copy_to_spool, row.url, self.layout.spool, self.settings.max_bytes
                )
                temp_path, sha256, size = copy.path, copy.sha256, copy.size
            else:
                download = await self.fetcher.download(row.url)
                temp_path, sha256, size = Path(download.path), download.sha256, download.size
        except FetchError:
            # Failed attempts are timed too: the duration histogram counts every download.
            self.observer.downloaded(0, time.monotonic() - started)
            raise
        os.replace(temp_path, self.layout.spool_file(sha256))
        now = self.clock()
        known = await self.catalogue.record_download(row.id, sha256, size, now)
        self.observer.progress("download")
        self.observer.downloaded(size, time.monotonic() - started)
        if known is not None and known.placement is not None:
            with contextlib.suppress(FileNotFoundError):
                self.layout.spool_file(sha256).unlink()
            log.info("media_duplicate", url=row.url, sha256=sha256,
                     state=known.placement.value, reason=f"duplicate_of:{sha256}")
            await self._refile_for_copy(work.row, sha256)
            self._done(work)
            return
        if known is not None:  # placement is None but the blob row said rejected
            with contextlib.suppress(FileNotFoundError):
                self.layout.spool_file(sha256).unlink()
            log.info("media_rejected", url=row.url, sha256=sha256, reason=known.reason)
            self._done(work)
            return
        log.info("media_downloaded", url=row.url, sha256=sha256, bytes=size)
        work.sha256 = sha256
        work.fresh = True
        await self.decode_queue.put(work)

    async def _fetch_failed(self, work: Work, error: FetchError) -> None:
        """A retry when the error is retryable and attempts remain, else rejected with its reason.

        A retry scheduled counts as progress for the watchdog, as a rejection does.
        """
        attempts = work.row.attempts + 1
        if error.retryable and attempts < self.settings.max_attempts:
            retry_after = error.retry_after_s if isinstance(error, RetryableFetchError) else None
            delay = retry_delay_s(
                work.row.attempts, backoff_s=RETRY_BASE_S, retry_after_s=retry_after,
                max_retry_after_s=RETRY_MAX_S, jitter=random.random(), max_delay_s=RETRY_MAX_S,
            )
            if self.until_idle:
                delay = min(delay, self.settings.once_max_retry_delay_s)
            now = self.clock()
            await self.catalogue.record_retry(work.row.id, error.reason, now + delay, now)
            self.observer.progress("retry")
            log.warning("media_retry", url=work.row.url, reason=error.reason,
                        attempts=attempts, retry_in_s=round(delay, 1))
            self._done(work)
            return
        log.info("media_failed", url=work.row.url, reason=error.reason, detail=error.detail,
                 attempts=attempts, retryable=error.retryable)
        await self._reject(work, error.reason)

    async def _reject(self, work: Work, reason: str, sha256: str | None = None) -> None:
        await self.catalogue.reject(work.row.id, reason, self.clock(), sha256=sha256)
        if sha256 is not None:
            with contextlib.suppress(FileNotFoundError):
                self.layout.spool_file(sha256).unlink()
        self.observer.progress("reject")  # a final state is progress, whatever the outcome
        log.info("media_rejected", url=work.row.url, sha256=sha256, reason=reason)
        self._done(work)

    # -- decode --------------------------------------------------------------------

    async def _decode_worker(self) -> None:
        while True:
            work = await self.decode_queue.get()
            try:
                await self._decode(work)
            except DecodeError as error:
                await self._reject(work, error.reason, sha256=work.sha256)
            except Exception as error:
                log.exception("media_failed", url=work.row.url, stage="decode")
                await self._reject(work, f"internal_error: {type(error).__name__}: {error}",
                                   sha256=work.sha256)

    async def _decode(self, work: Work) -> None:
        sha256 = work.sha256
        if sha256 is None:
            raise DecodeError("missing_content", "row has no sha256")
        path: Path | None = self.layout.spool_file(sha256)
        if not (work.fresh and path is not None and path.exists()):
            # Resumed rows, or the same bytes already placed by another row in flight.
            blob = await self.catalogue.get_blob(sha256)
            path = self.layout.content_file(sha256, blob.extension)
        if path is None:
            # The file vanished (crash between rename and commit): fetch it again.
            await self.catalogue.reset_unfinished_without_file(sha256, self.clock())
            self._done(work)
            return
        with_tensor = self.classifier is not None
        decoded, tensor, phash = await self._decode_threads.run(
            _decode_and_prepare, path, self.settings.limits,
            self.settings.jpeg_draft, with_tensor,
        )
        work.extension = decoded.extension
        await self.catalogue.record_decoded(
            work.row.id, sha256, format=decoded.format, width=decoded.width,
            height=decoded.height, extension=decoded.extension, phash=phash, now=self.clock(),
        )
        self.observer.progress("decode")
        log.info("media_decoded", url=work.row.url, sha256=sha256, format=decoded.format,
                 width=decoded.width, height=decoded.height,
                 repairs=list(decoded.repairs) or None)
        work.phash = phash
        if self.hashes is not None and await self._near_copy(work, phash):
            return
        if tensor is not None and await self._classified_already(sha256):
            # The same bytes came before (another URL, a flagged repost): their stored
            # scores decide; the model runs once per content.
            await self.place_queue.put(work)
            return
        if tensor is None:
            work.held_reason = self.classifier_problem
            await self.place_queue.put(work)
        else:
            work.tensor = tensor
            await self.batch_queue.put(work)

    async def _near_copy(self, work: Work, phash: str | None) -> bool:
        """Drop or park an arrival that copies a stored, blocked or in-flight image.

        True when the work is taken care of here: rejected (blocked), recorded as a
        near-duplicate, or waiting for an original still in flight (`_settle_waiting`).
        Otherwise the arrival claims its bytes and hash, and goes on as new.
        """
        assert self.hashes is not None and work.sha256 is not None
        verdict = await check_arrival(self.catalogue, self.hashes, work.sha256, phash,
                                      self.near_duplicate_distance, owner=work.row.id)
        if verdict is not None and verdict.blocked:
            await self._reject(work, verdict.reason, sha256=work.sha256)
            return True
        same_bytes = verdict is not None and verdict.of_sha256 == work.sha256
        # A flagged near-copy is filed on its own (and quarantined by its flag), rather
        # than lending its flag to an image it only resembles. The same bytes always wait.
        if verdict is not None and (same_bytes or not work.row.flags):
            if verdict.in_flight:
                work.waiting_distance = verdict.distance
                self._waiting.setdefault(verdict.of_sha256, []).append(work)
                log.info("media_waiting", url=work.row.url, sha256=work.sha256,
                         original=verdict.of_sha256, distance=verdict.distance)
                return True
            if await self._record_near_copy(work, verdict):
                return True
        self.hashes.claim(work.sha256, phash, work.row.id)
        work.claimed = True
        return False

    async def _record_near_copy(self, work: Work, verdict: Verdict) -> bool:
        assert work.sha256 is not None
        if not await record_near_duplicate(self.catalogue, self.layout, work.row.id,
                                           work.sha256, verdict, self.clock()):
            return False
        log.info("media_near_duplicate", url=work.row.url, sha256=work.sha256,
                 reason=verdict.reason, distance=verdict.distance)
        await self._refile_for_copy(work.row, verdict.of_sha256)
        self._done(work)
        return True

    async def _settle_waiting(self, sha256: str) -> None:
        """The image `sha256` is filed: record the copies that waited for it.

        Copies of the same bytes were made final by its placement (`duplicate_of:`);
        near-copies are recorded `near_duplicate_of:`. One whose flags or source tags
        could change the filing has the original re-filed with them.
        """
        refile = False
        for waiting in self._waiting.pop(sha256, []):
            if waiting.sha256 == sha256:
                refile = refile or bool(waiting.row.flags) or self._tags_matter(waiting.row)
                self._done(waiting)
                continue
            verdict = Verdict(blocked=False, of_sha256=sha256,
                              distance=waiting.waiting_distance)
            if not await self._record_near_copy(waiting, verdict):
                self._done(waiting)  # not recorded: the feeder hands it out again
        if refile:
            await self._refile(sha256)

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

    async def _classified_already(self, sha256: str) -> bool:
        """Whether the serving model has scored these bytes before (their scores are stored)."""
        if self.classifier is None:
            return False
        blob = await self.catalogue.get_blob(sha256)
        return blob.model_version == self.classifier.version

    # -- classify ------------------------------------------------------------------

    async def _collect_batch(self) -> list[Work]:
        batch = [await self.batch_queue.get()]
        size = self.classifier.batch_size if self.classifier is not None else 1
        deadline = asyncio.get_running_loop().time() + self.settings.max_batch_delay_s
        while len(batch) < size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.batch_queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _classify_worker(self) -> None:
        while True:
            batch = await self._collect_batch()
            classifier = self.classifier
            if classifier is None:
                for work in batch:
                    work.held_reason = self.classifier_problem
                    await self.place_queue.put(work)
                continue
            tensors = np.stack([work.tensor for work in batch if work.tensor is not None])
            started = time.monotonic()
            try:
                result = await asyncio.wait_for(
                    self._model_thread.run(classifier.classify, tensors),
                    self.settings.inference_timeout_s,
                )
                if len(result.scores) != len(batch):
                    raise ValueError(f"{len(result.scores)} results for {len(batch)} images")
            except Exception as error:  # noqa: BLE001 - fail closed: the batch is held
                reason = f"inference_failed: {type(error).__name__}: {error}"[:300]
                log.error("batch_failed", size=len(batch), reason=reason,
                          model_version=classifier.version)
                if isinstance(error, TimeoutError):
                    # The call may still be running and holds the device: stop feeding it.
                    # Later images are held, and the watchdog stops pinging (restart).
                    self.inference_hung = True
                    self.classifier = None
                    self.classifier_problem = (
                        f"inference_hung: no answer in {self.settings.inference_timeout_s} s")
                    log.error("inference_hung", model_version=classifier.version)
                for work in batch:
                    work.tensor = None
                    work.held_reason = reason
                    await self.place_queue.put(work)
                continue
            self.batches_run += 1
            self.observer.batch(len(batch), time.monotonic() - started)
            log.debug("batch_classified", size=len(batch), model_version=classifier.version,
                      seconds=round(time.monotonic() - started, 3))
            features = result.features.astype(np.float16)
            items = []
            for index, work in enumerate(batch):
                work.tensor = None
                work.scores = result.scores[index]
                assert work.sha256 is not None
                items.append((work.row.id, work.sha256, work.scores, features[index].tobytes()))
            await self.catalogue.record_scores(items, classifier.version, "open_nsfw",
                                               self.clock())
            for listener in list(self.batch_listeners):
                try:
                    await listener(tensors, result, [item[1] for item in items])
                except Exception:
                    log.exception("batch_listener_failed")
            self.observer.progress("classify", len(batch))
            for work in batch:
                log.info("media_classified", url=work.row.url, sha256=work.sha256,
                         model_version=classifier.version, scores=work.scores)
                await self.place_queue.put(work)

    # -- place ---------------------------------------------------------------------

    async def _place_worker(self) -> None:
        while True:
            work = await self.place_queue.get()
            try:
                await shielded(self._place(work), self.settings.shutdown_grace_s)
            except PlacementError as error:
                # Disk full or permissions: the row keeps its committed state and is tried
                # again later; nothing partial is visible (placement is atomic).
                log.error("media_place_failed", url=work.row.url, sha256=work.sha256,
                          reason=str(error))
                now = self.clock()
                await self.catalogue.defer(work.row.id, f"place_failed: {error.reason}",
                                           now + DISK_RETRY_S, now)
                self._done(work)
            except Exception as error:
                log.exception("media_failed", url=work.row.url, stage="place")
                await self._reject(work, f"internal_error: {type(error).__name__}: {error}",
                                   sha256=None)

    async def _place(self, work: Work) -> None:
        sha256 = work.sha256
        assert sha256 is not None
        extension = work.extension or (await self.catalogue.get_blob(sha256)).extension
        labels = await self.catalogue.human_labels_for(sha256)
        flags = await self.catalogue.flags_for(sha256)
        if work.held_reason is not None:
            decision = Decision(Placement.HELD, (), work.held_reason)
        else:
            scores = work.scores
            if scores is None:
                scores = await self.catalogue.scores_for(sha256) or None
            source_tags = await self.catalogue.source_tags_for(sha256)
            decision = decide(scores, flags, self.policy, labels, source_tags)
        sidecar = None
        if decision.placement is Placement.QUARANTINE:
            sidecar = await self.sidecar(sha256, decision, work.scores)
        # Decision first, files second, rows final third: a file is never visible under
        # library/ before the catalogue says it belongs there.
        refused = await self.catalogue.record_decisions(
            [(sha256, decision.placement, decision.reason, decision.tags)], self.clock()
        )
        if refused:
            # Deleted or rejected while this row was in flight: that verdict stands.
            blob = await self.catalogue.get_blob(sha256)
            await self._reject(work, blob.reason or "rejected_content", sha256=None)
            return
        await self._io_threads.run(
            place, self.layout, sha256, extension, decision.placement, decision.tags, sidecar
        )
        await self.catalogue.record_placement(
            sha256, decision.placement, decision.reason, decision.tags, self.clock(),
            media_id=work.row.id,
        )
        self.observer.progress("place")
        if self.hashes is not None and work.phash is not None:
            self.hashes.add(sha256, work.phash)
        if decision.placement is Placement.QUARANTINE and self.on_quarantine is not None:
            self.on_quarantine()
        log.info("media_filed", url=work.row.url, sha256=sha256,
                 placement=decision.placement.value, tags=list(decision.tags),
                 reason=decision.reason)
        if work.claimed:
            await self._settle_waiting(sha256)
        self._done(work)

    async def sidecar(self, sha256: str, decision: Decision,
                      scores: Mapping[str, float] | None) -> dict[str, Any]:
        return await quarantine_sidecar(self.catalogue, self.policy, sha256, decision, scores)


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


def _decode_and_prepare(
    path: Path, limits: DecodeLimits, jpeg_draft: bool, with_tensor: bool
) -> tuple[Any, npt.NDArray[np.float32] | None, str | None]:
    """Decode, validate, hash and preprocess one image (in a worker thread)."""
    from classifier.phash import informative_hash
    from classifier.preprocess import preprocess

    decoded = decode_image(path, limits, draft_size=(256, 256) if jpeg_draft else None)
    # None for a low-detail image: its hash would match every other plain image.
    phash = informative_hash(decoded.image)
    tensor = preprocess(decoded.image) if with_tensor else None
    return decoded, tensor, phash
