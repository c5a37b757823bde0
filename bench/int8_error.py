"""How far int8 ("dynamic range") open_nsfw scores are from float32 ones, on three image sets.

    python -m bench.int8_error [--blobs 480] [--search-steps 60]

The same LiteRT runtime runs both TFLite files (float32 and int8 weights) on:
- photos: scikit-image's bundled photos and crops of them;
- skin-toned: the same crops tinted toward a skin tone and blurred;
- blobs: synthetic skin-toned ellipses on random backgrounds (they score mid-range, where
  decisions are made);
- search: a random search from the blob with the largest float32 - int8 gap, adding smooth
  noise to widen it (a pessimistic probe, not a natural image).
Reported per set and per float32 score range: the largest and mean |int8 - float32| NSFW
difference, and the relative error of the pooled features. The project holds no NSFW photos,
so these sets are proxies: they are why `quantization` stays "none" by default and why
`[classifier] exact_band` keeps EXACT_MARGIN = 2x the largest difference found. Writes
"## int8 against float32".
"""

from __future__ import annotations

import argparse

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from bench.report import stamp, summary_row, write_section

SKIN = np.array([224, 172, 150], np.float32)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
          "immunohistochemistry", "camera", "cat", "page")
RANGES = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01))


def photo_sets(rng: np.random.Generator) -> tuple[list[Image.Image], list[Image.Image]]:
    """(photos and crops, the same crops tinted toward skin and blurred)."""
    import skimage.data

    photos, tinted = [], []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
        width, height = image.size
        photos.append(image)
        for _ in range(8):
            left, top = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            crop = image.crop((left, top, left + int(rng.integers(width // 4, width - left)),
                               top + int(rng.integers(height // 4, height - top))))
            photos.append(crop)
            weight = rng.uniform(0.2, 0.8)
            array = np.asarray(crop, np.float32) * (1 - weight) \
                + weight * SKIN * rng.uniform(0.6, 1.2)
            tinted.append(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
                          .filter(ImageFilter.GaussianBlur(rng.uniform(0, 4))))
    return photos, tinted


def blob(rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """A 256x256 image of one to six skin-toned (mostly) ellipses on a random background."""
    array = np.zeros((256, 256, 3), np.float32) + rng.uniform(0, 255, 3)
    rows, columns = np.mgrid[:256, :256]
    for _ in range(int(rng.integers(1, 7))):
        centre_y, centre_x = rng.uniform(0, 256, 2)
        radius_y, radius_x = rng.uniform(15, 130, 2)
        inside = ((rows - centre_y) / radius_y) ** 2 + ((columns - centre_x) / radius_x) ** 2 < 1
        colour = SKIN * rng.uniform(0.4, 1.15) if rng.random() < 0.8 else rng.uniform(0, 255, 3)
        array[inside] = colour + rng.normal(0, 10, 3)
    array += rng.normal(0, rng.uniform(0, 15), array.shape)
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 8))))


def main() -> None:
    from classifier.cache import tflite_cache_dir
    from classifier.engines import LiteRTEngine, cached_tflite
    from classifier.models import shared_open_nsfw_model
    from classifier.opennsfw import MODEL_KEY, NSFW_INDEX
    from classifier.preprocess import preprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=480)
    parser.add_argument("--search-steps", type=int, default=60)
    arguments = parser.parse_args()
    import os

    cache = tflite_cache_dir(os.environ)
    engines = {quantization: LiteRTEngine(cached_tflite(
        shared_open_nsfw_model, cache, quantization, model_key=MODEL_KEY),  # type: ignore[arg-type]
        batch_size=16) for quantization in ("none", "dynamic_range")}

    def scores(images: list[Image.Image] | npt.NDArray[np.float32]) -> tuple[
            npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        batch = images if isinstance(images, np.ndarray) else \
            np.stack([preprocess(image) for image in images])
        exact, int8 = engines["none"].run(batch), engines["dynamic_range"].run(batch)
        relative = (np.linalg.norm(int8.features - exact.features, axis=1)
                    / np.maximum(np.linalg.norm(exact.features, axis=1), 1e-9))
        return (exact.probabilities[:, NSFW_INDEX], int8.probabilities[:, NSFW_INDEX],
                relative)

    rng = np.random.default_rng(20261201)
    photos, tinted = photo_sets(rng)
    blobs = [blob(rng) for _ in range(arguments.blobs)]
    sets = {"photos": scores(photos), "skin-toned": scores(tinted),
            "blobs": scores([Image.fromarray(pixels) for pixels in blobs])}
    # Pessimistic probe: widen the largest float32 - int8 gap of the blobs with smooth noise.
    exact, int8, _ = sets["blobs"]
    start = int(np.argmax(exact - int8))
    current = blobs[start].astype(np.float32)
    best = float(exact[start] - int8[start])
    for _ in range(arguments.search_steps):
        candidates = []
        for _ in range(8):
            side = int(rng.choice([4, 8, 16]))
            noise = np.asarray(Image.fromarray(rng.normal(0, 1, (side, side, 3)).astype(np.float32)
                                               .mean(axis=2)).resize((256, 256),
                                                                     Image.Resampling.BILINEAR))
            candidates.append(np.clip(current + noise[:, :, None] * rng.uniform(1, 12), 0, 255)
                              .astype(np.uint8))
        found_exact, found_int8, _ = scores([Image.fromarray(c) for c in candidates])
        gaps = found_exact - found_int8
        if float(gaps.max()) > best:
            best = float(gaps.max())
            current = candidates[int(np.argmax(gaps))].astype(np.float32)
    sets["search"] = scores([Image.fromarray(current.astype(np.uint8))])
    lines = ["## int8 against float32", "",
             stamp(f"python -m bench.int8_error --blobs {arguments.blobs} "
                   f"--search-steps {arguments.search_steps}"), "",
             "Both TFLite files of open_nsfw on LiteRT, same inputs. |delta| is |int8 - float32| "
             "NSFW probability; features: relative L2 error of the pooled [1024] vector. See "
             "bench/int8_error.py for the sets (the project holds no NSFW photos: these are "
             "proxies).", "",
             "| set | images | max |delta| | mean |delta| | max |delta| where float32 score is in "
             "[0.3, 0.9] | features: median / max relative error |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for name, (exact, int8, relative) in sets.items():
        delta = np.abs(int8 - exact)
        worst = max(worst, float(delta.max()))
        middle = delta[(exact >= 0.3) & (exact <= 0.9)]
        lines.append(f"| {name} | {len(delta)} | {delta.max():.4f} | {delta.mean():.4f} | "
                     f"{(f'{middle.max():.4f} ({len(middle)})' if len(middle) else '-')} | "
                     f"{np.median(relative):.3f} / {relative.max():.3f} |")
    lines += ["", "By float32 score range, every set together:", "",
              "| float32 NSFW score | images | max |delta| | mean |delta| |", "|---|---|---|---|"]
    exact_all = np.concatenate([values[0] for values in sets.values()])
    delta_all = np.abs(np.concatenate([values[1] for values in sets.values()]) - exact_all)
    for low, high in RANGES:
        inside = (exact_all >= low) & (exact_all < high)
        if inside.any():
            lines.append(f"| [{low:.1f}, {min(high, 1.0):.1f}) | {int(inside.sum())} | "
                         f"{delta_all[inside].max():.4f} | {delta_all[inside].mean():.4f} |")
    from classifier.exact_band import EXACT_MARGIN

    lines += ["", (f"Largest difference found: {worst:.3f}; `EXACT_MARGIN` is {EXACT_MARGIN:g} "
                   f"({EXACT_MARGIN / worst:.1f}x it). float32 stays the default "
                   "(`quantization = \"none\"`)."), "",
              summary_row("int8 vs float32 NSFW score, largest |delta| (proxy sets)",
                          f"{worst:.3f}", "float32", "-", f"< {EXACT_MARGIN:g}",
                          "yes" if worst < EXACT_MARGIN else "no")]
    print("\n".join(lines))
    write_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
