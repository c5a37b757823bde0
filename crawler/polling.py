"""Polling the sources: one loop per source on its schedule, isolating each poll's failures.

Each source is polled by `poll_loop` under the daemon's TaskGroup; what a poll finds goes
into the catalogue (the durable queue) and wakes the pipeline. A failed poll costs that
poll only: `last_error`, backoff, and the other sources go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from crawler.config import SourceConfig
from crawler.errors import FetchError, RetryableFetchError, SourceError
from crawler.pipeline import Pipeline, screen_refs
from crawler.schedule import next_poll_delay_s, quiet_notice
from crawler.sources import Source
from storage.catalogue import Catalogue, SourceState
from storage.records import State
from storage.untrusted import storable_cursor

log = structlog.get_logger("megane.daemon")
ONCE_MAX_EXTRA_POLLS = 100
MAX_BACKOFF_S = 6 * 3600.0


@dataclass
class PollerState:
    """In-memory schedule state of one source, mirrored from the catalogue."""

    source: Source
    consecutive_errors: int = 0
    empty_polls: int = 0
    polled_once: asyncio.Event = field(default_factory=asyncio.Event)


async def poll_loop(
    catalogue: Catalogue, poller: PollerState, source_configs: Sequence[SourceConfig], *,
    pipeline: Pipeline | None, clock: Callable[[], float], once: bool,
) -> None:
    """Poll one source on its schedule: the one place that isolates a poll's failures.

    Whatever a poll raises (the source, the network, storing its rows or cursor) is
    caught here and costs that poll: `last_error`, backoff, and the other sources go
    on. Only a failure to record that (a broken catalogue) ends the daemon.
    """
    source = poller.source
    config = next(item for item in source_configs if item.name == source.name)
    state = await catalogue.ensure_source(source.name, source.kind, source.query_key())
    poller.consecutive_errors = state.consecutive_errors
    poller.empty_polls = state.empty_polls
    result_full = False
    extra_polls = 0
    while True:
        if not once and state.next_poll_at is not None:
            # Bounded by the longest delay we could have scheduled, so a wall clock
            # that jumped back cannot park the source.
            longest_s = MAX_BACKOFF_S if poller.consecutive_errors else config.max_interval_s
            wait_s = min(state.next_poll_at - clock(), longest_s)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        now = clock()
        try:
            result_full = await poll_once(catalogue, poller, config, state, now,
                                           pipeline=pipeline)
        except Exception as error:  # noqa: BLE001 - isolation: a failed poll costs that poll
            result_full = False
            await poll_failed(catalogue, poller, config, error, now)
        refreshed = await catalogue.source_state(source.name)
        if refreshed is not None:
            state = refreshed
        if once and result_full and extra_polls < ONCE_MAX_EXTRA_POLLS:
            # `once` drains a source that had more than a page, from the new cursor.
            extra_polls += 1
            continue
        poller.polled_once.set()
        if once:
            return


async def poll_once(
    catalogue: Catalogue, poller: PollerState, config: SourceConfig, state: SourceState,
    now: float, *, pipeline: Pipeline | None,
) -> bool:
    """Poll one source and store what it found; True when more is waiting (a full page).

    Anything raised here, from the source, the network or storing the result, costs
    this poll only (see `poll_failed`).
    """
    source = poller.source
    result = await source.poll(state.cursor, now)
    refs = result.refs
    if pipeline is not None:
        refs = tuple(screen_refs(refs, pipeline.local_sources))
    rows = await catalogue.add_media(refs, now)
    poller.consecutive_errors = 0
    poller.empty_polls = 0 if rows else poller.empty_polls + 1
    delay = next_poll_delay_s(
        config, empty_polls=poller.empty_polls, full=result.full,
        errors=0, retry_after_s=result.retry_after_s,
    )
    notice = result.notice or quiet_notice(
        empty_polls=poller.empty_polls,
        last_new_at=now if rows else state.last_new_at,
        first_poll_at=state.first_poll_at or now, now=now,
    )
    cursor = result.cursor
    if cursor is not None and storable_cursor(cursor) is None:
        log.warning("cursor_not_stored", source=source.name,
                    reason="not valid text and not JSON; the previous cursor is kept")
        cursor = None
    await catalogue.record_poll(
        source.name, cursor=cursor, new_items=len(rows),
        next_poll_at=now + delay, notice=notice, now=now,
    )
    rejected = 0
    for row in rows:
        rejected += row.state is State.REJECTED
        log.info("media_found", url=row.url, source=source.name,
                 state=row.state.value, reason=row.reason, flags=list(row.flags))
    for item, reason in result.skipped:
        # An entry the source could not read costs that entry; the poll goes on.
        log.warning("entry_skipped", source=source.name, item=item, reason=reason)
    log.info("source_polled", source=source.name, found=len(result.refs),
             new=len(rows), rejected=rejected, skipped=len(result.skipped),
             next_poll_in_s=round(delay, 1), notice=result.notice)
    if pipeline is not None and rows:
        pipeline.notify()
    return result.full


async def poll_failed(
    catalogue: Catalogue, poller: PollerState, config: SourceConfig, error: Exception,
    now: float,
) -> None:
    """Record a failed poll as the source's `last_error` and back off; the others go on.

    If even that cannot be stored, the catalogue itself is broken: that error ends the
    daemon (exit 2), as a fault of its own state.
    """
    source = poller.source
    poller.consecutive_errors += 1
    retry_after = (error.retry_after_s
                   if isinstance(error, SourceError | RetryableFetchError) else None)
    delay = next_poll_delay_s(config, empty_polls=poller.empty_polls, full=False,
                              errors=poller.consecutive_errors, retry_after_s=retry_after)
    if isinstance(error, SourceError | FetchError):
        reason = str(error)
        log.warning("source_failed", source=source.name, reason=error.reason,
                    url=error.url, detail=reason, retry_in_s=round(delay, 1),
                    errors=poller.consecutive_errors)
    else:
        reason = f"internal_error: {type(error).__name__}: {error}"[:1000]
        log.error("source_failed", source=source.name, reason="internal_error",
                  detail=reason, retry_in_s=round(delay, 1),
                  errors=poller.consecutive_errors, exc_info=error)
    await catalogue.record_poll_error(source.name, reason, next_poll_at=now + delay,
                                      now=now)
