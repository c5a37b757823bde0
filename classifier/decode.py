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

Known limit: a JPEG cut short and then given a fresh EOI marker decodes "successfully" --
libjpeg pads the missing blocks and only warns, and Pillow does not surface that warning.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from classifier.errors import DecodeError
from storage.pixels import register_heif_opener, to_rgb


@dataclass(frozen=True)
class DecodeLimits:
    max_width: int = 7680
    max_height: int = 4320
    max_frames: int = 1000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "HEIF")


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

SNIFF_BYTES = 64
"""How many leading bytes `sniff_format` needs to tell every format it knows."""

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_PIXELS_IN_BOMB_MESSAGE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")
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
        return _iso_media_format(head)
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def _iso_media_format(head: bytes) -> str | None:
    """AVIF or HEIF from an ISO-BMFF `ftyp` box: the major brand, then compatible brands.

    A still AVIF often has the generic major brand `mif1` and lists `avif` among its
    compatible brands, so those are read too (as far as `head` reaches).
    """
    box_end = min(len(head), max(16, int.from_bytes(head[:4], "big")))
    brands = [head[8:12]] + [head[offset:offset + 4] for offset in range(16, box_end - 3, 4)]
    if any(brand in _AVIF_BRANDS for brand in brands):
        return "AVIF"
    if any(brand in _HEIF_BRANDS for brand in brands):
        return "HEIF"
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
    repairs: tuple[str, ...] = ()
    source: IO[bytes] = file
    if image_format == "GIF":
        gif = _check_gif(data, limits, where)
        gif_frames, complete = gif.frames, gif.complete
    elif image_format == "PNG":
        png = _png_walk(data)
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
        complete = _is_complete(data, image_format)
    if image_format == "WEBP" and (canvas := _webp_canvas(data)) is not None:
        # libwebp allocates the whole canvas when Pillow opens the file: check first.
        _check_pixels(*canvas, limits, where)
    source.seek(0)
    with _translate_pillow_errors(complete, where):
        # The plugin factory parses the header only. Image.open would also run Pillow's
        # global bomb check, whose warning band (MAX_IMAGE_PIXELS .. 2x) would leak a
        # process-wide DecompressionBombWarning; `_check_pixels` is the policy here.
        image = Image.OPEN[image_format][0](source, where)
    with image, _translate_pillow_errors(complete, where):
        width, height = image.size
        _check_pixels(width, height, limits, where)
        # n_frames is free for PNG/WebP (a header field); plugins may count by seeking.
        frames = gif_frames if gif_frames is not None else int(getattr(image, "n_frames", 1))
        _check_frames(frames, limits, where)
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
        extension=_extension(image_format),
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


def _check_pixels(width: int, height: int, limits: DecodeLimits, where: str) -> None:
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


def _check_frames(frames: int, limits: DecodeLimits, where: str) -> None:
    if frames > limits.max_frames:
        raise DecodeError(
            f"too_many_frames: {frames} > {limits.max_frames}",
            "more frames or pages than [images] max_frames; raise it to accept such files",
            where,
        )


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
    if image_format == "WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    if image_format in ("AVIF", "HEIF"):
        return _iso_boxes_complete(data)
    return True


def _iso_boxes_complete(data: mmap.mmap) -> bool:
    """Whether an ISO-BMFF file's top-level boxes (ftyp, meta, mdat...) all end in the file."""
    size = len(data)
    position = 0
    while position + 8 <= size:
        box_size = int.from_bytes(data[position : position + 4], "big")
        if box_size == 0:
            return True  # the last box runs to the end of the file
        if box_size == 1:
            if position + 16 > size:
                return False
            box_size = int.from_bytes(data[position + 8 : position + 16], "big")
        if box_size < 8:
            return False
        position += box_size
    return position == size


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


@dataclass(frozen=True)
class _PngWalk:
    complete: bool
    bad_critical: str | None
    dropped: tuple[str, ...]
    repaired: bytes


def _png_walk(data: mmap.mmap) -> _PngWalk:
    """Walk the PNG chunks to IEND, checking every CRC.

    An ancillary chunk (bit 5 of its first letter set) with a bad CRC is left out of
    `repaired`, the file without it; the first critical chunk with a bad CRC is named in
    `bad_critical`. Complete only if a whole IEND chunk is reached.
    """
    size = len(data)
    position = 8
    kept: list[tuple[int, int]] = []  # byte ranges of the chunks kept, for `repaired`
    dropped: list[str] = []
    while position + 12 <= size:
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = bytes(data[position + 4 : position + 8])
        end = position + 12 + length
        if end > size:
            break
        expected = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[position + 4 : end - 4]) != expected:
            name = chunk_type.decode("latin-1")
            if not chunk_type[0] & 0x20:
                return _PngWalk(False, name, tuple(dropped), b"")
            dropped.append(name)
        else:
            kept.append((position, end))
        position = end
        if chunk_type == b"IEND":
            repaired = b""
            if dropped:
                repaired = data[:8] + b"".join(data[start:stop] for start, stop in kept)
            return _PngWalk(True, None, tuple(dropped), repaired)
    return _PngWalk(False, None, tuple(dropped), b"")


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
    walk = _gif_walk(data)
    _check_pixels(*walk.first_frame_extent, limits, where)
    _check_frames(walk.frames, limits, where)
    return walk


def _gif_walk(data: mmap.mmap) -> _GifWalk:
    """Walk GIF blocks to the trailer, counting frames (work bounded by the file's size).

    Complete means the trailer was reached, or the file ends exactly after a whole block
    with at least one frame: browsers show such a GIF, only its 0x3B trailer is missing.
    """
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
        else:
            # Pillow skips unknown bytes between blocks; look for the next block start.
            found = _GIF_BLOCK_START.search(data, position)
            if found is None:
                break
            position = found.start()
    return _GifWalk(frames, extent, complete=frames > 0 and position == size)


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
    "EXTENSIONS",
    "SNIFF_BYTES",
    "DecodeLimits",
    "DecodedImage",
    "decode_image",
    "sniff_format",
]
