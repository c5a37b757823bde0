"""`check-config` warnings about int8 inference: decisions the exact band does not cover.

With `[classifier] quantization` "auto" (on LiteRT) or "dynamic_range", NSFW probabilities come
from int8 weights and differ from float32 by up to 0.035 (bench/BENCHMARKS.md); images whose
int8 probability lies in `[classifier] exact_band` are scored again in float32
(classifier/exact_band.py). A decision point outside the band, with EXACT_MARGIN to spare, is
decided on int8 scores: the user is told which key, and what to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.config_checks import key_line, read_quietly

if TYPE_CHECKING:
    from crawler.config import Config

NSFW = "nsfw"


def nsfw_decision_points(config: Config) -> list[tuple[str, float]]:
    """Each NSFW decision point: the config key (dotted) that sets it, and its probability."""
    threshold = config.thresholds.get(NSFW)
    points: list[tuple[str, float]] = []
    if threshold is not None:
        points.append((f"thresholds.{NSFW}", threshold))
    band = config.quarantine.review_band
    if NSFW in config.quarantine.tags and band is not None:
        points.append(("quarantine.review_band", band[0]))
        if threshold is None or band[1] < threshold:  # decide.py: band applies below it
            points.append(("quarantine.review_band", band[1]))
    return points


def may_run_int8(config: Config) -> bool:
    """Whether the classifier may run on int8 weights with this configuration."""
    return config.classifier.engine != "tensorflow" and config.classifier.quantization != "none"


def precision_warnings(config: Config) -> list[str]:
    """One warning per NSFW decision point that int8 scores may decide (see module doc)."""
    from classifier.exact_band import EXACT_MARGIN, points_outside

    if not may_run_int8(config):
        return []
    text = read_quietly(config.path)
    band = config.classifier.exact_band
    if band is None:
        line = key_line(config.path, text, "classifier", "exact_band")
        where = f"{config.path}:{line}" if line else str(config.path)
        return [f"{where}: classifier.exact_band = []: every NSFW decision uses int8 scores, "
                f"which differ from float32 by up to 0.035; set exact_band = [0.30, 0.90] "
                f"(the default) or quantization = \"none\""]
    warnings = []
    for dotted, point in points_outside(band, nsfw_decision_points(config)):
        section, _, key = dotted.partition(".")
        line = key_line(config.path, text, section, key)
        where = f"{config.path}:{line}" if line else str(config.path)
        warnings.append(
            f"{where}: {dotted}: {point:g} is not inside classifier.exact_band "
            f"[{band[0]:g}, {band[1]:g}] with {EXACT_MARGIN:g} to spare, so images near it are "
            f"decided on int8 scores (up to 0.035 off float32); widen exact_band to "
            f"[{min(band[0], point - EXACT_MARGIN):.2f}, {max(band[1], point + EXACT_MARGIN):.2f}]"
            f" or set quantization = \"none\"")
    return warnings


__all__ = ["may_run_int8", "nsfw_decision_points", "precision_warnings"]
