"""The shared cases of the mastodon, bluesky and booru sources, run through the real daemon.

Each case folder under tests/cases/ holds a README (the right result), a config.toml and a
site/ served the way the case's serve.py serves it: routes.json maps a path (query ignored)
to a file, and {PORT} in non-image bodies becomes the server's port.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler.config import Config, load_config
from crawler.daemon import Daemon
from storage.catalogue import Catalogue
from storage.placement import DataLayout

CASES = Path(__file__).parent / "cases"
FILED = ("library", "quarantine")


class CaseSite:
    """A case's site/ on 127.0.0.1, answering as the case's serve.py does; logs each path."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.routes: dict[str, Any] = json.loads((site / "routes.json").read_text())
        self.requested: list[str] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.answer)
        self.server = TestServer(app, host="127.0.0.1")

    async def answer(self, request: web.Request) -> web.Response:
        self.requested.append(request.path)
        spec = self.routes.get(request.path)
        if spec is None:
            return web.Response(status=404, text="not found")
        headers = {name: str(value) for name, value in spec.get("headers", {}).items()}
        body = (self.site / spec["file"]).read_bytes() if "file" in spec else str(
            spec.get("body", "")).encode()
        content_type = next((value for name, value in headers.items()
                             if name.lower() == "content-type"), "")
        if not content_type.lower().startswith("image/"):
            body = body.replace(b"{PORT}", str(self.server.port).encode())
        return web.Response(status=int(spec.get("status", 200)), body=body, headers=headers)


@pytest.fixture
async def case_run(tmp_path: Path, shared_classifier: Any) -> AsyncIterator[Any]:
    """Run `megane once` for a named case; return the media rows and the requested paths."""
    sites: list[CaseSite] = []

    async def run(name: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
        site = CaseSite(CASES / name / "site")
        sites.append(site)
        await site.server.start_server()
        text = (CASES / name / "config.toml").read_text()
        text = text.replace("{WORK}", str(tmp_path)).replace("{PORT}", str(site.server.port))
        (tmp_path / "config.toml").write_text(text)
        config: Config = load_config(tmp_path / "config.toml")
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
        try:
            rows = await catalogue.media_list()
        finally:
            await catalogue.close()
        by_path = {row["url"].split(f":{site.server.port}", 1)[-1]: row for row in rows}
        return by_path, site.requested

    yield run
    for site in sites:
        await site.server.close()


async def test_mastodon_unknown_attachment_is_fetched_from_remote_url(case_run: Any) -> None:
    """An attachment of type unknown is downloaded from its remote_url and filed."""
    media, requested = await case_run("mastodon_unknown_attachment_type")
    assert list(media) == ["/remote/media/photo.jpg"]
    row = media["/remote/media/photo.jpg"]
    assert row["state"] in FILED, row
    assert row["sha256"] and row["author"] == "glassfan@remote.example"
    assert "/remote/media/photo.jpg" in requested


async def test_bluesky_sexual_figurative_is_quarantined(case_run: Any) -> None:
    """Posts labelled sexual and sexual-figurative are both flagged and quarantined."""
    media, _ = await case_run("bluesky_sexual_figurative_label")
    base = "/img/feed_fullsize/plain/did:plc:testauthor0000000000000"
    figurative, sexual = media[f"{base}/bafkfigurative@jpeg"], media[f"{base}/bafksexual@jpeg"]
    assert figurative["flags"] == ["bluesky:label:sexual-figurative"]
    assert sexual["flags"] == ["bluesky:label:sexual"]
    for row in (figurative, sexual):
        assert row["state"] == "quarantine", row
        assert row["reason"].startswith("source_flag: bluesky:label:"), row
    assert len(media) == 2


async def test_gelbooru_control_character_costs_nothing(case_run: Any) -> None:
    """A raw control character in one post keeps the page: 303 and 301 filed, 302 tried."""
    media, requested = await case_run("gelbooru_xml_control_char")
    path = "/images/ab/0000000000000000000000000000012{}.jpg"
    assert sorted(media) == sorted(path.format(letter) for letter in "def")
    assert media[path.format("f")]["state"] in FILED, media
    assert media[path.format("d")]["state"] in FILED, media
    missing = media[path.format("e")]
    assert (missing["state"], missing["reason"]) == ("rejected", "http_404"), missing
    assert path.format("e") in requested
