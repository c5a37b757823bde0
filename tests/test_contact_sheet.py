"""The quarantine contact sheet: index.html, blurred 0600 thumbnails, rebuilt from the catalogue."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crawler.config import Config
from crawler.display import linkable_url
from storage.display import never_link
from storage.catalogue import Catalogue
from storage.contact_sheet import (
    QuarantineEntry,
    blurred_thumbnail,
    refresh_quarantine_index,
    thumbnail_path,
    write_quarantine_index,
)
from storage.display import BIDI_CONTROLS
from storage.placement import DataLayout, place, sweep
from storage.records import Placement
from tests.conftest import photo
from tests.review_fixtures import REVIEW_CONFIG, filed_catalogue, filed_photos


def _sharpness(data: bytes) -> float:
    """Mean absolute difference of neighbouring pixels (high for detail, low when blurred)."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    return float(np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean())


def _stored(layout: DataLayout, name: str,
            reason: str = "score: nsfw=0.950 >= 0.80") -> QuarantineEntry:
    data = photo(name)
    sha256 = hashlib.sha256(data).hexdigest()
    layout.spool_file(sha256).write_bytes(data)
    place(layout, sha256, ".jpg", Placement.QUARANTINE, (), {"sha256": sha256})
    return QuarantineEntry(sha256=sha256, extension=".jpg", reason=reason,
                           scores={"nsfw": 0.95}, source="feed", first_seen=1.7e9)


def _sheet_with_post(tmp_path: Path, post_url: str, linkable: Callable[[str], bool]) -> str:
    """The contact sheet's text for one quarantined photo whose post is at `post_url`."""
    layout = DataLayout(tmp_path / "data")
    layout.ensure()
    entry = dataclasses.replace(_stored(layout, "astronaut"), post_url=post_url)
    return write_quarantine_index(layout, [entry], linkable=linkable).read_text()


class TestBlurredThumbnail:
    def test_thumbnail_is_small_and_blurred(self, tmp_path: Path) -> None:
        """The thumbnail fits 256 px and keeps a small fraction of the photo's detail."""
        source = tmp_path / "astronaut.jpg"
        source.write_bytes(photo("astronaut"))
        blurred = blurred_thumbnail(source)
        sharp = blurred_thumbnail(source, radius=0)
        with Image.open(io.BytesIO(blurred)) as image:
            assert image.format == "JPEG" and max(image.size) == 256
        assert _sharpness(blurred) < 0.2 * _sharpness(sharp)

    def test_png_with_alpha_and_gif_make_thumbnails(self, tmp_path: Path) -> None:
        """Other formats (palette, alpha) become RGB JPEG thumbnails too."""
        for name, fmt in (("chelsea", "PNG"), ("coffee", "GIF")):
            source = tmp_path / f"{name}.{fmt.lower()}"
            source.write_bytes(photo(name, fmt))
            with Image.open(io.BytesIO(blurred_thumbnail(source))) as image:
                assert image.mode == "RGB"


    def test_sixteen_bit_and_float_images_are_not_white(self, tmp_path: Path) -> None:
        """16-bit PNG, 32-bit and float TIFF thumbnails show the photo, as its 8-bit one does."""
        gray = np.asarray(Image.open(io.BytesIO(photo("camera", "PNG"))).convert("L"))
        eight_bit = tmp_path / "camera-8.png"
        Image.fromarray(gray).save(eight_bit)
        expected = np.asarray(Image.open(io.BytesIO(blurred_thumbnail(eight_bit, radius=0))),
                              dtype=np.float32)
        for name, array in (
            ("camera-16.png", gray.astype(np.uint16) * 257),
            ("camera-32.tif", gray.astype(np.int32) * 257),
            ("camera-float.tif", gray.astype(np.float32) / 255),
        ):
            source = tmp_path / name
            Image.fromarray(array).save(source)
            with Image.open(io.BytesIO(blurred_thumbnail(source, radius=0))) as image:
                pixels = np.asarray(image, dtype=np.float32)
            assert abs(pixels.mean() - expected.mean()) < 2, name
            assert pixels.mean() < 200, name

    def test_heic_thumbnail(self, tmp_path: Path) -> None:
        """A stored HEIC image gets a thumbnail (through pillow-heif)."""
        import pytest

        pillow_heif = pytest.importorskip("pillow_heif")
        source = tmp_path / "photo.heic"
        image = Image.open(io.BytesIO(photo("chelsea"))).convert("RGB")
        pillow_heif.from_pillow(image).save(source, format="HEIF")
        with Image.open(io.BytesIO(blurred_thumbnail(source))) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == 256


class TestWriteQuarantineIndex:
    def test_index_links_each_image_and_sidecar(self, tmp_path: Path) -> None:
        """Each card links the image, its sidecar and a blurred thumbnail; all files 0600."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        entries = [_stored(layout, "astronaut"), _stored(layout, "coffee")]
        index = write_quarantine_index(layout, entries, linkable=linkable_url)
        text = index.read_text()
        assert index == layout.quarantine / "index.html"
        assert index.stat().st_mode & 0o777 == 0o600
        for entry in entries:
            assert f'href="{entry.sha256}.jpg"' in text
            assert f'href="{entry.sha256}.json"' in text
            assert f'src=".thumbs/{entry.sha256}.jpg"' in text
            thumb = thumbnail_path(layout, entry.sha256)
            assert thumb.stat().st_mode & 0o777 == 0o600
        assert (layout.quarantine / ".thumbs").stat().st_mode & 0o777 == 0o700
        assert "Quarantine: 2 image(s)" in text

    def test_every_value_is_escaped(self, tmp_path: Path) -> None:
        """Reasons, sources and post URLs from feeds cannot inject markup."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        entry = _stored(layout, "astronaut", reason='<img src=x onerror="alert(1)">')
        hostile = QuarantineEntry(
            sha256=entry.sha256, extension=".jpg", reason=entry.reason,
            source="<script>x</script>", post_url='javascript:alert("x")')
        text = write_quarantine_index(layout, [hostile], linkable=linkable_url).read_text()
        assert "<script>x" not in text and "<img src=x" not in text
        assert "javascript:" not in text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text

    @pytest.mark.parametrize("post_url", [
        "http://127.0.0.1:8421/quarantine", "http://localhost:9000/", "http://192.168.0.1/",
        "http://[fe80::1]/", "http://2130706433/",
    ])
    def test_loopback_and_private_post_urls_are_text(self, tmp_path: Path,
                                                     post_url: str) -> None:
        """A post URL to a loopback, private or link-local address is shown, never linked."""
        text = _sheet_with_post(tmp_path, post_url, linkable_url)
        assert f"post: {post_url}" in text
        assert f'href="{post_url}' not in text

    def test_public_post_url_opens_without_opener_or_referrer(self, tmp_path: Path) -> None:
        """A public post link opens in a new tab with rel="noopener noreferrer"."""
        text = _sheet_with_post(tmp_path, "https://a.example/post/1", linkable_url)
        assert ('<a href="https://a.example/post/1" target="_blank" '
                'rel="noopener noreferrer">post</a>') in text
        assert '<meta name="referrer" content="no-referrer">' in text

    def test_storage_alone_never_links(self, tmp_path: Path) -> None:
        """Without crawler/'s address rule, even a public post URL is shown as text."""
        text = _sheet_with_post(tmp_path, "https://a.example/post/1", never_link)
        assert "post: https://a.example/post/1" in text
        assert 'href="https://a.example' not in text

    def test_bidi_controls_and_huge_fields_are_neutralised(self, tmp_path: Path) -> None:
        """Bidi controls show as [U+XXXX]; a 200,000-char reason or source is cut."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        entry = dataclasses.replace(_stored(layout, "astronaut"),
                                    reason="source_flag: \u202egpj.exe" + "r" * 200_000,
                                    source="feed\u2066x" + "s" * 200_000)
        text = write_quarantine_index(layout, [entry], linkable=linkable_url).read_text()
        assert not any(control in text for control in BIDI_CONTROLS)
        assert "source_flag: [U+202E]gpj.exe" in text and "feed[U+2066]x" in text
        assert len(text.encode()) < 10_000

    def test_stale_thumbnails_and_temp_files_are_removed(self, tmp_path: Path) -> None:
        """Thumbnails of released images and crash leftovers go; current ones stay."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        kept, gone = _stored(layout, "astronaut"), _stored(layout, "coffee")
        write_quarantine_index(layout, [kept, gone], linkable=linkable_url)
        leftover = layout.quarantine / ".thumbs" / ".tmp-0123-abcd"
        leftover.write_bytes(b"partial")
        write_quarantine_index(layout, [kept], linkable=linkable_url)
        assert sorted(p.name for p in (layout.quarantine / ".thumbs").iterdir()) == [
            f"{kept.sha256}.jpg"]

    def test_missing_file_keeps_the_card_without_thumbnail(self, tmp_path: Path) -> None:
        """An entry whose stored file is gone is listed; no thumbnail is invented."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        ghost = QuarantineEntry(sha256="f" * 64, extension=".jpg", reason="r")
        text = write_quarantine_index(layout, [ghost], linkable=linkable_url).read_text()
        assert "f" * 12 in text
        assert not thumbnail_path(layout, "f" * 64).exists()

    def test_empty_quarantine_says_so(self, tmp_path: Path) -> None:
        """With nothing quarantined the sheet says so."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        index = write_quarantine_index(layout, [], linkable=linkable_url)
        assert "Nothing is quarantined" in index.read_text()

    def test_sweep_leaves_the_sheet_alone(self, tmp_path: Path) -> None:
        """placement.sweep (start-up clean-up) keeps index.html and the thumbnails."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        entry = _stored(layout, "astronaut")
        index = write_quarantine_index(layout, [entry], linkable=linkable_url)
        sweep(layout, keep_spool=set())
        assert index.exists() and thumbnail_path(layout, entry.sha256).exists()


class TestRefreshFromCatalogue:
    async def test_sheet_lists_exactly_the_quarantined_images(
            self, write_config: Callable[..., Config]) -> None:
        """refresh_quarantine_index lists quarantined images with scores and source only."""
        async with filed_catalogue(write_config(REVIEW_CONFIG)) as (catalogue, layout, shas):
            index = await refresh_quarantine_index(catalogue, layout, linkable=linkable_url)
        text = index.read_text()
        assert shas["astronaut"] in text and shas["coffee"] in text
        assert shas["chelsea"] not in text and shas["rocket"] not in text
        assert "nsfw 0.95" in text and "feed-a" in text
        assert 'href="https://a.example/post/1"' in text
        thumbs = sorted(p.name for p in (layout.quarantine / ".thumbs").iterdir())
        assert thumbs == sorted(f"{shas[name]}.jpg" for name in ("astronaut", "coffee"))


class TestIndexRefresher:
    async def test_changes_are_coalesced_and_written(
            self, write_config: Callable[..., Config]) -> None:
        """The first pass runs at once; marks made meanwhile lead to one more rewrite."""
        from crawler.review.refresher import IndexRefresher

        config = write_config(REVIEW_CONFIG)
        layout = DataLayout(config.data_dir)
        layout.ensure()
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            refresher = IndexRefresher(catalogue, layout, min_interval_s=0.01)
            async with asyncio.TaskGroup() as group:
                task = group.create_task(refresher.run())
                await refresher.wait_idle()
                assert "Nothing is quarantined" in (layout.quarantine / "index.html").read_text()
                shas = await filed_photos(catalogue, layout, config, photo)
                for _ in range(5):
                    refresher.mark_changed()
                await refresher.wait_idle()
                task.cancel()
        finally:
            await catalogue.close()
        assert refresher.refreshed == 2
        assert shas["astronaut"] in (layout.quarantine / "index.html").read_text()
