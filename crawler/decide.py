"""The placement decision: a pure function of scores, source flags, labels and policy.

The reason always names what decided: the score and threshold, the source flag, the
review band or the human label.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from storage.records import Placement

DEFAULT_TAG_THRESHOLD = 0.5


@dataclass(frozen=True)
class Policy:
    """The thresholds and quarantine rules in force (from `[thresholds]`, `[quarantine]`)."""

    thresholds: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"nsfw": 0.8})
    )
    quarantine_tags: tuple[str, ...] = ("nsfw",)
    trust_source_flags: bool = True
    review_band: tuple[float, float] | None = None

    def threshold(self, tag: str) -> float:
        return self.thresholds.get(tag, DEFAULT_TAG_THRESHOLD)


@dataclass(frozen=True)
class Decision:
    placement: Placement
    tags: tuple[str, ...]
    reason: str


def decide(
    scores: Mapping[str, float] | None,
    flags: Sequence[str],
    policy: Policy,
    labels: Mapping[str, bool] | None = None,
) -> Decision:
    """Where an image goes.

    Order: no scores → held; a human label wins over model and source; a trusted source
    flag quarantines; a quarantine tag at or over its threshold quarantines; inside the
    review band quarantines as `uncertain`; otherwise the library, under every other tag
    at or over its threshold (human labels add or remove tags).
    """
    labels = labels or {}
    if scores is None:
        return Decision(Placement.HELD, (), "not_classified")
    for tag, score in scores.items():
        # numbers.Real, not float | int: numpy scalars (np.float32) are valid scores too.
        if (isinstance(score, bool) or not isinstance(score, numbers.Real)
                or not math.isfinite(score) or not 0 <= score <= 1):
            return Decision(Placement.HELD, (), f"invalid_score: {tag}={score!r}")

    confirmed = [tag for tag in policy.quarantine_tags if labels.get(tag) is True]
    if confirmed:
        return Decision(Placement.QUARANTINE, (), f"human_label: {confirmed[0]}=yes")
    # With no quarantine tags nothing can be released: `all(())` would claim a label.
    released = bool(policy.quarantine_tags) and all(
        labels.get(tag) is False for tag in policy.quarantine_tags
    )

    if not released:
        if policy.trust_source_flags and flags:
            return Decision(Placement.QUARANTINE, (), f"source_flag: {sorted(flags)[0]}")
        for tag in policy.quarantine_tags:
            if tag not in scores:
                return Decision(Placement.HELD, (), f"no_score: the model has no {tag!r} score")
            score, threshold = scores[tag], policy.threshold(tag)
            if score >= threshold:
                return Decision(
                    Placement.QUARANTINE, (), f"score: {tag}={score:.3f} >= {threshold:.2f}"
                )
        if policy.review_band is not None:
            low, high = policy.review_band
            for tag in policy.quarantine_tags:
                if low <= scores[tag] < high:
                    return Decision(
                        Placement.QUARANTINE, (),
                        f"uncertain: {tag}={scores[tag]:.3f} in review band [{low:.2f}, {high:.2f})",
                    )

    tags = {
        tag for tag, score in scores.items()
        if tag not in policy.quarantine_tags and score >= policy.threshold(tag)
    }
    tags |= {tag for tag, value in labels.items() if value and tag not in policy.quarantine_tags}
    tags -= {tag for tag, value in labels.items() if not value}
    if released:
        why = "human_label: " + ", ".join(f"{tag}=no" for tag in policy.quarantine_tags)
    else:
        why = ", ".join(
            f"{tag}={scores[tag]:.3f} < {policy.threshold(tag):.2f}"
            for tag in policy.quarantine_tags
        )
        why = f"clean: {why or 'no quarantine tags'}"
    if tags:
        why += "; tags: " + ", ".join(
            f"{tag}={scores[tag]:.3f}" if tag in scores else f"{tag}=label" for tag in sorted(tags)
        )
    return Decision(Placement.LIBRARY, tuple(sorted(tags)), why)


def policy_from_config(thresholds: Mapping[str, float], quarantine_tags: Sequence[str],
                       trust_source_flags: bool,
                       review_band: tuple[float, float] | None) -> Policy:
    return Policy(
        thresholds=MappingProxyType(dict(thresholds)),
        quarantine_tags=tuple(quarantine_tags),
        trust_source_flags=trust_source_flags,
        review_band=review_band,
    )
