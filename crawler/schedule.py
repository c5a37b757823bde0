"""When to poll a source next: adaptive intervals, capped exponential backoff, rate limits.

Pure functions of a source's `Schedule` (its interval bounds) and the outcome of the last
poll; time comes in as an argument. The rules, in order:

1. A failed poll backs off exponentially: `interval_s * 2**(errors - 1)`, capped at
   `max_backoff_s`, so a broken source costs little and the others go on.
2. A poll that filled its pages (`full`: more is waiting) comes back at `min_interval_s`.
3. A poll that found something comes back at `interval_s`. Each empty poll after the first
   `GRACE_EMPTY_POLLS` stretches the wait by `GROWTH` up to `max_interval_s`: a source that
   rarely has anything new is polled less often, and one new item brings it back.
4. Never sooner than `min_interval_s`; never sooner than the server's Retry-After or
   rate-limit reset (itself capped at `max_backoff_s`, so a lying header cannot park a
   source for days).
5. An optional `jitter` (a fraction such as +-0.1, drawn by the caller) spreads sources that
   share a host, without touching the Retry-After floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawler.config import SourceConfig

GROWTH = 1.5
GRACE_EMPTY_POLLS = 2
MAX_BACKOFF_S = 6 * 3600.0
MAX_JITTER = 0.5
QUIET_AFTER_S = 7 * 86400.0
QUIET_MIN_EMPTY_POLLS = 10


@dataclass(frozen=True)
class Schedule:
    """A source's polling bounds, in seconds."""

    interval_s: float
    min_interval_s: float
    max_interval_s: float
    max_backoff_s: float = MAX_BACKOFF_S

    def __post_init__(self) -> None:
        values = (self.interval_s, self.min_interval_s, self.max_interval_s, self.max_backoff_s)
        if not all(math.isfinite(value) and value > 0 for value in values):
            raise ValueError(f"schedule bounds must be positive seconds, got {self}")

    @classmethod
    def from_config(cls, config: SourceConfig, max_backoff_s: float = MAX_BACKOFF_S) -> Schedule:
        """The schedule of a `[[sources]]` table (min/max already defaulted by the loader)."""
        interval_s = config.interval_s
        min_interval_s = min(config.min_interval_s or interval_s, interval_s)
        max_interval_s = max(config.max_interval_s or interval_s, interval_s)
        return cls(interval_s, min_interval_s, max_interval_s,
                   max(max_backoff_s, max_interval_s))


@dataclass(frozen=True)
class PollOutcome:
    """What the scheduler needs to know about the poll that just ended.

    `empty_polls` and `errors` are consecutive counts that include this poll.
    """

    empty_polls: int = 0
    full: bool = False
    errors: int = 0
    retry_after_s: float | None = None


def next_delay_s(schedule: Schedule, outcome: PollOutcome, *, jitter: float = 0.0) -> float:
    """Seconds from the end of this poll to the next one."""
    if outcome.errors > 0:
        # 2**errors overflows float for absurd counts; the cap is reached long before 64.
        delay = schedule.interval_s * 2.0 ** min(outcome.errors - 1, 64)
        delay = min(delay, schedule.max_backoff_s)
    elif outcome.full:
        delay = schedule.min_interval_s
    else:
        stretch = max(0, outcome.empty_polls - GRACE_EMPTY_POLLS)
        delay = schedule.interval_s * GROWTH ** min(stretch, 64)
        delay = min(delay, schedule.max_interval_s)
    delay = max(delay, schedule.min_interval_s)
    if jitter:
        delay *= 1.0 + max(-MAX_JITTER, min(MAX_JITTER, jitter))
    retry_after_s = outcome.retry_after_s
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, schedule.max_backoff_s))
    return delay


def next_poll_at(schedule: Schedule, outcome: PollOutcome, now: float, *,
                 jitter: float = 0.0) -> float:
    """The time (same clock as `now`) of the next poll."""
    return now + next_delay_s(schedule, outcome, jitter=jitter)


def next_poll_delay_s(config: SourceConfig, *, empty_polls: int, full: bool, errors: int,
                      retry_after_s: float | None, jitter: float = 0.0) -> float:
    """`next_delay_s` for a `[[sources]]` table, in the daemon's calling convention."""
    return next_delay_s(
        Schedule.from_config(config),
        PollOutcome(empty_polls=empty_polls, full=full, errors=errors,
                    retry_after_s=retry_after_s),
        jitter=jitter,
    )


def quiet_notice(*, empty_polls: int, last_new_at: float | None, first_poll_at: float | None,
                 now: float, quiet_after_s: float = QUIET_AFTER_S) -> str | None:
    """A notice for `megane status` when a source has had nothing new for a long time.

    The quiet time runs from the last poll with new media, or from the first poll when
    there never was any. A few empty polls are not enough: it takes QUIET_MIN_EMPTY_POLLS.
    """
    since = last_new_at if last_new_at is not None else first_poll_at
    if since is None or empty_polls < QUIET_MIN_EMPTY_POLLS:
        return None
    quiet_s = now - since
    if quiet_s < quiet_after_s:
        return None
    days = quiet_s / 86400.0
    what = "nothing new" if last_new_at is not None else "never anything"
    return (f"{what} for {days:.1f} days ({empty_polls} empty polls); "
            f"check the source's settings or whether it is still active")


def retry_delay_s(
    attempt: int,
    *,
    backoff_s: float,
    retry_after_s: float | None,
    max_retry_after_s: float,
    jitter: float,
    max_delay_s: float = math.inf,
) -> float:
    """How long to wait before retry number `attempt` (0-based) of one request or item.

    Exponential backoff (`backoff_s * 2**attempt`, capped at `max_delay_s`) scaled by
    `jitter` (a fraction in [0, 1] drawn by the caller) into [0.5, 1] of itself, and at
    least the server's Retry-After, itself capped at `max_retry_after_s`. Used by the
    Fetcher between requests and by the pipeline between attempts at an item.
    """
    delay = min(backoff_s * 2.0 ** min(max(attempt, 0), 64), max_delay_s)
    delay *= 0.5 + 0.5 * min(max(jitter, 0.0), 1.0)
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, max_retry_after_s))
    return delay
