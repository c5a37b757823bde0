"""crawler.hostlimits: per-host concurrency slots and rate limiters, bounded in memory."""

from __future__ import annotations

import asyncio

from crawler.hostlimits import MAX_THROTTLED_HOSTS, HostSlots, HostThrottles


class TestHostThrottles:
    async def test_keeps_at_most_the_cap_dropping_least_recent(self) -> None:
        """Past MAX_THROTTLED_HOSTS hosts the least recently used limiter goes, a used one stays."""
        throttles = HostThrottles(rate_per_s=1000.0)
        await throttles.acquire("first:443")
        for number in range(MAX_THROTTLED_HOSTS - 1):
            await throttles.acquire(f"host{number}:443")
        await throttles.acquire("first:443")  # used again: now the most recent
        await throttles.acquire("newcomer:443")
        assert len(throttles) == MAX_THROTTLED_HOSTS
        assert "first:443" in throttles._throttlers
        assert "host0:443" not in throttles._throttlers


class TestHostSlots:
    async def test_bounds_concurrency_and_forgets_idle_hosts(self) -> None:
        """A host runs at most `size` holders at once, and no entry is kept once idle."""
        slots = HostSlots(2)
        inside = 0
        most = 0
        release = asyncio.Event()
        full = asyncio.Event()

        async def hold() -> None:
            nonlocal inside, most
            async with slots.hold("example.org:443"):
                inside += 1
                most = max(most, inside)
                if inside == 2:
                    full.set()
                await release.wait()
                inside -= 1

        async with asyncio.TaskGroup() as group:
            for _ in range(5):
                group.create_task(hold())
            await full.wait()
            assert len(slots) == 1
            release.set()
        assert most == 2
        assert len(slots) == 0
