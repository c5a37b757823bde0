"""Per-host limits: how many requests at a time, and how many a second, per host:port.

`HostSlots` bounds concurrent operations per host (entries exist only while in use);
`HostThrottles` keeps one rate limiter per host, the least recently used dropped past
`MAX_THROTTLED_HOSTS`.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncio_throttle.throttler import Throttler

MAX_THROTTLED_HOSTS = 4096


def throttler_for_rate(rate_per_s: float) -> Throttler:
    """A Throttler allowing `rate_per_s` requests a second (also below one a second)."""
    count = max(1, math.floor(rate_per_s))
    return Throttler(rate_limit=count, period=count / rate_per_s)


class HostSlots:
    """At most `size` operations at a time per host; entries exist only while in use.

    Waiting for a slot happens before a download's deadline starts, so downloads queued
    behind a busy host wait their turn instead of timing out in aiohttp's pool.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.setdefault(key, (asyncio.Semaphore(self._size), [0]))
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[key]

    def __len__(self) -> int:
        return len(self._slots)


class HostThrottles:
    """One `throttler_for_rate(rate_per_s)` per host key, for at most `MAX_THROTTLED_HOSTS`."""

    def __init__(self, rate_per_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._throttlers: OrderedDict[str, Throttler] = OrderedDict()

    async def acquire(self, key: str) -> None:
        """Wait until `key` may make another request."""
        throttler = self._throttlers.get(key)
        if throttler is None:
            throttler = throttler_for_rate(self._rate_per_s)
            self._throttlers[key] = throttler
            if len(self._throttlers) > MAX_THROTTLED_HOSTS:
                # The least recently used host has waited longest; its history is stale.
                self._throttlers.popitem(last=False)
        else:
            self._throttlers.move_to_end(key)
        await throttler.acquire()  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return len(self._throttlers)
