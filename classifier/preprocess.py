"""Preprocessing of a decoded image into open_nsfw's input: the one implementation.

Serving and training both call `preprocess`, so a model never sees inputs prepared two ways.
It reproduces Yahoo's reference pipeline step by step, and each step matters for the scores:
RGB; Pillow bilinear resize to 256x256 (aspect ratio not kept); centre crop to 224x224; a JPEG
round-trip of the crop at Pillow quality 75 (the reference model was trained on JPEG-decoded
pixels, and skipping it shifts scores by up to 0.12); RGB -> BGR; subtract the Caffe mean.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from classifier.base import INPUT_SIZE
from classifier.errors import DecodeError
from storage.pixels import to_rgb

RESIZE_SIZE = 256
CROP_OFFSET = (RESIZE_SIZE - INPUT_SIZE) // 2
JPEG_QUALITY = 75
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)

PREPROCESSING_NAME = "open_nsfw_reference_v1"
PREPROCESSING_DESCRIPTION: dict[str, object] = {
    "name": PREPROCESSING_NAME,
    "color": "RGB",
    "resize": [RESIZE_SIZE, RESIZE_SIZE],
    "resample": "bilinear",
    "crop": [CROP_OFFSET, CROP_OFFSET, CROP_OFFSET + INPUT_SIZE, CROP_OFFSET + INPUT_SIZE],
    "jpeg_round_trip_quality": JPEG_QUALITY,
    "channel_order": "BGR",
    "mean_bgr": MEAN_BGR.tolist(),
}


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """Turn a decoded image into the model input, float32 [224, 224, 3], BGR minus the mean.

    Any mode and bit depth is accepted and converted to 8-bit RGB by `storage.pixels.to_rgb`
    (alpha is dropped, as in the reference). Thread-safe: the input image is not modified.
    """
    rgb = to_rgb(image, composite_alpha=False)
    resized = rgb.resize((RESIZE_SIZE, RESIZE_SIZE), resample=Image.Resampling.BILINEAR)
    crop = resized.crop(
        (CROP_OFFSET, CROP_OFFSET, CROP_OFFSET + INPUT_SIZE, CROP_OFFSET + INPUT_SIZE)
    )
    with io.BytesIO() as buffer:
        crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        buffer.seek(0)
        with Image.open(buffer) as round_tripped:
            pixels = np.asarray(round_tripped.convert("RGB"), dtype=np.float32)
    bgr = pixels[:, :, ::-1] - MEAN_BGR
    return np.ascontiguousarray(bgr, dtype=np.float32)


def open_image(data: bytes, *, draft: bool = False, path: str | None = None) -> Image.Image:
    """Decode image bytes into a loaded RGB image (first frame).

    With `draft`, a JPEG is decoded at the smallest DCT scale that keeps both sides at least
    256 px (`Image.draft`), which is much cheaper for large photos; see bench/BENCHMARKS.md
    for the score shift. Pillow's errors become DecodeError naming `path`.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft("RGB", (RESIZE_SIZE, RESIZE_SIZE))
        image.load()
        return to_rgb(image, composite_alpha=False)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DecodeError("undecodable", str(error), path) from error


def preprocess_bytes(
    data: bytes, *, draft: bool = False, path: str | None = None
) -> npt.NDArray[np.float32]:
    """`preprocess` of encoded image bytes (see `open_image` for `draft`)."""
    return preprocess(open_image(data, draft=draft, path=path))


def preprocess_file(path: Path, *, draft: bool = False) -> npt.NDArray[np.float32]:
    """`preprocess` of an image file; unreadable or undecodable files raise DecodeError."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DecodeError("unreadable", str(error), str(path)) from error
    return preprocess_bytes(data, draft=draft, path=str(path))
