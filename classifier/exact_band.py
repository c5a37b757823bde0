"""Int8 speed with float32 decisions: re-scoring the images whose NSFW score is uncertain.

LiteRT runs open_nsfw on int8 weights ("dynamic range" quantization) about 1.6x faster than
in float32 on a CPU, but moves the NSFW probability by up to 0.035 (measured on 426 photos,
bench/BENCHMARKS.md). `ExactBandEngine` keeps the speed where it cannot change a decision: an
image whose int8 probability lies in the exact band is scored again in float32. Every
decision point (the NSFW threshold, the review band's edges) inside the band with
EXACT_MARGIN to spare is then decided exactly as the float32 model decides it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from classifier.engines import Engine, EngineOutput, check_batch
from classifier.errors import ModelError
from classifier.opennsfw import NSFW_INDEX

DEFAULT_EXACT_BAND = (0.30, 0.90)
EXACT_MARGIN = 0.05  # > the largest int8 - float32 NSFW difference measured (0.035)


class ExactBandEngine:
    """A fast engine whose uncertain rows are scored again by an exact one.

    Each image whose NSFW probability from `fast` lies in `band` = [low, high] is run again by
    the engine `make_exact` builds (on first need, then kept), and both of its outputs
    (probabilities and features) are replaced. With an int8 `fast` engine and a float32 exact
    one, every decision point p with low + EXACT_MARGIN <= p <= high - EXACT_MARGIN is decided
    as float32 would decide it, since int8 moves the NSFW probability by less than the margin
    (measured: at most 0.035; bench/BENCHMARKS.md). `rescored` counts the re-run images.
    """

    def __init__(
        self, fast: Engine, make_exact: Callable[[], Engine], band: tuple[float, float]
    ) -> None:
        low, high = band
        if not 0.0 <= low <= high <= 1.0:
            raise ModelError(f"exact band must be [low, high] within [0, 1], got {band}")
        self.batch_size = fast.batch_size
        self.band = (float(low), float(high))
        self.name = f"{fast.name} int8, float32 in [{low:g}, {high:g}]"
        self.rescored = 0
        self._fast = fast
        self._make_exact = make_exact
        self._exact: Engine | None = None
        self._lock = threading.Lock()

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch` (see `Engine.run`); rows in the band carry the exact engine's output."""
        with self._lock:
            output = self._fast.run(batch)
            nsfw = output.probabilities[:, NSFW_INDEX]
            rows = np.flatnonzero((nsfw >= self.band[0]) & (nsfw <= self.band[1]))
            if rows.size == 0:
                return output
            if self._exact is None:
                self._exact = self._make_exact()
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
    """The (name, NSFW probability) decision points not inside `band` with EXACT_MARGIN."""
    low, high = band
    return [(name, point) for name, point in points
            if not low + EXACT_MARGIN <= point <= high - EXACT_MARGIN]
