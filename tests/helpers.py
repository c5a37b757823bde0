"""Small helpers shared by several test files: source TOML snippets, catalogue reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.catalogue import Catalogue
from storage.placement import DataLayout
from tests.conftest import MediaServer


def rss_source(url: str, *, name: str = "feed", interval: str = "1m") -> str:
    """A `[[sources]]` TOML table for the RSS feed at `url`."""
    return f"""
        [[sources]]
        kind = "rss"
        name = "{name}"
        url = "{url}"
        interval = "{interval}"
        """


def feed_source(server: MediaServer, path: str = "/feed.xml", *, interval: str = "1m") -> str:
    """A `[[sources]]` TOML table named `feed` for the RSS feed `path` on a local server."""
    return rss_source(f"{server.base_url}{path}", interval=interval)


async def catalogue_media(data_dir: Path) -> list[dict[str, Any]]:
    """Every media row of the catalogue under `data_dir`, opened and closed for the read."""
    catalogue = await Catalogue.open(DataLayout(data_dir).catalogue)
    try:
        return list(await catalogue.media_list())
    finally:
        await catalogue.close()
