"""Opt-in int8 speed, float32 near decisions: re-scoring images whose NSFW score is uncertain.

With `[classifier] quantization = "dynamic_range"`, LiteRT runs open_nsfw on int8 weights,
about 1.6x faster than float32 on a CPU. int8 moves the NSFW probability: on photos by up to
0.035, on skin-toned synthetic images by up to 0.12 (bench/int8_error.py, bench/BENCHMARKS.md
"int8 against float32"; a longer noise search found 0.153); nobody has measured it on real NSFW
photos, which the project does not hold, so float32 stays the default. `ExactBandEngine`
scores again in float32 every image whose int8 probability lies in the exact band; a
decision point (the NSFW threshold, the review band's edges) inside the band with
EXACT_MARGIN (about twice the largest difference measured) to spare is then decided as
float32 decides it, as far as those measurements go. Trained heads read int8 features
outside the band: their decisions are not covered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from classifier.engines import Engine, EngineOutput, check_batch
from classifier.errors import ModelError
from classifier.opennsfw import NSFW_INDEX

DEFAULT_EXACT_BAND = (0.10, 1.0)
EXACT_MARGIN = 0.30  # ~2x the largest int8 - float32 NSFW difference measured (0.153)


class ExactBandEngine:
    """A fast engine whose uncertain rows are scored again by an exact one.

    Each image whose NSFW probability from `fast` lies in `band` = [low, high] is run again by
    `exact`, and both of its outputs (probabilities and features) are replaced. With an int8
    `fast` engine and a float32 exact one, a decision point p with low + EXACT_MARGIN <= p (and
    p <= high - EXACT_MARGIN unless high is 1) is decided as float32 decides it whenever int8
    moved the probability by less than the margin (see the module doc for what was measured).
    `rescored` counts the re-run images. Both engines are loaded when this one is built, so
    a missing float32 file fails at start, not in the middle of a run.
    """

    def __init__(self, fast: Engine, exact: Engine, band: tuple[float, float]) -> None:
        low, high = band
        if not 0.0 <= low <= high <= 1.0:
            raise ModelError(f"exact band must be [low, high] within [0, 1], got {band}")
        self.batch_size = fast.batch_size
        self.band = (float(low), float(high))
        self.name = f"{fast.name} int8, float32 in [{low:g}, {high:g}]"
        self.rescored = 0
        self._fast = fast
        self._exact = exact
        self._lock = threading.Lock()

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch` (see `Engine.run`); rows in the band carry the exact engine's output."""
        with self._lock:
            output = self._fast.run(batch)
            nsfw = output.probabilities[:, NSFW_INDEX]
            rows = np.flatnonzero((nsfw >= self.band[0]) & (nsfw <= self.band[1]))
            if rows.size == 0:
                return output
            exact = self._exact.run(check_batch(batch)[rows])
            self.rescored += int(rows.size)
            probabilities = output.probabilities.copy()
            features = output.features.copy()
            probabilities[rows] = exact.probabilities
            features[rows] = exact.features
            return EngineOutput(probabilities, features)


def points_outside(
    band: tuple[float, float], points: Iterable[tuple[str, float]]
) -> list[tuple[str, float]]:
    """The (name, NSFW probability) decision points not inside `band` with EXACT_MARGIN (a
    band reaching 1 covers everything above its low end)."""
    low, high = band
    ceiling = 1.0 if high >= 1.0 else high - EXACT_MARGIN
    return [(name, point) for name, point in points
            if not low + EXACT_MARGIN <= point <= ceiling]
