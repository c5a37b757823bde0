"""The classify stage: images batched, scored by the serving model in its own thread.

A batch is cut at the model's batch size or after `max_batch_delay_s`. A failing or hung
model fails closed: the batch is held. A hung one (no answer in `inference_timeout_s`) is
dropped for good, so later images are held and the watchdog stops pinging.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import structlog

from crawler.pipeline_core import PipelineCore
from crawler.pipeline_work import Work

log = structlog.get_logger("megane.pipeline")


class ClassifyStage(PipelineCore):
    """The batcher and classifier between `batch_queue` and `place_queue`."""

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
