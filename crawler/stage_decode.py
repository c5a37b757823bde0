"""The decode stage: validate and decode the bytes, hash them, prepare the model's tensor.

Decoding runs in worker threads under a limit. A decoded image goes to the batcher, or
straight to placement when it is held (no classifier), when these bytes were scored by the
serving model before, or not at all when it is a near-duplicate (`NearCopies`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from classifier.decode import DecodeLimits, decode_image
from classifier.errors import DecodeError
from crawler.near_copies import NearCopies
from crawler.pipeline_work import Work

log = structlog.get_logger("megane.pipeline")


class DecodeStage(NearCopies):
    """Workers taking rows from `decode_queue` to `batch_queue` or `place_queue`."""

    async def _decode_worker(self) -> None:
        while True:
            work = await self.decode_queue.get()
            try:
                await self._decode(work)
            except DecodeError as error:
                await self._reject(work, error.reason, sha256=work.sha256)
            except Exception as error:  # noqa: BLE001 - isolation: one item, never the daemon
                await self._failed_internally(work, "decode", error, sha256=work.sha256)

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
