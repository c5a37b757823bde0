"""The size limits a decoded image is held to: side caps, pixel cap, frame cap.

Each check raises a `DecodeError` whose reason reads `code: value > limit`, and whose detail
names the `[images]` setting to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from classifier.errors import DecodeError


@dataclass(frozen=True)
class DecodeLimits:
    max_width: int = 7680
    max_height: int = 4320
    max_frames: int = 1000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "HEIF")


def check_pixels(width: int, height: int, limits: DecodeLimits, where: str) -> None:
    """Raise `too_wide`/`too_tall`/`too_many_pixels` naming the value and the cap it broke.

    Side caps are orientation-agnostic (the longer side against the larger cap, the shorter
    against the smaller). A process that lowered `Image.MAX_IMAGE_PIXELS` gets that limit
    honoured too, as an error rather than Pillow's process-wide warning.
    """
    long_cap = max(limits.max_width, limits.max_height)
    short_cap = min(limits.max_width, limits.max_height)
    landscape = width >= height
    long_side, short_side = (width, height) if landscape else (height, width)
    if long_side > long_cap:
        axis = "too_wide" if landscape else "too_tall"
        raise DecodeError(
            f"{axis}: {long_side} > {long_cap}",
            f"{width}x{height}: the longer side is over {long_cap}, the larger of "
            "[images] max_width/max_height; raise it to accept such images",
            where,
        )
    if short_side > short_cap:
        axis = "too_tall" if landscape else "too_wide"
        raise DecodeError(
            f"{axis}: {short_side} > {short_cap}",
            f"{width}x{height}: the shorter side is over {short_cap}, the smaller of "
            "[images] max_width/max_height; raise it to accept such images",
            where,
        )
    pixel_cap = limits.max_width * limits.max_height
    if Image.MAX_IMAGE_PIXELS is not None:
        pixel_cap = min(pixel_cap, int(Image.MAX_IMAGE_PIXELS))
    if width * height > pixel_cap:
        raise DecodeError(
            f"too_many_pixels: {width * height} > {pixel_cap}",
            f"{width}x{height} is over the pixel cap (max_width x max_height, or Pillow's "
            "MAX_IMAGE_PIXELS if lower)",
            where,
        )


def check_frames(frames: int, limits: DecodeLimits, where: str) -> None:
    """Raise `too_many_frames` when an animation or multi-page file has too many."""
    if frames > limits.max_frames:
        raise DecodeError(
            f"too_many_frames: {frames} > {limits.max_frames}",
            "more frames or pages than [images] max_frames; raise it to accept such files",
            where,
        )
