"""`megane models export-tflite VERSION`: one .tflite for edge devices, checked against TF.

A `heads` version becomes one network: open_nsfw, its NSFW probability, and the heads as
one sigmoid Dense layer on the pooled features, concatenated into `scores` [N, 1 + T] in
the order of metadata.json's `tags` (nsfw first). A seed2017 version is its own network.
The file is written as `models/<version>/model.tflite` (temporary name, then renamed), and
its outputs are compared with the TensorFlow model's on a few real images from the store.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from classifier.base import INPUT_SIZE
from classifier.decode import DecodeLimits, decode_image
from classifier.engines import convert_to_tflite
from classifier.errors import ClassifierError, ModelError
from classifier.preprocess import RESIZE_SIZE
from storage.placement import PRIVATE_FILE_MODE, write_file_atomic

if TYPE_CHECKING:
    import keras

TFLITE_FILENAME = "model.tflite"
PARITY_IMAGES = 4
PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportReport:
    version: str
    path: Path
    bytes: int
    images: int
    image_source: str
    max_abs_difference: float
    tags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "path": str(self.path), "bytes": self.bytes,
                "parity_images": self.images, "image_source": self.image_source,
                "max_abs_difference": self.max_abs_difference, "tags": list(self.tags),
                "within_tolerance": self.max_abs_difference <= PARITY_TOLERANCE}


def make_serving_model(heads_tags: Sequence[str], weights: npt.NDArray[np.float32],
                       biases: npt.NDArray[np.float32]) -> keras.Model:
    """open_nsfw + heads as one network: image → scores [N, 1 + T] (nsfw first)."""
    import keras
    from keras import layers

    from classifier.models import shared_open_nsfw_model
    from classifier.opennsfw import NSFW_INDEX

    backbone = shared_open_nsfw_model()
    inputs = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), name="input")
    probabilities, features = backbone(inputs)
    nsfw = layers.Lambda(lambda p: p[:, NSFW_INDEX : NSFW_INDEX + 1], name="nsfw")(probabilities)
    if not len(heads_tags):
        return keras.Model(inputs, nsfw, name="megane_scores")
    dense = layers.Dense(len(heads_tags), activation="sigmoid", name="heads")
    tag_scores = dense(features)
    dense.set_weights([np.asarray(weights, np.float32).T, np.asarray(biases, np.float32)])
    scores = layers.Concatenate(name="scores")([nsfw, tag_scores])
    return keras.Model(inputs, scores, name="megane_scores")


def run_tflite(path: Path, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(batch.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(batch, np.float32))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def sample_images(store: Path, count: int, image_size: int,
                  limits: DecodeLimits | None = None) -> tuple[npt.NDArray[np.float32], str]:
    """Up to `count` stored images, preprocessed; synthetic ones when the store is empty."""
    from classifier.training.seed2017 import preprocess_for

    limits = limits or DecodeLimits()
    tensors = []
    if store.is_dir():
        for path in sorted(item for item in store.rglob("*") if item.is_file()):
            try:
                image = decode_image(path, limits, draft_size=(RESIZE_SIZE, RESIZE_SIZE)).image
            except (ClassifierError, OSError):
                continue
            tensors.append(preprocess_for(image, image_size))
            if len(tensors) >= count:
                break
    if tensors:
        return np.stack(tensors), "store"
    generator = np.random.default_rng(2017)
    return (generator.uniform(-123, 151, (count, image_size, image_size, 3))
            .astype(np.float32), "synthetic (the store is empty)")


def export_tflite(models_dir: Path, version: str, store: Path) -> ExportReport:
    """Write `models/<version>/model.tflite` and compare it with TensorFlow (blocking)."""
    from classifier.models import read_model_version
    from classifier.training.seed2017 import load_seed2017, read_seed2017_metadata

    folder = Path(models_dir) / version
    if read_seed2017_metadata(folder) is not None:
        metadata, model = load_seed2017(models_dir, version)
        image_size = int(metadata["image_size"])
        tags = tuple(metadata["tags"])
    else:
        metadata, heads = read_model_version(Path(models_dir), version)
        if not folder.is_dir():
            raise ModelError(f"{version}: only a saved version can be exported "
                             "(train one with `megane train`)")
        model = make_serving_model(heads.tags, heads.weights, heads.biases)
        image_size = INPUT_SIZE
        tags = tuple(metadata["tags"])
    flatbuffer = convert_to_tflite(model, image_size=image_size)
    path = folder / TFLITE_FILENAME
    try:
        write_file_atomic(path, flatbuffer, PRIVATE_FILE_MODE)
    except OSError as error:
        raise ModelError(f"{path}: cannot write: {error}") from error
    batch, source = sample_images(store, PARITY_IMAGES, image_size)
    expected = np.asarray(model(batch, training=False), dtype=np.float32)
    actual = run_tflite(path, batch)
    difference = float(np.max(np.abs(expected - actual)))
    return ExportReport(version, path, len(flatbuffer), len(batch), source,
                        difference, tags)


def export_command(config: Any, version: str, *, as_json: bool) -> int:
    """`megane models export-tflite VERSION` (config: crawler.config.Config)."""
    from storage.placement import DataLayout

    layout = DataLayout(config.data_dir)
    try:
        report = export_tflite(layout.models, version, layout.store)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        verdict = "ok" if report.max_abs_difference <= PARITY_TOLERANCE else "MISMATCH"
        print(f"{report.path}: {report.bytes} bytes, outputs {', '.join(report.tags)}; "
              f"max |TFLite - TensorFlow| = {report.max_abs_difference:.2e} on "
              f"{report.images} {report.image_source} images: {verdict}")
    return 0 if report.max_abs_difference <= PARITY_TOLERANCE else 2
