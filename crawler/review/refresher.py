"""Keeping `quarantine/index.html` current from inside the daemon.

The daemon owns one `IndexRefresher`: it calls `mark_changed()` wherever an image enters
or leaves quarantine (filing, re-filing on reload, a review decision) and runs `run()`
as one long-lived task of its root TaskGroup. Changes are coalesced: the sheet is
rewritten at most once per `min_interval_s`, and once at start so a crash never leaves
it stale. A failed rewrite (disk full) is logged and retried at the next change.
"""

from __future__ import annotations

import asyncio

import structlog

from storage.catalogue import Catalogue
from crawler.display import linkable_url
from storage.contact_sheet import DEFAULT_BLUR_RADIUS, refresh_quarantine_index
from storage.errors import StorageError
from storage.placement import DataLayout

log = structlog.get_logger("megane.review")


class IndexRefresher:
    def __init__(self, catalogue: Catalogue, layout: DataLayout, *,
                 blur_radius: float = DEFAULT_BLUR_RADIUS, min_interval_s: float = 2.0) -> None:
        self.catalogue = catalogue
        self.layout = layout
        self.blur_radius = blur_radius
        self.min_interval_s = min_interval_s
        self.refreshed = 0
        self._changed = asyncio.Event()
        self._changed.set()
        self._idle = asyncio.Event()

    def mark_changed(self) -> None:
        """Ask for a rewrite (cheap; call it as often as you like)."""
        self._changed.set()
        self._idle.clear()

    async def wait_idle(self) -> None:
        """Until every change marked so far is on the sheet (tests, `megane once`)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await refresh_quarantine_index(self.catalogue, self.layout, self.blur_radius,
                                               linkable=linkable_url)
                self.refreshed += 1
            except (OSError, StorageError) as error:
                log.error("contact_sheet_failed", reason=str(error))
            if not self._changed.is_set():
                self._idle.set()
            await asyncio.sleep(self.min_interval_s)
