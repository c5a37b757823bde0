"""The classifier seam: what the daemon needs from a model, whatever the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

INPUT_SIZE = 224
FEATURE_SIZE = 1024


@dataclass(frozen=True)
class ClassifyResult:
    """Per-image scores of every tag the model knows, and the pooled feature vectors.

    `scores[i]` maps tag -> probability for image i; `features` is float32 [N, 1024]
    (open_nsfw's pooled features, the input of trained heads).
    """

    scores: list[dict[str, float]]
    features: npt.NDArray[np.float32]


class Classifier(Protocol):
    """A loaded model version. `classify` blocks: call it in a worker thread."""

    version: str
    tags: tuple[str, ...]
    batch_size: int

    def classify(self, batch: npt.NDArray[np.float32]) -> ClassifyResult:
        """Score a batch of preprocessed images, float32 [N, 224, 224, 3], N <= batch_size."""
        ...
