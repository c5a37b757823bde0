"""Perceptual hashing for near-duplicate detection (dHash, the difference hash).

The image is reduced to grayscale `(hash_size + 1) x hash_size` pixels; each bit says whether
a pixel is brighter than its right-hand neighbour. Re-encoding, resizing and mild brightness
or contrast changes keep the gradients' signs, so copies stay a few bits apart while different
pictures land near half the bits (32 of 64) apart. Compare hashes with `hamming`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def dhash(image: Image.Image, hash_size: int = 8) -> int:
    """The difference hash of `image`: `hash_size` ** 2 bits (64 by default), row-major.

    Bit order: the first row's leftmost comparison is the most significant bit.
    """
    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}")
    gray = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.int16)
    brighter = (pixels[:, :-1] > pixels[:, 1:]).flatten()
    value = 0
    for bit in brighter:
        value = (value << 1) | int(bit)
    return value


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


__all__ = ["dhash", "from_hex", "hamming", "to_hex"]
