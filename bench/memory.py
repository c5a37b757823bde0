"""Peak memory of the daemon against its backlog (SPEC §6.5: backlogs wait in SQLite).

    python -m bench.memory [--backlogs 1000 50000] [--seconds 60]

For each backlog size: a fresh data_dir whose catalogue holds that many pending media rows
(inserted through the Catalogue API), each pointing at a distinct tiny JPEG on a local
aiohttp server; `megane run` in a subprocess (the TFLite conversion is made once and
copied in, so every run starts warm); READY=1 read from a real $NOTIFY_SOCKET; then the
daemon works for a fixed time and its VmHWM (peak RSS) is read from /proc/<pid>/status
before SIGTERM. Prints peak RSS per backlog, items finished in the window and the ratio of
the largest to the smallest backlog's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from PIL import Image

REPOSITORY = Path(__file__).resolve().parent.parent


def tiny_jpeg(index: int, side: int = 32) -> bytes:
    """A distinct small JPEG per index (a colour gradient keyed by the index)."""
    image = Image.new("RGB", (side, side))
    red, green, blue = index % 251, (index // 251) % 251, (index * 7) % 253
    image.putdata([((red + x) % 256, (green + y) % 256, (blue + x * y) % 256)
                   for y in range(side) for x in range(side)])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


async def start_server() -> tuple[web.AppRunner, int]:
    """A local server: /img/<n>.jpg is tiny_jpeg(n); /empty.xml an empty RSS feed."""

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=tiny_jpeg(int(request.match_info["index"])),
                            content_type="image/jpeg")

    async def empty(_request: web.Request) -> web.Response:
        return web.Response(body=b'<?xml version="1.0"?><rss version="2.0"><channel>'
                                 b"<title>t</title><link>http://x/</link><description>d"
                                 b"</description></channel></rss>",
                            content_type="application/rss+xml")

    app = web.Application()
    app.router.add_get("/img/{index:\\d+}.jpg", image)
    app.router.add_get("/empty.xml", empty)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def write_config(directory: Path, port: int) -> Path:
    path = directory / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        data_dir = "{directory / 'data'}"
        log_format = "json"
        log_level = "warning"

        [http]
        allowed_private_hosts = ["127.0.0.1:{port}"]

        [classifier]
        engine = "litert"

        [[sources]]
        kind = "rss"
        name = "bench"
        url = "http://127.0.0.1:{port}/empty.xml"
        interval = "1h"
        """))
    return path


async def seed_backlog(data_dir: Path, port: int, count: int) -> None:
    """Insert `count` pending rows through the Catalogue API, in chunks."""
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout
    from storage.records import MediaRef

    layout = DataLayout(data_dir)
    layout.ensure()
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        now = time.time()
        for start in range(0, count, 5000):
            refs = [MediaRef(url=f"http://127.0.0.1:{port}/img/{index}.jpg", source="bench")
                    for index in range(start, min(start + 5000, count))]
            await catalogue.add_media(refs, now)
    finally:
        await catalogue.close()


def model_cache() -> Path:
    """A TFLite conversion of the builtin model, made once per benchmark run."""
    from classifier.models import load_classifier

    directory = Path(tempfile.mkdtemp(prefix="megane-bench-tflite-"))
    load_classifier("builtin", directory / "models", engine="litert", batch_size=16,
                    cache_dir=directory)
    return directory


def read_status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


def finished_rows(catalogue: Path) -> int:
    with sqlite3.connect(catalogue, timeout=30) as connection:
        row = connection.execute(
            "SELECT count(*) FROM media WHERE state IN ('library', 'quarantine', 'held', "
            "'rejected')").fetchone()
    return int(row[0])


@dataclass(frozen=True)
class Measurement:
    backlog: int
    peak_rss_kib: int
    rss_at_end_kib: int
    finished: int
    startup_s: float


async def measure(backlog: int, seconds: float, cache: Path, port: int) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="megane-bench-memory-") as name:
        directory = Path(name)
        config = write_config(directory, port)
        data_dir = directory / "data"
        await seed_backlog(data_dir, port, backlog)
        (data_dir / "cache").mkdir(exist_ok=True)
        for path in cache.glob("*.tflite"):
            shutil.copy2(path, data_dir / "cache" / path.name)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(directory / "notify.sock"))
        notify.setblocking(False)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crawler.cli", "run", "--config", str(config),
            cwd=REPOSITORY, stdout=asyncio.subprocess.DEVNULL,
            stderr=(directory / "daemon.log").open("wb"),
            env={**os.environ, "NOTIFY_SOCKET": str(directory / "notify.sock")},
        )
        try:
            loop = asyncio.get_running_loop()
            while b"READY=1" not in await asyncio.wait_for(loop.sock_recv(notify, 65536), 300):
                pass
            startup_s = time.monotonic() - started
            deadline = time.monotonic() + seconds
            status: dict[str, int] = {}
            while time.monotonic() < deadline and process.returncode is None:
                status = read_status(process.pid) or status
                if finished_rows(data_dir / "catalogue.sqlite") >= backlog:
                    break
                await asyncio.sleep(1.0)
            status = read_status(process.pid) or status
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            notify.close()
        return Measurement(backlog, status.get("VmHWM", 0), status.get("VmRSS", 0),
                           finished_rows(data_dir / "catalogue.sqlite"), startup_s)


async def main_async(backlogs: list[int], seconds: float) -> list[Measurement]:
    cache = await asyncio.to_thread(model_cache)
    runner, port = await start_server()
    try:
        results = []
        for backlog in backlogs:
            result = await measure(backlog, seconds, cache, port)
            results.append(result)
            print(f"backlog {result.backlog:>7}: peak RSS {result.peak_rss_kib / 1024:7.1f} MiB, "
                  f"RSS at end {result.rss_at_end_kib / 1024:7.1f} MiB, finished "
                  f"{result.finished} in {seconds:.0f} s, READY after {result.startup_s:.2f} s",
                  flush=True)
    finally:
        await runner.cleanup()
        shutil.rmtree(cache, ignore_errors=True)
    smallest, largest = results[0], results[-1]
    if smallest.peak_rss_kib:
        print(f"peak RSS ratio {largest.backlog}/{smallest.backlog}: "
              f"{largest.peak_rss_kib / smallest.peak_rss_kib:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[1000, 50000])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main_async(sorted(args.backlogs), args.seconds))


if __name__ == "__main__":
    main()
