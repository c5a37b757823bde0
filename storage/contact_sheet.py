"""The quarantine contact sheet: `quarantine/index.html` with blurred thumbnails.

A reviewer who works with a file manager opens `quarantine/index.html`: one card per
quarantined image, its thumbnail heavily blurred (so nothing explicit is shown by
surprise), linking to the full image and to its sidecar JSON. Thumbnails live in
`quarantine/.thumbs/<sha256>.jpg`, mode 0600 like every file in quarantine/, and are
written atomically under `.tmp-` names that `placement.sweep` knows how to clean.

`refresh_quarantine_index` rebuilds both from the catalogue (the daemon runs it through
`crawler.review.refresher.IndexRefresher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFilter

from storage.catalogue import Catalogue
from storage.display import make_environment
from storage.pixels import register_heif_opener, to_rgb
from storage.placement import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    TEMP_PREFIX,
    DataLayout,
    write_file_atomic,
)

THUMBS_FOLDER = ".thumbs"
INDEX_NAME = "index.html"
DEFAULT_BLUR_RADIUS = 12.0
DEFAULT_THUMBNAIL_SIZE = 256

LinkRule = Callable[[object], bool]
"""Whether a URL from a source may be rendered as a link."""


@dataclass(frozen=True)
class QuarantineEntry:
    """What one card of the contact sheet shows."""

    sha256: str
    extension: str
    reason: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    source: str | None = None
    post_url: str | None = None
    first_seen: float | None = None


def thumbs_folder(layout: DataLayout) -> Path:
    return layout.quarantine / THUMBS_FOLDER


def thumbnail_path(layout: DataLayout, sha256: str) -> Path:
    return thumbs_folder(layout) / f"{sha256}.jpg"


def cached_thumbnail_path(layout: DataLayout, sha256: str) -> Path:
    """Where the review UI keeps the blurred thumbnail of any stored image."""
    return layout.cache / "thumbs" / f"{sha256}.jpg"


def remove_thumbnails(layout: DataLayout, sha256: str) -> None:
    """Remove every thumbnail of `sha256` (after deleting the image). Blocking."""
    for path in (thumbnail_path(layout, sha256), cached_thumbnail_path(layout, sha256)):
        path.unlink(missing_ok=True)


def blurred_thumbnail(source: Path, radius: float = DEFAULT_BLUR_RADIUS,
                      size: int = DEFAULT_THUMBNAIL_SIZE) -> bytes:
    """A small JPEG of `source`, downscaled then blurred until only colours and shapes remain.

    The blur is applied at the thumbnail's size, so `radius` is in thumbnail pixels; the
    default (12 of 256) leaves nothing recognisable. Blocking: call it in a thread.
    """
    if source.suffix.lower() in (".heic", ".heif"):
        register_heif_opener()
    with Image.open(source) as image:
        image.draft("RGB", (size, size))
        image.load()
        frame = to_rgb(image)  # 16-bit and float images scaled, not clipped to white
    frame.thumbnail((size, size), Image.Resampling.BILINEAR)
    if radius > 0:
        frame = frame.filter(ImageFilter.GaussianBlur(radius))
    buffer = io.BytesIO()
    frame.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def write_thumbnail(target: Path, source: Path, radius: float = DEFAULT_BLUR_RADIUS) -> Path:
    """Write the blurred thumbnail of `source` at `target` (0600, atomic). Blocking."""
    if not target.parent.is_dir():
        target.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    write_file_atomic(target, blurred_thumbnail(source, radius), PRIVATE_FILE_MODE)
    return target


def render_quarantine_index(entries: Sequence[QuarantineEntry], *, linkable: LinkRule) -> str:
    """The contact sheet's HTML (templates/quarantine_index.html): plain, self-contained.

    Autoescape is on; a post URL is a link only where `linkable` allows it (crawler/ passes
    `crawler.display.linkable_url`: public http(s) URLs only), else it is shown as text.
    """
    template = make_environment("storage", linkable).get_template("quarantine_index.html")
    return template.render(entries=entries, thumbs_folder=THUMBS_FOLDER)


def write_quarantine_index(layout: DataLayout, entries: Sequence[QuarantineEntry],
                           blur_radius: float = DEFAULT_BLUR_RADIUS, *,
                           linkable: LinkRule) -> Path:
    """Write blurred thumbnails (missing ones only) and `quarantine/index.html`. Blocking.

    Thumbnails of images no longer quarantined, and temp files left by a crash, are
    removed. An entry whose stored file is gone gets no thumbnail but keeps its card.
    """
    folder = thumbs_folder(layout)
    folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    wanted = {f"{entry.sha256}.jpg" for entry in entries}
    for path in folder.iterdir():
        if path.name not in wanted or path.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for entry in entries:
        target = thumbnail_path(layout, entry.sha256)
        source = layout.store_file(entry.sha256, entry.extension)
        if not target.exists() and source.exists():
            write_thumbnail(target, source, blur_radius)
    index = layout.quarantine / INDEX_NAME
    page = render_quarantine_index(entries, linkable=linkable)
    write_file_atomic(index, page.encode(), PRIVATE_FILE_MODE)
    return index


async def quarantine_entries(catalogue: Catalogue) -> list[QuarantineEntry]:
    """The quarantined images as the contact sheet shows them, newest first."""
    rows = await catalogue.fetch_all(
        """SELECT b.sha256, b.extension, b.reason,
                  (SELECT m.source FROM media m WHERE m.sha256 = b.sha256
                   ORDER BY m.id LIMIT 1) AS source,
                  (SELECT m.post_url FROM media m WHERE m.sha256 = b.sha256
                   ORDER BY m.id LIMIT 1) AS post_url,
                  (SELECT min(m.created_at) FROM media m WHERE m.sha256 = b.sha256)
                   AS first_seen
           FROM blobs b WHERE b.placement = 'quarantine' ORDER BY b.created_at DESC, b.sha256"""
    )
    scores: dict[str, dict[str, float]] = {}
    for row in await catalogue.fetch_all(
        """SELECT s.sha256, s.tag, s.score FROM scores s JOIN blobs b
           ON b.sha256 = s.sha256 AND b.model_version = s.model_version
           WHERE b.placement = 'quarantine'"""
    ):
        scores.setdefault(row["sha256"], {})[row["tag"]] = row["score"]
    return [
        QuarantineEntry(
            sha256=row["sha256"], extension=row["extension"], reason=row["reason"],
            scores=scores.get(row["sha256"], {}), source=row["source"],
            post_url=row["post_url"], first_seen=row["first_seen"],
        )
        for row in rows
    ]


async def refresh_quarantine_index(catalogue: Catalogue, layout: DataLayout,
                                   blur_radius: float = DEFAULT_BLUR_RADIUS, *,
                                   linkable: LinkRule) -> Path:
    """Rewrite `quarantine/index.html` and its thumbnails from the catalogue.

    `linkable` says which post URLs may be links (crawler/ passes
    `crawler.display.linkable_url`; `storage.display.never_link` shows them all as text).
    """
    entries = await quarantine_entries(catalogue)
    return await asyncio.to_thread(
        functools.partial(write_quarantine_index, layout, entries, blur_radius,
                          linkable=linkable))


__all__ = [
    "QuarantineEntry",
    "blurred_thumbnail",
    "cached_thumbnail_path",
    "quarantine_entries",
    "refresh_quarantine_index",
    "remove_thumbnails",
    "render_quarantine_index",
    "thumbnail_path",
    "write_quarantine_index",
    "write_thumbnail",
]
