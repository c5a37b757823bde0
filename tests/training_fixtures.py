"""A small real labelled set for training tests: photos versus generated pictures.

Positives are real photos bundled with scikit-image and crops, flips, rotations and colour
jitters of them; negatives are generated pictures (noise, gradients, stripes, shapes).
Images are stored like the daemon stores them: a catalogue row, a file in the store, filed
in the library.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from storage.catalogue import Catalogue
from storage.placement import DataLayout, place
from storage.records import MediaRef, Placement

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")
IMAGE_SIZE = (128, 128)


@functools.cache
def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def photo_variants(count: int, seed: int = 1) -> list[Image.Image]:
    """`count` real photos: originals, crops, flips, rotations and colour jitters."""
    generator = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = _photo(PHOTO_NAMES[index % len(PHOTO_NAMES)])
        variant = index // len(PHOTO_NAMES)
        width, height = image.size
        if variant % 4 == 1:
            scale = generator.uniform(0.6, 0.85)
            left = int(generator.uniform(0, width * (1 - scale)))
            top = int(generator.uniform(0, height * (1 - scale)))
            image = image.crop((left, top, left + int(width * scale), top + int(height * scale)))
        elif variant % 4 == 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif variant % 4 == 3:
            image = image.rotate(90, expand=True)
        if variant:
            image = ImageEnhance.Color(image).enhance(generator.uniform(0.6, 1.4))
            image = ImageEnhance.Brightness(image).enhance(generator.uniform(0.8, 1.2))
        images.append(image.resize(IMAGE_SIZE, Image.Resampling.BILINEAR))
    return images


def generated_pictures(count: int, seed: int = 2) -> list[Image.Image]:
    """`count` synthetic pictures: noise, gradients, stripes and flat shapes."""
    generator = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    images = []
    for index in range(count):
        kind = index % 4
        colour = tuple(int(c) for c in generator.integers(0, 256, 3))
        if kind == 0:
            pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
        elif kind == 1:
            ramp = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
            start, end = generator.uniform(0, 255, 3), generator.uniform(0, 255, 3)
            image = Image.fromarray((start + (end - start) * ramp).astype(np.uint8))
        elif kind == 2:
            period = int(generator.integers(4, 24))
            stripes = ((np.arange(width) // period) % 2)[None, :, None] * np.ones((height, 1, 3))
            image = Image.fromarray((stripes * np.array(colour)).astype(np.uint8))
        else:
            image = Image.new("RGB", IMAGE_SIZE, colour)
            draw = ImageDraw.Draw(image)
            for _ in range(4):
                box = (sorted(generator.integers(0, width, 2)),
                       sorted(generator.integers(0, height, 2)))
                shape_colour = tuple(int(c) for c in generator.integers(0, 256, 3))
                draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=shape_colour)
        images.append(image)
    return images


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def store_image(catalogue: Catalogue, layout: DataLayout, image: Image.Image, url: str,
                      *, now: float = 1000.0, source_tags: Sequence[str] = ()) -> str:
    """Store an image as the daemon would (row, store file, library); returns its sha256."""
    data = jpeg_bytes(image)
    sha256 = hashlib.sha256(data).hexdigest()
    [row] = await catalogue.add_media([MediaRef(url=url, source="test",
                                                tags=tuple(source_tags))], now)
    layout.ensure()
    layout.spool_file(sha256).write_bytes(data)
    await catalogue.record_download(row.id, sha256, len(data), now)
    await catalogue.record_decoded(row.id, sha256, format="JPEG", width=image.width,
                                   height=image.height, extension=".jpg", phash=None, now=now)
    await asyncio.to_thread(place, layout, sha256, ".jpg", Placement.LIBRARY, ())
    await catalogue.record_placement(sha256, Placement.LIBRARY, "test", (), now,
                                     media_id=row.id)
    return sha256


async def labelled_set(catalogue: Catalogue, layout: DataLayout, tag: str, positives: int,
                       negatives: int) -> tuple[list[str], list[str]]:
    """Store photos labelled `tag`=yes and generated pictures labelled `tag`=no."""
    yes, no = [], []
    for index, image in enumerate(photo_variants(positives)):
        sha = await store_image(catalogue, layout, image, f"https://example.org/p{index}.jpg")
        await catalogue.add_label(sha, tag, True, origin="human", who="test", now=1000.0)
        yes.append(sha)
    for index, image in enumerate(generated_pictures(negatives)):
        sha = await store_image(catalogue, layout, image, f"https://example.org/n{index}.jpg")
        await catalogue.add_label(sha, tag, False, origin="human", who="test", now=1000.0)
        no.append(sha)
    return yes, no
