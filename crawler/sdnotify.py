"""Tell systemd how the daemon is doing, over `$NOTIFY_SOCKET`, without libsystemd.

The protocol (sd_notify(3)) is one AF_UNIX datagram per message, newline-separated
``KEY=VALUE`` fields, sent to the path in `$NOTIFY_SOCKET`; a leading ``@`` names a socket
in the abstract namespace. The manager learns the sender's PID from the kernel, so with
``NotifyAccess=main`` only the daemon's own process (any of its threads) may send.

When the daemon is not run by systemd (`$NOTIFY_SOCKET` unset) every call is a no-op, so
the daemon calls these unconditionally.

`ProgressWatchdog` decides whether a watchdog ping is deserved: the ping means "the
pipeline is moving", not merely "the event loop is alive".
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

SEND_TIMEOUT_S = 1.0
"""A datagram send only blocks when the manager's queue is full; never wait long for it."""


class Notifier:
    """Sends sd_notify messages to one socket address, or nowhere.

    Each message goes out on a fresh socket, so there is nothing to close. A failed send is
    logged and reported as ``False``: losing a status line must not cost the daemon.
    """

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        """Build from `$NOTIFY_SOCKET` in `environ`; disabled when it is unset or empty.

        Raises ValueError for an address that is neither a path nor ``@abstract`` (systemd
        also knows ``vsock:``; the unit only allows AF_UNIX, so it cannot be meant for us).
        """
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        if value.startswith("@"):
            return cls(b"\0" + value[1:].encode())
        if value.startswith("/"):
            return cls(value)
        raise ValueError(f"NOTIFY_SOCKET: unsupported address {value!r}")

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: the catalogue is migrated, the model loaded."""
        return self.send(("READY=1", *_status_field(status)))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`, e.g. counts per state."""
        return self.send(_status_field(text))

    def watchdog(self) -> bool:
        """Keep-alive ping; send it only when `ProgressWatchdog.should_ping` says so."""
        return self.send(("WATCHDOG=1",))

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """A reload has begun; follow with `ready()` when the new config is live.

        `MONOTONIC_USEC` is CLOCK_MONOTONIC at the start of the reload; systemd ≥ 253 uses
        it to tell this reload from an earlier one, older versions ignore it. Send `ready()`
        afterwards even when the reload failed, or systemd shows the unit as reloading.
        """
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}"))

    def stopping(self) -> bool:
        """Shutdown has begun (draining); systemd stops expecting watchdog pings."""
        return self.send(("STOPPING=1",))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start/stop timeout fires (a slow migration)."""
        return self.send((f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}",))

    def send(self, fields: tuple[str, ...]) -> bool:
        """Send one message of `fields`; True when sent, False when disabled or failed."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(message, self.address)
        except OSError as error:
            structlog.get_logger(__name__).warning(
                "sd_notify_failed", fields=list(fields), error=str(error)
            )
            return False
        return True


def _status_field(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would start a new field; systemd shows one line anyway.
    return ("STATUS=" + " ".join(text.splitlines()),)


def watchdog_interval_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """How often to ping: half of `$WATCHDOG_USEC`, or None when no watchdog is asked of us.

    `$WATCHDOG_PID`, when set, must be our own `pid` (default: this process); otherwise
    the variables were inherited from a parent and are not ours. Raises ValueError when a
    set value is not a positive integer.
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID", "")
    if pid_text:
        if not pid_text.isdigit():
            raise ValueError(f"WATCHDOG_PID: not a process id: {pid_text!r}")
        if int(pid_text) != (os.getpid() if pid is None else pid):
            return None
    if not usec_text.isdigit() or int(usec_text) == 0:
        raise ValueError(f"WATCHDOG_USEC: not a positive integer: {usec_text!r}")
    return int(usec_text) / 1_000_000 / 2


class ProgressWatchdog:
    """Decides whether the pipeline deserves a watchdog ping; pure, driven by the caller's clock.

    A ping is deserved when nothing is pending (idle is healthy), or when the pipeline made
    progress within the last `interval_s`. With work pending and no progress for longer than
    that, pings stop and systemd restarts the daemon once `WatchdogSec=` runs out.

    The stall clock starts at the first `should_ping` call and restarts whenever the
    pipeline is seen idle, so work arriving after a long quiet spell gets a full interval.
    Pass monotonic time (`time.monotonic()`), so that wall-clock jumps neither fake
    progress nor fake a stall.
    """

    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.interval_s = interval_s
        self.last_progress_at: float | None = None

    def record_progress(self, now: float) -> None:
        """An item moved forward (downloaded, classified, placed, ...) at `now`."""
        if self.last_progress_at is None or now > self.last_progress_at:
            self.last_progress_at = now

    def should_ping(self, now: float, pending: int) -> bool:
        """Whether to ping at `now`, with `pending` items ready for work (not awaiting a retry)."""
        if pending < 0:
            raise ValueError(f"pending must not be negative, got {pending!r}")
        if pending == 0 or self.last_progress_at is None:
            self.record_progress(now)
            return True
        return now - self.last_progress_at <= self.interval_s
