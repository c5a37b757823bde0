"""The `megane` daemon in a subprocess, for the crash, fault and load suites.

A test binds an AF_UNIX datagram socket, passes it as `$NOTIFY_SOCKET` and waits for the
daemon's READY=1 instead of sleeping; it kills the process with a real SIGKILL. The feed
server stays in the test's event loop, so every wait here is asynchronous.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tests.conftest import PHOTOS

REPOSITORY = Path(__file__).resolve().parent.parent


@functools.cache
def _photo_image(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def small_photo(index: int, side: int = 64) -> bytes:
    """A distinct small JPEG: a window of one of the real photos, chosen by `index`."""
    image = _photo_image(PHOTOS[index % len(PHOTOS)])
    width, height = image.size
    window = min(width, height) // 2
    step = index // len(PHOTOS)
    left = (step * 37) % (width - window)
    top = (step * 53) % (height - window)
    crop = image.crop((left, top, left + window, top + window)).resize((side, side))
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def connect(catalogue: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the catalogue (the daemon is dead or waits on busy)."""
    connection = sqlite3.connect(catalogue, timeout=30)
    connection.row_factory = sqlite3.Row
    return connection


def files_under(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from (path for path in folder.rglob("*") if path.is_file())


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a live process, in KiB (0 once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class DaemonProcess:
    """One `megane run`/`once` subprocess at a time, with its notify socket and log file."""

    config_path: Path
    workdir: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    started_at: float = 0.0
    ready_s: list[float] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _socket: socket.socket | None = None

    @property
    def socket_path(self) -> Path:
        return self.workdir / "notify.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def _bind(self) -> socket.socket:
        if self._socket is None:
            self.socket_path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.socket_path))
            sock.setblocking(False)
            self._socket = sock
        return self._socket

    def notify_socket(self) -> socket.socket:
        """The bound, non-blocking socket the daemon's sd_notify messages arrive on."""
        return self._bind()

    def _drain(self) -> None:
        sock = self._bind()
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                return

    async def start(self, command: str = "run", *extra: str) -> None:
        """Spawn `python -m crawler.cli COMMAND --config PATH` with NOTIFY_SOCKET set."""
        assert self.process is None or self.process.returncode is not None
        self._drain()
        self.starts += 1
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- start {self.starts}: {command}\n".encode())
            self.started_at = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "crawler.cli", command, "--config", str(self.config_path),
                *extra,
                cwd=REPOSITORY, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file,
                env={**os.environ, "NOTIFY_SOCKET": str(self.socket_path),
                     "PYTHONUNBUFFERED": "1", **self.env},
            )

    async def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Wait for READY=1 (seconds since spawn); fail early if the process exits."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        sock = self._bind()
        deadline = loop.time() + timeout_s
        exited = asyncio.ensure_future(self.process.wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no READY=1 within {timeout_s} s; see {self.log_path}")
                received = asyncio.ensure_future(loop.sock_recv(sock, 65536))
                done, _ = await asyncio.wait({received, exited}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if received in done:
                    if b"READY=1" in received.result().split(b"\n"):
                        elapsed = time.monotonic() - self.started_at
                        self.ready_s.append(elapsed)
                        return elapsed
                    continue
                received.cancel()
                if exited in done:
                    raise RuntimeError(
                        f"daemon exited with {exited.result()} before READY; see {self.log_path}")
        finally:
            if not exited.done():
                exited.cancel()

    async def kill(self) -> None:
        """SIGKILL the daemon (whatever it is doing) and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    async def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
