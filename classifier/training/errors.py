"""Exceptions of training: bad settings, too few labels, a failed run."""

from __future__ import annotations

from collections.abc import Mapping

from classifier.errors import ClassifierError


class TrainingError(ClassifierError):
    """Training cannot start or did not finish; the message says what to do."""


class NotEnoughLabelsError(TrainingError):
    """Some tags have fewer labelled positives or negatives than the configured minimum.

    `missing` maps tag -> {"positives": n, "negatives": m}, how many more of each are needed;
    `counts` maps tag -> the counts found.
    """

    def __init__(
        self,
        missing: Mapping[str, Mapping[str, int]],
        counts: Mapping[str, Mapping[str, int]],
        minimum: Mapping[str, int],
    ) -> None:
        parts = []
        for tag, need in missing.items():
            have = counts.get(tag, {})
            wants = [
                f"{need[kind]} more {kind} (have {have.get(kind, 0)}, need {minimum[kind]})"
                for kind in ("positives", "negatives")
                if need.get(kind, 0) > 0
            ]
            parts.append(f"{tag}: " + ", ".join(wants))
        super().__init__(
            "not enough labels to train: " + "; ".join(parts)
            + " (label images with `megane label SHA TAG=yes|no` or the review UI, or "
            "train only the other tags with --tags)"
        )
        self.missing = {tag: dict(need) for tag, need in missing.items()}
        self.counts = {tag: dict(count) for tag, count in counts.items()}
