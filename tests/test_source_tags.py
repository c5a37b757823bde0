"""Tags from day one, end to end: a local feed's categories, `megane once`, rescore, labels.

The builtin model scores only nsfw; `[tag_aliases]` turn the sources' own tags into library
folders at once, and `megane rescore` (stored scores and stored source tags) agrees.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from PIL import Image

from crawler.cli import main
from crawler.daemon import Daemon
from tests.conftest import MediaServer, photo
from tests.helpers import catalogue_media, feed_source

ALIASES = """
    [thresholds]
    megane = 0.6
    cat = 0.6

    [tag_aliases]
    megane = ["Glasses", "メガネ"]
    cat = ["#Neko"]
    """


async def _media(config: Any) -> dict[str, dict[str, Any]]:
    rows = await catalogue_media(config.data_dir)
    return {item["url"].rsplit("/", 1)[-1]: item for item in rows}


def _linked(data_dir: Path, tag: str) -> set[str]:
    folder = data_dir / "library" / tag
    return {path.stem for path in folder.iterdir()} if folder.is_dir() else set()


def _serve(server: MediaServer, items: list[tuple[str, bytes, list[str]]]) -> None:
    feed = []
    for name, data, categories in items:
        server.add_bytes(f"/img/{name}", data)
        feed.append({"image": f"/img/{name}", "title": name, "categories": categories})
    server.add_feed("/feed.xml", feed)


async def _cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


class TestDayOne:
    async def test_source_tags_file_at_once_and_rescore_agrees(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Categories matching aliases file under megane/cat (reason `source_tag: ...`);
        rescore changes nothing; turning the policy off moves them to untagged."""
        _serve(media_server, [("a.jpg", photo("astronaut"), ["GLASSES", "space"]),
                              ("c.jpg", photo("chelsea"), ["neko"]),
                              ("r.jpg", photo("rocket"), ["launch"])])
        config = write_config(ALIASES, allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = await _media(config)
        assert media["a.jpg"]["state"] == "library"
        assert media["a.jpg"]["reason"].endswith("; tags: megane (source_tag: glasses)")
        assert media["c.jpg"]["reason"].endswith("; tags: cat (source_tag: neko)")
        assert _linked(config.data_dir, "megane") == {media["a.jpg"]["sha256"]}
        assert _linked(config.data_dir, "cat") == {media["c.jpg"]["sha256"]}
        assert _linked(config.data_dir, "untagged") == {media["r.jpg"]["sha256"]}

        assert await _cli("rescore", "--json", "--config", str(config.path)) == 0
        assert await _media(config) == media

        off = write_config(ALIASES.replace('cat = ["#Neko"]',
                                           'cat = ["#Neko"]\nfile_by_source_tags = false'),
                           allowed=(media_server.host_port,),
                           sources=feed_source(media_server))
        assert await _cli("rescore", "--config", str(off.path)) == 0
        assert _linked(config.data_dir, "megane") == set()
        assert len(_linked(config.data_dir, "untagged")) == 3

    async def test_human_label_wins_over_a_source_tag(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """`megane label SHA megane=no` takes an image tagged #glasses out of megane/."""
        _serve(media_server, [("a.jpg", photo("coffee"), ["glasses"])])
        config = write_config(ALIASES, allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        sha = (await _media(config))["a.jpg"]["sha256"]
        assert _linked(config.data_dir, "megane") == {sha}

        assert await _cli("label", sha, "megane=no", "--config", str(config.path)) == 0
        assert _linked(config.data_dir, "megane") == set()
        assert await _cli("rescore", "--config", str(config.path)) == 0
        assert _linked(config.data_dir, "megane") == set()

    async def test_a_tagged_copy_tags_its_original(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A near-copy posted with #glasses files the stored original under megane, as a
        rescore would (both read every URL's tags)."""
        _serve(media_server, [("a.jpg", photo("astronaut"), [])])
        config = write_config(ALIASES, allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        sha = (await _media(config))["a.jpg"]["sha256"]
        assert _linked(config.data_dir, "megane") == set()

        buffer = io.BytesIO()
        Image.open(io.BytesIO(photo("astronaut"))).save(buffer, "JPEG", quality=60)
        _serve(media_server, [("a.jpg", photo("astronaut"), []),
                              ("b.jpg", buffer.getvalue(), ["glasses"])])
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = await _media(config)
        assert media["b.jpg"]["reason"] == f"near_duplicate_of:{sha}"
        assert _linked(config.data_dir, "megane") == {sha}
        assert await _cli("rescore", "--config", str(config.path)) == 0
        assert await _media(config) == media
