"""`seed2017`: the 2017 network end to end, multi-label, for large datasets and a GPU.

The CNN of the talk "NSFW image detection with TensorFlow" (2017), one sigmoid per tag:

    256×256×3 → conv3×3×64 SAME, conv3×3×64, BN, maxpool
              → conv3×3×128 ×2, BN, maxpool → conv3×3×256 ×2, BN, maxpool
              → conv1×1×64 → fc 768 ReLU, dropout → one sigmoid per tag

keras-io style: `make_model(tags)` with the Functional API and the augmentation (flip,
translation, contrast) inside the model, active only while training; a `tf.data` pipeline
reads the images from the store. Images labelled for some tags only are fine: the loss is
masked where a tag has no label.

Preprocessing: at `image_size` 224 it is `classifier.preprocess` itself. At other sizes
(the 2017 default, 256) it is the documented variant `seed2017_resize_v1`: RGB, Pillow
bilinear resize of the whole image to image_size² (no crop, no JPEG round trip), RGB → BGR,
minus the same Caffe mean — the same pixel scale as open_nsfw's input.

A version is saved in the registry layout — `models/<version>/` with `model.keras` and a
`metadata.json` (architecture "seed2017") — written under a temporary name and renamed.
The daemon serves `heads` versions; a seed2017 version is listed, evaluated and exportable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog
from PIL import Image

from classifier.base import INPUT_SIZE
from classifier.decode import DecodeLimits, decode_image
from classifier.errors import ModelError
from classifier.preprocess import (
    MEAN_BGR,
    PREPROCESSING_DESCRIPTION,
    RESIZE_SIZE,
    preprocess,
)
from classifier.training.dataset import check_minimums, collect_labels
from classifier.training.evaluate import stratified_split, tag_metrics
from storage.errors import UnknownMediaError
from storage.placement import DataLayout, staged_directory

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from classifier.training.trainer import TrainingReport, TrainingRequest

log = structlog.get_logger("megane.training")

ARCHITECTURE = "seed2017"
FORMAT_VERSION = 1
MODEL_FILENAME = "model.keras"
METADATA_FILENAME = "metadata.json"
DEFAULT_IMAGE_SIZE = 256
LEARNING_RATE = 1e-3
UNLABELLED = -1.0
VARIANT_NAME = "seed2017_resize_v1"


def preprocessing_description(image_size: int) -> dict[str, object]:
    if image_size == INPUT_SIZE:
        return dict(PREPROCESSING_DESCRIPTION)
    return {"name": VARIANT_NAME, "color": "RGB", "resize": [image_size, image_size],
            "resample": "bilinear", "crop": None, "jpeg_round_trip_quality": None,
            "channel_order": "BGR", "mean_bgr": MEAN_BGR.tolist()}


def preprocess_for(image: Image.Image, image_size: int) -> npt.NDArray[np.float32]:
    """The model input of one decoded image (see the module docstring)."""
    if image_size == INPUT_SIZE:
        return preprocess(image)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    resized = rgb.resize((image_size, image_size), resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1] - MEAN_BGR, dtype=np.float32)


def masked_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy averaged over the labelled tags of each image (-1 = no label)."""
    from keras import ops

    mask = ops.cast(ops.greater_equal(y_true, 0.0), "float32")
    target = ops.clip(y_true, 0.0, 1.0)
    predicted = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    loss = -(target * ops.log(predicted) + (1.0 - target) * ops.log(1.0 - predicted))
    return ops.sum(loss * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


def make_model(tags: Sequence[str], image_size: int = DEFAULT_IMAGE_SIZE,
               dropout: float = 0.5) -> keras.Model:
    """The 2017 network: preprocessed BGR image → one sigmoid score per tag ("scores")."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.RandomFlip("horizontal", name="augment_flip")(inputs)
    x = layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", name="augment_shift")(x)
    x = layers.RandomContrast(0.2, value_range=(-128, 152), name="augment_contrast")(x)
    x = layers.Rescaling(1.0 / 128.0, name="scale")(x)  # mean-subtracted pixels → about ±1
    for filters, name in ((64, "1"), (128, "2"), (256, "3")):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          name=f"conv{name}_1")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          name=f"conv{name}_2")(x)
        x = layers.BatchNormalization(name=f"bn{name}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{name}")(x)
    x = layers.Conv2D(64, 1, activation="relu", name="conv4_reduce")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(768, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(tags), activation="sigmoid", name="scores")(x)
    return keras.Model(inputs, outputs, name="seed2017")


def make_dataset(
    paths: Sequence[str], targets: npt.NDArray[np.float32], image_size: int, batch_size: int,
    *, shuffle: bool, seed: int, jpeg_draft: bool = True, limits: DecodeLimits | None = None,
) -> tf.data.Dataset:
    """(image, targets) batches decoded from the store in parallel, prefetched."""
    import tensorflow as tf

    limits = limits or DecodeLimits()
    draft = (RESIZE_SIZE, RESIZE_SIZE) if jpeg_draft else None

    def load(path: bytes) -> npt.NDArray[np.float32]:
        return preprocess_for(decode_image(Path(path.decode()), limits,
                                           draft_size=draft).image, image_size)

    def read(path: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(load, [path], tf.float32)
        return tf.ensure_shape(image, (image_size, image_size, 3)), target

    dataset = tf.data.Dataset.from_tensor_slices((list(paths), targets))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return (dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


# -- the registry -----------------------------------------------------------------------


def save_seed2017(models_dir: Path, version: str, model: keras.Model, tags: Sequence[str],
                  metadata: dict[str, Any], *, image_size: int,
                  created_at: datetime | None = None) -> Path:
    """Write `models/<version>/` (model.keras + metadata.json) atomically; never overwrites."""
    from classifier.models import _check_version_name

    _check_version_name(version)
    root = Path(models_dir)
    folder = root / version
    if folder.exists():
        raise ModelError(f"{folder}: model version {version!r} already exists")
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    document = {
        **metadata,
        "format": FORMAT_VERSION, "version": version, "architecture": ARCHITECTURE,
        "tags": list(tags), "image_size": image_size,
        "preprocessing": preprocessing_description(image_size),
        "created_at": created.isoformat(timespec="seconds"),
    }
    with staged_directory(folder, 0o755) as staging:
        model.save(staging / MODEL_FILENAME)
        (staging / METADATA_FILENAME).write_text(
            json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def read_seed2017_metadata(folder: Path) -> dict[str, Any] | None:
    """A seed2017 version's metadata.json, or None when the folder is not one."""
    try:
        metadata = json.loads((Path(folder) / METADATA_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metadata, dict) or metadata.get("architecture") != ARCHITECTURE:
        return None
    return metadata


def load_seed2017(models_dir: Path, version: str) -> tuple[dict[str, Any], keras.Model]:
    """(metadata, model) of a saved seed2017 version; ModelError names the folder at fault."""
    import keras

    folder = Path(models_dir) / version
    metadata = read_seed2017_metadata(folder)
    if metadata is None:
        raise ModelError(f"{folder}: not a seed2017 model version")
    try:
        model = keras.saving.load_model(folder / MODEL_FILENAME, compile=False)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder / MODEL_FILENAME}: cannot load: {error}") from error
    if model.outputs[0].shape[-1] != len(metadata["tags"]):
        raise ModelError(f"{folder}: the model has {model.outputs[0].shape[-1]} outputs "
                         f"for {len(metadata['tags'])} tags")
    return metadata, model


# -- training ---------------------------------------------------------------------------


async def train_seed2017(
    catalogue: Any, layout: DataLayout, request: TrainingRequest, *, version: str,
    now: datetime, progress: bool | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
) -> TrainingReport:
    """Train the 2017 network on the labelled images in the store; save and evaluate it."""
    import asyncio

    from classifier.training.trainer import TrainingReport

    started = time.monotonic()
    settings = request.settings
    label_set = await collect_labels(catalogue, tags=request.tags, aliases=request.aliases,
                                     use_source_labels=settings.use_source_labels)
    check_minimums(label_set, settings)
    tags = list(label_set.tags)
    paths: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for sha256 in sorted(label_set.images()):
        try:
            blob = await catalogue.get_blob(sha256)
        except UnknownMediaError:
            skipped[sha256] = "unknown_image"
            continue
        path = layout.content_file(sha256, blob.extension)
        if path is None:
            skipped[sha256] = "no_file"
        else:
            paths[sha256] = str(path)
    holdout: set[str] = set()
    for tag, labels in label_set.tags.items():
        human = {sha: value for sha, value in labels.human.items() if sha in paths}
        holdout.update(stratified_split(human, settings.holdout_fraction, settings.seed, tag)[1])
    names = sorted(paths)
    targets = np.full((len(names), len(tags)), UNLABELLED, np.float32)
    for row, sha256 in enumerate(names):
        for column, tag in enumerate(tags):
            value = label_set.tags[tag].all.get(sha256)
            if value is not None:
                targets[row, column] = float(value)
    train_rows = [row for row, sha in enumerate(names) if sha not in holdout]
    holdout_rows = [row for row, sha in enumerate(names) if sha in holdout]
    model, metrics = await asyncio.to_thread(
        _fit_and_evaluate, tags, names, paths, targets, train_rows, holdout_rows, label_set,
        request, image_size, progress)
    seconds = time.monotonic() - started
    folder = await asyncio.to_thread(
        save_seed2017, layout.models, version, model, tags,
        {"metrics": metrics,
         "training": {"architecture": ARCHITECTURE, "settings": dataclasses.asdict(settings),
                      "seconds": round(seconds, 3), "images": len(names),
                      "learning_rate": LEARNING_RATE, "skipped_images": len(skipped)},
         "evaluation": {"split": "stratified per tag, human labels only",
                        "holdout_fraction": settings.holdout_fraction, "seed": settings.seed,
                        "target_precision": settings.target_precision}},
        image_size=image_size, created_at=now)
    log.info("model_trained", version=version, architecture=ARCHITECTURE, tags=tags,
             seconds=round(seconds, 2))
    return TrainingReport(version, folder, ARCHITECTURE, metrics, seconds, skipped)


def _fit_and_evaluate(
    tags: list[str], names: list[str], paths: dict[str, str],
    targets: npt.NDArray[np.float32], train_rows: list[int], holdout_rows: list[int],
    label_set: Any, request: TrainingRequest, image_size: int, progress: bool | None,
) -> tuple[keras.Model, dict[str, dict[str, Any]]]:
    import keras

    from classifier.training.features import _progress

    settings = request.settings
    keras.utils.set_random_seed(settings.seed)
    model = make_model(tags, image_size)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=masked_binary_crossentropy)

    def dataset(rows: list[int], shuffle: bool) -> Any:
        return make_dataset([paths[names[row]] for row in rows], targets[rows], image_size,
                            settings.batch_size, shuffle=shuffle, seed=settings.seed,
                            jpeg_draft=request.jpeg_draft, limits=request.limits)

    validation = dataset(holdout_rows, False) if holdout_rows else None
    with _progress(progress) as bar:
        task = bar.add_task("seed2017 epochs", total=settings.epochs)

        class Advance(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                bar.advance(task)

        model.fit(dataset(train_rows, True), validation_data=validation,
                  epochs=settings.epochs, verbose=0, callbacks=[Advance()],
                  shuffle=False)  # tf.data shuffles
    metrics: dict[str, dict[str, Any]] = {}
    predicted = (model.predict(validation, verbose=0) if validation is not None
                 else np.zeros((0, len(tags))))
    for column, tag in enumerate(tags):
        human = label_set.tags[tag].human
        rows = [(index, human[names[row]]) for index, row in enumerate(holdout_rows)
                if names[row] in human]
        counts = label_set.tags[tag].counts()
        truth = [value for _, value in rows]
        if any(truth):
            scores = np.array([predicted[index, column] for index, _ in rows], np.float64)
            result = tag_metrics(truth, scores, request.thresholds.get(tag, 0.5),
                                 target_precision=settings.target_precision)
        else:
            result = {"average_precision": None, "precision": None, "recall": None,
                      "threshold": request.thresholds.get(tag, 0.5),
                      "note": "no held-out human positives: not evaluated"}
        metrics[tag] = result | {"counts": counts | {"holdout": len(rows)}}
    return model, metrics
