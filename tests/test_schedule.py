"""The poll scheduler: a pure function of the schedule and the last poll's outcome."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from crawler.config import SourceConfig
from crawler.schedule import (
    MAX_BACKOFF_S,
    PollOutcome,
    Schedule,
    next_delay_s,
    next_poll_at,
    next_poll_delay_s,
    quiet_notice,
    retry_delay_s,
)

# interval 10 min, between 2 min and 1 h; backoff capped at 6 h.
S = Schedule(interval_s=600.0, min_interval_s=120.0, max_interval_s=3600.0)
DAY = 86400.0


class TestNextDelay:
    @pytest.mark.parametrize(("outcome", "expected"), [
        # found something, not full: the interval
        (PollOutcome(), 600.0),
        # the first empty polls keep the interval, then it stretches by 1.5 each time
        (PollOutcome(empty_polls=1), 600.0),
        (PollOutcome(empty_polls=2), 600.0),
        (PollOutcome(empty_polls=3), 900.0),
        (PollOutcome(empty_polls=4), 1350.0),
        (PollOutcome(empty_polls=5), 2025.0),
        (PollOutcome(empty_polls=6), 3037.5),
        # ...up to max_interval
        (PollOutcome(empty_polls=7), 3600.0),
        (PollOutcome(empty_polls=10_000), 3600.0),
        # a full page: come back soon
        (PollOutcome(full=True), 120.0),
        (PollOutcome(full=True, empty_polls=9), 120.0),
        # errors: exponential from the interval, capped
        (PollOutcome(errors=1), 600.0),
        (PollOutcome(errors=2), 1200.0),
        (PollOutcome(errors=3), 2400.0),
        (PollOutcome(errors=6), 19200.0),
        (PollOutcome(errors=7), MAX_BACKOFF_S),
        (PollOutcome(errors=10_000), MAX_BACKOFF_S),
        (PollOutcome(errors=1, full=True), 600.0),
        # Retry-After / rate-limit reset is a floor...
        (PollOutcome(retry_after_s=900.0), 900.0),
        (PollOutcome(retry_after_s=30.0), 600.0),
        (PollOutcome(full=True, retry_after_s=300.0), 300.0),
        (PollOutcome(errors=1, retry_after_s=3000.0), 3000.0),
        # ...capped, so a lying header cannot park a source for days
        (PollOutcome(retry_after_s=30 * DAY), MAX_BACKOFF_S),
        (PollOutcome(retry_after_s=float("inf")), 600.0),
        (PollOutcome(retry_after_s=float("nan")), 600.0),
        (PollOutcome(retry_after_s=-5.0), 600.0),
        (PollOutcome(retry_after_s=0.0), 600.0),
    ])
    def test_table(self, outcome: PollOutcome, expected: float) -> None:
        """Each outcome gives the documented delay."""
        assert next_delay_s(S, outcome) == pytest.approx(expected)

    @pytest.mark.parametrize(("schedule", "outcome", "expected"), [
        (Schedule(600.0, 600.0, 600.0), PollOutcome(empty_polls=50), 600.0),
        (Schedule(600.0, 600.0, 600.0), PollOutcome(full=True), 600.0),
        (Schedule(60.0, 30.0, 480.0, max_backoff_s=300.0), PollOutcome(errors=4), 300.0),
        (Schedule(60.0, 30.0, 480.0, max_backoff_s=300.0),
         PollOutcome(retry_after_s=1000.0), 300.0),
        (Schedule(5.0, 10.0, 20.0), PollOutcome(), 10.0),
    ], ids=["fixed-interval", "fixed-full", "backoff-cap", "retry-after-cap",
            "min-is-a-floor"])
    def test_bounds(self, schedule: Schedule, outcome: PollOutcome, expected: float) -> None:
        """min_interval and max_backoff bound every delay."""
        assert next_delay_s(schedule, outcome) == pytest.approx(expected)

    @pytest.mark.parametrize(("jitter", "outcome", "expected"), [
        (0.1, PollOutcome(), 660.0),
        (-0.1, PollOutcome(), 540.0),
        (5.0, PollOutcome(), 900.0),
        (-5.0, PollOutcome(), 300.0),
        (-0.1, PollOutcome(retry_after_s=600.0), 600.0),
    ], ids=["plus", "minus", "clamped-up", "clamped-down", "retry-after-floor-kept"])
    def test_jitter(self, jitter: float, outcome: PollOutcome, expected: float) -> None:
        """Jitter spreads delays by a bounded fraction, never below a Retry-After."""
        assert next_delay_s(S, outcome, jitter=jitter) == pytest.approx(expected)

    def test_next_poll_at(self) -> None:
        """The next poll time is `now` plus the delay."""
        assert next_poll_at(S, PollOutcome(full=True), now=1_000.0) == 1_120.0

    def test_monotonic_in_empty_polls(self) -> None:
        """More empty polls never mean polling sooner."""
        delays = [next_delay_s(S, PollOutcome(empty_polls=n)) for n in range(40)]
        assert delays == sorted(delays)

    def test_monotonic_in_errors(self) -> None:
        """More errors never mean retrying sooner."""
        delays = [next_delay_s(S, PollOutcome(errors=n)) for n in range(1, 200)]
        assert delays == sorted(delays)


class TestSchedule:
    @pytest.mark.parametrize("bounds", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0),
                                        (float("nan"), 1.0, 1.0), (1.0, 1.0, float("inf"))])
    def test_rejects_bad_bounds(self, bounds: tuple[float, float, float]) -> None:
        """Bounds must be positive, finite seconds."""
        with pytest.raises(ValueError):
            Schedule(*bounds)

    @pytest.mark.parametrize(("interval", "low", "high", "expected"), [
        (600.0, 150.0, 4800.0, (600.0, 150.0, 4800.0)),
        (600.0, 0.0, 0.0, (600.0, 600.0, 600.0)),
        (600.0, 900.0, 300.0, (600.0, 600.0, 600.0)),
    ], ids=["as-given", "unset", "inverted"])
    def test_from_config(self, interval: float, low: float, high: float,
                         expected: tuple[float, float, float]) -> None:
        """A source table's interval bounds always bracket its interval."""
        config = SourceConfig(kind="rss", name="x", interval_s=interval,
                              settings=MappingProxyType({}), min_interval_s=low,
                              max_interval_s=high)
        schedule = Schedule.from_config(config)
        assert (schedule.interval_s, schedule.min_interval_s, schedule.max_interval_s) == expected

    def test_daemon_convention(self) -> None:
        """next_poll_delay_s takes the daemon's keyword arguments and a config table."""
        config = SourceConfig(kind="rss", name="x", interval_s=600.0,
                              settings=MappingProxyType({}), min_interval_s=150.0,
                              max_interval_s=4800.0)
        assert next_poll_delay_s(config, empty_polls=0, full=True, errors=0,
                                 retry_after_s=None) == 150.0
        assert next_poll_delay_s(config, empty_polls=0, full=False, errors=2,
                                 retry_after_s=None) == 1200.0


class TestQuietNotice:
    @pytest.mark.parametrize(("empty_polls", "last_new_at", "first_poll_at", "now", "notice"), [
        (0, None, None, 0.0, None),
        (50, 0.0, 0.0, 6 * DAY, None),
        (5, 0.0, 0.0, 30 * DAY, None),
        (50, 0.0, 0.0, 8 * DAY, "nothing new for 8.0 days (50 empty polls)"),
        (50, None, 0.0, 8 * DAY, "never anything for 8.0 days (50 empty polls)"),
        (50, None, None, 8 * DAY, None),
    ], ids=["fresh", "not-long-enough", "few-polls", "quiet", "never-anything", "no-polls"])
    def test_quiet(self, empty_polls: int, last_new_at: float | None,
                   first_poll_at: float | None, now: float, notice: str | None) -> None:
        """A source with nothing new for a week of polls gets a notice for `megane status`."""
        result = quiet_notice(empty_polls=empty_polls, last_new_at=last_new_at,
                              first_poll_at=first_poll_at, now=now)
        if notice is None:
            assert result is None
        else:
            assert result is not None and result.startswith(notice)


class TestRetryDelay:
    @pytest.mark.parametrize(
        ("attempt", "jitter", "retry_after_s", "expected"),
        [
            (0, 1.0, None, 30.0),          # an item's first retry: the base
            (0, 0.0, None, 15.0),          # jitter scales into [0.5, 1] of it
            (3, 1.0, None, 240.0),         # doubles per attempt
            (10, 1.0, None, 3600.0),       # capped
            (10, 0.0, None, 1800.0),       # the cap is scaled by jitter too
            (0, 1.0, 120.0, 120.0),        # Retry-After is a floor
            (0, 1.0, 99999.0, 3600.0),     # itself capped
            (0, 1.0, -5.0, 30.0),          # a negative Retry-After is ignored
            (0, 1.0, float("nan"), 30.0),  # as is a non-number
            (-1, 1.0, None, 30.0),         # a negative attempt is the first
            (10**6, 1.0, None, 3600.0),    # absurd counts do not overflow
        ],
    )
    def test_retry_delay(self, attempt: int, jitter: float, retry_after_s: float | None,
                         expected: float) -> None:
        """The one retry delay: exponential, jittered, capped, never below Retry-After."""
        delay = retry_delay_s(attempt, backoff_s=30.0, retry_after_s=retry_after_s,
                              max_retry_after_s=3600.0, jitter=jitter, max_delay_s=3600.0)
        assert delay == pytest.approx(expected)
