"""Near-duplicates in flight: an arrival that copies a stored, blocked or in-flight image.

Decoding an image gives its perceptual hash. An arrival whose bytes or hash match a blocked
image is rejected; one matching a filed image is recorded as its (near-)duplicate; one
matching an image still in flight waits (`_waiting`) until that original is filed
(`_settle_waiting`) or is not (`_done` hands it back to the feeder).
"""

from __future__ import annotations

import structlog

from crawler.hygiene import Verdict, check_arrival, record_near_duplicate
from crawler.pipeline_core import PipelineCore
from crawler.pipeline_work import Work

log = structlog.get_logger("megane.pipeline")


class NearCopies(PipelineCore):
    """The near-duplicate checks of the decode stage and their settling at placement."""

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
                # It waits for another row (another URL) in flight: name that row's URL.
                # The same bytes have no other original than their own sha256.
                claimant = self._claimants.get(verdict.of_sha256)
                log.info("media_waiting", url=work.row.url, sha256=work.sha256,
                         waits_for=claimant.row.url if claimant is not None else None,
                         original=None if same_bytes else verdict.of_sha256,
                         same_bytes=same_bytes, distance=verdict.distance)
                return True
            if await self._record_near_copy(work, verdict):
                return True
        self.hashes.claim(work.sha256, phash, work.row.id)
        self._claimants[work.sha256] = work
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

    async def _settle_waiting(self, sha256: str, filed_url: str) -> None:
        """The image `sha256` is filed (by the row of `filed_url`): settle its copies.

        Copies of the same bytes were made final by its placement (`duplicate_of:`), and
        each gets its own final event, read back from its row so the log says what the
        catalogue holds; near-copies are recorded `near_duplicate_of:`. One whose flags or
        source tags could change the filing has the original re-filed with them.
        """
        refile = False
        for waiting in self._waiting.pop(sha256, []):
            # Each copy is settled on its own: one that fails is handed back to the feeder
            # (which checks it afresh) and never strands the copies after it in flight.
            try:
                refile = await self._settle_one(waiting, sha256, filed_url) or refile
            except Exception:  # isolation: one copy, never the others
                log.exception("media_waiting_unsettled", url=waiting.row.url,
                              sha256=waiting.sha256, original=sha256)
            finally:
                self._done(waiting)
        if refile:
            try:
                await self._refile(sha256)
            except Exception:  # the copies are recorded; a rescore re-files
                log.exception("refile_failed", sha256=sha256)

    async def _settle_one(self, waiting: Work, sha256: str, filed_url: str) -> bool:
        """Settle one copy waiting for `sha256`; True when the original needs re-filing."""
        if waiting.sha256 == sha256:
            row = await self.catalogue.get_media(waiting.row.id)
            self.observer.progress("duplicate")
            # Read back: a copy re-queued from held may have left the decision to this row.
            copy = (row.reason or "").startswith(("duplicate_of:", "near_duplicate_of:"))
            log.info("media_duplicate" if copy else "media_filed", url=waiting.row.url,
                     sha256=sha256, state=row.state.value, reason=row.reason, of=filed_url)
            return bool(waiting.row.flags) or self._tags_matter(waiting.row)
        verdict = Verdict(blocked=False, of_sha256=sha256, distance=waiting.waiting_distance)
        # Not recorded (False): `_settle_waiting` releases it and the feeder hands it out again.
        await self._record_near_copy(waiting, verdict)
        return False

    async def _classified_already(self, sha256: str) -> bool:
        """Whether the serving model has scored these bytes before (their scores are stored)."""
        if self.classifier is None:
            return False
        blob = await self.catalogue.get_blob(sha256)
        return blob.model_version == self.classifier.version
