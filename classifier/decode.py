"""Decoding and validation of downloaded images with Pillow (runs in worker threads).

`decode_image` is the one edge where hostile bytes meet Pillow. Every way an image can be
refused ends in a `DecodeError` with a constant reason code (stored in the catalogue):

    empty                   the file has no bytes
    unreadable              the file could not be opened or is not a regular file
    not_an_image            no image signature: HTML, SVG, XML, PDF, text, random bytes
    format_not_allowed:FMT  an image format that `DecodeLimits.formats` does not list
    format_unsupported:FMT  a listed format no registered Pillow plugin can open
    too_many_pixels         declared size over the caps (checked from the header, before
                            any pixel is decoded), or Pillow's own decompression-bomb guard
    too_many_frames         an animation with more than `max_frames` frames
    truncated               the file ends before its format's end marker, or the decoder ran
                            out of data
    corrupt                 the decoder refused the data for any other reason

Truncation is checked on the file's structure (JPEG EOI after the last scan, PNG IEND, GIF
trailer, WebP RIFF length) and does not depend on `ImageFile.LOAD_TRUNCATED_IMAGES`, which a
library elsewhere in the process might have switched on.

Known limit: a JPEG cut short and then given a fresh EOI marker decodes "successfully" —
libjpeg pads the missing blocks and only warns, and Pillow does not surface that warning.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from classifier.errors import DecodeError


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


EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "ICO": ".ico",
    "AVIF": ".avif",
    "HEIF": ".heic",
    "JPEG2000": ".jp2",
    "JXL": ".jxl",
    "QOI": ".qoi",
    "PSD": ".psd",
}

SNIFF_BYTES = 32
"""How many leading bytes `sniff_format` needs to tell every format it knows."""

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# In entropy-coded JPEG data a 0xFF byte is followed by 0x00 (stuffing), a restart marker
# (0xD0-0xD7) or more 0xFF fill bytes; anything else is the next real marker.
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[\xff]*[^\x00\xd0-\xd7\xff]")
_GIF_BLOCK_START = re.compile(rb"[,!;]")


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name of the image whose first bytes are `head`, or None.

    Only signatures are consulted (never a Content-Type or file name). Formats are named as
    Pillow names them, so the answer can be matched against `DecodeLimits.formats`; give at
    least `SNIFF_BYTES` bytes.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"\x00\x00\x01\x00" and int.from_bytes(head[4:6], "little") > 0:
        return "ICO"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
        return None
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def decode_image(
    path: Path,
    limits: DecodeLimits,
    *,
    draft_size: tuple[int, int] | None = (256, 256),
) -> DecodedImage:
    """Validate and decode the image at `path` to RGB; blocks, so call it in a worker thread.

    With `draft_size`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that is
    still at least `draft_size`, so `image` may be smaller than `width` x `height`, which
    stay the real, full size (after EXIF orientation). Raises `DecodeError`.
    """
    where = str(path)
    try:
        # stat before open: opening a FIFO would block until someone writes to it.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DecodeError("unreadable", "not a regular file", where)
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise DecodeError("empty", "the file has no bytes", where)
            head = file.read(SNIFF_BYTES)
            image_format = _allowed_format(head, limits, where)
            # A read-only map lets the structure checks scan big files without copying them.
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _decode(file, data, image_format, limits, draft_size, where)
    except OSError as error:
        raise DecodeError("unreadable", f"{type(error).__name__}: {error}", where) from error


def _allowed_format(head: bytes, limits: DecodeLimits, where: str) -> str:
    """The format of `head` if the limits allow it; raises `not_an_image`/`format_*`."""
    allowed = tuple(name.upper() for name in limits.formats)
    image_format = sniff_format(head) or _sniff_with_plugins(head, allowed)
    if image_format is None:
        raise DecodeError("not_an_image", _describe_non_image(head), where)
    if image_format not in allowed:
        raise DecodeError(
            f"format_not_allowed:{image_format}", "format not listed in the limits", where
        )
    Image.init()
    if image_format not in Image.OPEN:
        raise DecodeError(
            f"format_unsupported:{image_format}", "no Pillow plugin is registered for it", where
        )
    return image_format


def _sniff_with_plugins(head: bytes, allowed: tuple[str, ...]) -> str | None:
    """Ask the Pillow plugins of allowed formats that `sniff_format` does not know."""
    Image.init()
    for name in allowed:
        if name in EXTENSIONS or name not in Image.OPEN:
            continue
        accept = Image.OPEN[name][1]
        # An accept function answers True/False, or a string explaining a near miss.
        verdict = accept(head) if accept is not None else False
        if verdict and not isinstance(verdict, str):
            return name
    return None


def _describe_non_image(head: bytes) -> str:
    """A short human hint at what a non-image file looks like, for the log."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for prefix, what in (
        (b"%pdf", "a PDF document"),
        (b"<svg", "an SVG image"),
        (b"<!doctype html", "an HTML page"),
        (b"<html", "an HTML page"),
        (b"<?xml", "an XML document"),
        (b"{", "JSON or text"),
    ):
        if text.startswith(prefix):
            return f"no image signature: looks like {what}"
    return "no image signature"


def _decode(
    file: IO[bytes],
    data: mmap.mmap,
    image_format: str,
    limits: DecodeLimits,
    draft_size: tuple[int, int] | None,
    where: str,
) -> DecodedImage:
    gif_frames: int | None = None
    if image_format == "GIF":
        gif = _check_gif(data, limits, where)
        gif_frames, complete = gif.frames, gif.complete
    else:
        complete = _is_complete(data, image_format)
    if image_format == "WEBP" and (canvas := _webp_canvas(data)) is not None:
        # libwebp allocates the whole canvas when Pillow opens the file: check first.
        _check_pixels(*canvas, limits, where)
    file.seek(0)
    with _translate_pillow_errors(complete, where):
        # The plugin factory parses the header only. Image.open would also run Pillow's
        # global bomb check, whose warning band (MAX_IMAGE_PIXELS .. 2x) would leak a
        # process-wide DecompressionBombWarning; `_check_pixels` is the policy here.
        image = Image.OPEN[image_format][0](file, where)
    with image, _translate_pillow_errors(complete, where):
        width, height = image.size
        _check_pixels(width, height, limits, where)
        # n_frames is free for PNG/WebP (a header field); plugins may count by seeking.
        frames = gif_frames if gif_frames is not None else int(getattr(image, "n_frames", 1))
        if frames > limits.max_frames:
            raise DecodeError("too_many_frames", f"{frames} frames over {limits.max_frames}", where)
        if not complete:
            raise DecodeError("truncated", f"{image_format} data ends before its end marker", where)
        if draft_size is not None and image_format == "JPEG":
            image.draft("RGB", draft_size)
        stored_size = image.size
        oriented = ImageOps.exif_transpose(image)
        rgb = _to_rgb(oriented)
    if oriented.size != stored_size and oriented.size == stored_size[::-1]:
        width, height = height, width
    return DecodedImage(
        image=rgb,
        format=image_format,
        width=width,
        height=height,
        frames=frames,
        extension=_extension(image_format),
    )


@contextmanager
def _translate_pillow_errors(complete: bool, where: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile data into a `DecodeError` with a reason."""
    try:
        yield
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError("too_many_pixels", str(error), where) from error
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"
        if not complete or "truncated" in str(error):
            raise DecodeError("truncated", detail, where) from error
        raise DecodeError("corrupt", detail, where) from error


def _check_pixels(width: int, height: int, limits: DecodeLimits, where: str) -> None:
    """Raise `too_many_pixels` if a declared size is over our caps or Pillow's bomb limit.

    A process that lowered `Image.MAX_IMAGE_PIXELS` gets that limit honoured too, as an
    error rather than Pillow's process-wide warning.
    """
    pixel_cap = limits.max_width * limits.max_height
    if Image.MAX_IMAGE_PIXELS is not None:
        pixel_cap = min(pixel_cap, int(Image.MAX_IMAGE_PIXELS))
    # Orientation-agnostic: a portrait 4320x7680 is as acceptable as a landscape 7680x4320.
    long_cap, short_cap = max(limits.max_width, limits.max_height), min(
        limits.max_width, limits.max_height)
    long_side, short_side = max(width, height), min(width, height)
    if long_side > long_cap or short_side > short_cap or width * height > pixel_cap:
        raise DecodeError(
            "too_many_pixels",
            f"{width}x{height} over {limits.max_width}x{limits.max_height} or {pixel_cap} pixels",
            where,
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB; alpha is composited over white, 16/32-bit gray scaled down."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own conversion clips at 255, which turns a 16-bit photo white.
        values = np.clip(np.asarray(image, dtype=np.int32), 0, 65535) // 257
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")
    if mode == "F":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def _extension(image_format: str) -> str:
    if image_format in EXTENSIONS:
        return EXTENSIONS[image_format]
    registered = [
        ext for ext, name in Image.registered_extensions().items() if name == image_format
    ]
    natural = f".{image_format.lower()}"
    return natural if natural in registered or not registered else registered[0]


def _is_complete(data: mmap.mmap, image_format: str) -> bool:
    """Whether the file reaches its format's end marker (unknown formats: trust the decoder)."""
    if image_format == "JPEG":
        return _jpeg_complete(data)
    if image_format == "PNG":
        return _png_complete(data)
    if image_format == "WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    return True


def _webp_canvas(data: mmap.mmap) -> tuple[int, int] | None:
    """The canvas size a WebP file declares in its first chunk, or None if unreadable."""
    header = data[12:30]
    if len(header) < 18:
        return None
    chunk = header[:4]
    if chunk == b"VP8X":
        return (
            int.from_bytes(header[12:15], "little") + 1,
            int.from_bytes(header[15:18], "little") + 1,
        )
    if chunk == b"VP8 " and header[11:14] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(header[14:16], "little") & 0x3FFF,
            int.from_bytes(header[16:18], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and header[8] == 0x2F:
        bits = int.from_bytes(header[9:13], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_complete(data: mmap.mmap) -> bool:
    """Walk the JPEG markers from SOI; complete only if EOI follows the last scan."""
    size = len(data)
    position = 2
    while position + 1 < size:
        if data[position] != 0xFF:
            # Stray bytes between segments: libjpeg skips them, and so do we.
            position = data.find(b"\xff", position)
            if position < 0:
                return False
            continue
        marker = data[position + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        if position + 4 > size:
            return False
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            found = _JPEG_MARKER_AFTER_SCAN.search(data, position)
            if found is None:
                return False
            position = found.end() - 2
    return False


def _png_complete(data: mmap.mmap) -> bool:
    """Walk the PNG chunks; complete only if a whole IEND chunk is reached."""
    size = len(data)
    position = 8
    while position + 12 <= size:
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = data[position + 4 : position + 8]
        position += 12 + length
        if chunk_type == b"IEND":
            return position <= size
    return False


@dataclass(frozen=True)
class _GifWalk:
    frames: int
    first_frame_extent: tuple[int, int]
    complete: bool


def _check_gif(data: mmap.mmap, limits: DecodeLimits, where: str) -> _GifWalk:
    """Check a GIF's frame count and first-frame extent before Pillow reads it.

    Pillow grows a GIF's size to its first frame's extent and runs its own bomb check
    there (a warning, process-wide); the walk lets our caps answer first.
    """
    walk = _gif_walk(data, max_frames=limits.max_frames)
    _check_pixels(*walk.first_frame_extent, limits, where)
    if walk.frames > limits.max_frames:
        raise DecodeError("too_many_frames", f"more than {limits.max_frames} frames", where)
    return walk


def _gif_walk(data: mmap.mmap, max_frames: int) -> _GifWalk:
    """Walk GIF blocks to the trailer, counting frames (stops after `max_frames` + 1)."""
    size = len(data)
    if size < 13:
        return _GifWalk(0, (0, 0), complete=False)
    screen = (int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    extent = screen
    while position < size:
        introducer = data[position]
        if introducer == 0x3B:
            return _GifWalk(frames, extent, complete=True)
        if introducer == 0x21:
            position = _skip_sub_blocks(data, position + 2)
        elif introducer == 0x2C:
            if position + 10 > size:
                break
            if frames == 0:
                left, top, frame_width, frame_height = (
                    int.from_bytes(data[position + offset : position + offset + 2], "little")
                    for offset in (1, 3, 5, 7)
                )
                extent = (max(screen[0], left + frame_width), max(screen[1], top + frame_height))
            frame_flags = data[position + 9]
            position += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0)
            position = _skip_sub_blocks(data, position + 1)  # after the LZW code size
            frames += 1
            if frames > max_frames:
                return _GifWalk(frames, extent, complete=True)
        else:
            # Pillow skips unknown bytes between blocks; look for the next block start.
            found = _GIF_BLOCK_START.search(data, position)
            if found is None:
                break
            position = found.start()
    return _GifWalk(frames, extent, complete=False)


def _skip_sub_blocks(data: mmap.mmap, position: int) -> int:
    """Position after a chain of GIF data sub-blocks; past the end if the file is cut."""
    size = len(data)
    while position < size:
        length = data[position]
        position += 1
        if length == 0:
            return position
        position += length
    return size + 1


__all__ = [
    "DecodeLimits",
    "DecodedImage",
    "EXTENSIONS",
    "SNIFF_BYTES",
    "decode_image",
    "sniff_format",
]
