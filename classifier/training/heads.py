"""The `heads` architecture: one logistic head per tag on frozen open_nsfw features.

Each head is a keras-io style `make_head_model(tag)`: features → standardisation → one
Dense unit (the logit), trained with Adam on sigmoid cross-entropy from a `tf.data`
pipeline. The standardisation (mean and spread of the training features) is folded into the
saved weight and bias, so the registry's `sigmoid(features . w + b)` is exactly the trained
model.

Imbalance, two ways (`[training] balance`):

- `hard_negatives` (the 2017 trainer): every positive, plus the `negative_ratio` × positives
  negatives the current head scores highest. Training runs in `mining_rounds` rounds; the
  first takes a seeded random sample of negatives, each later one re-mines with the head
  of the round before.
- `class_weights`: every example, positives weighted by negatives / positives.

Weak (source) labels count `source_label_weight` each, human ones 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from classifier.base import FEATURE_SIZE
from classifier.training.settings import TrainingSettings

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

MIN_SPREAD = 1e-3


@dataclass(frozen=True)
class TrainedHead:
    """A head on raw features: score = sigmoid(features . weight + bias)."""

    tag: str
    weight: npt.NDArray[np.float32]
    bias: float
    epochs_run: int
    examples_used: int

    def scores(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        logits = features.astype(np.float64) @ self.weight.astype(np.float64) + self.bias
        return np.exp(-np.logaddexp(0.0, -logits))


def make_head_model(
    tag: str, mean: npt.NDArray[np.float32], spread: npt.NDArray[np.float32], l2: float
) -> keras.Model:
    """features [N, 1024] → logit [N, 1], with the standardisation inside the model."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(FEATURE_SIZE,), name="features")
    standardised = layers.Normalization(
        mean=mean, variance=np.square(spread),
        name="standardise")(inputs)
    logit = layers.Dense(1, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                         name=f"head_{tag}")(standardised)
    return keras.Model(inputs, logit, name=f"head_{tag}")


def _dataset(
    features: npt.NDArray[np.float32], labels: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32], batch_size: int, seed: int, shuffle: bool,
) -> tf.data.Dataset:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (features, labels.reshape(-1, 1), weights))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _fold(model: keras.Model, tag: str, mean: npt.NDArray[np.float32],
          spread: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], float]:
    """The weight and bias on raw features equivalent to standardise → Dense."""
    kernel, bias = model.get_layer(f"head_{tag}").get_weights()
    weight = kernel.reshape(-1) / spread
    return weight.astype(np.float32), float(bias[0] - np.dot(weight, mean))


def train_head(
    tag: str,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    example_weights: npt.NDArray[np.float32],
    settings: TrainingSettings,
    *,
    validation: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None = None,
    on_epoch: Callable[[], None] | None = None,
) -> TrainedHead:
    """Train one tag's head on `features` [N, 1024] and `labels` [N] (True = has the tag)."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=bool)
    mean = features.mean(axis=0).astype(np.float32)
    spread = features.std(axis=0).astype(np.float32)
    spread[spread < MIN_SPREAD] = 1.0
    model = make_head_model(tag, mean, spread, settings.l2)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    positives = np.flatnonzero(labels)
    negatives = np.flatnonzero(~labels)
    generator = np.random.default_rng(settings.seed)
    callbacks = [_EpochCallback(on_epoch)] if on_epoch is not None else []
    validation_data = None
    if validation is not None and len(validation[1]):
        validation_data = _dataset(validation[0], validation[1].astype(np.float32),
                                   np.ones(len(validation[1]), np.float32),
                                   settings.batch_size, settings.seed, shuffle=False)
    rounds: list[tuple[npt.NDArray[np.intp] | None, int]]
    if settings.balance == "class_weights":
        rounds = [(np.arange(len(labels)), settings.epochs)]
    else:
        per_round = max(1, math.ceil(settings.epochs / settings.mining_rounds))
        rounds = [(None, per_round)] * settings.mining_rounds  # chosen as we go
    epochs_run, used = 0, 0
    for index, (chosen, epochs) in enumerate(rounds):
        epochs = min(epochs, settings.epochs - epochs_run)
        if epochs <= 0:
            break
        weights = example_weights.astype(np.float32).copy()
        if chosen is None:
            quota = min(len(negatives), max(1, math.ceil(settings.negative_ratio * len(positives))))
            if index == 0:
                hard = generator.choice(negatives, quota, replace=False)
            else:
                logits = model.predict(features[negatives], verbose=0,
                                       batch_size=1024).reshape(-1)
                hard = negatives[np.argsort(-logits, kind="stable")[:quota]]
            chosen = np.concatenate([positives, hard])
        else:
            positive_weight = len(negatives) / max(1, len(positives))
            weights[labels] *= positive_weight
        used = max(used, len(chosen))
        training = _dataset(features[chosen], labels[chosen].astype(np.float32),
                            weights[chosen], settings.batch_size, settings.seed + index,
                            shuffle=True)
        model.fit(training, epochs=epochs, verbose=0, callbacks=callbacks,
                  validation_data=validation_data, shuffle=False)  # tf.data shuffles
        epochs_run += epochs
    weight, bias = _fold(model, tag, mean, spread)
    return TrainedHead(tag, weight, bias, epochs_run, used)


class _EpochCallback:
    """Calls a function after every epoch (a rich progress bar's advance)."""

    def __new__(cls, on_epoch: Callable[[], None]) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                on_epoch()

        return Callback()
