"""Perceptual hashing for near-duplicate detection (dHash, the difference hash).

The image is reduced to grayscale `(hash_size + 1) x hash_size` pixels; each bit says whether
a pixel is brighter than its right-hand neighbour. Re-encoding, resizing and mild brightness
or contrast changes keep the gradients' signs, so copies stay a few bits apart while different
pictures land near half the bits (32 of 64) apart. Compare hashes with `hamming`.

Our own dHash rather than `imagehash.dhash`: the catalogue stores these hashes (and blocked
ones), and imagehash compares the other way round (bits inverted), so switching would make
every stored hash incomparable with new ones.

**When a hash counts.** A low-detail image (a flat colour, black, a few lines of text, a
scanned page, a smooth gradient) has no picture for the hash to describe: its bits are all
equal (a flat or evenly lit image hashes to 0) or set by tiny, noise-level differences, so
unrelated plain images land within a few bits of each other. A hash is only used for
near-duplicates (and for blocking after a delete or an NSFW confirm) when it is
*informative*:

1. balanced: at least `MIN_BALANCE` (12) of the 64 bits differ from the majority bit
   (`min(ones, zeros) >= 12`), and
2. decided: at least `MIN_DECIDED` (22) of the 64 comparisons are between pixels at least
   `DECIDED_CONTRAST` (2) grey levels of 255 apart in the 9x8 thumbnail.

Measured (tests/test_phash.py, TestInformation; JPEG q90, decoded as the pipeline does):
24 skimage.data photos have balance 18-32 and 26-64 decided comparisons (lowest: brick, a
low-contrast wall texture, 18 and 26, and 23 decided after a JPEG q60 re-encode; cell
27/27; the rest at least 20 and 46). Low-detail images: flat colours and black 0/0; lines of
black text on white 3-6/6-8; a white-on-black
screenshot 6/6; skimage's scanned page (lit unevenly, left to right) 0/64; left-to-right and
top-to-bottom gradients 0; noisy synthetic scans 16-19/3-19; centred text cards 12-14/17-19;
flat grey with noise 13/0. Flat, text and unevenly lit images fail the balance (at most 6,
photos at least 18); scans, text cards and noise fail the decided count (at most 19, photos
at least 23). A photo that fails only loses near-duplicate detection, never storage, which
is the cheap side to err on. The first rule alone depends only on the hash, so it also
applies to hashes stored before the second existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_BALANCE = 12
MIN_DECIDED = 22
DECIDED_CONTRAST = 2


@dataclass(frozen=True)
class PerceptualHash:
    """A dHash and how many of its bits were decided by a clear brightness difference."""

    value: int
    decided: int
    bits: int = 64

    @property
    def balance(self) -> int:
        """How many bits differ from the majority bit: 0 (all equal) to bits / 2."""
        return bit_balance(self.value, self.bits)

    @property
    def informative(self) -> bool:
        """Whether the hash describes a picture (see the module docstring for the rule)."""
        return self.balance >= MIN_BALANCE and self.decided >= MIN_DECIDED


def perceptual_hash(image: Image.Image, hash_size: int = 8) -> PerceptualHash:
    """The difference hash of `image` with its decided-comparison count.

    Bit order: the first row's leftmost comparison is the most significant bit.
    """
    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}")
    gray = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.int16)
    difference = pixels[:, :-1] - pixels[:, 1:]
    value = 0
    for bit in (difference > 0).flatten():
        value = (value << 1) | int(bit)
    decided = int((np.abs(difference) >= DECIDED_CONTRAST).sum())
    return PerceptualHash(value, decided, hash_size * hash_size)


def dhash(image: Image.Image, hash_size: int = 8) -> int:
    """The difference hash of `image`: `hash_size` ** 2 bits (64 by default), row-major."""
    return perceptual_hash(image, hash_size).value


def informative_hash(image: Image.Image) -> str | None:
    """The stored form (`to_hex`) of the image's dHash, or None when the hash does not count."""
    found = perceptual_hash(image)
    return to_hex(found.value) if found.informative else None


def bit_balance(value: int, bits: int = 64) -> int:
    """min(ones, zeros) of a `bits`-bit hash."""
    ones = value.bit_count()
    return min(ones, bits - ones)


def balanced(value: int | str, bits: int = 64) -> bool:
    """The part of the rule a stored hash can be checked by alone: balance >= MIN_BALANCE."""
    number = from_hex(value) if isinstance(value, str) else value
    return bit_balance(number, bits) >= MIN_BALANCE


def hamming(a: int, b: int) -> int:
    """How many bits differ between hashes `a` and `b`."""
    return (a ^ b).bit_count()


def to_hex(value: int, hash_size: int = 8) -> str:
    """A fixed-width lowercase hex string of a hash (16 digits for 64 bits), for storage."""
    digits = (hash_size * hash_size + 3) // 4
    if value < 0 or value.bit_length() > hash_size * hash_size:
        raise ValueError(f"not a {hash_size * hash_size}-bit hash: {value}")
    return format(value, f"0{digits}x")


def from_hex(text: str) -> int:
    """The hash stored as `to_hex` wrote it."""
    return int(text, 16)


__all__ = [
    "DECIDED_CONTRAST",
    "MIN_BALANCE",
    "MIN_DECIDED",
    "PerceptualHash",
    "balanced",
    "bit_balance",
    "dhash",
    "from_hex",
    "hamming",
    "informative_hash",
    "perceptual_hash",
    "to_hex",
]
