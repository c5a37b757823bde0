"""Near-duplicates end to end: `megane once` over a local feed, the real model, real SQLite.

Low-detail images (flat colours, text lines, black, a scanned page) all hash alike; only
informative hashes count, so each is stored. Copies arriving in one run are caught in
arrival order, and every copy row keeps its `duplicate_of:`/`near_duplicate_of:` reason,
also after a re-file.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from PIL import Image

from crawler.cli import main
from crawler.daemon import Daemon
from tests.classifier_fixtures import RecordingClassifier
from tests.conftest import MediaServer, photo
from tests.helpers import catalogue_media, feed_source
from tests.plain_images import SEVEN_PLAIN, plain_images


def _serve(server: MediaServer, images: dict[str, bytes]) -> list[dict[str, Any]]:
    """Serve each image at /img/<n>; the feed items, in the given order."""
    items = []
    for number, (name, data) in enumerate(images.items()):
        kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        server.add_bytes(f"/img/{number}", data, kind)
        items.append({"image": f"/img/{number}", "title": name, "type": kind})
    return items


def _stored(data_dir: Path) -> list[Path]:
    return [path for path in (data_dir / "store").rglob("*") if path.is_file()]


def _jpeg(image: Image.Image, quality: int, scale: float = 1.0) -> bytes:
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _reencodes(name: str) -> dict[str, bytes]:
    """Three re-encodes of one photo: q95 full size, q80 at 75%, q60 at half size."""
    image = Image.open(io.BytesIO(photo(name))).convert("RGB")
    return {"q95": _jpeg(image, 95), "q80 75%": _jpeg(image, 80, 0.75),
            "q60 50%": _jpeg(image, 60, 0.5)}


class TestPlainImages:
    async def test_seven_distinct_plain_images_are_all_stored(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Black, white, red, two text images, a scanned page and a screenshot: 7 stored."""
        images = {name: plain_images()[name] for name in SEVEN_PLAIN}
        media_server.add_feed("/feed.xml", _serve(media_server, images))
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))

        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        media = await catalogue_media(config.data_dir)
        assert len(media) == 7
        assert all(item["state"] in ("library", "quarantine") for item in media), media
        assert not any("duplicate" in item["reason"] for item in media), media
        assert len({item["sha256"] for item in media}) == 7
        assert len(_stored(config.data_dir)) == 7

    async def test_deleting_a_plain_image_blocks_no_other(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """After deleting a scanned page, other plain images are stored; the page stays gone."""
        page = {"scanned page (skimage)": plain_images()["scanned page (skimage)"]}
        media_server.add_feed("/feed.xml", _serve(media_server, page))
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        [first] = await catalogue_media(config.data_dir)
        assert await asyncio.to_thread(
            main, ["delete", first["sha256"], "--config", str(config.path)]) == 0

        others = {name: plain_images()[name] for name in SEVEN_PLAIN
                  if name != "scanned page (skimage)"}
        repost = {"page again": page["scanned page (skimage)"]}
        items = _serve(media_server, others | repost)
        media_server.add_feed("/feed.xml", [{**item, "image": f"/new{item['image']}"}
                                            for item in items])
        for number, data in enumerate((others | repost).values()):
            media_server.add_bytes(f"/new/img/{number}", data,
                                   "image/png" if data.startswith(b"\x89PNG") else "image/jpeg")
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media = {item["url"]: item for item in await catalogue_media(config.data_dir)}
        new = [item for url, item in media.items() if "/new/" in url]
        assert len(new) == 7
        kept = [item for item in new if item["sha256"] != first["sha256"]]
        assert len(kept) == 6
        assert all(item["state"] in ("library", "quarantine") for item in kept), kept
        [again] = [item for item in new if item["sha256"] == first["sha256"]]
        assert (again["state"], again["reason"]) == ("rejected", "deleted_by_user")
        assert len(_stored(config.data_dir)) == 6


class TestSameRun:
    async def test_three_reencodes_in_one_run_are_stored_once(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """JPEG q95, q80 resized and q60 resized copies of one photo: one stored, two rows
        recorded as its near-duplicates, in the stored one's state."""
        media_server.add_feed("/feed.xml", _serve(media_server, _reencodes("astronaut")))
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))

        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        media = await catalogue_media(config.data_dir)
        assert len(media) == 3
        assert len(_stored(config.data_dir)) == 1
        copies = [item for item in media if item["reason"].startswith("near_duplicate_of:")]
        [original] = [item for item in media if item not in copies]
        assert len(copies) == 2
        for copy in copies:
            assert copy["reason"] == f"near_duplicate_of:{original['sha256']}"
            assert (copy["state"], copy["sha256"]) == (original["state"], original["sha256"])

    async def test_same_bytes_in_one_run_are_classified_once(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Four URLs with the same bytes: the model scores them once, one row is the
        original and three are `duplicate_of:<sha256>`."""
        data = photo("coffee")
        media_server.add_feed("/feed.xml", _serve(media_server, {
            f"copy {number}": data for number in range(4)} | {"other": photo("rocket")}))
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        counting = RecordingClassifier(shared_classifier)

        await Daemon(config, classifier=counting).run(once=True)

        assert counting.images == 2
        media = await catalogue_media(config.data_dir)
        sha = next(item["sha256"] for item in media if item["url"].endswith("/img/0"))
        rows = [item for item in media if item["sha256"] == sha]
        assert len(rows) == 4
        reasons = [item["reason"] for item in rows]
        assert reasons.count(f"duplicate_of:{sha}") == 3
        assert [reason for reason in reasons if reason.startswith("clean: nsfw=")]
        assert len({item["state"] for item in rows}) == 1
        assert len(_stored(config.data_dir)) == 2


class TestRefile:
    async def test_copy_reasons_survive_rescore(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """A rescore that moves the original moves its copies, whose reasons stay."""
        images = _reencodes("chelsea") | {"exact copy": _reencodes("chelsea")["q95"]}
        media_server.add_feed("/feed.xml", _serve(media_server, images))
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)
        before = {item["url"]: item for item in await catalogue_media(config.data_dir)}
        assert {item["state"] for item in before.values()} == {"library"}

        strict = write_config("[thresholds]\nnsfw = 0.0\n", allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        assert await asyncio.to_thread(main, ["rescore", "--config", str(strict.path)]) == 0

        after = {item["url"]: item for item in await catalogue_media(strict.data_dir)}
        assert {item["state"] for item in after.values()} == {"quarantine"}
        copies = {url: item["reason"] for url, item in before.items()
                  if item["reason"].startswith(("near_duplicate_of:", "duplicate_of:"))}
        assert len(copies) == 3
        assert {url: after[url]["reason"] for url in copies} == copies
        [original] = [url for url in after if url not in copies]
        assert after[original]["reason"].startswith("score: nsfw=")

    async def test_flagged_repost_of_stored_bytes_is_not_classified_again(
        self, media_server: MediaServer, write_config: Any, shared_classifier: Any
    ) -> None:
        """Stored bytes reposted with an adult rating are quarantined from their stored
        scores: the model does not run again."""
        media_server.add_bytes("/img/a.jpg", photo("rocket"))
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"}])
        config = write_config(allowed=(media_server.host_port,),
                              sources=feed_source(media_server))
        await Daemon(config, classifier=shared_classifier).run(once=True)

        media_server.add_bytes("/img/b.jpg", photo("rocket"))
        media_server.add_feed("/feed.xml", [{"image": "/img/a.jpg"},
                                            {"image": "/img/b.jpg", "rating": "adult"}])
        counting = RecordingClassifier(shared_classifier)
        await Daemon(config, classifier=counting).run(once=True)

        assert counting.images == 0
        media = {item["url"].rsplit("/", 1)[-1]: item
                 for item in await catalogue_media(config.data_dir)}
        assert media["a.jpg"]["state"] == media["b.jpg"]["state"] == "quarantine"
        assert media["a.jpg"]["reason"] == "source_flag: rss:rating:adult"
        assert media["b.jpg"]["reason"] == f"duplicate_of:{media['a.jpg']['sha256']}"
