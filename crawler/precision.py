"""Warnings about opt-in int8 inference: the decisions the exact band does not cover.

With `[classifier] quantization = "dynamic_range"`, NSFW probabilities come from int8 weights
(up to 0.15 away from float32 in bench/int8_error.py); images whose int8 probability lies in
`[classifier] exact_band` are scored again in float32 (classifier/exact_band.py). A decision
point outside the band with EXACT_MARGIN to spare, or a quarantine tag scored by a trained
head (which reads int8 features), is decided on int8 output: the user is told which key, and
what to change. `check-config` prints these; the daemon logs them at start and on reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.config_checks import key_line, read_quietly

if TYPE_CHECKING:
    from crawler.config import Config

NSFW = "nsfw"
FIX = "or set quantization = \"none\" (float32, the default)"


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


def precision_warnings(config: Config) -> list[str]:
    """One warning per decision that int8 output may make (see the module doc)."""
    from classifier.exact_band import EXACT_MARGIN, points_outside

    if config.classifier.quantization != "dynamic_range":
        return []
    text = read_quietly(config.path)

    def where(section: str, key: str) -> str:
        line = key_line(config.path, text, section, key)
        return f"{config.path}:{line}" if line else str(config.path)

    warnings = [
        f"{where('quarantine', 'tags')}: quarantine.tags: {tag!r} is scored by a trained head on "
        f"int8 features (float32 only for images in classifier.exact_band); {FIX}"
        for tag in config.quarantine.tags if tag != NSFW
    ]
    band = config.classifier.exact_band
    if band is None:
        return [*warnings,
                f"{where('classifier', 'exact_band')}: classifier.exact_band = []: every NSFW "
                f"decision uses int8 scores, up to 0.15 away from float32; set exact_band = "
                f"[0.10, 1.00] (the default) {FIX}"]
    outside = points_outside(band, nsfw_decision_points(config))
    if outside:  # one band covering every point, suggested in each warning
        low = max(0.0, min(band[0], *(point - EXACT_MARGIN for _, point in outside)))
        suggestion = f"[{low:.2f}, 1.00]"
    for dotted, point in outside:
        section, _, key = dotted.partition(".")
        warnings.append(
            f"{where(section, key)}: {dotted}: {point:.2f} is not inside classifier.exact_band "
            f"[{band[0]:.2f}, {band[1]:.2f}] with {EXACT_MARGIN:.2f} to spare, so images near it "
            f"are decided on int8 scores; set exact_band = {suggestion} {FIX}")
    return warnings


__all__ = ["nsfw_decision_points", "precision_warnings"]
