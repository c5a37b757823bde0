"""Shared benchmark fixtures: a corpus of real JPEGs and local media hosts serving it.

`corpus(count)` writes `count` distinct JPEGs of 30-300 KB, made from scikit-image's bundled
photos (random crop, scale, flip and quality), once: they are kept under
`$TMPDIR/megane-bench/` and reused by later runs.

`MediaHosts` starts `python -m bench.servers serve` in a child process (so serving never
competes with the measured client for the same event loop) with one aiohttp site per
loopback address 127.0.0.1 ... 127.0.0.<hosts>, each on its own free port. Every response
waits `latency_ms` first. Routes, on every host:

- `/img/<name>`: a corpus file;
- `/feed.xml?count=N`: an RSS 2.0 feed of the first N corpus files, their URLs spread
  round-robin over the hosts (the same URLs as `MediaHosts.urls(N)`).

The child stops when its stdin closes (the parent exiting included).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.resources
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from xml.sax.saxutils import escape

MIN_BYTES = 30 * 1024
MAX_BYTES = 300 * 1024
CORPUS_VERSION = 2
# The pipeline skips classifying an image within 6 dHash bits of one it has seen; keep
# the corpus clear of that with a margin.
NEAR_DUPLICATE_BITS = 10
PHOTO_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "retina.jpg",
               "hubble_deep_field.jpg", "motorcycle_left.png", "ihc.png", "camera.png",
               "brick.png", "grass.png", "gravel.png", "color.png", "page.png", "moon.png",
               "horse.png")
MANIFEST = "manifest.json"


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "megane-bench"


def _photos() -> list[object]:
    from PIL import Image

    folder = Path(str(importlib.resources.files("skimage.data")))
    photos = []
    for name in PHOTO_FILES:
        path = folder / name
        if path.exists():
            with Image.open(path) as image:
                photos.append(image.convert("RGB"))
    return photos


def _make_jpeg(photos: list[object], index: int, seed: int) -> bytes:
    """One JPEG of MIN_BYTES..MAX_BYTES: a 2x2 mosaic of random crops of random photos, its
    channels shuffled and turned, scaled to aim at a random size.

    Mosaics keep images apart for the pipeline's near-duplicate check (dHash), which would
    otherwise skip classifying crops of the same photo.
    """
    from PIL import Image

    rng = random.Random(seed * 1_000_003 + index)
    target = rng.uniform(MIN_BYTES * 1.1, MAX_BYTES * 0.9)
    quality = rng.randint(70, 95)
    tile = 256
    mosaic = Image.new("RGB", (tile * 2, tile * 2))
    for column in range(2):
        for row in range(2):
            photo: Image.Image = rng.choice(photos)  # type: ignore[assignment]
            width, height = photo.size
            side = rng.randint(min(width, height) // 4, min(width, height))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            crop = photo.crop((left, top, left + side, top + side)).resize((tile, tile))
            mosaic.paste(crop, (column * tile, row * tile))
    channels = list(mosaic.split())
    rng.shuffle(channels)
    region = Image.merge("RGB", channels).rotate(rng.choice((0, 90, 180, 270)))
    aspect = rng.uniform(0.6, 1.7)
    pixels = target / 0.3  # a first guess of bytes per pixel for photos at these qualities
    data = b""
    for _ in range(6):
        new_h = max(64, int((pixels / aspect) ** 0.5))
        new_w = max(64, int(new_h * aspect))
        buffer = io.BytesIO()
        region.resize((new_w, new_h), Image.Resampling.BICUBIC).save(
            buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if MIN_BYTES <= len(data) <= MAX_BYTES and abs(len(data) - target) < target * 0.25:
            break
        pixels *= target / len(data)
    return data


def _near_duplicates(files: list[Path], distance: int) -> list[int]:
    """Indexes of files whose dHash is within `distance` bits of an earlier file's."""
    import numpy as np
    from PIL import Image

    from classifier.phash import dhash

    hashes = []
    for path in files:
        with Image.open(path) as image:
            image.draft("RGB", (256, 256))
            hashes.append(dhash(image.convert("RGB")))
    bits = np.array([[(value >> shift) & 1 for shift in range(64)] for value in hashes],
                    dtype=np.uint8)
    close = []
    for index in range(1, len(files)):
        if int((bits[:index] != bits[index]).sum(axis=1).min()) <= distance:
            close.append(index)
    return close


def corpus(count: int, seed: int = 0, root: Path | None = None) -> Path:
    """The folder holding at least `count` distinct JPEGs (`00000.jpg` ...), made once.

    Image i depends only on (seed, i), so a larger corpus extends a smaller one.
    """
    folder = (root or cache_root()) / f"corpus-v{CORPUS_VERSION}-seed{seed}"
    manifest = folder / MANIFEST
    have = json.loads(manifest.read_text())["count"] if manifest.exists() else 0
    if have >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = _photos()
    started = time.monotonic()
    print(f"making JPEGs {have}..{count - 1} in {folder} (once)", file=sys.stderr)

    def make(index: int) -> bytes:
        attempt = 0
        while True:
            data = _make_jpeg(photos, index + attempt * 1_000_000, seed)
            if MIN_BYTES <= len(data) <= MAX_BYTES:
                return data
            attempt += 1

    with ThreadPoolExecutor(max_workers=2) as pool:
        for index, data in zip(range(have, count), pool.map(make, range(have, count)), strict=True):
            (folder / f"{index:05d}.jpg").write_bytes(data)
    files = corpus_files(folder, count)
    for rng_round in range(5):
        close = _near_duplicates(files, NEAR_DUPLICATE_BITS)
        if not close:
            break
        for index in close:
            files[index].write_bytes(make(index + 50_000_000 + rng_round * 1_000_000))
    sizes = [path.stat().st_size for path in files]
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    if len(digests) != count:
        raise RuntimeError(f"{folder}: {count - len(digests)} duplicate images")
    manifest.write_text(json.dumps({
        "count": count, "seed": seed, "total_bytes": sum(sizes),
        "min_bytes": min(sizes), "max_bytes": max(sizes),
    }))
    print(f"corpus made in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return folder


def corpus_files(folder: Path, count: int) -> list[Path]:
    """The first `count` images of a corpus."""
    return [folder / f"{index:05d}.jpg" for index in range(count)]


def corpus_stats(files: list[Path]) -> dict[str, float]:
    """Count, total and mean/min/max size in KB of some corpus files."""
    sizes = [path.stat().st_size for path in files]
    return {"count": len(sizes), "total_mb": sum(sizes) / 2**20,
            "mean_kb": sum(sizes) / len(sizes) / 1024, "min_kb": min(sizes) / 1024,
            "max_kb": max(sizes) / 1024}


def rss_feed(urls: list[str], base_url: str) -> bytes:
    """An RSS 2.0 document with one item (an image enclosure) per URL."""
    items = "".join(
        f"<item><title>image {index}</title><link>{escape(base_url)}/post/{index}</link>"
        f"<guid>{escape(base_url)}/post/{index}</guid>"
        f'<enclosure url="{escape(url)}" type="image/jpeg" length="1"/></item>'
        for index, url in enumerate(urls)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>bench</title><link>{escape(base_url)}/</link><description>bench</description>"
        f"{items}</channel></rss>"
    ).encode()


def spread_urls(hosts: list[str], names: list[str]) -> list[str]:
    """`http://<host>/img/<name>` with the names dealt round-robin over the hosts."""
    return [f"http://{hosts[index % len(hosts)]}/img/{name}" for index, name in enumerate(names)]


@dataclass
class MediaHosts:
    """Local media hosts in a child process; use as a context manager."""

    corpus_dir: Path
    hosts: int = 20
    latency_ms: float = 40.0
    process: subprocess.Popen[str] | None = None
    addresses: list[str] | None = None

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", "serve", "--corpus", str(self.corpus_dir),
             "--hosts", str(self.hosts), "--latency-ms", str(self.latency_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            raise RuntimeError("the media hosts did not start")
        self.addresses = json.loads(line)["hosts"]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)

    @property
    def allowed(self) -> list[str]:
        assert self.addresses is not None
        return list(self.addresses)

    def urls(self, count: int) -> list[str]:
        names = [path.name for path in corpus_files(self.corpus_dir, count)]
        return spread_urls(self.allowed, names)

    def feed_url(self, count: int) -> str:
        return f"http://{self.allowed[0]}/feed.xml?count={count}"


async def serve(corpus_dir: Path, hosts: int, latency_ms: float) -> None:
    """Serve the corpus on 127.0.0.1..127.0.0.<hosts> until stdin closes."""
    from aiohttp import web

    files = {path.name: path.read_bytes() for path in sorted(corpus_dir.glob("*.jpg"))}
    names = sorted(files)
    latency_s = latency_ms / 1000
    addresses: list[str] = []

    async def image(request: web.Request) -> web.Response:
        await asyncio.sleep(latency_s)
        body = files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="image/jpeg")

    async def feed(request: web.Request) -> web.Response:
        await asyncio.sleep(latency_s)
        count = int(request.query.get("count", len(names)))
        urls = spread_urls(addresses, names[:count])
        return web.Response(body=rss_feed(urls, f"http://{addresses[0]}"),
                            content_type="application/rss+xml")

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/feed.xml", feed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for number in range(1, hosts + 1):
        site = web.TCPSite(runner, f"127.0.0.{number}", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        addresses.append(f"127.0.0.{number}:{port}")
    print(json.dumps({"hosts": addresses}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # returns at EOF
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("corpus", help="make (or find) a corpus and print its folder")
    make.add_argument("--count", type=int, default=2000)
    run = commands.add_parser("serve", help="serve a corpus (used by MediaHosts)")
    run.add_argument("--corpus", type=Path, required=True)
    run.add_argument("--hosts", type=int, default=20)
    run.add_argument("--latency-ms", type=float, default=40.0)
    arguments = parser.parse_args(argv)
    if arguments.command == "corpus":
        folder = corpus(arguments.count)
        print(folder, corpus_stats(corpus_files(folder, arguments.count)))
        return 0
    asyncio.run(serve(arguments.corpus, arguments.hosts, arguments.latency_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_daemon_config(folder: Path, feed_url: str, allowed: list[str], *,
                        classifier: str = 'engine = "auto"', source_name: str = "bench") -> Path:
    """A config.toml in `folder` with one RSS source at `feed_url` (data under folder/data)."""
    hosts = ", ".join(f'"{host}"' for host in allowed)
    path = folder / "config.toml"
    path.write_text(
        f'[daemon]\ndata_dir = "{folder / "data"}"\nlog_format = "json"\n\n'
        f"[http]\nallowed_private_hosts = [{hosts}]\n\n"
        f"[classifier]\n{classifier}\n\n"
        f'[[sources]]\nkind = "rss"\nname = "{source_name}"\nurl = "{feed_url}"\n'
        f'interval = "1h"\n'
    )
    return path

