"""Pixel conversion shared by decoding (classifier input) and thumbnails: the one place.

Pillow's own `convert("RGB")` clips every value over 255, so a 16-bit grayscale PNG
(mode "I;16", values 0..65535) or a 32-bit "I"/"F" image comes out white. `to_rgb` scales
such images to 8 bits first; it lives in `storage/` because the thumbnails (storage) and the
decoder (classifier) both need it and imports run classifier -> storage only.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
SIXTEEN_BIT_MAX = 65535
_HEIF_LOCK = threading.Lock()


def register_heif_opener() -> bool:
    """Let Pillow open HEIF/HEIC through the optional `pillow-heif`; False if not installed.

    Idempotent and thread-safe; called before a HEIF file is opened (decoding, thumbnails).
    """
    with _HEIF_LOCK:
        Image.init()
        if "HEIF" in Image.OPEN:
            return True
        try:
            import pillow_heif  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        return "HEIF" in Image.OPEN


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` in an 8-bit mode: "I;16*" and "I" scaled from 0..65535, "F" from 0..1.

    "I" is how Pillow holds 16-bit grayscale from some decoders, so its values are read as
    16-bit. "F" holds floats: values within 0..1 (the usual float TIFF) are scaled by 255,
    wider ranges are read like "I". Other modes are returned unchanged.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.clip(np.asarray(image, dtype=np.int64), 0, SIXTEEN_BIT_MAX) // 257
        return Image.fromarray(values.astype(np.uint8))
    if mode == "F":
        floats = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0,
                               neginf=0.0)
        peak = float(floats.max()) if floats.size else 0.0
        if peak <= 1.0:
            scaled = np.clip(floats, 0.0, 1.0) * 255.0
        else:
            scaled = np.clip(floats, 0.0, SIXTEEN_BIT_MAX) / 257.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8))
    return image


def to_rgb(image: Image.Image, *, composite_alpha: bool = True) -> Image.Image:
    """`image` as 8-bit RGB, whatever its mode and bit depth.

    With `composite_alpha` (the default) transparency is composited over white, as a
    browser shows it on a white page; without it the alpha channel is simply dropped (the
    open_nsfw reference preprocessing does that). A palette image with a transparent colour
    counts as having alpha.
    """
    image = to_8bit(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if not composite_alpha:
        return image.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


__all__ = ["register_heif_opener", "to_8bit", "to_rgb"]
