"""Low-detail images written with Pillow (and skimage's scanned page), for near-duplicate tests.

Each is a distinct picture a user would keep, yet all of them hash (dHash) within a few bits
of 0: the kind of image whose perceptual hash must not count.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def _encode(image: Image.Image, fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _text(lines: list[str], *, size: tuple[int, int] = (800, 600), background: int = 255,
          ink: int = 0, font_size: int = 28, noise: float = 0.0, blur: float = 0.0,
          seed: int = 0) -> Image.Image:
    image = Image.new("L", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    for number, line in enumerate(lines):
        draw.text((40, 40 + number * (font_size + 14)), line, fill=ink, font=font)
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        pixels = np.asarray(image, dtype=np.float64)
        pixels += np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _centred(lines: list[str], background: tuple[int, int, int],
             ink: tuple[int, int, int], font_size: int) -> Image.Image:
    image = Image.new("RGB", (1080, 1080), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    top = 540 - len(lines) * (font_size + 10) // 2
    for number, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        draw.text(((1080 - width) / 2, top + number * (font_size + 10)), line, fill=ink,
                  font=font)
    return image


def _scanned_page() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.page()).convert("RGB")


def _gradient() -> Image.Image:
    return Image.fromarray(np.tile(np.linspace(0, 255, 640).astype(np.uint8), (480, 1)))


def _noisy_grey() -> Image.Image:
    pixels = 128 + np.random.default_rng(5).normal(0.0, 3.0, (480, 640))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")


@functools.cache
def plain_images() -> dict[str, bytes]:
    """Name -> encoded bytes of distinct low-detail images (PNG, or JPEG like a scan)."""
    return {
        "black": _encode(Image.new("RGB", (640, 480), (0, 0, 0))),
        "white": _encode(Image.new("RGB", (640, 480), (255, 255, 255))),
        "red": _encode(Image.new("RGB", (640, 480), (200, 30, 30))),
        "blue jpeg": _encode(Image.new("RGB", (640, 480), (30, 60, 200)), "JPEG", quality=85),
        "two text lines": _encode(_text(["Hello world", "this is a test"])),
        "lunch menu": _encode(_text(["Lunch menu", "soup 4.50", "bread 2.00", "tea 1.80"])),
        "one notice line": _encode(_text(["NOTICE: office closed on Friday"], font_size=36)),
        "terminal screenshot": _encode(_text(
            ["$ ls -l", "total 0", "-rw-r--r-- 1 user user 0 a.txt"], size=(1280, 720),
            background=30, ink=200, font_size=24)),
        "scanned page (skimage)": _encode(_scanned_page(), "JPEG", quality=90),
        "noisy scan": _encode(_text(["The quick brown fox jumps over the lazy"] * 14,
                                    size=(850, 1100), background=240, ink=30, font_size=20,
                                    noise=8, blur=1.0, seed=2), "JPEG", quality=75),
        "short letter scan": _encode(_text(["Dear Sir,", "", "Thank you for your letter."],
                                           size=(850, 1100), background=238, ink=35,
                                           font_size=22, noise=5, blur=0.7, seed=3),
                                     "JPEG", quality=75),
        "quote card": _encode(_centred(["Be kind.", "Always."], (250, 250, 250), (20, 20, 20),
                                       64), "JPEG", quality=85),
        "announcement card": _encode(_centred(
            ["Server maintenance", "tonight 22:00-23:00", "sorry for the trouble"],
            (30, 30, 60), (240, 240, 240), 50), "JPEG", quality=85),
        "gradient": _encode(_gradient().convert("RGB")),
        "noisy grey": _encode(_noisy_grey(), "JPEG", quality=80),
    }


SEVEN_PLAIN = ("black", "white", "red", "two text lines", "lunch menu",
               "scanned page (skimage)", "terminal screenshot")
