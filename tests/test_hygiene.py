"""Library hygiene: the dHash index, near-duplicates, blocked hashes, deletion, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from PIL import Image, ImageEnhance

from classifier.phash import dhash, to_hex
from crawler.cli import main
from crawler.config import Config
from crawler.hygiene import (
    PhashIndex,
    Verdict,
    after_confirm,
    block,
    check_arrival,
    delete_image,
    record_near_duplicate,
)
from storage.catalogue import Catalogue
from storage.errors import UnknownMediaError
from storage.placement import DataLayout
from storage.records import MediaRef
from tests.conftest import photo
from tests.review_fixtures import REVIEW_CONFIG, encode, filed_photos


def reencoded(name: str) -> bytes:
    """A repost: the photo halved, brightened a little and saved again as a poor JPEG."""
    with Image.open(io.BytesIO(photo(name))) as image:
        smaller = image.resize((image.width // 2, image.height // 2))
    return encode(ImageEnhance.Brightness(smaller).enhance(1.08), "JPEG", quality=35)


def phash_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return to_hex(dhash(image))


@dataclass
class Library:
    config: Config
    catalogue: Catalogue
    layout: DataLayout
    shas: dict[str, str]


@pytest.fixture
async def library(write_config: Callable[..., Config]) -> AsyncIterator[Library]:
    """A catalogue with two quarantined photos, one in the library and one held."""
    config = write_config(REVIEW_CONFIG)
    layout = DataLayout(config.data_dir)
    layout.ensure()
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        yield Library(config, catalogue, layout,
                      await filed_photos(catalogue, layout, config, photo))
    finally:
        await catalogue.close()


async def arrival(library: Library, data: bytes, url: str) -> tuple[int, str]:
    """A new download of `data`, recorded up to the decoded stage: (media id, sha256)."""
    sha256 = hashlib.sha256(data).hexdigest()
    library.layout.spool_file(sha256).write_bytes(data)
    rows = await library.catalogue.add_media([MediaRef(url=url, source="feed-c")], 1.0)
    await library.catalogue.record_download(rows[0].id, sha256, len(data), 1.0)
    await library.catalogue.record_decoded(rows[0].id, sha256, format="JPEG", width=1,
                                           height=1, extension=".jpg",
                                           phash=phash_of(data), now=1.0)
    return rows[0].id, sha256


class TestPhashIndex:
    async def test_reencoded_photo_is_found_near_its_original(self, library: Library) -> None:
        """A halved, brightened, re-compressed copy is within 6 bits of the stored photo."""
        index = await PhashIndex.load(library.catalogue)
        found = index.nearest(phash_of(reencoded("astronaut")), 6)
        assert found is not None
        assert found[0] == library.shas["astronaut"] and found[1] <= 6

    @pytest.mark.parametrize("name", ["camera", "colorwheel"])
    async def test_other_photos_are_not_near(self, library: Library, name: str) -> None:
        """Photos not in the library are far from every stored hash."""
        index = await PhashIndex.load(library.catalogue)
        assert index.nearest(phash_of(photo(name)), 6) is None

    async def test_index_holds_filed_images_only(self, library: Library) -> None:
        """Library, quarantine and held images are indexed; nothing is blocked yet."""
        index = await PhashIndex.load(library.catalogue)
        assert len(index.stored) == 4 and len(index.blocked) == 0

    def test_add_replace_discard(self) -> None:
        """Adding again replaces a hash; discarding moves the last one into the hole."""
        base = 0x0000_0000_FFFF_FFFF  # balanced: 32 ones, 32 zeros
        index = PhashIndex()
        for number, sha in enumerate("abcd"):
            index.add(sha, base ^ (1 << (40 + number)))
        index.add("b", base ^ 0xFF00_0000_0000)
        index.discard("a")
        index.discard("zz")
        assert len(index.stored) == 3 and "a" not in index.stored
        assert index.nearest(base ^ 0xFF00_0000_0000, 0) == ("b", 0)
        assert index.nearest(base ^ (1 << 43), 0) == ("d", 0)
        assert index.nearest(base ^ (1 << 42), 0) == ("c", 0)
        assert index.nearest(base ^ (1 << 40), 0) is None
        assert index.nearest(base ^ 0xFF00_0000_0000, 64, exclude="b") is not None
        nearest_other = index.nearest(base, 64, exclude="b")
        assert nearest_other is not None and nearest_other[0] in {"c", "d"}

    def test_uninformative_hashes_are_not_indexed(self) -> None:
        """A hash with fewer than 12 minority bits (a plain image's) is never stored."""
        index = PhashIndex()
        index.add("flat", 0)
        index.add("lines", "8080800000000000")
        index.add("photo", "327226e2768d6c58")
        assert len(index.stored) == 1 and "photo" in index.stored
        assert index.nearest(0, 6) is None

    def test_grows_past_its_first_allocation(self) -> None:
        """Thousands of hashes are kept and searched (the array doubles as needed)."""
        index = PhashIndex()
        for number in range(5000):
            index.add(f"sha{number}", number * 0x9E3779B97F4A7C15 % (1 << 64))
        target = 4321 * 0x9E3779B97F4A7C15 % (1 << 64)
        assert index.nearest(target ^ 0b101, 2) == ("sha4321", 2)

    def test_empty_index_finds_nothing(self) -> None:
        """An empty index answers None."""
        assert PhashIndex().nearest(0, 64) is None
        assert PhashIndex().nearest_blocked("00" * 8, 64) is None


class TestArrival:
    async def test_new_image_has_no_verdict(self, library: Library) -> None:
        """A photo unlike any stored or blocked one passes."""
        index = await PhashIndex.load(library.catalogue)
        _, sha = await arrival(library, photo("camera"), "https://c.example/1.jpg")
        assert await check_arrival(library.catalogue, index, sha, phash_of(photo("camera"))) is None

    async def test_reencoded_copy_is_recorded_as_a_duplicate(self, library: Library) -> None:
        """A near-copy takes its original's state and sha256; its own bytes are dropped."""
        index = await PhashIndex.load(library.catalogue)
        data = reencoded("chelsea")
        media_id, sha = await arrival(library, data, "https://c.example/2.jpg")
        verdict = await check_arrival(library.catalogue, index, sha, phash_of(data))
        assert verdict is not None and not verdict.blocked
        assert verdict.of_sha256 == library.shas["chelsea"]
        assert verdict.reason == f"near_duplicate_of:{library.shas['chelsea']}"
        assert await record_near_duplicate(library.catalogue, library.layout, media_id, sha,
                                           verdict, 2.0)
        row = await library.catalogue.get_media(media_id)
        assert (row.state.value, row.sha256, row.reason) == (
            "library", library.shas["chelsea"], verdict.reason)
        assert await library.catalogue.fetch_one(
            "SELECT 1 FROM blobs WHERE sha256 = ?", (sha,)) is None
        assert not library.layout.spool_file(sha).exists()

    async def test_duplicate_bytes_still_needed_elsewhere_are_kept(self, library: Library) -> None:
        """When another row still carries the new bytes, blob and spool file stay."""
        index = await PhashIndex.load(library.catalogue)
        data = reencoded("chelsea")
        media_id, sha = await arrival(library, data, "https://c.example/3.jpg")
        other = await library.catalogue.add_media(
            [MediaRef(url="https://d.example/3.jpg", source="feed-d")], 1.0)
        await library.catalogue.record_download(other[0].id, sha, len(data), 1.0)
        verdict = await check_arrival(library.catalogue, index, sha, phash_of(data))
        assert verdict is not None
        assert await record_near_duplicate(library.catalogue, library.layout, media_id, sha,
                                           verdict, 2.0)
        assert library.layout.spool_file(sha).exists()

    async def test_duplicate_of_a_vanished_original_changes_nothing(
            self, library: Library) -> None:
        """If the original was deleted meanwhile, the arrival goes on as a new image."""
        index = await PhashIndex.load(library.catalogue)
        data = reencoded("chelsea")
        media_id, sha = await arrival(library, data, "https://c.example/4.jpg")
        stale = Verdict(blocked=False, of_sha256="0" * 64, distance=3)
        assert not await record_near_duplicate(library.catalogue, library.layout, media_id,
                                               sha, stale, 2.0)
        assert (await library.catalogue.get_media(media_id)).state.value == "decoded"
        assert index.nearest(phash_of(data), 6) is not None

    async def test_repost_of_a_deleted_image_is_blocked(self, library: Library) -> None:
        """After delete, a re-encoded repost is blocked, even by an index loaded before."""
        index = await PhashIndex.load(library.catalogue)
        original = library.shas["chelsea"]
        await delete_image(library.catalogue, library.layout, original, 5.0)
        data = reencoded("chelsea")
        _, sha = await arrival(library, data, "https://c.example/5.jpg")
        verdict = await check_arrival(library.catalogue, index, sha, phash_of(data))
        assert verdict is not None and verdict.blocked
        assert verdict.reason == f"blocked_near_duplicate_of:{original}"

    async def test_blocks_from_another_process_are_seen(self, library: Library) -> None:
        """A confirm made through another catalogue connection blocks at the next check."""
        index = await PhashIndex.load(library.catalogue)
        other = await Catalogue.open(library.layout.catalogue)
        try:
            await after_confirm(other, library.shas["astronaut"], 5.0)
        finally:
            await other.close()
        data = reencoded("astronaut")
        _, sha = await arrival(library, data, "https://c.example/6.jpg")
        verdict = await check_arrival(library.catalogue, index, sha, phash_of(data))
        assert verdict is not None and verdict.blocked
        assert verdict.of_sha256 == library.shas["astronaut"]

    async def test_distance_is_configurable(self, library: Library) -> None:
        """With max_distance 0 only an identical hash counts."""
        index = await PhashIndex.load(library.catalogue)
        data = reencoded("chelsea")
        _, sha = await arrival(library, data, "https://c.example/7.jpg")
        distance = index.nearest(phash_of(data), 64)
        assert distance is not None and distance[1] > 0
        assert await check_arrival(library.catalogue, index, sha, phash_of(data), 0) is None


class TestInFlight:
    """Arrivals still being processed claim their bytes and hash; later copies wait."""

    async def test_same_bytes_in_flight_wait(self, library: Library) -> None:
        """A second row with bytes another row is processing is told to wait for it."""
        index = PhashIndex()
        data = photo("camera")
        media_id, sha = await arrival(library, data, "https://c.example/f1.jpg")
        assert await check_arrival(library.catalogue, index, sha, phash_of(data),
                                   owner=media_id) is None
        index.claim(sha, phash_of(data), media_id)
        assert await check_arrival(library.catalogue, index, sha, phash_of(data),
                                   owner=media_id) is None
        verdict = await check_arrival(library.catalogue, index, sha, None, owner=media_id + 1)
        assert verdict == Verdict(blocked=False, of_sha256=sha, distance=0, in_flight=True)
        assert index.release(sha, media_id) and not index.release(sha, media_id)
        assert await check_arrival(library.catalogue, index, sha, None, owner=media_id + 1) is None

    async def test_near_copy_of_an_image_in_flight_waits(self, library: Library) -> None:
        """A re-encode of an unfiled image in flight gets an in_flight verdict naming it."""
        index = PhashIndex()
        data = photo("camera")
        media_id, sha = await arrival(library, data, "https://c.example/f2.jpg")
        index.claim(sha, phash_of(data), media_id)
        copy = encode(Image.open(io.BytesIO(data)), "JPEG", quality=60)
        copy_id, copy_sha = await arrival(library, copy, "https://c.example/f3.jpg")
        verdict = await check_arrival(library.catalogue, index, copy_sha, phash_of(copy),
                                      owner=copy_id)
        assert verdict is not None and verdict.in_flight and not verdict.blocked
        assert verdict.of_sha256 == sha and verdict.reason == f"near_duplicate_of:{sha}"

    async def test_plain_hashes_never_match(self, library: Library) -> None:
        """An uninformative hash (None, or unbalanced) finds nothing, stored or in flight."""
        index = PhashIndex()
        index.claim("a" * 64, "0000000000000000", 1)
        _, sha = await arrival(library, photo("colorwheel"), "https://c.example/f4.jpg")
        for phash in (None, "0000000000000000", "8080800000000000"):
            assert await check_arrival(library.catalogue, index, sha, phash, owner=2) is None


class TestDeleteAndBlock:
    async def test_plain_image_is_not_blocked(self, library: Library) -> None:
        """Deleting a low-detail image blocks no hash (its bytes stay rejected)."""
        from tests.plain_images import plain_images

        data = plain_images()["lunch menu"]
        sha = hashlib.sha256(data).hexdigest()
        rows = await library.catalogue.add_media(
            [MediaRef(url="https://p.example/menu.png", source="feed-p")], 1.0)
        await library.catalogue.record_download(rows[0].id, sha, len(data), 1.0)
        await library.catalogue.record_decoded(rows[0].id, sha, format="PNG", width=800,
                                               height=600, extension=".png", phash=None, now=1.0)
        library.layout.spool_file(sha).write_bytes(data)  # hashed from this file, and refused
        assert await block(library.catalogue, sha, "test", 2.0, library.layout) is None
        assert await library.catalogue.fetch_all("SELECT * FROM blocked_hashes") == []

    async def test_legacy_plain_blocks_are_ignored(self, library: Library) -> None:
        """A blocked hash stored before the rule (a plain page's 0) blocks nothing."""
        async with library.catalogue.transaction() as connection:
            await connection.execute(
                """INSERT INTO blocked_hashes (phash, sha256, reason, created_at)
                   VALUES ('0000000000000000', ?, 'deleted_by_user', 1.0)""", ("e" * 64,))
        index = await PhashIndex.load(library.catalogue)
        assert len(index.blocked) == 0
        _, sha = await arrival(library, photo("camera"), "https://c.example/l1.jpg")
        assert await check_arrival(library.catalogue, index, sha, "0000000000000000") is None


    async def test_delete_rejects_everything_and_removes_every_file(
            self, library: Library) -> None:
        """Files, sidecar, thumbnails and the stored copy go; blob and rows are rejected."""
        sha = library.shas["astronaut"]
        await delete_image(library.catalogue, library.layout, sha, 5.0)
        assert not list(library.config.data_dir.rglob(f"{sha}*"))
        row = await library.catalogue.fetch_one(
            "SELECT placement, reason, tags FROM blobs WHERE sha256 = ?", (sha,))
        assert row is not None and tuple(row) == ("rejected", "deleted_by_user", "[]")
        rows = await library.catalogue.media_for_blob(sha)
        assert {(r.state.value, r.reason) for r in rows} == {("rejected", "deleted_by_user")}
        blocked = await library.catalogue.fetch_all(
            "SELECT phash, reason FROM blocked_hashes WHERE sha256 = ?", (sha,))
        assert [(r["phash"], r["reason"]) for r in blocked] == [
            (phash_of(photo("astronaut")), "deleted_by_user")]

    async def test_same_bytes_are_rejected_on_arrival_after_delete(
            self, library: Library) -> None:
        """Downloading the deleted bytes again ends rejected as deleted_by_user."""
        sha = library.shas["chelsea"]
        await delete_image(library.catalogue, library.layout, sha, 5.0)
        rows = await library.catalogue.add_media(
            [MediaRef(url="https://e.example/again.png", source="feed-e")], 6.0)
        await library.catalogue.record_download(rows[0].id, sha, 10, 6.0)
        again = await library.catalogue.get_media(rows[0].id)
        assert (again.state.value, again.reason) == ("rejected", "deleted_by_user")

    async def test_delete_is_idempotent(self, library: Library) -> None:
        """Deleting twice is harmless (one blocked row); unknown images raise."""
        sha = library.shas["rocket"]
        await delete_image(library.catalogue, library.layout, sha, 5.0)
        await delete_image(library.catalogue, library.layout, sha, 6.0)
        count = await library.catalogue.fetch_one(
            "SELECT count(*) FROM blocked_hashes WHERE sha256 = ?", (sha,))
        assert count is not None and count[0] == 1
        with pytest.raises(UnknownMediaError):
            await delete_image(library.catalogue, library.layout, "0" * 64, 5.0)

    async def test_block_computes_a_missing_hash_from_the_file(self, library: Library) -> None:
        """An image stored before hashing existed is hashed from its file when blocked."""
        sha = library.shas["coffee"]
        async with library.catalogue.transaction() as connection:
            await connection.execute("UPDATE blobs SET phash = NULL WHERE sha256 = ?", (sha,))
        assert await block(library.catalogue, sha, "test", 5.0) is None
        assert await block(library.catalogue, sha, "test", 5.0,
                           library.layout) == phash_of(photo("coffee"))


class TestCommandLine:
    def test_delete_command_deletes_and_blocks(self, write_config: Callable[..., Config],
                                               capfd: pytest.CaptureFixture[str]) -> None:
        """`megane delete PREFIX` deletes the image; an unknown prefix exits 1."""
        config = write_config(REVIEW_CONFIG)
        shas = asyncio.run(_file_photos(config))
        sha = shas["chelsea"]
        assert main(["delete", sha[:16], "--config", str(config.path)]) == 0
        assert "deleted" in capfd.readouterr().out
        assert not list(config.data_dir.rglob(f"{sha}*"))
        assert main(["delete", "ffffffffffff", "--config", str(config.path)]) == 1

    def test_quarantine_confirm_blocks_and_release_rewrites_the_sheet(
            self, write_config: Callable[..., Config]) -> None:
        """`quarantine confirm` blocks the hash; `release` takes the image off the sheet."""
        config = write_config(REVIEW_CONFIG)
        shas = asyncio.run(_file_photos(config))
        assert main(["quarantine", "confirm", shas["coffee"], "--config", str(config.path)]) == 0
        assert main(["quarantine", "release", shas["astronaut"],
                     "--config", str(config.path)]) == 0
        blocked = asyncio.run(_blocked(config))
        assert blocked == {shas["coffee"]: "confirmed_nsfw"}
        sheet = (config.data_dir / "quarantine" / "index.html").read_text()
        assert shas["coffee"] in sheet and shas["astronaut"] not in sheet


async def _file_photos(config: Config) -> dict[str, str]:
    layout = DataLayout(config.data_dir)
    layout.ensure()
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        return await filed_photos(catalogue, layout, config, photo)
    finally:
        await catalogue.close()


async def _blocked(config: Config) -> dict[str, str]:
    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        rows = await catalogue.fetch_all("SELECT sha256, reason FROM blocked_hashes")
    finally:
        await catalogue.close()
    return {row["sha256"]: row["reason"] for row in rows}
