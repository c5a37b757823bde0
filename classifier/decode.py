"""Decoding and validation of downloaded images with Pillow (runs in worker threads)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class DecodeLimits:
    max_width: int = 7680
    max_height: int = 4320
    max_frames: int = 1000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP")


@dataclass(frozen=True)
class DecodedImage:
    """An image that passed validation: RGB, EXIF orientation applied, first frame only.

    `width`/`height` are the image's real dimensions (before any draft reduction);
    `extension` is the canonical file extension of `format` (".jpg", ".png", ...).
    """

    image: Image.Image
    format: str
    width: int
    height: int
    frames: int
    extension: str
