"""Tests of classifier.phash on real photos (skimage.data) and their altered copies.

Measured on these photos (64-bit dHash): JPEG quality 60, a 90% or 50% resize, +10%/+20%
brightness and +10% contrast stay 0-3 bits from the original; distinct photos are 18-42
bits apart (closest: rocket vs retina, 18). The limits below (copies <= 6, distinct > 16)
leave a margin on both sides.
"""

from __future__ import annotations

import importlib.resources
import io
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from classifier.phash import (
    balanced,
    dhash,
    from_hex,
    hamming,
    informative_hash,
    perceptual_hash,
    to_hex,
)
from tests.plain_images import plain_images

SKIMAGE_DATA = Path(str(importlib.resources.files("skimage.data")))
PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "horse.png",
    "camera.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
]
SAME_PICTURE_MAX_DISTANCE = 6
DIFFERENT_PICTURES_MIN_DISTANCE = 17


def load(name: str) -> Image.Image:
    return Image.open(SKIMAGE_DATA / name).convert("RGB")


def jpeg_quality_60(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def resized(scale: float) -> Callable[[Image.Image], Image.Image]:
    def resize(image: Image.Image) -> Image.Image:
        size = (round(image.width * scale), round(image.height * scale))
        return image.resize(size, Image.Resampling.BILINEAR)

    return resize


def brightened(factor: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: ImageEnhance.Brightness(image).enhance(factor)


def contrasted(factor: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: ImageEnhance.Contrast(image).enhance(factor)


ALTERATIONS: list[tuple[str, Callable[[Image.Image], Image.Image]]] = [
    ("jpeg quality 60", jpeg_quality_60),
    ("resized to 90%", resized(0.9)),
    ("resized to 50%", resized(0.5)),
    ("resized to 110%", resized(1.1)),
    ("brightened 10%", brightened(1.1)),
    ("brightened 20%", brightened(1.2)),
    ("contrast +10%", contrasted(1.1)),
    ("grayscale", lambda image: image.convert("L").convert("RGB")),
]


class TestDhash:
    @pytest.mark.parametrize("name", PHOTOS)
    @pytest.mark.parametrize(("alteration", "alter"), ALTERATIONS)
    def test_altered_copy_is_near(
        self, name: str, alteration: str, alter: Callable[[Image.Image], Image.Image]
    ) -> None:
        """A re-encoded, resized, brightened or grayscale copy is within 6 bits of the photo."""
        original = load(name)
        assert hamming(dhash(original), dhash(alter(original))) <= SAME_PICTURE_MAX_DISTANCE

    @pytest.mark.parametrize(("first", "second"), list(itertools.combinations(PHOTOS, 2)))
    def test_different_photos_are_far(self, first: str, second: str) -> None:
        """Two different photos are more than 16 bits apart."""
        assert hamming(dhash(load(first)), dhash(load(second))) >= DIFFERENT_PICTURES_MIN_DISTANCE

    def test_mirrored_photo_is_far(self) -> None:
        """A mirror image is a different picture to dHash (it hashes gradients left to right)."""
        photo = load("astronaut.png")
        mirrored = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert hamming(dhash(photo), dhash(mirrored)) >= DIFFERENT_PICTURES_MIN_DISTANCE

    @pytest.mark.parametrize(("hash_size", "bits"), [(8, 64), (16, 256), (4, 16)])
    def test_hash_size(self, hash_size: int, bits: int) -> None:
        """hash_size ** 2 bits are produced, so a hash fits its width."""
        value = dhash(load("chelsea.png"), hash_size=hash_size)
        assert 0 <= value < 1 << bits

    @pytest.mark.parametrize(
        ("gradient", "expected"),
        [
            ("left to right brighter", 0),
            ("right to left brighter", (1 << 64) - 1),
            ("flat", 0),
        ],
    )
    def test_bits_follow_gradients(self, gradient: str, expected: int) -> None:
        """A bit is set exactly where a pixel is brighter than its right-hand neighbour."""
        ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1))
        pixels = {
            "left to right brighter": ramp,
            "right to left brighter": ramp[:, ::-1],
            "flat": np.full((80, 90), 128, dtype=np.uint8),
        }[gradient]
        assert dhash(Image.fromarray(np.ascontiguousarray(pixels))) == expected

    def test_mode_does_not_matter(self) -> None:
        """RGB, RGBA and L versions of one photo hash alike (the hash is on gray)."""
        photo = load("coffee.png")
        hashes = {dhash(photo.convert(mode)) for mode in ("RGB", "RGBA", "L")}
        assert max(hamming(a, b) for a, b in itertools.product(hashes, repeat=2)) <= 1

    def test_hash_size_too_small(self) -> None:
        """A hash of fewer than 2x2 comparisons is refused."""
        with pytest.raises(ValueError):
            dhash(load("chelsea.png"), hash_size=1)


class TestHamming:
    @pytest.mark.parametrize(
        ("a", "b", "distance"),
        [
            (0, 0, 0),
            (0, 1, 1),
            (0b1010, 0b0101, 4),
            (0, (1 << 64) - 1, 64),
            (0xFFFF_0000_FFFF_0000, 0xFFFF_0000_FFFF_0001, 1),
        ],
    )
    def test_distance(self, a: int, b: int, distance: int) -> None:
        """The distance is the number of differing bits, symmetric in its arguments."""
        assert hamming(a, b) == hamming(b, a) == distance


class TestHex:
    @pytest.mark.parametrize(
        ("value", "hash_size", "text"),
        [
            (0, 8, "0000000000000000"),
            (1, 8, "0000000000000001"),
            ((1 << 64) - 1, 8, "ffffffffffffffff"),
            (0xDEADBEEF, 8, "00000000deadbeef"),
            (0xABC, 4, "0abc"),
        ],
    )
    def test_round_trip(self, value: int, hash_size: int, text: str) -> None:
        """to_hex writes fixed-width lowercase hex, and from_hex reads it back."""
        assert to_hex(value, hash_size) == text
        assert from_hex(text) == value

    def test_real_hash_round_trip(self) -> None:
        """A photo's hash survives the trip through its stored form."""
        value = dhash(load("rocket.jpg"))
        assert from_hex(to_hex(value)) == value

    @pytest.mark.parametrize("value", [-1, 1 << 64])
    def test_out_of_range(self, value: int) -> None:
        """A value that is not a 64-bit hash is refused rather than stored wrong."""
        with pytest.raises(ValueError):
            to_hex(value)


# Photos that skimage.data ships (no download needed); all of them must hash informatively.
INFORMATIVE_PHOTOS = [
    "astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "moon", "coins", "clock",
    "brick", "grass", "gravel", "hubble_deep_field", "retina", "immunohistochemistry",
    "colorwheel", "cell", "logo", "text", "checkerboard", "binary_blobs",
    "shepp_logan_phantom", "microaneurysms", "lfw_subset",
]


def decoded(data: bytes, tmp_path: Path) -> Image.Image:
    """`data` decoded the way the pipeline decodes it (JPEG draft at 256 px)."""
    from classifier.decode import DecodeLimits, decode_image

    path = tmp_path / "image"
    path.write_bytes(data)
    return decode_image(path, DecodeLimits(max_width=10_000, max_height=10_000)).image


def skimage_jpeg(name: str) -> bytes:
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # a stack of images (lfw_subset): its first
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float64)  # bool masks (horse), floats (lfw_subset)
        span = float(pixels.max() - pixels.min()) or 1.0
        pixels = (255 * (pixels - pixels.min()) / span).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class TestInformation:
    """The rule of when a hash counts, with the figures of the module docstring."""

    @pytest.mark.parametrize("name", INFORMATIVE_PHOTOS)
    def test_photos_hash_informatively(self, name: str, tmp_path: Path) -> None:
        """Every skimage photo has balance >= 18 and >= 26 decided comparisons."""
        found = perceptual_hash(decoded(skimage_jpeg(name), tmp_path))
        assert found.balance >= 18 and found.decided >= 26 and found.informative

    @pytest.mark.parametrize("name", sorted(plain_images()))
    def test_plain_images_do_not_count(self, name: str, tmp_path: Path) -> None:
        """No low-detail image passes: each fails balance (<= 6) or decided (<= 19)."""
        found = perceptual_hash(decoded(plain_images()[name], tmp_path))
        assert found.balance <= 6 or found.decided <= 19, (found.balance, found.decided)
        assert not found.informative
        assert informative_hash(decoded(plain_images()[name], tmp_path)) is None

    def test_plain_images_collide_without_the_rule(self, tmp_path: Path) -> None:
        """Why the rule exists: the flat and text images all hash within 6 bits of 0."""
        names = ["black", "white", "red", "blue jpeg", "two text lines", "lunch menu",
                 "one notice line", "terminal screenshot", "scanned page (skimage)", "gradient"]
        for name in names:
            value = dhash(decoded(plain_images()[name], tmp_path))
            assert hamming(value, 0) <= SAME_PICTURE_MAX_DISTANCE, name

    @pytest.mark.parametrize("name", ["astronaut", "rocket", "brick", "moon"])
    @pytest.mark.parametrize("quality", [95, 60, 35])
    def test_reencodes_stay_informative(self, name: str, quality: int,
                                        tmp_path: Path) -> None:
        """A re-encoded photo still passes (brick at q60: 23 decided), so copies compare."""
        image = decoded(skimage_jpeg(name), tmp_path)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        assert perceptual_hash(decoded(buffer.getvalue(), tmp_path)).informative

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(0, False), ((1 << 64) - 1, False), (0xFFF, True), (0x7FF, False),
         ((1 << 64) - 1 - 0xFFF, True), ("0000000000000000", False), ("327226e2768d6c58", True)],
    )
    def test_balance_of_stored_hashes(self, value: int | str, expected: bool) -> None:
        """A stored hash counts only with at least 12 bits differing from the majority."""
        assert balanced(value) is expected
