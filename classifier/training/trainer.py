"""`megane train`: labels → features → heads → evaluation → a new registry version.

The order matters for honesty: each tag's human labels are split first (stratified,
seeded), the head is trained on the training part plus any weak labels, and the metrics
in metadata.json come from the held-out human labels only. The saved heads are the ones
evaluated.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from classifier.decode import DecodeLimits
from classifier.training.dataset import (
    NSFW_TAG,
    LabelSet,
    LabelStore,
    check_minimums,
    collect_labels,
)
from classifier.training.evaluate import (
    split_metrics,
    stratified_split,
    validation_test_split,
)
from classifier.training.features import (
    Extractor,
    FeatureSet,
    FeatureStore,
    load_features,
)
from classifier.training.heads import TrainedHead, train_head
from classifier.training.settings import TrainingSettings
from storage.placement import DataLayout

log = structlog.get_logger("megane.training")

ARCHITECTURES = ("heads", "seed2017")
DEFAULT_THRESHOLD = 0.5
DEFAULT_NSFW_THRESHOLD = 0.8


class TrainingCatalogue(LabelStore, FeatureStore, Protocol):
    """The catalogue, as training uses it."""


@dataclass(frozen=True)
class TrainingRequest:
    """What to train, and the config it needs (no config object crosses into classifier)."""

    settings: TrainingSettings = field(default_factory=TrainingSettings)
    tags: Sequence[str] | None = None
    architecture: str = "heads"
    version: str | None = None
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    jpeg_draft: bool = True
    limits: DecodeLimits | None = None


@dataclass(frozen=True)
class TrainingReport:
    """The outcome of one run: the version written and its evaluation."""

    version: str
    folder: Path
    architecture: str
    metrics: dict[str, dict[str, Any]]
    seconds: float
    skipped_images: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "folder": str(self.folder),
            "architecture": self.architecture, "metrics": self.metrics,
            "seconds": round(self.seconds, 3),
            "skipped_images": len(self.skipped_images),
        }


def default_version(now: datetime, existing: Path) -> str:
    """A UTC timestamp name, suffixed when that folder exists already."""
    base = now.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    name, number = base, 1
    while (existing / name).exists():
        number += 1
        name = f"{base}-{number}"
    return name


@functools.cache
def _nsfw_layer() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    from classifier.opennsfw import bundled_onnx_path, read_onnx_weights, verify_sha256

    with bundled_onnx_path() as path:
        verify_sha256(path)
        kernel, bias = read_onnx_weights(path)["fc_nsfw"]
    return kernel.astype(np.float64), bias.astype(np.float64)


def nsfw_scores(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """open_nsfw's NSFW probability from pooled features (its last layer is linear on them)."""
    kernel, bias = _nsfw_layer()
    logits = features.astype(np.float64) @ kernel + bias
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))


def _without_missing(label_set: LabelSet, available: set[str]) -> LabelSet:
    tags = {
        tag: dataclasses.replace(
            labels,
            human={sha: v for sha, v in labels.human.items() if sha in available},
            source={sha: v for sha, v in labels.source.items() if sha in available},
        )
        for tag, labels in label_set.tags.items()
    }
    nsfw = {sha: v for sha, v in label_set.nsfw.items() if sha in available}
    return LabelSet(tags, nsfw)


def _progress(enabled: bool | None) -> Any:
    from classifier.training.features import _progress as make

    return make(enabled)


async def prepare(
    catalogue: TrainingCatalogue, layout: DataLayout, request: TrainingRequest,
    extractor_factory: Callable[[], Extractor], progress: bool | None,
) -> tuple[LabelSet, FeatureSet]:
    """Collect and check the labels, then load (or compute) every labelled image's features."""
    settings = request.settings
    label_set = await collect_labels(catalogue, tags=request.tags, aliases=request.aliases,
                                     use_source_labels=settings.use_source_labels)
    check_minimums(label_set, settings)
    features = await load_features(
        catalogue, layout, label_set.images(), extractor_factory=extractor_factory,
        batch_size=settings.feature_batch_size, limits=request.limits,
        jpeg_draft=request.jpeg_draft, progress=progress)
    label_set = _without_missing(label_set, set(features.vectors))
    if features.missing:
        # Files that vanished must not slip a tag under its minimum unnoticed.
        check_minimums(label_set, settings)
    return label_set, features


def nsfw_metrics(label_set: LabelSet, features: FeatureSet,
                 request: TrainingRequest) -> dict[str, Any] | None:
    """The backbone's NSFW output judged on every human nsfw label (nothing was trained)."""
    if not label_set.nsfw:
        return None
    names = sorted(label_set.nsfw)
    truth = [label_set.nsfw[sha] for sha in names]
    validation, test = validation_test_split(label_set.nsfw, request.settings.seed, NSFW_TAG)
    result = split_metrics(
        ([label_set.nsfw[sha] for sha in validation], nsfw_scores(features.matrix(validation))),
        ([label_set.nsfw[sha] for sha in test], nsfw_scores(features.matrix(test))),
        request.thresholds.get(NSFW_TAG, DEFAULT_NSFW_THRESHOLD),
        min_recall=request.settings.nsfw_min_recall)
    result["counts"] = {"positives": sum(truth), "negatives": len(truth) - sum(truth)}
    return result


def train_heads(
    label_set: LabelSet, features: FeatureSet, request: TrainingRequest,
    progress: bool | None = None,
) -> tuple[dict[str, TrainedHead], dict[str, dict[str, Any]]]:
    """Split, train and evaluate one head per tag (blocking: run it in a thread)."""
    settings = request.settings
    heads: dict[str, TrainedHead] = {}
    metrics: dict[str, dict[str, Any]] = {}
    with _progress(progress) as bar:
        for tag, labels in label_set.tags.items():
            train, holdout = stratified_split(labels.human, settings.holdout_fraction,
                                              settings.seed, tag)
            weak = sorted(labels.source)
            names = train + weak
            truth = np.array([labels.human[sha] for sha in train]
                             + [labels.source[sha] for sha in weak], dtype=bool)
            weights = np.array([1.0] * len(train) + [settings.source_label_weight] * len(weak),
                               dtype=np.float32)
            held_out = {sha: labels.human[sha] for sha in holdout}
            validation, test = validation_test_split(held_out, settings.seed, tag)
            validation_truth = np.array([held_out[sha] for sha in validation], dtype=bool)
            validation_features = features.matrix(validation)
            test_truth = np.array([held_out[sha] for sha in test], dtype=bool)
            task = bar.add_task(f"head {tag}", total=settings.epochs)
            head = train_head(
                tag, features.matrix(names), truth, weights, settings,
                validation=(validation_features, validation_truth),
                on_epoch=functools.partial(bar.advance, task),
            )
            bar.update(task, completed=settings.epochs)
            heads[tag] = head
            counts = labels.counts() | {"train": len(names), "holdout": len(holdout),
                                        "validation": len(validation), "test": len(test)}
            if test_truth.any():
                result = split_metrics(
                    (list(validation_truth), head.scores(validation_features)),
                    (list(test_truth), head.scores(features.matrix(test))),
                    request.thresholds.get(tag, DEFAULT_THRESHOLD),
                    target_precision=settings.target_precision)
            else:
                result = {"average_precision": None, "precision": None, "recall": None,
                          "threshold": request.thresholds.get(tag, DEFAULT_THRESHOLD),
                          "note": "no human positives in the test split: not evaluated"}
            metrics[tag] = result | {"counts": counts,
                                     "training": {"epochs": head.epochs_run,
                                                  "examples_per_round": head.examples_used}}
            log.info("head_trained", tag=tag, average_precision=result["average_precision"],
                     examples=len(names), holdout=len(holdout))
    return heads, metrics


async def train(
    catalogue: TrainingCatalogue,
    layout: DataLayout,
    request: TrainingRequest,
    *,
    extractor_factory: Callable[[], Extractor],
    now: datetime | None = None,
    progress: bool | None = None,
) -> TrainingReport:
    """Train a new version from the catalogue's labels and write it to `layout.models`.

    Raises NotEnoughLabelsError (naming each tag and the counts missing) before any work.
    """
    import asyncio

    from classifier.models import write_model_version

    if request.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {request.architecture!r}")
    started = time.monotonic()
    now = now or datetime.now(UTC)
    version = request.version or default_version(now, layout.models)
    if request.architecture == "seed2017":
        from classifier.training.seed2017 import train_seed2017

        return await train_seed2017(catalogue, layout, request, version=version, now=now,
                                    progress=progress)
    label_set, features = await prepare(catalogue, layout, request, extractor_factory,
                                        progress)
    heads, metrics = await asyncio.to_thread(train_heads, label_set, features, request,
                                             progress)
    nsfw = nsfw_metrics(label_set, features, request)
    if nsfw is not None:
        metrics = {NSFW_TAG: nsfw, **metrics}
    seconds = time.monotonic() - started
    folder = write_model_version(
        layout.models, version,
        {tag: (head.weight, head.bias) for tag, head in heads.items()},
        {
            "metrics": metrics,
            "training": {
                "architecture": "heads",
                "settings": dataclasses.asdict(request.settings),
                "seconds": round(seconds, 3),
                "images": len(features.vectors),
                "features_computed": features.computed,
                "skipped_images": len(features.missing),
            },
            "evaluation": {
                "split": "stratified per tag, human labels only; held-out half validation "
                         "(chooses the suggested threshold), half test (reports it)",
                "holdout_fraction": request.settings.holdout_fraction,
                "seed": request.settings.seed,
                "target_precision": request.settings.target_precision,
                "nsfw_min_recall": request.settings.nsfw_min_recall,
            },
        },
        created_at=now,
    )
    log.info("model_trained", version=version, tags=list(heads), seconds=round(seconds, 2))
    return TrainingReport(version, folder, "heads", metrics, seconds, features.missing)
