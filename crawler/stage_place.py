"""The place stage: decide where an image belongs, file it, and make the row final.

The decision is committed first, the files second, the row's final state third, so a file
is never visible under library/ before the catalogue says it belongs there. A quarantined
image gets a JSON sidecar (`crawler.sidecar`). Placement failing (disk full, permissions)
defers the row; nothing partial is visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from crawler.aio import shielded
from crawler.decide import Decision, decide
from crawler.near_copies import NearCopies
from crawler.pipeline_work import Work
from crawler.sidecar import quarantine_sidecar
from storage.errors import PlacementError
from storage.placement import place
from storage.records import Placement

log = structlog.get_logger("megane.pipeline")


class PlaceStage(NearCopies):
    """The worker taking rows from `place_queue` to a final state."""

    async def _place_worker(self) -> None:
        while True:
            work = await self.place_queue.get()
            try:
                try:
                    await shielded(self._place(work), self.settings.shutdown_grace_s)
                except PlacementError as error:
                    # Disk full or permissions: the row keeps its committed state and is
                    # tried again later; nothing partial is visible (placement is atomic).
                    log.error("media_place_failed", url=work.row.url, sha256=work.sha256,
                              reason=str(error))
                    await self._defer(work, f"place_failed: {error.reason}")
                except Exception as error:  # noqa: BLE001 - isolation: one item
                    await self._failed_internally(work, "place", error)
            except Exception:  # the verdict could not be written; it left flight
                log.exception("media_verdict_unrecorded", url=work.row.url, sha256=work.sha256)

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
        holder = await self.catalogue.record_placement(
            sha256, decision.placement, decision.reason, decision.tags, self.clock(),
            media_id=work.row.id,
        )
        # The filing is committed: from here on a failure is logged and never undoes it
        # (the row keeps its state and reason), and every waiting copy is released.
        try:
            await self._after_filing(work, decision, holder)
        except Exception:  # isolation: the committed filing stands
            log.exception("media_after_filing_failed", url=work.row.url, sha256=sha256)
        finally:
            self._done(work)

    async def _after_filing(self, work: Work, decision: Decision, holder: int | None) -> None:
        """Report the committed filing of `work` and settle the copies waiting for it."""
        sha256 = work.sha256
        assert sha256 is not None
        self.observer.progress("place")
        if self.hashes is not None and work.phash is not None:
            self.hashes.add(sha256, work.phash)
        if decision.placement is Placement.QUARANTINE and self.on_quarantine is not None:
            self.on_quarantine()
        if holder is None or holder == work.row.id:
            log.info("media_filed", url=work.row.url, sha256=sha256,
                     placement=decision.placement.value, tags=list(decision.tags),
                     reason=decision.reason)
            filed_url = work.row.url
        else:
            # These bytes were filed before under another URL, which keeps the decision:
            # this row is its duplicate, as the catalogue says.
            filed_url = (await self.catalogue.get_media(holder)).url
            log.info("media_duplicate", url=work.row.url, sha256=sha256,
                     state=decision.placement.value, reason=f"duplicate_of:{sha256}",
                     of=filed_url)
        if work.claimed:
            await self._settle_waiting(sha256, filed_url)

    async def sidecar(self, sha256: str, decision: Decision,
                      scores: Mapping[str, float] | None) -> dict[str, Any]:
        return await quarantine_sidecar(self.catalogue, self.policy, sha256, decision, scores)
