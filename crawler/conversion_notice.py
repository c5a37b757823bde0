"""A line before the one-time TFLite conversion, so the first run's pause is explained.

The first run of a model on a machine converts it to TFLite (about 10 s on 2 cores) and caches
the result (`classifier.engines.cached_tflite`); later runs load the cached file at once.
These helpers tell, without building or converting anything, which cached files the configured
engine needs and lacks, and say so: a structlog event for the daemon, a stderr line for
`megane classify`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from classifier.cache import tflite_cache_dir
from classifier.errors import ModelError
from classifier.opennsfw import MODEL_KEY

if TYPE_CHECKING:
    from crawler.config_types import ClassifierConfig

ONCE_NOTE = "once per model and machine"
log = structlog.get_logger("megane.classifier")


def missing_conversions(classifier: ClassifierConfig, cache_dir: Path) -> list[Path]:
    """The cached .tflite files the configured engine will convert first (none: all cached).

    The files `classifier.engines.make_engine` loads (`tflite_quantizations`). A
    configuration the engine refuses needs nothing here: loading it reports the problem.
    """
    from classifier.engines import tflite_path, tflite_quantizations

    try:
        needed = tflite_quantizations(classifier.engine, classifier.device,
                                      classifier.quantization, classifier.exact_band)
    except ModelError:
        return []
    paths = [tflite_path(cache_dir, MODEL_KEY, quantization) for quantization in needed]
    return [path for path in paths if not path.is_file()]


def log_conversion_notice(classifier: ClassifierConfig, cache_dir: Path | None,
                          environ: Mapping[str, str] | None = None) -> list[Path]:
    """Log `model_converting` for each file about to be converted (the daemon's notice).

    `cache_dir` None is the per-user cache of `environ` (default: the process environment),
    as `classifier.models.load_classifier` resolves it.
    """
    folder = cache_dir if cache_dir is not None else tflite_cache_dir(
        environ if environ is not None else os.environ)
    missing = missing_conversions(classifier, folder)
    for path in missing:
        log.info("model_converting", cache_path=str(path), note=ONCE_NOTE)
    return missing


def print_conversion_notice(classifier: ClassifierConfig, cache_dir: Path,
                            stream: Any = None) -> list[Path]:
    """One stderr line per file about to be converted (the notice of `megane classify`)."""
    missing = missing_conversions(classifier, cache_dir)
    for path in missing:
        print(f"converting the model to TFLite ({ONCE_NOTE}, about 10 s): {path}",
              file=stream if stream is not None else sys.stderr)
    return missing
