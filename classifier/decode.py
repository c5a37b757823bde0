"""Decoding and validation of downloaded images with Pillow (runs in worker threads).

`decode_image` is the one edge where hostile bytes meet Pillow. Every way an image can be
refused ends in a `DecodeError` with a constant reason code (stored in the catalogue):

    empty                         the file has no bytes
    unreadable                    the file could not be opened or is not a regular file
    not_an_image                  no image signature: HTML, SVG, XML, PDF, text, random bytes
    format_not_allowed: FMT       an image format that `DecodeLimits.formats` does not list
    unsupported_format: FMT       a listed format no Pillow plugin can open (HEIF without the
                                  optional `pillow-heif`, installed by the `heif` extra)
    too_wide: W > CAP             the width is over its side cap
    too_tall: H > CAP             the height is over its side cap
    too_many_pixels: N > CAP      width x height over max_width x max_height (or over a
                                  lowered `Image.MAX_IMAGE_PIXELS`)
    too_many_frames: N > CAP      an animation or multi-page file with more than `max_frames`
    truncated                     the file ends before its format's end marker, or the decoder
                                  ran out of data
    corrupt                       the decoder refused the data for any other reason, or a
                                  critical PNG chunk (IHDR, PLTE, IDAT, IEND) has a bad CRC

A limit reason always reads `code: value > limit`, so a user sees which setting to change;
code that branches on reasons compares the code before the first ':'. Sizes are checked from
the header, before any pixel is decoded. Side caps do not care about orientation: the longer
side is held to the larger of `max_width`/`max_height` and the shorter side to the smaller, so a
portrait 4320x7680 photo is as acceptable as a landscape 7680x4320 one; an 800x9000 strip is
`too_tall: 9000 > 7680`.

Decoding follows what browsers display (libpng's default, the PNG specification's advice): an
ancillary PNG chunk (lower-case first letter: tEXt, iTXt, zTXt, tIME, gAMA, ...) with a bad CRC
is dropped and the image decodes; a bad CRC on a critical chunk is `corrupt`. A GIF whose last
frame is complete but whose trailer byte (0x3B) is missing decodes; a GIF cut inside a frame is
`truncated`. Truncation is checked on the file's structure (JPEG EOI after the last scan, PNG
IEND, GIF frames, WebP RIFF length, AVIF/HEIF top-level boxes) and does not depend on
`ImageFile.LOAD_TRUNCATED_IMAGES`, which a library elsewhere in the process might have
switched on.

HEIF/HEIC decodes through the optional `pillow-heif` package, registered with Pillow on the
first HEIF file; AVIF, TIFF and BMP through Pillow itself.

The parts live beside this module and are re-exported here: format sniffing and extensions
(`classifier.sniff`), the size limits (`classifier.decode_limits`) and the structure checks
(`classifier.structure`).

Known limit: a JPEG cut short and then given a fresh EOI marker decodes "successfully" --
libjpeg pads the missing blocks and only warns, and Pillow does not surface that warning.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from classifier.decode_limits import DecodeLimits, check_frames, check_pixels
from classifier.errors import DecodeError
from classifier.sniff import (
    EXTENSIONS,
    SNIFF_BYTES,
    describe_non_image,
    extension_for,
    sniff_format,
)
from classifier.structure import GifWalk, gif_walk, is_complete, png_walk, webp_canvas
from storage.pixels import register_heif_opener, to_rgb

_PIXELS_IN_BOMB_MESSAGE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


@dataclass(frozen=True)
class DecodedImage:
    """An image that passed validation: RGB, EXIF orientation applied, first frame only.

    `width`/`height` are the image's real dimensions (before any draft reduction);
    `extension` is the canonical file extension of `format` (".jpg", ".png", ...);
    `repairs` says what was dropped to decode it as a browser does (for the log).
    """

    image: Image.Image
    format: str
    width: int
    height: int
    frames: int
    extension: str
    repairs: tuple[str, ...] = ()


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
        raise DecodeError("not_an_image", describe_non_image(head), where)
    if image_format not in allowed:
        raise DecodeError(
            f"format_not_allowed: {image_format}",
            f"{image_format} is not listed in [images] formats; add it to accept such files",
            where,
        )
    Image.init()
    if image_format == "HEIF":
        register_heif_opener()
    if image_format not in Image.OPEN:
        hint = ("install the heif extra (pip install 'megane-crawler[heif]')"
                if image_format == "HEIF" else "this Pillow build has no decoder for it")
        raise DecodeError(f"unsupported_format: {image_format}", hint, where)
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


def _decode(
    file: IO[bytes],
    data: mmap.mmap,
    image_format: str,
    limits: DecodeLimits,
    draft_size: tuple[int, int] | None,
    where: str,
) -> DecodedImage:
    gif_frames: int | None = None
    repairs: tuple[str, ...] = ()
    source: IO[bytes] = file
    if image_format == "GIF":
        gif = _check_gif(data, limits, where)
        gif_frames, complete = gif.frames, gif.complete
    elif image_format == "PNG":
        png = png_walk(data)
        complete = png.complete
        if png.bad_critical is not None:
            raise DecodeError("corrupt", f"bad CRC in critical PNG chunk {png.bad_critical}",
                              where)
        if png.dropped:
            # As a browser does: drop the damaged ancillary chunks, decode the rest. The
            # copy is decoded, so no process-wide Pillow switch is touched.
            source = io.BytesIO(png.repaired)
            repairs = tuple(f"dropped PNG chunk {name} with a bad CRC" for name in png.dropped)
    else:
        complete = is_complete(data, image_format)
    if image_format == "WEBP" and (canvas := webp_canvas(data)) is not None:
        # libwebp allocates the whole canvas when Pillow opens the file: check first.
        check_pixels(*canvas, limits, where)
    source.seek(0)
    with _translate_pillow_errors(complete, where):
        # The plugin factory parses the header only. Image.open would also run Pillow's
        # global bomb check, whose warning band (MAX_IMAGE_PIXELS .. 2x) would leak a
        # process-wide DecompressionBombWarning; `check_pixels` is the policy here.
        image = Image.OPEN[image_format][0](source, where)
    with image, _translate_pillow_errors(complete, where):
        width, height = image.size
        check_pixels(width, height, limits, where)
        # n_frames is free for PNG/WebP (a header field); plugins may count by seeking.
        frames = gif_frames if gif_frames is not None else int(getattr(image, "n_frames", 1))
        check_frames(frames, limits, where)
        if not complete:
            raise DecodeError("truncated", f"{image_format} data ends before its end marker", where)
        if draft_size is not None and image_format == "JPEG":
            image.draft("RGB", draft_size)
        stored_size = image.size
        oriented = ImageOps.exif_transpose(image)
        rgb = to_rgb(oriented)
    if oriented.size != stored_size and oriented.size == stored_size[::-1]:
        width, height = height, width
    return DecodedImage(
        image=rgb,
        format=image_format,
        width=width,
        height=height,
        frames=frames,
        extension=extension_for(image_format),
        repairs=repairs,
    )


@contextmanager
def _translate_pillow_errors(complete: bool, where: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile data into a `DecodeError` with a reason."""
    try:
        yield
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = _PIXELS_IN_BOMB_MESSAGE.search(str(error))
        figures = f"{found[1]} > {found[2]}" if found else "over Pillow's limit"
        raise DecodeError(f"too_many_pixels: {figures}", str(error), where) from error
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"
        if not complete or "truncated" in str(error):
            raise DecodeError("truncated", detail, where) from error
        raise DecodeError("corrupt", detail, where) from error


def _check_gif(data: mmap.mmap, limits: DecodeLimits, where: str) -> GifWalk:
    """Check a GIF's frame count and first-frame extent before Pillow reads it.

    Pillow grows a GIF's size to its first frame's extent and runs its own bomb check
    there (a warning, process-wide); the walk lets our caps answer first.
    """
    walk = gif_walk(data)
    check_pixels(*walk.first_frame_extent, limits, where)
    check_frames(walk.frames, limits, where)
    return walk


__all__ = [
    "EXTENSIONS",
    "SNIFF_BYTES",
    "DecodeLimits",
    "DecodedImage",
    "decode_image",
    "sniff_format",
]
