"""Test state for the review UI and hygiene: real photos filed through the real catalogue.

`store_photo` walks one image through the catalogue's stages (media row, download,
decode with a real dHash, scores) and files it with the real decision and `place()`,
as the pipeline would — no model needed: the scores are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from classifier.decode import EXTENSIONS
from classifier.phash import dhash, to_hex
from crawler.config import Config
from crawler.daemon import policy_of
from crawler.decide import decide
from crawler.pipeline import quarantine_sidecar
from crawler.review.app import make_app
from crawler.review.server import serve
from storage.catalogue import Catalogue
from storage.placement import DataLayout, place
from storage.records import MediaRef

TOKEN = "test-token-0123456789abcdef"
REVIEW_HOST = "megane-0123456789abcdef0123456789abcdef.localhost"
REVIEW_CONFIG = """
[thresholds]
nsfw = 0.80
megane = 0.60
cat = 0.60

[review]
near_duplicate_distance = 6
blur_radius = 12
"""


async def store_photo(
    catalogue: Catalogue, layout: DataLayout, config: Config, data: bytes, *,
    url: str, scores: Mapping[str, float] | None, source: str = "test-feed",
    author: str | None = None, post_url: str | None = None, flags: tuple[str, ...] = (),
    tags: tuple[str, ...] = (), now: float | None = None,
) -> str:
    """File `data` as the pipeline would (scores None: never classified, so held)."""
    now = time.time() if now is None else now
    sha256 = hashlib.sha256(data).hexdigest()
    layout.ensure()
    layout.spool_file(sha256).write_bytes(data)
    rows = await catalogue.add_media(
        [MediaRef(url=url, source=source, author=author, post_url=post_url, flags=flags,
                   tags=tags)], now)
    media_id = rows[0].id
    await catalogue.record_download(media_id, sha256, len(data), now)
    with Image.open(io.BytesIO(data)) as image:
        image_format = image.format or "JPEG"
        width, height = image.size
        phash = to_hex(dhash(image))
    extension = EXTENSIONS[image_format]
    await catalogue.record_decoded(media_id, sha256, format=image_format, width=width,
                                   height=height, extension=extension, phash=phash, now=now)
    if scores is not None:
        await catalogue.record_scores([(media_id, sha256, dict(scores), None)], "test-model",
                                      "test", now)
    policy = policy_of(config)
    decision = decide(dict(scores) if scores is not None else None, flags, policy)
    sidecar = None
    if decision.placement.value == "quarantine":
        sidecar = await quarantine_sidecar(catalogue, policy, sha256, decision, scores)
    await asyncio.to_thread(place, layout, sha256, extension, decision.placement,
                            decision.tags, sidecar)
    await catalogue.record_placement(sha256, decision.placement, decision.reason,
                                     decision.tags, now, media_id)
    return sha256


def encode(image: Image.Image, image_format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@dataclass
class ReviewState:
    """A catalogue with filed photos, and a test client on the review app."""

    config: Config
    catalogue: Catalogue
    layout: DataLayout
    client: TestClient[web.Request, web.Application]
    shas: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None
        return port

    @property
    def host(self) -> str:
        """The Host header the server answers to: its own name and port."""
        return f"{REVIEW_HOST}:{self.port}"

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def login(self) -> str:
        """Open a cookie session with the sign-in form; return its CSRF token (from a page)."""
        response = await self.client.post("/login", data={"token": TOKEN})
        assert response.status == 200, await response.text()
        return csrf_of(await response.text())

    async def placement(self, sha256: str) -> str | None:
        row = await self.catalogue.fetch_one(
            "SELECT placement FROM blobs WHERE sha256 = ?", (sha256,))
        return row["placement"] if row is not None else None

    async def labels(self, sha256: str) -> list[tuple[str, bool, str, str | None]]:
        rows = await self.catalogue.fetch_all(
            "SELECT tag, value, origin, who FROM labels WHERE sha256 = ? ORDER BY id",
            (sha256,))
        return [(row["tag"], bool(row["value"]), row["origin"], row["who"]) for row in rows]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


async def filed_photos(catalogue: Catalogue, layout: DataLayout, config: Config,
                       photo: Callable[..., bytes]) -> dict[str, str]:
    """Two quarantined photos, one in the library, one held (never classified)."""
    base = time.time() - 100
    return {
        "astronaut": await store_photo(
            catalogue, layout, config, photo("astronaut"), url="https://a.example/1.jpg",
            scores={"nsfw": 0.95, "megane": 0.1}, source="feed-a",
            author="<script>alert(1)</script>", post_url="https://a.example/post/1",
            now=base),
        "coffee": await store_photo(
            catalogue, layout, config, photo("coffee"), url="https://b.example/2.jpg",
            scores={"nsfw": 0.85, "megane": 0.2}, source="feed-b", now=base + 1),
        "chelsea": await store_photo(
            catalogue, layout, config, photo("chelsea", "PNG"), url="https://b.example/3.png",
            scores={"nsfw": 0.05, "megane": 0.1}, source="feed-b", now=base + 2),
        "rocket": await store_photo(
            catalogue, layout, config, photo("rocket"), url="https://a.example/4.jpg",
            scores=None, source="feed-a", now=base + 3),
    }


class FakeClock:
    """A clock the test moves by hand (session idleness, sign-in lock-outs)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def review_server(config: Config, *, clock: Callable[[], float] = time.time
                        ) -> AsyncIterator[ReviewState]:
    """The review app on a real server (127.0.0.1) over a catalogue with filed photos.

    The client sends the server's own Host name with every request (it listens on
    127.0.0.1 and answers only to that name).
    """
    async with filed_catalogue(config) as (catalogue, layout, shas):
        server = TestServer(make_app(config, catalogue, layout, TOKEN, host_name=REVIEW_HOST,
                                     clock=clock), host="127.0.0.1")
        client: TestClient[web.Request, web.Application] = TestClient(server)
        await client.start_server()
        client.session.headers["Host"] = f"{REVIEW_HOST}:{client.port}"
        try:
            yield ReviewState(config, catalogue, layout, client, shas)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def filed_catalogue(
    config: Config,
) -> AsyncIterator[tuple[Catalogue, DataLayout, dict[str, str]]]:
    """The catalogue under config's data_dir with `filed_photos` in it, closed after."""
    from tests.conftest import photo

    layout = DataLayout(config.data_dir)
    layout.ensure()
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        yield catalogue, layout, await filed_photos(catalogue, layout, config, photo)
    finally:
        await catalogue.close()


@contextlib.asynccontextmanager
async def serving_review(config: Config) -> AsyncIterator[str]:
    """The real `megane review` server on 127.0.0.1; yields the URL it prints, stops after."""
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as group:
        group.create_task(serve(config, 0, TOKEN, stop, ready=ready.set_result))
        try:
            yield await asyncio.wait_for(ready, 30)
        finally:
            stop.set()


@pytest.fixture(name="review_state")
async def review_state_fixture(write_config: Callable[..., Config]) -> AsyncIterator[ReviewState]:
    """The review app on a real server (127.0.0.1) over a catalogue with filed photos."""
    async with review_server(write_config(REVIEW_CONFIG)) as state:
        yield state


class LocalhostResolver(AbstractResolver):
    """Resolves `*.localhost` to 127.0.0.1 as browsers and curl do (RFC 6761); the C
    library of this host does not, so a client that opens the printed URL needs this."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        name = host.lower().rstrip(".")
        if name != "localhost" and not name.endswith(".localhost"):
            raise OSError(f"{host}: only *.localhost names resolve in tests")
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port,
                              family=socket.AF_INET, proto=0, flags=0)]

    async def close(self) -> None:
        return None
