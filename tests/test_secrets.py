"""No credential leaves the process: every credential kind x every failure kind x every place.

Each case runs a real `megane once` (the Daemon, with real sources) against a real local
aiohttp server that fails in one way, or against a closed port or a refused address, with
the source's credentials in its config. Then every place a user or another local account
can read is searched for each credential: the JSON log of the run, `megane status` (text
and --json), `megane media list` (text and --json), `megane quarantine list --json`, every
TEXT column of the SQLite catalogue, the quarantine sidecars and the review UI's pages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crawler.cli import main
from crawler.config import load_config
from crawler.daemon import Daemon
from crawler.logs import configure_logging
from crawler.review.app import make_app
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from storage.redact import REDACTED
from tests.conftest import photo
from tests.review_fixtures import REVIEW_HOST

REVIEW_TOKEN = "review-token-0123456789abcdef"
MAX_FEED_BYTES = 4096


@dataclass(frozen=True)
class Credential:
    """One kind of credential: the source table that carries it, and the secret strings."""

    source: Callable[[str], str]  # host:port -> the [[sources]] table
    secrets: tuple[str, ...]
    in_url: bool  # the credential is a query value (so errors show `[redacted]`)


def _booru(api: str, **keys: str) -> Callable[[str], str]:
    lines = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return lambda host_port: (
        f'[[sources]]\nkind = "booru"\nname = "{api}"\napi = "{api}"\n'
        f'base_url = "http://{host_port}"\ntags = "glasses"\ninterval = "1m"\n{lines}')


def _rss(url: str) -> Callable[[str], str]:
    return lambda host_port: (
        f'[[sources]]\nkind = "rss"\nname = "feed"\nurl = "{url.format(host_port=host_port)}"\n'
        f'interval = "1m"\n')


DANBOORU_BASIC = base64.b64encode(b"DanLogin-bob:DanKeyZ1x2c3v4").decode()
CREDENTIALS = {
    "gelbooru_api_key": Credential(
        _booru("gelbooru", api_key="GelKey9f3a1c77", user_id="4242917"),
        ("GelKey9f3a1c77", "4242917"), in_url=True),
    "moebooru_password_hash": Credential(
        _booru("moebooru", login="MoeLogin-alice", api_key="MoeHash5d8e0b11"),
        ("MoeLogin-alice", "MoeHash5d8e0b11"), in_url=True),
    "danbooru_basic_auth": Credential(
        _booru("danbooru", login="DanLogin-bob", api_key="DanKeyZ1x2c3v4"),
        ("DanLogin-bob", "DanKeyZ1x2c3v4", DANBOORU_BASIC), in_url=False),
    "mastodon_bearer": Credential(
        lambda host_port: (
            f'[[sources]]\nkind = "mastodon"\nname = "masto"\ninstance = "http://{host_port}"\n'
            f'list = "4711"\naccess_token = "MastoTok3n-v6b7n8"\ninterval = "1m"\n'),
        ("MastoTok3n-v6b7n8",), in_url=False),
    "rss_token": Credential(_rss("http://{host_port}/feed.xml?token=RssTok3n-k8j9h0&x=1"),
                            ("RssTok3n-k8j9h0",), in_url=True),
    "rss_userinfo": Credential(_rss("http://FeedUser-f4d5:FeedPass-h2g3@{host_port}/feed.xml"),
                               ("FeedUser-f4d5", "FeedPass-h2g3"), in_url=False),
}


def echo(request: web.Request) -> str:
    """What a careless server repeats back: the whole request line and its credentials."""
    return (f"Authorization: {request.headers.get('Authorization', '')} "
            f"for {request.path_qs}")


def failing_app(mode: str, release: asyncio.Event) -> web.Application:
    """A server that fails every request in one way (`mode`)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if mode == "too_large":
            return web.Response(body=echo(request).encode() + b"x" * (4 * MAX_FEED_BYTES),
                                content_type="application/json")
        if mode == "not_a_feed":
            return web.Response(text=f"<!doctype html><p>{echo(request)}</p>",
                                content_type="text/html")
        if mode == "http_error":
            return web.json_response({"message": echo(request)}, status=500)
        await release.wait()  # "timeout": answer only after the client gave up
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    return app


FAILURES = {
    # failure kind -> (server mode or None, what the stored error says)
    "connection_refused": (None, ("connection_error",)),
    "too_large": ("too_large", ("too_large",)),
    "blocked_address": ("http_error", ("blocked_address:loopback",)),
    "not_a_feed": ("not_a_feed", ("not an RSS or Atom feed", "not JSON", "malformed",
                                  "an HTML page")),
    "http_error": ("http_error", ("HTTP 500",)),
    "timeout": ("timeout", ("timeout",)),
}


def free_port() -> int:
    """A port nothing listens on (bound, read and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(folder: Path, source: str, allowed: str) -> Path:
    """A config.toml with fast failures and `source` as its only source."""
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        data_dir = "{folder / 'data'}"
        log_format = "json"
        log_level = "debug"

        [http]
        allowed_private_hosts = ["{allowed}"]
        timeout_s = 1.0
        connect_timeout_s = 1.0
        max_retries = 0
        max_feed_bytes = {MAX_FEED_BYTES}

        [classifier]
        engine = "litert"

        [thresholds]
        nsfw = 0.8
        """) + "\n" + source)
    return path


@dataclass
class Places:
    """Everything readable after a run, by place name."""

    texts: dict[str, str]

    def assert_clean(self, secrets: tuple[str, ...]) -> None:
        """No secret in any place (each failure names the place and the secret)."""
        leaks = [(place, secret) for place, text in self.texts.items() for secret in secrets
                 if secret in text]
        assert not leaks, f"credentials leaked: {leaks}"


async def review_pages(config_path: Path) -> str:
    """The review UI's HTML pages (lists and every item), as a reviewer's browser gets them."""
    config = load_config(config_path)
    layout = DataLayout(config.data_dir)
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        rows = await catalogue.fetch_all("SELECT sha256 FROM blobs")
        client = TestClient(TestServer(make_app(config, catalogue, layout, REVIEW_TOKEN,
                                                host_name=REVIEW_HOST),
                                       host="127.0.0.1"))
        await client.start_server()
        client.session.headers["Host"] = f"{REVIEW_HOST}:{client.port}"
        try:
            pages = []
            for path in ("/", "/quarantine", "/held", "/library",
                         *(f"/item/{row['sha256']}" for row in rows)):
                response = await client.get(
                    path, headers={"Authorization": f"Bearer {REVIEW_TOKEN}"})
                assert response.status == 200, path
                pages.append(await response.text())
        finally:
            await client.close()
    finally:
        await catalogue.close()
    return "\n".join(pages)


def catalogue_text(path: Path) -> str:
    """Every TEXT column of every table of the SQLite catalogue, dumped."""
    connection = sqlite3.connect(path)
    try:
        values: list[str] = []
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")
                       if row[2].upper() == "TEXT"]
            for column in columns:
                values.extend(str(value) for (value,) in connection.execute(
                    f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"))
        return "\n".join(values)
    finally:
        connection.close()


def cli_output(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """stdout and stderr of `megane <argv>` run in-process (exit code 0 required)."""
    capsys.readouterr()
    assert main(list(argv)) == 0, argv
    captured = capsys.readouterr()
    structlog.reset_defaults()
    return captured.out + captured.err


def collect_places(config_path: Path, log: str,
                   capsys: pytest.CaptureFixture[str]) -> tuple[Places, dict[str, Any]]:
    """Read every place after a run; also return `status --json` for the caller's checks."""
    data_dir = config_path.parent / "data"
    status_json = cli_output(capsys, "status", "--json", "--config", str(config_path))
    texts = {
        "log": log,
        "status": cli_output(capsys, "status", "--config", str(config_path)),
        "status --json": status_json,
        "media list": cli_output(capsys, "media", "list", "--config", str(config_path)),
        "media list --json": cli_output(capsys, "media", "list", "--json", "--config",
                                        str(config_path)),
        "quarantine list --json": cli_output(capsys, "quarantine", "list", "--json",
                                             "--config", str(config_path)),
        "catalogue": catalogue_text(data_dir / "catalogue.sqlite"),
        "sidecars": "\n".join(path.read_text()
                              for path in sorted((data_dir / "quarantine").glob("*.json"))),
        "review UI": asyncio.run(review_pages(config_path)),
    }
    return Places(texts), json.loads(_first_json(status_json))


def _first_json(text: str) -> str:
    """The JSON document at the start of `text` (log lines on stderr follow it)."""
    _document, end = json.JSONDecoder().raw_decode(text)
    return text[:end]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Runs configure structlog onto a captured stream; undo it after the test."""
    yield
    structlog.reset_defaults()


def run_daemon(config_path: Path, mode: str | None, port: int,
               classifier: Any = None) -> str:
    """`megane once` with the server in `mode` on `port` (None: nothing listens); its log."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream)

    async def run() -> None:
        release = asyncio.Event()
        runner = None
        if mode is not None:
            runner = web.AppRunner(failing_app(mode, release))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            config = load_config(config_path)
            problem = None if classifier is not None else "no_model: test"
            daemon = Daemon(config, classifier=classifier, classifier_problem=problem)
            assert await daemon.run(once=True) == 0
        finally:
            release.set()
            if runner is not None:
                await runner.cleanup()

    asyncio.run(run())
    return stream.getvalue()


class TestEveryFailureEveryPlace:
    @pytest.mark.parametrize("failure", sorted(FAILURES))
    @pytest.mark.parametrize("kind", sorted(CREDENTIALS))
    def test_no_credential_anywhere(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    kind: str, failure: str) -> None:
        """After the poll fails, no place shows the credential, and the error is still there."""
        credential = CREDENTIALS[kind]
        mode, markers = FAILURES[failure]
        port = free_port()
        host = "127.0.0.2" if failure == "blocked_address" else "127.0.0.1"
        config_path = write_config(tmp_path, credential.source(f"{host}:{port}"),
                                   allowed=f"127.0.0.1:{port}")

        log = run_daemon(config_path, mode, port)
        places, status = collect_places(config_path, log, capsys)

        places.assert_clean(credential.secrets)
        [source] = status["sources"]
        error = source["last_error"]
        assert error and any(marker in error for marker in markers), error
        assert f"{port}" in error or failure == "not_a_feed", error  # names what failed
        if credential.in_url and failure != "not_a_feed":
            assert REDACTED in error, error  # the URL is shown, its credential masked
        assert '"source_failed"' in log


def media_server_app(kind: str, release: asyncio.Event) -> web.Application:
    """A working source of `kind` with one adult-rated photo whose post links repeat the
    credentials (as private feeds do), and one photo URL that fails."""

    async def feed(request: web.Request) -> web.StreamResponse:
        base = f"http://{request.host}"
        token = request.query.get("token", "")
        link = f"{base}/post/1?token={token}" if token else f"{base}/post/1"
        body = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel>'
            f"<title>t</title><link>{base}/?token={token}</link><description>d</description>"
            f"<item><title>one</title><link>{link}</link><guid>{link}</guid>"
            f'<enclosure url="{base}/img/chelsea.jpg" type="image/jpeg" length="1"/>'
            '<media:rating scheme="urn:simple">adult</media:rating></item>'
            f"<item><title>two</title><link>{link}&amp;n=2</link><guid>{link}2</guid>"
            f'<enclosure url="{base}/img/gone.jpg" type="image/jpeg" length="1"/></item>'
            "</channel></rss>")
        return web.Response(text=body, content_type="application/rss+xml")

    async def gelbooru(request: web.Request) -> web.StreamResponse:
        base = f"http://{request.host}"
        posts = [{"id": 1, "file_url": f"{base}/img/chelsea.jpg", "rating": "explicit",
                  "tags": "glasses", "md5": hashlib.md5(photo("chelsea")).hexdigest(),
                  "owner": "someone",
                  "source": f"{base}/src?{request.query_string}"},
                 {"id": 2, "file_url": f"{base}/img/gone.jpg", "rating": "general",
                  "tags": "glasses", "md5": "0" * 32, "owner": "someone"}]
        return web.json_response({"@attributes": {"count": 2}, "post": posts})

    async def image(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=photo("chelsea"), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/feed.xml", feed)
    app.router.add_get("/index.php", gelbooru)
    app.router.add_get("/img/chelsea.jpg", image)
    return app


class TestSuccessfulRunsWithCredentials:
    @pytest.mark.parametrize("kind", ["rss_token", "rss_userinfo", "gelbooru_api_key"])
    def test_quarantined_item_shows_no_credential(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_classifier: Any,
        kind: str,
    ) -> None:
        """A source that works files a quarantined image (sidecar, review page) and a failed
        one; neither the post links repeating the credential nor the failure leak it."""
        credential = CREDENTIALS[kind]
        port = free_port()
        config_path = write_config(tmp_path, credential.source(f"127.0.0.1:{port}"),
                                   allowed=f"127.0.0.1:{port}")
        stream = io.StringIO()
        configure_logging("json", "debug", stream)

        async def run() -> None:
            runner = web.AppRunner(media_server_app(kind, asyncio.Event()))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                daemon = Daemon(load_config(config_path), classifier=shared_classifier)
                assert await daemon.run(once=True) == 0
            finally:
                await runner.cleanup()

        asyncio.run(run())
        places, _status = collect_places(config_path, stream.getvalue(), capsys)

        places.assert_clean(credential.secrets)
        sidecars = list((tmp_path / "data" / "quarantine").glob("*.json"))
        assert len(sidecars) == 1, "the adult-rated photo is quarantined with a sidecar"
        assert "post_url" in json.loads(sidecars[0].read_text())
        assert "quarantine" in places.texts["media list"]
        assert "http_404" in places.texts["media list"]
