"""Tests of classifier.decode: every hostile input is written here, by the tests themselves."""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from classifier.decode import (
    SNIFF_BYTES,
    DecodedImage,
    DecodeLimits,
    decode_image,
    sniff_format,
)
from classifier.errors import DecodeError

SKIMAGE_DATA = Path(str(importlib.resources.files("skimage.data")))
LIMITS = DecodeLimits()


# --- builders of test files --------------------------------------------------------------


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    """`image` saved in `image_format` to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] | None = None) -> Image.Image:
    """A real photo (skimage's astronaut), optionally resized."""
    image = Image.open(SKIMAGE_DATA / "astronaut.png").convert("RGB")
    return image.resize(size, Image.Resampling.BILINEAR) if size else image


def png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    crc = zlib.crc32(chunk_type + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int, rows: int = 16) -> bytes:
    """A grayscale PNG whose IHDR declares `width` x `height`, with only `rows` rows of data.

    At 100000x100000 that is the classic decompression bomb: a few KB on disk, 10 GB of
    pixels once decoded.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    scanlines = zlib.compress(bytes(rows * (width + 1)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", scanlines)
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to declare `width` x `height`."""
    data = bytearray(encode(photo((64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A two-frame 16x16 animated WebP whose VP8X chunk is patched to a `width` x `height` canvas.

    libwebp allocates the whole canvas as soon as Pillow opens the file.
    """
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def png_with_broken_pixels() -> bytes:
    """A structurally whole PNG whose IDAT is not a zlib stream."""
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"this is not deflate data" * 4)
        + png_chunk(b"IEND", b"")
    )


# A one-pixel GIF image block: descriptor, LZW minimum code size 2, codes clear/0/end.
GIF_ONE_PIXEL_FRAME = b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00"


def gif_with_frames(frames: int) -> bytes:
    """A 1x1 GIF with `frames` frames, written block by block (a few bytes per frame)."""
    header = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\xff"
    return header + GIF_ONE_PIXEL_FRAME * frames + b";"


def gif_with_large_first_frame(width: int, height: int) -> bytes:
    """A GIF whose screen is 1x1 but whose first frame declares `width` x `height`."""
    header = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\xff"
    descriptor = b"," + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return header + descriptor + b"\x02\x02D\x01\x00;"


def animated(image_format: str) -> bytes:
    """A three-frame animation, red then green then blue."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (32, 24), colour) for colour in colours]
    return encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=50)


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    """`image` as a JPEG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def left_red_right_blue(size: tuple[int, int]) -> Image.Image:
    """An image whose left half is red and right half blue, to see rotations."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2] = (255, 0, 0)
    pixels[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[bytes, str], Path]:
    """Factory: write bytes under tmp_path and return the path."""

    def write(data: bytes, name: str = "download.bin") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


def decode_bytes(
    write_file: Callable[[bytes, str], Path],
    data: bytes,
    limits: DecodeLimits = LIMITS,
    **options: object,
) -> DecodedImage:
    return decode_image(write_file(data, "download.bin"), limits, **options)  # type: ignore[arg-type]


def reason_of(
    write_file: Callable[[bytes, str], Path], data: bytes, limits: DecodeLimits = LIMITS
) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_bytes(write_file, data, limits)
    return caught.value.reason


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- sniffing ------------------------------------------------------------------------------


class TestSniffFormat:
    @pytest.mark.parametrize(
        ("head", "expected"),
        [
            (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG"),
            (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
            (b"GIF89a\x01\x00\x01\x00", "GIF"),
            (b"GIF87a\x01\x00\x01\x00", "GIF"),
            (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WEBP"),
            (b"BM" + bytes(12) + b"\x28\x00\x00\x00", "BMP"),
            (b"II*\x00\x08\x00\x00\x00", "TIFF"),
            (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
            (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "AVIF"),
            (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIF"),
            (b"\xff\x0a\xfa\x7f", "JXL"),
            (b"qoif\x00\x00\x00\x01", "QOI"),
            (b"", None),
            (b"\xff\xd8", None),
            (b"<!DOCTYPE html><html><body>", None),
            (b'<svg xmlns="http://www.w3.org/2000/svg">', None),
            (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", None),
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
            (b"BMW is a car, not a bitmap", None),
            (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", None),
        ],
    )
    def test_signature(self, head: bytes, expected: str | None) -> None:
        """Formats are told from their leading bytes alone, and non-images are None."""
        assert sniff_format(head) == expected

    @pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
    def test_pillow_output(self, image_format: str) -> None:
        """What Pillow writes in a format is sniffed as that format from SNIFF_BYTES bytes."""
        data = encode(photo((16, 16)), image_format)
        assert sniff_format(data[:SNIFF_BYTES]) == image_format


# --- rejections ----------------------------------------------------------------------------


HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>"
SVG_IMAGE = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>'
)
PDF_DOCUMENT = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF"


class TestRejections:
    @pytest.mark.parametrize(
        ("name", "build", "reason"),
        [
            ("zero bytes", lambda: b"", "empty"),
            ("random bytes", lambda: np.random.default_rng(7).bytes(4096), "not_an_image"),
            ("HTML page", lambda: HTML_PAGE, "not_an_image"),
            ("SVG", lambda: SVG_IMAGE, "not_an_image"),
            ("PDF", lambda: PDF_DOCUMENT, "not_an_image"),
            ("JSON", lambda: b'{"error": "rate limited"}', "not_an_image"),
            ("JPEG signature only", lambda: b"\xff\xd8\xff", "truncated"),
            ("ICO", lambda: encode(photo((16, 16)), "ICO"), "format_not_allowed: ICO"),
            (
                "PNG bomb 100000x100000",
                lambda: png_declaring(100_000, 100_000),
                "too_wide: 100000 > 7680",
            ),
            (
                "PNG in Pillow's warning band",
                lambda: png_declaring(9_500, 9_500),
                "too_wide: 9500 > 7680",
            ),
            ("PNG one column too wide", lambda: png_declaring(7_681, 16), "too_wide: 7681 > 7680"),
            ("PNG one row too long", lambda: png_declaring(16, 7_681), "too_tall: 7681 > 7680"),
            (
                "PNG over the short cap on both sides",
                lambda: png_declaring(4_321, 4_321),
                "too_tall: 4321 > 4320",
            ),
            (
                "JPEG declaring 60000x60000",
                lambda: jpeg_declaring(60_000, 60_000),
                "too_wide: 60000 > 7680",
            ),
            (
                "JPEG declaring 65535x4000",
                lambda: jpeg_declaring(65_535, 4_000),
                "too_wide: 65535 > 7680",
            ),
            (
                "WebP canvas 16383x16383",
                lambda: webp_declaring(16_383, 16_383),
                "too_wide: 16383 > 7680",
            ),
            (
                "WebP canvas 10000x10000",
                lambda: webp_declaring(10_000, 10_000),
                "too_wide: 10000 > 7680",
            ),
            ("PNG with broken IDAT", png_with_broken_pixels, "corrupt"),
            (
                "GIF with 5000 frames",
                lambda: gif_with_frames(5_000),
                "too_many_frames: 5000 > 1000",
            ),
            (
                "GIF frame beyond screen",
                lambda: gif_with_large_first_frame(9_500, 9_500),
                "too_wide: 9500 > 7680",
            ),
        ],
    )
    def test_hostile_input(
        self,
        write_file: Callable[[bytes, str], Path],
        name: str,
        build: Callable[[], bytes],
        reason: str,
    ) -> None:
        """Each hostile input is refused with its constant reason code, and nothing leaks."""
        assert reason_of(write_file, build()) == reason

    def test_small_webp_canvas_is_fine(self, write_file: Callable[[bytes, str], Path]) -> None:
        """The hand-made WebP decodes when its canvas is small, so the big ones fail on size."""
        decoded = decode_bytes(write_file, webp_declaring(64, 32))
        assert (decoded.format, decoded.width, decoded.height) == ("WEBP", 64, 32)

    def test_pillow_itself_calls_the_png_a_bomb(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """The 100000x100000 PNG is what Pillow's own guard rejects, so the test input is real."""
        with pytest.raises(Image.DecompressionBombError):
            Image.open(io.BytesIO(png_declaring(100_000, 100_000)))

    def test_magic_wins_over_the_name(self, write_file: Callable[[bytes, str], Path]) -> None:
        """An HTML page named like a JPEG is still not an image."""
        with pytest.raises(DecodeError) as caught:
            decode_image(write_file(HTML_PAGE, "photo.jpg"), LIMITS)
        assert caught.value.reason == "not_an_image"
        assert "HTML" in caught.value.detail

    def test_error_carries_the_path(self, write_file: Callable[[bytes, str], Path]) -> None:
        """The DecodeError names the file at fault."""
        path = write_file(SVG_IMAGE, "icon.svg")
        with pytest.raises(DecodeError) as caught:
            decode_image(path, LIMITS)
        assert caught.value.path == str(path)
        assert str(path) in str(caught.value)

    @pytest.mark.parametrize(
        ("limits", "size", "reason"),
        [
            (DecodeLimits(max_width=64, max_height=48), (64, 48), None),
            (DecodeLimits(max_width=64, max_height=48), (65, 10), "too_wide: 65 > 64"),
            (DecodeLimits(max_width=64, max_height=48), (10, 65), "too_tall: 65 > 64"),
            (DecodeLimits(max_width=64, max_height=48), (49, 49), "too_tall: 49 > 48"),
            (DecodeLimits(max_width=64, max_height=48), (30, 49), None),
            (DecodeLimits(max_width=64, max_height=48), (48, 48), None),
            (DecodeLimits(max_width=64, max_height=48), (48, 64), None),
        ],
    )
    def test_pixel_cap_boundaries(
        self,
        write_file: Callable[[bytes, str], Path],
        limits: DecodeLimits,
        size: tuple[int, int],
        reason: str | None,
    ) -> None:
        """An image exactly at the caps passes; one pixel over names the side and the cap."""
        data = encode(photo(size), "PNG")
        if reason is None:
            assert decode_bytes(write_file, data, limits).width == size[0]
        else:
            assert reason_of(write_file, data, limits) == reason

    @pytest.mark.parametrize(
        ("frames", "max_frames", "reason"),
        [
            (10, 10, None),
            (11, 10, "too_many_frames: 11 > 10"),
            (5_000, 1_000, "too_many_frames: 5000 > 1000"),
        ],
    )
    def test_frame_cap_boundaries(
        self,
        write_file: Callable[[bytes, str], Path],
        frames: int,
        max_frames: int,
        reason: str | None,
    ) -> None:
        """An animation at the frame cap passes; one frame more does not."""
        limits = DecodeLimits(max_frames=max_frames)
        data = gif_with_frames(frames)
        if reason is None:
            assert decode_bytes(write_file, data, limits).frames == frames
        else:
            assert reason_of(write_file, data, limits) == reason

    def test_gif_frame_count_agrees_with_pillow(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """Our own GIF walk counts the same 5000 frames Pillow counts."""
        data = gif_with_frames(5_000)
        with Image.open(io.BytesIO(data)) as image:
            assert isinstance(image, ImageFile.ImageFile)
            assert image.n_frames == 5_000  # type: ignore[attr-defined]
        assert decode_bytes(write_file, data, DecodeLimits(max_frames=5_000)).frames == 5_000

    def test_apng_frame_cap(self, write_file: Callable[[bytes, str], Path]) -> None:
        """An animated PNG is held to the frame cap too."""
        reason = reason_of(write_file, animated("PNG"), DecodeLimits(max_frames=2))
        assert reason == "too_many_frames: 3 > 2"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that is not there is unreadable, not a crash."""
        with pytest.raises(DecodeError) as caught:
            decode_image(tmp_path / "gone.jpg", LIMITS)
        assert caught.value.reason == "unreadable"

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is not a regular file."""
        with pytest.raises(DecodeError) as caught:
            decode_image(tmp_path, LIMITS)
        assert caught.value.reason == "unreadable"

    def test_lowered_pillow_bomb_limit_is_honoured(
        self, write_file: Callable[[bytes, str], Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A process that lowers Image.MAX_IMAGE_PIXELS gets too_many_pixels, not a warning."""
        files = {name: encode(photo((50, 50)), name) for name in ("PNG", "WEBP", "JPEG", "GIF")}
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
        for image_format, data in files.items():
            assert reason_of(write_file, data) == "too_many_pixels: 2500 > 1000", image_format

    def test_pillow_globals_are_left_alone(self, write_file: Callable[[bytes, str], Path]) -> None:
        """Decoding never changes Pillow's MAX_IMAGE_PIXELS or LOAD_TRUNCATED_IMAGES."""
        before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        for data in (
            png_declaring(100_000, 100_000),
            encode(photo(), "JPEG")[:-500],
            encode(photo(), "JPEG"),
        ):
            with contextlib.suppress(DecodeError):
                decode_bytes(write_file, data)
        assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- truncation ----------------------------------------------------------------------------


def progressive_jpeg() -> bytes:
    return encode(photo(), "JPEG", progressive=True)


TRUNCATABLE: list[tuple[str, Callable[[], bytes]]] = [
    ("JPEG", lambda: encode(photo(), "JPEG", quality=90)),
    ("progressive JPEG", progressive_jpeg),
    ("PNG", lambda: encode(photo(), "PNG")),
    ("GIF", lambda: encode(photo(), "GIF")),
    ("animated GIF", lambda: animated("GIF")),
    ("WEBP", lambda: encode(photo(), "WEBP")),
]


class TestTruncation:
    @pytest.mark.parametrize(("name", "build"), TRUNCATABLE)
    @pytest.mark.parametrize("kept", [0.3, 0.6, 0.9, 0.999, -2, -1])
    def test_truncated_file(
        self,
        write_file: Callable[[bytes, str], Path],
        name: str,
        build: Callable[[], bytes],
        kept: float,
    ) -> None:
        """A file cut anywhere, down to its last byte, is refused as truncated."""
        data = build()
        cut = int(len(data) + kept if kept < 0 else len(data) * kept)
        if name.endswith("GIF") and cut == len(data) - 1:
            pytest.skip("a GIF without only its trailer byte is whole (TestBrowserTolerance)")
        assert reason_of(write_file, data[:cut]) == "truncated"

    @pytest.mark.parametrize(("name", "build"), TRUNCATABLE)
    def test_truncated_even_if_pillow_is_lenient(
        self,
        write_file: Callable[[bytes, str], Path],
        monkeypatch: pytest.MonkeyPatch,
        name: str,
        build: Callable[[], bytes],
    ) -> None:
        """With LOAD_TRUNCATED_IMAGES switched on elsewhere in the process, cut files still fail."""
        data = build()
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        assert reason_of(write_file, data[: len(data) * 9 // 10]) == "truncated"

    @pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF"])
    def test_lenient_pillow_would_accept_the_cut(
        self, monkeypatch: pytest.MonkeyPatch, image_format: str
    ) -> None:
        """The lenient-flag test is meaningful: with the flag, Pillow alone decodes a cut file."""
        data = encode(photo(), image_format)
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        with Image.open(io.BytesIO(data[: len(data) * 9 // 10])) as lenient:
            lenient.load()
            assert lenient.size == (512, 512)

    @pytest.mark.parametrize(("name", "build"), TRUNCATABLE)
    def test_whole_file_decodes(
        self, write_file: Callable[[bytes, str], Path], name: str, build: Callable[[], bytes]
    ) -> None:
        """The uncut files of the truncation table decode, so the cuts are what fails."""
        assert decode_bytes(write_file, build()).image.mode == "RGB"

    @pytest.mark.xfail(
        strict=True, reason="libjpeg pads missing blocks and only warns; Pillow hides it"
    )
    def test_jpeg_cut_and_given_a_new_eoi(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A JPEG cut in half with a fresh EOI marker appended is not detected (known limit)."""
        data = encode(photo(), "JPEG")
        assert reason_of(write_file, data[: len(data) // 2] + b"\xff\xd9") == "truncated"

    def test_jpeg_with_trailing_bytes_after_eoi(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """Bytes after the EOI marker (camera trailers) do not make a whole JPEG truncated."""
        data = encode(photo(), "JPEG") + b"\x00" * 100 + b"SAMSUNG trailer"
        assert decode_bytes(write_file, data).width == 512

    def test_jpeg_thumbnail_eoi_does_not_count(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """The EOI of an EXIF thumbnail inside APP1 does not make a cut main image look whole."""
        thumbnail = encode(photo((32, 32)), "JPEG")
        app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
        main = encode(photo(), "JPEG")
        data = main[:2] + app1 + main[2:]
        assert decode_bytes(write_file, data).width == 512
        assert reason_of(write_file, data[: len(data) // 2]) == "truncated"


# --- conversion, orientation, draft --------------------------------------------------------


class TestConversion:
    def test_cmyk_jpeg(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A CMYK JPEG comes out RGB with the right colour (C=0 M=Y=100% is red)."""
        data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
        decoded = decode_bytes(write_file, data)
        assert decoded.image.mode == "RGB"
        assert close_to(pixel(decoded.image, 16, 16), (255, 0, 0))

    def test_sixteen_bit_gray_png(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A 16-bit grayscale PNG is scaled to 8 bits, not clipped to white."""
        ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
        data = encode(Image.fromarray(ramp), "PNG")
        with Image.open(io.BytesIO(data)) as raw:
            assert raw.mode.startswith("I")
        decoded = decode_bytes(write_file, data)
        values = np.asarray(decoded.image)
        assert decoded.image.mode == "RGB"
        assert values[0, 0].tolist() == [0, 0, 0]
        assert values[8, 0].tolist() == [128, 128, 128]
        assert values[15, 15].tolist() == [255, 255, 255]

    def test_sixteen_bit_rgb_png(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A 16-bit-per-channel RGB PNG (written by hand) decodes to its 8-bit colour."""
        width, height = 4, 2
        row = b"\x00" + struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000) * width
        data = (
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(row * height))
            + png_chunk(b"IEND", b"")
        )
        assert close_to(pixel(decode_bytes(write_file, data).image, 0, 0), (255, 128, 0), 1)

    def test_palette_png_with_transparency(self, write_file: Callable[[bytes, str], Path]) -> None:
        """Transparent palette entries become white; opaque ones keep their colour."""
        image = Image.new("P", (8, 8), 0)
        image.putpalette([0, 0, 0] + [200, 0, 0] + [0] * 762)
        image.paste(1, (0, 0, 4, 8))
        data = encode(image, "PNG", transparency=0)
        decoded = decode_bytes(write_file, data).image
        assert pixel(decoded, 1, 1) == (200, 0, 0)
        assert pixel(decoded, 6, 6) == (255, 255, 255)

    @pytest.mark.parametrize(
        ("mode", "colour", "expected"),
        [
            ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
            ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
            ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
            ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
            ("LA", (0, 0), (255, 255, 255)),
            ("LA", (50, 255), (50, 50, 50)),
            ("L", 80, (80, 80, 80)),
            ("1", 1, (255, 255, 255)),
        ],
    )
    def test_alpha_and_gray_modes(
        self,
        write_file: Callable[[bytes, str], Path],
        mode: str,
        colour: int | tuple[int, ...],
        expected: tuple[int, int, int],
    ) -> None:
        """Alpha is composited over white and gray modes become RGB."""
        data = encode(Image.new(mode, (8, 8), colour), "PNG")
        decoded = decode_bytes(write_file, data).image
        assert decoded.mode == "RGB"
        assert close_to(pixel(decoded, 4, 4), expected, 1)

    def test_rgba_webp(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A transparent lossless WebP is composited over white too."""
        data = encode(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "WEBP", lossless=True)
        assert pixel(decode_bytes(write_file, data).image, 4, 4) == (255, 255, 255)

    @pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
    def test_animation_first_frame(
        self, write_file: Callable[[bytes, str], Path], image_format: str
    ) -> None:
        """An animation is counted and its first (red) frame is the one returned."""
        decoded = decode_bytes(write_file, animated(image_format))
        assert decoded.frames == 3
        assert close_to(pixel(decoded.image, 16, 12), (255, 0, 0))


class TestOrientation:
    @pytest.mark.parametrize(
        ("orientation", "size", "top_left", "bottom_right"),
        [
            (1, (40, 20), (255, 0, 0), (0, 0, 255)),
            (3, (40, 20), (0, 0, 255), (255, 0, 0)),
            (6, (20, 40), (255, 0, 0), (0, 0, 255)),
            (8, (20, 40), (0, 0, 255), (255, 0, 0)),
        ],
    )
    def test_exif_orientation(
        self,
        write_file: Callable[[bytes, str], Path],
        orientation: int,
        size: tuple[int, int],
        top_left: tuple[int, int, int],
        bottom_right: tuple[int, int, int],
    ) -> None:
        """EXIF orientation is applied to the pixels and to the reported size."""
        data = jpeg_with_orientation(left_red_right_blue((40, 20)), orientation)
        decoded = decode_bytes(write_file, data)
        assert (decoded.width, decoded.height) == size
        assert decoded.image.size == size
        assert close_to(pixel(decoded.image, 1, 1), top_left, 40)
        assert close_to(pixel(decoded.image, size[0] - 2, size[1] - 2), bottom_right, 40)

    def test_orientation_with_draft(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A drafted, rotated JPEG reports its full, rotated size and a rotated reduced image."""
        data = jpeg_with_orientation(left_red_right_blue((2048, 1024)), 6)
        decoded = decode_bytes(write_file, data, draft_size=(256, 256))
        assert (decoded.width, decoded.height) == (1024, 2048)
        assert decoded.image.size == (256, 512)
        assert close_to(pixel(decoded.image, 128, 10), (255, 0, 0), 40)


class TestDraft:
    @pytest.mark.parametrize(
        ("size", "draft_size", "expected"),
        [
            ((2048, 1536), (256, 256), (512, 384)),
            ((4000, 3000), (256, 256), (500, 375)),
            ((1000, 300), (256, 256), (1000, 300)),
            ((2048, 1536), (1024, 768), (1024, 768)),
            ((2048, 1536), None, (2048, 1536)),
            ((200, 100), (256, 256), (200, 100)),
        ],
    )
    def test_jpeg_draft_scale(
        self,
        write_file: Callable[[bytes, str], Path],
        size: tuple[int, int],
        draft_size: tuple[int, int] | None,
        expected: tuple[int, int],
    ) -> None:
        """JPEGs decode at the smallest DCT scale still at least draft_size; the size stays real."""
        decoded = decode_bytes(write_file, encode(photo(size), "JPEG"), draft_size=draft_size)
        assert decoded.image.size == expected
        assert (decoded.width, decoded.height) == size

    def test_draft_leaves_png_alone(self, write_file: Callable[[bytes, str], Path]) -> None:
        """Only JPEG has a draft mode; a PNG decodes at full size."""
        decoded = decode_bytes(write_file, encode(photo((1024, 768)), "PNG"), draft_size=(256, 256))
        assert decoded.image.size == (1024, 768)


# --- real photos, formats, threads ---------------------------------------------------------


def _outcome(path: Path) -> str:
    """The decoded format of `path`, or the reason it was refused."""
    try:
        return decode_image(path, LIMITS).format
    except DecodeError as error:
        return error.reason


class TestRealImages:
    @pytest.mark.parametrize(
        ("name", "image_format", "size", "extension"),
        [
            ("astronaut.png", "PNG", (512, 512), ".png"),
            ("chelsea.png", "PNG", (451, 300), ".png"),
            ("coffee.png", "PNG", (600, 400), ".png"),
            ("camera.png", "PNG", (512, 512), ".png"),
            ("rocket.jpg", "JPEG", (640, 427), ".jpg"),
            ("retina.jpg", "JPEG", (1411, 1411), ".jpg"),
            ("no_time_for_that_tiny.gif", "GIF", (14, 25), ".gif"),
        ],
    )
    def test_skimage_file(
        self, name: str, image_format: str, size: tuple[int, int], extension: str
    ) -> None:
        """Real files decode to RGB with their format, real size and extension."""
        decoded = decode_image(SKIMAGE_DATA / name, LIMITS)
        assert (decoded.format, (decoded.width, decoded.height), decoded.extension) == (
            image_format,
            size,
            extension,
        )
        assert decoded.image.mode == "RGB"

    @pytest.mark.parametrize(
        ("image_format", "extension"),
        [
            ("JPEG", ".jpg"),
            ("PNG", ".png"),
            ("GIF", ".gif"),
            ("WEBP", ".webp"),
            ("BMP", ".bmp"),
            ("TIFF", ".tif"),
        ],
    )
    def test_formats_enabled_by_limits(
        self, write_file: Callable[[bytes, str], Path], image_format: str, extension: str
    ) -> None:
        """A format listed in the limits decodes, with its canonical extension."""
        limits = DecodeLimits(formats=(image_format,))
        decoded = decode_bytes(write_file, encode(photo((32, 32)), image_format), limits)
        assert (decoded.format, decoded.extension) == (image_format, extension)

    def test_plugin_format_outside_the_sniff_table(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """A Pillow plugin's format that sniff_format does not know (PPM) is found by its plugin."""
        data = encode(photo((32, 32)), "PPM")
        assert reason_of(write_file, data) == "not_an_image"
        decoded = decode_bytes(write_file, data, DecodeLimits(formats=("PPM",)))
        assert (decoded.format, decoded.extension, decoded.width) == ("PPM", ".ppm", 32)

    def test_listed_format_without_plugin(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A listed format that no installed Pillow plugin opens is refused as unsupported."""
        if "JXL" in Image.OPEN:
            pytest.skip("a JPEG XL plugin is installed")
        data = b"\xff\x0a" + bytes(64)
        assert (
            reason_of(write_file, data, DecodeLimits(formats=("JXL",))) == "unsupported_format: JXL"
        )

    def test_decoding_in_threads(
        self, write_file: Callable[[bytes, str], Path], tmp_path: Path
    ) -> None:
        """Many threads decoding good and hostile files at once get the same answers as one."""
        good = tmp_path / "good.jpg"
        good.write_bytes(encode(photo(), "JPEG"))
        bomb = tmp_path / "bomb.png"
        bomb.write_bytes(png_declaring(100_000, 100_000))
        cut = tmp_path / "cut.png"
        cut.write_bytes(encode(photo(), "PNG")[:-100])

        paths = [good, bomb, cut] * 20
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(_outcome, paths))
        assert results == ["JPEG", "too_wide: 100000 > 7680", "truncated"] * 20


# --- what browsers display -----------------------------------------------------------------


def png_with_bad_crc(chunk_type: bytes) -> bytes:
    """A real photo PNG with a tEXt chunk after IHDR, then the CRC of `chunk_type` broken."""
    data = encode(photo((64, 48)), "PNG")
    after_ihdr = 8 + 12 + 13
    text = png_chunk(b"tEXt", b"Comment\x00made by a camera")
    data = data[:after_ihdr] + text + data[after_ihdr:]
    position = 8
    while True:
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == chunk_type:
            crc_at = position + 8 + length
            broken = (int.from_bytes(data[crc_at : crc_at + 4], "big") ^ 0xFFFF).to_bytes(4, "big")
            return data[:crc_at] + broken + data[crc_at + 4 :]
        position += 12 + length


class TestBrowserTolerance:
    def test_pillow_alone_refuses_the_bad_ancillary_crc(self) -> None:
        """The test input is real: Pillow on its own cannot open the PNG with a bad tEXt CRC."""
        with pytest.raises(Exception):  # noqa: B017 - UnidentifiedImageError or SyntaxError
            Image.open(io.BytesIO(png_with_bad_crc(b"tEXt"))).load()

    def test_bad_ancillary_crc_decodes(self, write_file: Callable[[bytes, str], Path]) -> None:
        """An ancillary chunk with a bad CRC is dropped and the pixels are the photo's."""
        decoded = decode_bytes(write_file, png_with_bad_crc(b"tEXt"))
        expected = photo((64, 48))
        assert decoded.repairs == ("dropped PNG chunk tEXt with a bad CRC",)
        assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))

    @pytest.mark.parametrize("chunk_type", [b"IHDR", b"IDAT", b"IEND"])
    def test_bad_critical_crc_is_corrupt(
        self, write_file: Callable[[bytes, str], Path], chunk_type: bytes
    ) -> None:
        """A bad CRC on a critical chunk is refused as corrupt, as libpng refuses it."""
        with pytest.raises(DecodeError) as caught:
            decode_bytes(write_file, png_with_bad_crc(chunk_type))
        assert caught.value.reason == "corrupt"
        assert chunk_type.decode() in caught.value.detail

    def test_bad_ancillary_crc_and_cut_is_truncated(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """Dropping a damaged ancillary chunk does not excuse a file cut short."""
        data = png_with_bad_crc(b"tEXt")
        assert reason_of(write_file, data[: len(data) - 40]) == "truncated"

    def test_thread_safe_without_global_switches(
        self, write_file: Callable[[bytes, str], Path], tmp_path: Path
    ) -> None:
        """Damaged-chunk PNGs and truncated files decoded together in threads keep their answers."""
        repaired = tmp_path / "repaired.png"
        repaired.write_bytes(png_with_bad_crc(b"tEXt"))
        cut = tmp_path / "cut.png"
        cut.write_bytes(encode(photo(), "PNG")[:-100])

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(_outcome, [repaired, cut] * 20))
        assert results == ["PNG", "truncated"] * 20
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    @pytest.mark.parametrize("build", [lambda: animated("GIF"), lambda: encode(photo(), "GIF")],
                             ids=["animated", "photo"])
    def test_gif_without_trailer_decodes(
        self, write_file: Callable[[bytes, str], Path], build: Callable[[], bytes]
    ) -> None:
        """A GIF whose frames are complete but whose 0x3B trailer is missing decodes in full."""
        data = build()
        assert data.endswith(b";")
        whole = decode_bytes(write_file, data)
        cut = decode_bytes(write_file, data[:-1])
        assert cut.frames == whole.frames
        assert np.array_equal(np.asarray(cut.image), np.asarray(whole.image))

    def test_gif_cut_inside_the_last_frame_is_truncated(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """A GIF missing its trailer and the end of its last frame is still truncated."""
        data = animated("GIF")
        assert reason_of(write_file, data[:-3]) == "truncated"


# --- formats -------------------------------------------------------------------------------


def heif_bytes(image: Image.Image) -> bytes:
    """`image` encoded as HEIC by pillow-heif."""
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, format="HEIF")
    return buffer.getvalue()


class TestFormats:
    @pytest.mark.parametrize(
        ("image_format", "extension"), [("AVIF", ".avif"), ("TIFF", ".tif"), ("BMP", ".bmp")]
    )
    def test_default_formats(
        self, write_file: Callable[[bytes, str], Path], image_format: str, extension: str
    ) -> None:
        """AVIF, TIFF and BMP decode with the default limits, with their own extension."""
        decoded = decode_bytes(write_file, encode(photo((96, 64)), image_format))
        assert (decoded.format, decoded.extension, decoded.width, decoded.height) == (
            image_format, extension, 96, 64)
        assert close_to(pixel(decoded.image, 48, 32), pixel(photo((96, 64)), 48, 32), 24)

    def test_heif_with_pillow_heif(self, write_file: Callable[[bytes, str], Path]) -> None:
        """With pillow-heif installed a HEIC photo decodes, named .heic."""
        data = heif_bytes(photo((96, 64)))
        assert sniff_format(data[:SNIFF_BYTES]) == "HEIF"
        decoded = decode_bytes(write_file, data)
        assert (decoded.format, decoded.extension, decoded.width) == ("HEIF", ".heic", 96)
        assert close_to(pixel(decoded.image, 48, 32), pixel(photo((96, 64)), 48, 32), 24)

    def test_heif_without_pillow_heif(self, tmp_path: Path) -> None:
        """Without pillow-heif a HEIC file is refused as `unsupported_format: HEIF`."""
        path = tmp_path / "photo.heic"
        path.write_bytes(heif_bytes(photo((32, 32))))
        program = (
            "import sys; sys.modules['pillow_heif'] = None\n"
            "from pathlib import Path\n"
            "from classifier.decode import DecodeLimits, decode_image\n"
            "from classifier.errors import DecodeError\n"
            "try:\n"
            f"    decode_image(Path({str(path)!r}), DecodeLimits())\n"
            "except DecodeError as error:\n"
            "    print(error.reason); print(error.detail)\n"
        )
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                                cwd=Path(__file__).parent.parent, timeout=60, check=True)
        reason, detail = result.stdout.splitlines()
        assert reason == "unsupported_format: HEIF"
        assert "heif" in detail

    @pytest.mark.parametrize("image_format", ["AVIF", "HEIF"])
    def test_cut_iso_media_is_truncated(
        self, write_file: Callable[[bytes, str], Path], image_format: str
    ) -> None:
        """An AVIF or HEIC file cut short is truncated (its boxes end past the file)."""
        image = photo((96, 64))
        data = heif_bytes(image) if image_format == "HEIF" else encode(image, "AVIF")
        for kept in (0.5, 0.9):
            assert reason_of(write_file, data[: int(len(data) * kept)]) == "truncated"

    @pytest.mark.parametrize("image_format", ["TIFF", "BMP"])
    def test_cut_tiff_and_bmp_are_refused(
        self, write_file: Callable[[bytes, str], Path], image_format: str
    ) -> None:
        """A TIFF or BMP cut short is refused, never decoded with missing rows."""
        data = encode(photo((96, 64)), image_format)
        assert reason_of(write_file, data[: len(data) // 2]) == "truncated"

    def test_multi_page_tiff_frame_cap(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A multi-page TIFF is held to the frame cap and names it."""
        reason = reason_of(write_file, animated("TIFF"), DecodeLimits(max_frames=2))
        assert reason == "too_many_frames: 3 > 2"

    def test_bmp_declaring_a_huge_size(self, write_file: Callable[[bytes, str], Path]) -> None:
        """A BMP header declaring 30000x20000 is refused from the header, naming the cap."""
        data = bytearray(encode(photo((16, 16)), "BMP"))
        data[18:26] = struct.pack("<ii", 30_000, 20_000)
        assert reason_of(write_file, bytes(data)) == "too_wide: 30000 > 7680"

    @pytest.mark.parametrize(
        ("head", "expected"),
        [
            (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "AVIF"),
            (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heicmiaf", "HEIF"),
            (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isomavc1", None),
        ],
    )
    def test_iso_media_brands(self, head: bytes, expected: str | None) -> None:
        """A generic `mif1` major brand is told apart by its compatible brands."""
        assert sniff_format(head) == expected


class TestHighBitDepth:
    @pytest.mark.parametrize(
        ("mode", "values", "expected"),
        [
            ("I;16", [0, 32896, 65535], [0, 128, 255]),
            ("I", [0, 32896, 65535], [0, 128, 255]),
            ("F", [0.0, 0.5, 1.0], [0, 128, 255]),
        ],
    )
    def test_tiff_modes(
        self,
        write_file: Callable[[bytes, str], Path],
        mode: str,
        values: list[float],
        expected: list[int],
    ) -> None:
        """16-bit, 32-bit integer and float TIFFs are scaled to 8 bits, not clipped to white."""
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        array = np.repeat(np.array(values, dtype=dtype)[np.newaxis, :], 4, axis=0)
        data = encode(Image.fromarray(array), "TIFF")
        with Image.open(io.BytesIO(data)) as raw:
            assert raw.mode == mode
        decoded = decode_bytes(write_file, data)
        assert [pixel(decoded.image, x, 1) for x in range(3)] == [(v, v, v) for v in expected]

    def test_sixteen_bit_photo_is_not_white(
        self, write_file: Callable[[bytes, str], Path]
    ) -> None:
        """A real photo saved as 16-bit grayscale decodes to the same picture as its 8-bit one."""
        gray = np.asarray(photo((64, 64)).convert("L"))
        data = encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")
        decoded = np.asarray(decode_bytes(write_file, data).image.convert("L"))
        assert np.array_equal(decoded, gray)
