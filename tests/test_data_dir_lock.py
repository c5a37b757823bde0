"""One daemon per data_dir: a second `megane once`/`run` beside a running one is refused.

Real `megane run` and `megane once` processes on one data_dir (storage.placement
DataLayout.exclusive, an flock on data_dir/.lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.daemon_process import REPOSITORY, DaemonProcess


def _once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawler.cli", "once", "--config", str(config)],
        capture_output=True, text=True, check=False, cwd=REPOSITORY, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)})


async def test_a_second_daemon_is_refused_and_the_lock_dies_with_the_first(
        write_config: Any, tmp_path: Path) -> None:
    """While `megane run` works in data_dir, `megane once` on it exits 1 naming data_dir and
    the holder's pid; after the first is killed (-9) the lock is gone and `once` runs."""
    config = write_config()
    daemon = DaemonProcess(config.path, tmp_path)
    try:
        await daemon.start("run")
        await daemon.wait_ready()
        assert daemon.process is not None
        refused = _once(config.path)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert str(config.data_dir) in refused.stderr
        assert f"(pid {daemon.process.pid})" in refused.stderr
        assert "another megane run/once/import is using this data_dir" in refused.stderr
        await daemon.kill()
        allowed = _once(config.path)
        assert allowed.returncode == 0, allowed.stderr[-2000:]
        assert oct((config.data_dir / ".lock").stat().st_mode & 0o777) == "0o600"
    finally:
        daemon.close()
