"""Training: from reviewed labels to a new model version (issue 6).

`dataset` turns labels into per-tag examples, `features` caches the backbone's pooled
features, `heads` trains one logistic head per tag, `seed2017` is the 2017 CNN end to end,
`evaluate` judges a model on held-out human labels, `trainer` runs it all and writes the
registry version, `export` writes a .tflite. TensorFlow is imported only inside functions.
"""

from __future__ import annotations

from classifier.training.errors import NotEnoughLabelsError, TrainingError
from classifier.training.settings import TrainingSettings

__all__ = ["NotEnoughLabelsError", "TrainingError", "TrainingSettings"]
