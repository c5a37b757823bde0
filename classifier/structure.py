"""Structure checks on an image file's bytes, before and beside Pillow.

Truncation is judged on the file's structure (JPEG EOI after the last scan, PNG IEND, GIF
frames and trailer, WebP RIFF length, AVIF/HEIF top-level boxes), never on
`ImageFile.LOAD_TRUNCATED_IMAGES`. The PNG walk checks every chunk CRC and can drop damaged
ancillary chunks; the GIF walk counts frames and the first frame's extent; the WebP canvas
is read from its first chunk. All work is bounded by the file's size.
"""

from __future__ import annotations

import mmap
import re
import zlib
from dataclasses import dataclass

# In entropy-coded JPEG data a 0xFF byte is followed by 0x00 (stuffing), a restart marker
# (0xD0-0xD7) or more 0xFF fill bytes; anything else is the next real marker.
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff[\xff]*[^\x00\xd0-\xd7\xff]")
_GIF_BLOCK_START = re.compile(rb"[,!;]")


def is_complete(data: mmap.mmap, image_format: str) -> bool:
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


def webp_canvas(data: mmap.mmap) -> tuple[int, int] | None:
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
class PngWalk:
    complete: bool
    bad_critical: str | None
    dropped: tuple[str, ...]
    repaired: bytes


def png_walk(data: mmap.mmap) -> PngWalk:
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
                return PngWalk(False, name, tuple(dropped), b"")
            dropped.append(name)
        else:
            kept.append((position, end))
        position = end
        if chunk_type == b"IEND":
            repaired = b""
            if dropped:
                repaired = data[:8] + b"".join(data[start:stop] for start, stop in kept)
            return PngWalk(True, None, tuple(dropped), repaired)
    return PngWalk(False, None, tuple(dropped), b"")


@dataclass(frozen=True)
class GifWalk:
    frames: int
    first_frame_extent: tuple[int, int]
    complete: bool


def gif_walk(data: mmap.mmap) -> GifWalk:
    """Walk GIF blocks to the trailer, counting frames (work bounded by the file's size).

    Complete means the trailer was reached, or the file ends exactly after a whole block
    with at least one frame: browsers show such a GIF, only its 0x3B trailer is missing.
    """
    size = len(data)
    if size < 13:
        return GifWalk(0, (0, 0), complete=False)
    screen = (int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    extent = screen
    while position < size:
        introducer = data[position]
        if introducer == 0x3B:
            return GifWalk(frames, extent, complete=True)
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
    return GifWalk(frames, extent, complete=frames > 0 and position == size)


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
