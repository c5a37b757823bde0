"""Shared fixtures: real photos as bytes, a local media/feed server, config files, the model.

Servers listen on 127.0.0.1 only and stop with their test. The model is loaded once per
test process (the TFLite conversion is cached in one temporary folder).
"""

from __future__ import annotations

import functools
import io
import textwrap
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from crawler.config import Config, load_config
from storage.catalogue import Catalogue

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "colorwheel")


@functools.cache
def photo(name: str, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    """A real photo from scikit-image's bundled data, encoded as `fmt`."""
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if size is not None:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=90) if fmt == "JPEG" else image.save(buffer, fmt)
    return buffer.getvalue()


def rss_feed(base_url: str, items: list[dict[str, Any]]) -> bytes:
    """An RSS 2.0 + Media RSS document: each item {title, image, type?, rating?, categories?}."""
    entries = []
    for index, item in enumerate(items):
        categories = "".join(f"<category>{c}</category>" for c in item.get("categories", ()))
        rating = (f'<media:rating scheme="urn:simple">{item["rating"]}</media:rating>'
                  if item.get("rating") else "")
        media_type = item.get("type", "image/jpeg")
        entries.append(textwrap.dedent(f"""\
            <item>
              <title>{item.get('title', f'post {index}')}</title>
              <link>{base_url}/post/{index}</link>
              <guid>{base_url}/post/{index}</guid>
              {categories}
              <enclosure url="{base_url}{item['image']}" type="{media_type}" length="1"/>
              {rating}
            </item>"""))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel>'
        f"<title>test feed</title><link>{base_url}/</link><description>d</description>"
        + "".join(entries) + "</channel></rss>"
    ).encode()


@dataclass
class MediaServer:
    """A local web server whose routes the test fills in: path -> handler."""

    server: TestServer
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def add_bytes(self, path: str, body: bytes, content_type: str = "image/jpeg") -> None:
        async def handler(_request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type)

        self.routes[path] = handler

    def add_feed(self, path: str, items: list[dict[str, Any]]) -> None:
        self.add_bytes(path, rss_feed(self.base_url, items), "application/rss+xml")


@pytest.fixture
async def media_server() -> AsyncIterator[MediaServer]:
    """A started local server (127.0.0.1, random port) with no routes yet."""
    holder: dict[str, MediaServer] = {}

    async def dispatch(request: web.Request) -> web.StreamResponse:
        state = holder["server"]
        state.hits[request.path] = state.hits.get(request.path, 0) + 1
        handler = state.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder["server"] = MediaServer(server)
    try:
        yield holder["server"]
    finally:
        await server.close()


def _keys(defaults: dict[str, str], extra: str) -> str:
    """`key = value` lines: the defaults not set in the TOML fragment `extra`, then `extra`."""
    given = tomllib.loads(textwrap.dedent(extra))
    lines = [f"{key} = {value}" for key, value in defaults.items() if key not in given]
    lines += [line.strip() for line in extra.strip().splitlines()]
    return "\n            ".join(lines)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Config]:
    """Write a config.toml into tmp_path from TOML text fragments and load it.

    `daemon` and `http` are extra keys for those tables; they replace the defaults they name.
    """

    def write(body: str = "", *, allowed: tuple[str, ...] = (), sources: str = "",
              daemon: str = "", http: str = "") -> Config:
        hosts = ", ".join(f'"{host}"' for host in allowed)
        data_dir = tmp_path / "data"
        daemon_keys = _keys({"data_dir": f'"{data_dir}"', "log_format": '"json"',
                             "download_workers": "4", "queue_size": "8"}, daemon)
        http_keys = _keys({"allowed_private_hosts": f"[{hosts}]", "timeout_s": "5.0",
                           "connect_timeout_s": "2.0", "max_retries": "1",
                           "retry_backoff_s": "0.05"}, http)
        text = textwrap.dedent(f"""\
            [daemon]
            {daemon_keys}

            [http]
            {http_keys}

            [classifier]
            batch_size = 4
            max_batch_delay_ms = 50
            engine = "litert"
            """) + textwrap.dedent(body) + "\n" + textwrap.dedent(sources)
        path = tmp_path / "config.toml"
        path.write_text(text)
        return load_config(path)

    return write


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[Catalogue]:
    """A fresh catalogue at tmp_path/data/catalogue.sqlite, closed after the test."""
    opened = await Catalogue.open(tmp_path / "data" / "catalogue.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache() -> Any:
    """Every command and daemon of the tests (subprocesses too) shares one TFLite cache."""
    from classifier.cache import CACHE_ENV
    from tests.classifier_fixtures import cache_root_directory

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache_root_directory()))
        yield cache_root_directory()


@pytest.fixture(scope="session")
def shared_classifier() -> Any:
    """The builtin open_nsfw model on the LiteRT engine, loaded once per test process."""
    from classifier.models import load_classifier
    from tests.classifier_fixtures import tflite_cache_directory

    return load_classifier("builtin", Path("/nonexistent-models"), engine="litert",
                           batch_size=4, cache_dir=tflite_cache_directory())



def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail loudly, not by hanging at exit, when a test left a SQLite connection open."""
    import gc
    import sqlite3
    import warnings

    import aiosqlite

    def still_open(connection: aiosqlite.Connection) -> bool:
        # aiosqlite's public properties raise ValueError ("no active connection") once it
        # is closed (or never connected); a connection closed under it raises sqlite3's.
        try:
            connection.in_transaction  # noqa: B018
        except (ValueError, sqlite3.Error):
            return False
        return True

    leaked = [
        connection for connection in gc.get_objects()
        if isinstance(connection, aiosqlite.Connection) and still_open(connection)
    ]
    for connection in leaked:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connection.stop()
    if leaked:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nerror: {len(leaked)} aiosqlite connection(s) were left open by tests")
