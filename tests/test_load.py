"""The load test: 200 feeds x 50 tiny images from a local server; memory stays flat.

SPEC §6.5: backlogs wait in SQLite and on disk, not in RAM. The daemon runs as a real
subprocess twice, for the same time, against 200 feeds of 5 and of 50 items; the peak RSS
(VmHWM) of the large backlog must stay within a small margin of the small one's.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from bench.memory import tiny_jpeg
from tests.conftest import MediaServer
from tests.daemon_process import DaemonProcess, connect, peak_rss_kib
from tests.test_crash import _seed_model_cache

FEEDS = 200
WINDOW_S = 45.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(autouse=True)
def _skip_unless_slow_selected(request: pytest.FixtureRequest) -> None:
    """Run only when asked for (`-m slow` or MEGANE_SLOW=1)."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get(
            "MEGANE_SLOW"):
        pytest.skip("slow: run with -m slow (or MEGANE_SLOW=1)")


def _serve_feeds(server: MediaServer, per_feed: int, prefix: str) -> str:
    sources = ""
    for feed in range(FEEDS):
        items = []
        for position in range(per_feed):
            index = feed * per_feed + position
            path = f"/{prefix}/img/{index}.jpg"
            server.add_bytes(path, tiny_jpeg(index))
            items.append({"image": path})
        server.add_feed(f"/{prefix}/feed-{feed}.xml", items)
        sources += f"""
            [[sources]]
            kind = "rss"
            name = "{prefix}-{feed}"
            url = "{server.base_url}/{prefix}/feed-{feed}.xml"
            interval = "1h"
            """
    return sources


def _counts(data_dir: Path) -> dict[str, int]:
    with connect(data_dir / "catalogue.sqlite") as connection:
        return {row[0]: row[1] for row in connection.execute(
            "SELECT state, count(*) FROM media GROUP BY state")}


async def _peak_rss(server: MediaServer, write_config: Any, shared_classifier: Any,
                    workdir: Path, per_feed: int) -> tuple[int, dict[str, int]]:
    """Run the daemon for WINDOW_S after READY against FEEDS x per_feed items; VmHWM in KiB."""
    workdir.mkdir()
    sources = _serve_feeds(server, per_feed, f"n{per_feed}")
    config = write_config(allowed=(server.host_port,), sources=sources)
    # write_config writes one data_dir per test; give each run its own.
    config_text = config.path.read_text().replace(str(config.data_dir), str(workdir / "data"))
    # One local host serves every feed and image: lift the politeness limits meant for
    # public servers, or the downloads queue behind 200 feed polls for the whole window.
    config_text = config_text.replace(
        "[http]\n", "[http]\nper_host_rate = 500.0\nper_host_connections = 16\n", 1)
    config_path = workdir / "config.toml"
    config_path.write_text(config_text)
    _seed_model_cache(shared_classifier, workdir / "data")
    daemon = DaemonProcess(config_path, workdir)
    try:
        await daemon.start("run")
        await daemon.wait_ready()
        await asyncio.sleep(WINDOW_S)  # a fixed working time: the figure is peak RSS over it
        assert daemon.process is not None
        peak = peak_rss_kib(daemon.process.pid)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
        daemon.close()
    return peak, _counts(workdir / "data")


async def test_peak_rss_stays_flat_as_the_backlog_grows(
    media_server: MediaServer, write_config: Any, shared_classifier: Any, tmp_path: Path,
) -> None:
    """Ten times the backlog (10,000 pending items from 200 feeds) costs no more peak memory."""
    small_peak, small_counts = await _peak_rss(
        media_server, write_config, shared_classifier, tmp_path / "small", 5)
    large_peak, large_counts = await _peak_rss(
        media_server, write_config, shared_classifier, tmp_path / "large", 50)

    print(f"peak RSS: {small_peak / 1024:.1f} MiB for {sum(small_counts.values())} items, "
          f"{large_peak / 1024:.1f} MiB for {sum(large_counts.values())} items; "
          f"states {small_counts} / {large_counts}")
    assert sum(large_counts.values()) == FEEDS * 50
    assert sum(small_counts.values()) - small_counts.get("pending", 0) > 50  # it was working
    assert large_counts.get("pending", 0) > FEEDS * 50 // 2  # the backlog really was large
    assert large_peak <= small_peak * 1.15 + 20 * 1024
