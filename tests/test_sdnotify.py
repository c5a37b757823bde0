"""sd_notify over a real AF_UNIX datagram socket, watchdog interval parsing, ProgressWatchdog."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crawler.sdnotify import Notifier, ProgressWatchdog, watchdog_interval_s


class FakeManager:
    """The manager's end of the notify socket: a bound datagram socket we read from."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def assert_nothing_received(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    """A notify socket bound to a path under tmp_path."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield FakeManager(sock, str(path))


@pytest.fixture
def abstract_manager() -> Iterator[FakeManager]:
    """A notify socket bound in the abstract namespace, named as systemd would: ``@name``."""
    name = f"megane-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield FakeManager(sock, "@" + name)


class TestNotifier:
    @pytest.mark.parametrize(
        ("send", "expected"),
        [
            (lambda n: n.ready(), "READY=1"),
            (lambda n: n.ready("12 pending"), "READY=1\nSTATUS=12 pending"),
            (lambda n: n.status("library=3 quarantine=1"), "STATUS=library=3 quarantine=1"),
            (lambda n: n.status("two\nlines"), "STATUS=two lines"),
            (lambda n: n.watchdog(), "WATCHDOG=1"),
            (lambda n: n.stopping(), "STOPPING=1"),
            (lambda n: n.reloading(1234567), "RELOADING=1\nMONOTONIC_USEC=1234567"),
            (lambda n: n.extend_timeout(90), "EXTEND_TIMEOUT_USEC=90000000"),
        ],
    )
    def test_message_received_exactly(
        self, manager: FakeManager, send: Callable[[Notifier], bool], expected: str
    ) -> None:
        """Each call sends exactly one datagram with exactly the documented fields."""
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": manager.notify_socket})
        assert send(notifier) is True
        assert manager.receive() == expected
        manager.assert_nothing_received()

    def test_abstract_namespace_socket(self, abstract_manager: FakeManager) -> None:
        """An ``@name`` NOTIFY_SOCKET reaches a socket bound in the abstract namespace."""
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": abstract_manager.notify_socket})
        assert notifier.ready("up") is True
        assert abstract_manager.receive() == "READY=1\nSTATUS=up"

    def test_reloading_defaults_to_the_monotonic_clock(self, manager: FakeManager) -> None:
        """Without an explicit timestamp, MONOTONIC_USEC is CLOCK_MONOTONIC at the call."""
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": manager.notify_socket})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading, monotonic = manager.receive().split("\n")
        assert reloading == "RELOADING=1"
        key, value = monotonic.split("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(value) <= after

    @pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
    def test_disabled_without_notify_socket(self, environ: dict[str, str]) -> None:
        """With NOTIFY_SOCKET unset or empty, every call is a no-op that reports False."""
        notifier = Notifier.from_environment(environ)
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False

    def test_unsupported_address_is_refused(self) -> None:
        """An address that is neither a path nor ``@abstract`` is a ValueError, not silence."""
        with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
            Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})

    def test_send_failure_returns_false(self, tmp_path: Path) -> None:
        """A socket nobody listens on makes the call report False instead of raising."""
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "absent")})
        assert notifier.enabled
        assert notifier.watchdog() is False


class TestWatchdogInterval:
    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({}, None),
            ({"WATCHDOG_USEC": ""}, None),
            ({"WATCHDOG_USEC": "300000000"}, 150.0),
            ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, 0.5),
            ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),
            ({"WATCHDOG_PID": "4242"}, None),
        ],
    )
    def test_interval(self, environ: dict[str, str], expected: float | None) -> None:
        """The ping interval is half of WATCHDOG_USEC, and only when WATCHDOG_PID is ours."""
        assert watchdog_interval_s(environ, pid=4242) == expected

    def test_pid_defaults_to_this_process(self) -> None:
        """Without an explicit pid, WATCHDOG_PID is compared with this process's id."""
        environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        assert watchdog_interval_s(environ) == 1.0

    @pytest.mark.parametrize(
        "environ",
        [
            {"WATCHDOG_USEC": "soon"},
            {"WATCHDOG_USEC": "-5"},
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"},
        ],
    )
    def test_malformed_values_are_refused(self, environ: dict[str, str]) -> None:
        """A set but malformed value raises ValueError rather than silently disabling pings."""
        with pytest.raises(ValueError, match="WATCHDOG_"):
            watchdog_interval_s(environ, pid=4242)


# Each row: the events before the check, as (time, kind) with kind "progress" or a pending
# count for an earlier check; then the check (now, pending) and the expected answer.
PROGRESS_CASES = [
    pytest.param([], 0.0, 5, True, id="first-check-starts-the-clock"),
    pytest.param([], 0.0, 0, True, id="idle-first-check"),
    pytest.param([(0.0, 5)], 10.0, 5, True, id="busy-one-interval-no-progress-yet"),
    pytest.param([(0.0, 5)], 10.5, 5, False, id="busy-past-interval-no-progress-stalls"),
    pytest.param([(0.0, 5), (3.0, "progress")], 12.0, 5, True, id="recent-progress"),
    pytest.param([(0.0, 5), (3.0, "progress")], 13.5, 5, False, id="stale-progress-stalls"),
    pytest.param([(0.0, 5)], 100.0, 0, True, id="idle-is-healthy-however-long"),
    pytest.param([(0.0, 5), (100.0, 0)], 110.0, 5, True, id="idle-restarts-the-stall-clock"),
    pytest.param([(0.0, 5), (100.0, 0)], 111.0, 5, False, id="stall-after-idle"),
    pytest.param(
        [(0.0, 5), (20.0, "progress"), (15.0, "progress")], 29.0, 5, True,
        id="out-of-order-progress-never-moves-the-clock-back",
    ),
    pytest.param([(0.0, 5), (40.0, "progress")], 45.0, 5, True, id="progress-resumes-pings"),
]


class TestProgressWatchdog:
    @pytest.mark.parametrize(("events", "now", "pending", "expected"), PROGRESS_CASES)
    def test_should_ping(
        self, events: list[tuple[float, object]], now: float, pending: int, expected: bool
    ) -> None:
        """Pings are deserved when idle or when progress happened within the interval."""
        watchdog = ProgressWatchdog(interval_s=10.0)
        for at, event in events:
            if event == "progress":
                watchdog.record_progress(at)
            else:
                assert isinstance(event, int)
                watchdog.should_ping(at, event)
        assert watchdog.should_ping(now, pending) is expected

    def test_stalled_pipeline_keeps_failing_until_progress(self) -> None:
        """Once stalled, every check fails until an item moves, then pings resume."""
        watchdog = ProgressWatchdog(interval_s=10.0)
        checks = [watchdog.should_ping(float(now), pending=3) for now in range(0, 60, 10)]
        assert checks == [True, True, False, False, False, False]
        watchdog.record_progress(61.0)
        assert watchdog.should_ping(70.0, pending=3) is True

    @pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan")])
    def test_interval_must_be_positive(self, interval_s: float) -> None:
        """A zero, negative or NaN interval is refused at construction."""
        with pytest.raises(ValueError, match="interval_s"):
            ProgressWatchdog(interval_s)

    def test_negative_pending_is_refused(self) -> None:
        """A negative pending count is a caller bug and raises ValueError."""
        with pytest.raises(ValueError, match="pending"):
            ProgressWatchdog(10.0).should_ping(0.0, -1)
