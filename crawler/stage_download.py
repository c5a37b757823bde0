"""The download stage: a pending row's bytes into spool/, or a retry, or a rejection.

Remote URLs go through the `Downloader` (the Fetcher); `file:` URLs only from folder
sources, copied under the byte cap. Bytes already known end the row as a duplicate; a
retryable failure schedules a retry with backoff (honouring Retry-After) until
`max_attempts`; our own disk failing defers the row instead of blaming it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import structlog

from crawler.errors import FetchError, PermanentFetchError, RetryableFetchError
from crawler.localcopy import copy_to_spool
from crawler.pipeline_core import PipelineCore
from crawler.pipeline_work import DISK_RETRY_S, RETRY_BASE_S, RETRY_MAX_S, Work
from crawler.schedule import retry_delay_s
from storage.placement import rename_into_place

log = structlog.get_logger("megane.pipeline")


class DownloadStage(PipelineCore):
    """Workers taking rows from `download_queue` to `decode_queue`."""

    async def _download_worker(self) -> None:
        while True:
            work = await self.download_queue.get()
            try:
                await self._download(work)
            except FetchError as error:
                await self._fetch_failed(work, error)
            except OSError as error:
                # Our disk (spool full, permissions), not the item: keep it and retry later.
                reason = f"disk_error: {error.strerror or error}"
                log.error("media_deferred", url=work.row.url, reason=reason,
                          retry_in_s=DISK_RETRY_S)
                await self._defer(work, reason)
            except Exception as error:  # noqa: BLE001 - isolation: one item, never the daemon
                await self._failed_internally(work, "download", error)

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
        # Spool is scratch: admit_to_store makes the bytes durable later.
        rename_into_place(temp_path, self.layout.spool_file(sha256), durable=False)
        now = self.clock()
        known = await self.catalogue.record_download(row.id, sha256, size, now)
        self.observer.progress("download")
        self.observer.downloaded(size, time.monotonic() - started)
        if known is not None and known.placement is not None:
            self._discard_spool(sha256)
            log.info("media_duplicate", url=row.url, sha256=sha256,
                     state=known.placement.value, reason=f"duplicate_of:{sha256}")
            await self._refile_for_copy(work.row, sha256)
            self._done(work)
            return
        if known is not None:  # placement is None but the blob row said rejected
            self._discard_spool(sha256)
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
