"""The pipeline's vocabulary: the work item in flight, its settings, and its seams.

`Work` is one media row moving through the stages (in memory only while in flight);
`PipelineSettings` are its sizes and limits; `Downloader` and `PipelineObserver` are the
seams to the fetcher and to metrics/watchdog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from classifier.decode import DecodeLimits
from storage.records import MediaRow, State

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
    """Sizes, limits and timeouts of the pipeline (from `[daemon]`, `[http]`, `[images]`)."""

    download_workers: int = 16
    decode_workers: int = 2
    queue_size: int = 64
    batch_size: int = 16
    max_batch_delay_s: float = 0.2
    inference_timeout_s: float = 120.0
    max_attempts: int = 5
    max_bytes: int = 50 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    limits: DecodeLimits = field(default_factory=DecodeLimits)
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


class NullObserver:
    """An observer that ignores everything (no metrics, no watchdog)."""

    def progress(self, stage: str, count: int = 1) -> None:
        return None

    def downloaded(self, size_bytes: int, duration_s: float) -> None:
        return None

    def batch(self, size: int, duration_s: float) -> None:
        return None
