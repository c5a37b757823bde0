"""The model registry: saved model versions, and loading one as a ready `Classifier`.

A model version is open_nsfw (the NSFW probability and the pooled features) plus one logistic
head per trained tag on those features. `builtin` is open_nsfw alone. A trained version is a
folder `models/<version>/` holding:

- `heads.npz`: `tags` [T] (str), `weights` [T, 1024] and `biases` [T] (float32); the score of
  tag t is sigmoid(features . weights[t] + biases[t]);
- `metadata.json`: `format`, `version`, `architecture`, `base_model` (with the ONNX sha256),
  `tags` ("nsfw" first, then the head tags in order), `preprocessing` (must match
  `classifier.preprocess`), `created_at` (ISO 8601, UTC), and whatever else the trainer adds
  (e.g. `metrics`).

Folders are written under a temporary name and renamed into place, so a version is either
complete or absent. The Keras network is built once per process (it takes seconds) and shared
by every classifier loaded afterwards, e.g. when a new version is promoted.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from classifier.base import FEATURE_SIZE, ClassifyResult
from classifier.cache import tflite_cache_dir
from classifier.engines import (
    DeviceName,
    Engine,
    EngineName,
    Quantization,
    make_engine,
)
from classifier.errors import InferenceError, ModelError
from classifier.opennsfw import MODEL_KEY, NSFW_INDEX, ONNX_SHA256
from storage.atomic import staged_directory
from storage.placement import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from classifier.preprocess import PREPROCESSING_DESCRIPTION, PREPROCESSING_NAME

if TYPE_CHECKING:
    import keras

BUILTIN_VERSION = "builtin"
NSFW_TAG = "nsfw"
ARCHITECTURE = "open_nsfw+logistic_heads"
SEED2017_ARCHITECTURE = "seed2017"  # classifier.training.seed2017.ARCHITECTURE
FORMAT_VERSION = 1
METADATA_FILENAME = "metadata.json"
HEADS_FILENAME = "heads.npz"
BUILTIN_CREATED_AT = "2016-09-30T00:00:00+00:00"  # Yahoo's open_nsfw release

_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")

HeadWeights = tuple[npt.NDArray[np.float32], float]

_shared_model: keras.Model | None = None
_shared_model_lock = threading.Lock()


def shared_open_nsfw_model() -> keras.Model:
    """The process-wide pre-trained open_nsfw Keras model, built on first use."""
    from classifier.native_logs import import_tensorflow
    from classifier.opennsfw import make_pretrained_model

    import_tensorflow()  # first: its native start-up lines are dropped unless debugging
    global _shared_model
    with _shared_model_lock:
        if _shared_model is None:
            _shared_model = make_pretrained_model()
        return _shared_model


@dataclass(frozen=True)
class Heads:
    """Logistic heads on the pooled features: `weights` [T, 1024], `biases` [T]."""

    tags: tuple[str, ...] = ()
    weights: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, FEATURE_SIZE), np.float32)
    )
    biases: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def scores(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """sigmoid(features . w + b) for every head: [N, T]."""
        logits = features.astype(np.float64) @ self.weights.T.astype(np.float64) + self.biases
        return np.exp(-np.logaddexp(0.0, -logits))  # a sigmoid that never overflows


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the registry; `problem` says why a folder cannot be loaded, if it can't."""

    version: str
    path: Path | None
    tags: tuple[str, ...]
    created_at: str | None
    metadata: Mapping[str, Any]
    problem: str | None = None


def builtin_metadata() -> dict[str, Any]:
    """The metadata of `builtin`, which has no folder."""
    return {
        "format": FORMAT_VERSION,
        "version": BUILTIN_VERSION,
        "architecture": ARCHITECTURE,
        "base_model": {"name": "open_nsfw", "onnx_sha256": ONNX_SHA256},
        "tags": [NSFW_TAG],
        "preprocessing": dict(PREPROCESSING_DESCRIPTION),
        "created_at": BUILTIN_CREATED_AT,
    }


def _check_version_name(version: str) -> None:
    if version == BUILTIN_VERSION or not _VERSION_PATTERN.match(version):
        raise ModelError(
            f"invalid model version name {version!r}: use letters, digits, '.', '_', '-' "
            f"(not {BUILTIN_VERSION!r})"
        )


def read_model_version(models_dir: Path, version: str) -> tuple[dict[str, Any], Heads]:
    """Read and validate a version's metadata and heads; ModelError names the folder at fault."""
    if version == BUILTIN_VERSION:
        return builtin_metadata(), Heads()
    _check_version_name(version)
    folder = Path(models_dir) / version
    if not folder.is_dir():
        known = [info.version for info in list_models(models_dir) if info.problem is None]
        raise ModelError(
            f"model version {version!r} not found: no folder {folder} (known: {known})")
    try:
        metadata = json.loads((folder / METADATA_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{folder / METADATA_FILENAME}: unreadable: {error}") from error
    if not isinstance(metadata, dict):
        raise ModelError(f"{folder / METADATA_FILENAME}: not a JSON object")
    if metadata.get("architecture") == SEED2017_ARCHITECTURE:
        raise ModelError(
            f"{folder}: model version {version!r} is a seed2017 network (a whole-image CNN "
            "without open_nsfw's features); the daemon and `megane classify` serve only "
            f"{ARCHITECTURE!r} versions (`megane train --architecture heads`). A seed2017 "
            f"version can be evaluated and exported (`megane models export-tflite {version}`), "
            "not served"
        )
    problems = _metadata_problems(metadata)
    if problems:
        raise ModelError(f"{folder / METADATA_FILENAME}: {'; '.join(problems)}")
    heads = _read_heads(folder / HEADS_FILENAME)
    if list(heads.tags) != metadata["tags"][1:]:
        raise ModelError(
            f"{folder}: heads.npz has tags {list(heads.tags)} but metadata.json lists "
            f"{metadata['tags'][1:]}"
        )
    return metadata, heads


def _metadata_problems(metadata: Mapping[str, Any]) -> list[str]:
    problems = []
    if metadata.get("format") != FORMAT_VERSION:
        problems.append(f"format {metadata.get('format')!r} is not {FORMAT_VERSION}")
    if metadata.get("architecture") != ARCHITECTURE:
        problems.append(f"architecture {metadata.get('architecture')!r} is not {ARCHITECTURE!r}")
    preprocessing = metadata.get("preprocessing")
    if not isinstance(preprocessing, dict) or preprocessing.get("name") != PREPROCESSING_NAME:
        problems.append(f"preprocessing is not {PREPROCESSING_NAME!r}")
    tags = metadata.get("tags")
    if not isinstance(tags, list) or not tags or tags[0] != NSFW_TAG:
        problems.append(f"tags must be a list starting with {NSFW_TAG!r}")
    if not isinstance(metadata.get("created_at"), str):
        problems.append("created_at is missing")
    return problems


def _read_heads(path: Path) -> Heads:
    try:
        with np.load(path, allow_pickle=False) as archive:
            tags = tuple(str(tag) for tag in archive["tags"])
            weights = np.asarray(archive["weights"], dtype=np.float32)
            biases = np.asarray(archive["biases"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(f"{path}: unreadable heads: {error}") from error
    if weights.shape != (len(tags), FEATURE_SIZE) or biases.shape != (len(tags),):
        raise ModelError(
            f"{path}: weights {weights.shape} / biases {biases.shape} do not fit "
            f"{len(tags)} tags of {FEATURE_SIZE} features"
        )
    if not (np.isfinite(weights).all() and np.isfinite(biases).all()):
        raise ModelError(f"{path}: heads contain NaN or infinity")
    return Heads(tags, weights, biases)


def list_models(models_dir: Path) -> list[ModelInfo]:
    """Every model version: `builtin` first, then the folders by creation time.

    A folder that cannot be loaded is listed with its `problem` rather than raising, so
    `megane models list` shows what is wrong. Hidden folders (the cache, writes in progress)
    are skipped.
    """
    builtin = builtin_metadata()
    infos = [ModelInfo(BUILTIN_VERSION, None, (NSFW_TAG,), builtin["created_at"], builtin)]
    folder_infos = []
    root = Path(models_dir)
    folders = sorted(root.iterdir()) if root.is_dir() else []
    for folder in folders:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            metadata, heads = read_model_version(root, folder.name)
        except ModelError as error:
            folder_infos.append(ModelInfo(folder.name, folder, (), None, {}, str(error)))
            continue
        folder_infos.append(
            ModelInfo(
                folder.name,
                folder,
                (NSFW_TAG, *heads.tags),
                metadata["created_at"],
                metadata,
            )
        )
    folder_infos.sort(key=lambda info: (info.created_at or "", info.version))
    return infos + folder_infos


def write_model_version(
    models_dir: Path,
    version: str,
    heads: Mapping[str, HeadWeights],
    metadata: Mapping[str, Any],
    *,
    created_at: datetime | None = None,
) -> Path:
    """Save a new version: `heads` maps tag -> (weight [1024], bias); returns its folder.

    `metadata` (e.g. `{"metrics": ...}`) is stored alongside the fields this function owns
    (format, version, architecture, base_model, tags, preprocessing, created_at), which it
    overrides. An existing version is never overwritten.
    """
    _check_version_name(version)
    root = Path(models_dir)
    folder = root / version
    if folder.exists():
        raise ModelError(f"{folder}: model version {version!r} already exists")
    tags = list(heads)
    for tag in tags:
        if tag == NSFW_TAG or not _TAG_PATTERN.match(tag):
            raise ModelError(
                f"invalid head tag {tag!r}: lowercase snake_case, and {NSFW_TAG!r} is "
                "open_nsfw's own output"
            )
    weights = np.zeros((len(tags), FEATURE_SIZE), np.float32)
    biases = np.zeros(len(tags), np.float32)
    for row, tag in enumerate(tags):
        weight, bias = heads[tag]
        weight_array = np.asarray(weight, dtype=np.float32).reshape(-1)
        if weight_array.shape != (FEATURE_SIZE,) or not math.isfinite(float(bias)):
            raise ModelError(f"head {tag!r}: need a finite [{FEATURE_SIZE}] weight and bias")
        weights[row], biases[row] = weight_array, float(bias)
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    document = {
        **dict(metadata),
        **builtin_metadata(),
        "version": version,
        "tags": [NSFW_TAG, *tags],
        "created_at": created.isoformat(timespec="seconds"),
    }
    try:
        # A private folder of private files, like everything in data_dir but library/.
        with staged_directory(folder, PRIVATE_DIR_MODE) as staging:
            np.savez(staging / HEADS_FILENAME, tags=np.array(tags, dtype=str),
                     weights=weights, biases=biases)
            (staging / METADATA_FILENAME).write_text(
                json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
            for path in (staging / HEADS_FILENAME, staging / METADATA_FILENAME):
                path.chmod(PRIVATE_FILE_MODE)
    except OSError as error:
        raise ModelError(f"{folder}: cannot write model version: {error}") from error
    return folder


class LoadedClassifier:
    """A model version on an engine: the runtime `Classifier` the daemon calls.

    Scores: `nsfw` from open_nsfw's softmax, then one sigmoid per head tag. `classify` blocks
    and serves one caller at a time (the engine holds a lock).
    """

    def __init__(self, version: str, metadata: Mapping[str, Any], heads: Heads, engine: Engine):
        self.version = version
        self.metadata = metadata
        self.tags: tuple[str, ...] = (NSFW_TAG, *heads.tags)
        self.batch_size = engine.batch_size
        self.engine = engine
        self._heads = heads

    @property
    def heads(self) -> Heads:
        """The version's logistic heads (empty for `builtin`)."""
        return self._heads

    def classify(self, batch: npt.NDArray[np.float32]) -> ClassifyResult:
        """Score a batch of preprocessed images, float32 [N, 224, 224, 3]."""
        output = self.engine.run(batch)
        if not np.isfinite(output.probabilities).all():
            raise InferenceError(f"model {self.version}: non-finite scores")
        head_scores = self._heads.scores(output.features)
        scores = []
        for row in range(output.probabilities.shape[0]):
            image_scores = {NSFW_TAG: float(output.probabilities[row, NSFW_INDEX])}
            for column, tag in enumerate(self._heads.tags):
                image_scores[tag] = float(head_scores[row, column])
            scores.append(image_scores)
        return ClassifyResult(scores=scores, features=output.features)


def load_classifier(
    version: str,
    models_dir: Path,
    *,
    engine: EngineName = "auto",
    device: DeviceName = "auto",
    batch_size: int = 16,
    threads: int = 0,
    cache_dir: Path | None = None,
    quantization: Quantization = "none",
    exact_band: tuple[float, float] | None = None,
) -> LoadedClassifier:
    """Load a model version (`builtin` or a folder of `models_dir`) on the chosen engine.

    `threads` = 0 means every core; `cache_dir` keeps converted TFLite files (default: the
    per-user cache of `classifier.cache`, shared by every command and data_dir). Raises
    ModelError, naming the folder, when the version is missing or corrupt.
    Blocks for seconds the first time (building the network, converting it): call it in a
    worker thread. With LiteRT and a cached conversion, TensorFlow is never imported.
    `quantization` and `exact_band`: see `classifier.engines.make_engine` (the configuration
    passes "auto" and [classifier] exact_band: int8 on the CPU, float32 near decisions).
    """
    metadata, heads = read_model_version(Path(models_dir), version)
    runtime = make_engine(
        shared_open_nsfw_model,
        engine=engine,
        device=device,
        batch_size=batch_size,
        threads=threads,
        cache_dir=Path(cache_dir) if cache_dir is not None else tflite_cache_dir(os.environ),
        model_key=MODEL_KEY,
        quantization=quantization,
        exact_band=exact_band,
    )
    return LoadedClassifier(version, metadata, heads, runtime)
