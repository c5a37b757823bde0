"""The placement decision: a pure function of scores, source flags and tags, labels and policy.

The reason always names what decided: the score and threshold, the source flag, the
source tag, the review band or the human label.

Source tags file images from day one: with `[tag_aliases] file_by_source_tags` on (the
default), an image whose source tags/hashtags match an alias of a tag is filed under that
tag at once (reason `source_tag: NAME`), before any head for the tag is trained; a trained
head adds the tag to images that carry no such source tag. Matching is on
`normalize_tag` (NFKC, casefold, whitespace collapsed) of both sides, a leading `#` ignored.
A source tag matching an alias of a quarantine tag (e.g. `nsfw = ["r18"]`) quarantines
like a source flag when source flags are trusted. A human label always wins.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from crawler.reasontext import score_text, threshold_text
from crawler.sources.common import normalize_tag
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
    # `[tag_aliases]`: tag -> source tag names that file an image under it.
    tag_aliases: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    file_by_source_tags: bool = True

    def threshold(self, tag: str) -> float:
        return self.thresholds.get(tag, DEFAULT_TAG_THRESHOLD)

    def source_tag_matches(self, source_tags: Sequence[str]) -> dict[str, str]:
        """tag -> the (first, in sorted order) source tag matching one of its aliases."""
        if not self.file_by_source_tags or not source_tags:
            return {}
        keys = {match_key(name): name for name in sorted(source_tags, reverse=True)}
        matches: dict[str, str] = {}
        for tag, aliases in self.tag_aliases.items():
            found = sorted(keys[key] for key in map(match_key, aliases) if key in keys)
            if found:
                matches[tag] = found[0]
        return matches


def match_key(name: str) -> str:
    """How a source tag and an alias are compared: normalised, without a leading `#`."""
    return normalize_tag(name).lstrip("#")


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
    source_tags: Sequence[str] = (),
) -> Decision:
    """Where an image goes.

    Order: no scores → held; a human label wins over model and source; a trusted source
    flag, or a source tag aliased to a quarantine tag, quarantines; a quarantine tag at or
    over its threshold quarantines; inside the review band quarantines as `uncertain`;
    otherwise the library, under every tag a source tag matches (`source_tag: NAME`) and
    every other tag at or over its threshold (human labels add or remove tags).
    """
    labels = labels or {}
    matches = policy.source_tag_matches(source_tags)
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
        if policy.trust_source_flags:
            for tag in policy.quarantine_tags:
                if tag in matches:
                    return Decision(Placement.QUARANTINE, (), f"source_tag: {matches[tag]}")
        for tag in policy.quarantine_tags:
            if tag not in scores:
                return Decision(Placement.HELD, (), f"no_score: the model has no {tag!r} score")
            score, threshold = scores[tag], policy.threshold(tag)
            if score >= threshold:
                return Decision(
                    Placement.QUARANTINE, (),
                    f"score: {tag}={score_text(score, threshold)} >= {threshold_text(threshold)}",
                )
        if policy.review_band is not None:
            low, high = policy.review_band
            for tag in policy.quarantine_tags:
                if low <= scores[tag] < high:
                    return Decision(
                        Placement.QUARANTINE, (),
                        f"uncertain: {tag}={score_text(scores[tag], low, high)} in review "
                        f"band [{threshold_text(low)}, {threshold_text(high)})",
                    )

    tags = {
        tag for tag, score in scores.items()
        if tag not in policy.quarantine_tags and score >= policy.threshold(tag)
    }
    tags |= {tag for tag in matches if tag not in policy.quarantine_tags}
    tags |= {tag for tag, value in labels.items() if value and tag not in policy.quarantine_tags}
    tags -= {tag for tag, value in labels.items() if not value}
    if released:
        why = "human_label: " + ", ".join(f"{tag}=no" for tag in policy.quarantine_tags)
    else:
        why = ", ".join(
            f"{tag}={score_text(scores[tag], policy.threshold(tag))} "
            f"< {threshold_text(policy.threshold(tag))}"
            for tag in policy.quarantine_tags
        )
        why = f"clean: {why or 'no quarantine tags'}"
    if tags:
        why += "; tags: " + ", ".join(_why_tag(tag, scores, labels, matches,
                                               policy.threshold(tag))
                                      for tag in sorted(tags))
    return Decision(Placement.LIBRARY, tuple(sorted(tags)), why)


def _why_tag(tag: str, scores: Mapping[str, float], labels: Mapping[str, bool],
             matches: Mapping[str, str], threshold: float) -> str:
    """What put `tag` on an image: a source tag, the head's score, or a human label."""
    if tag in matches and labels.get(tag) is not True:
        return f"{tag} (source_tag: {matches[tag]})"
    return f"{tag}={score_text(scores[tag], threshold)}" if tag in scores else f"{tag}=label"


def policy_from_config(thresholds: Mapping[str, float], quarantine_tags: Sequence[str],
                       trust_source_flags: bool,
                       review_band: tuple[float, float] | None,
                       tag_aliases: Mapping[str, Sequence[str]] | None = None,
                       file_by_source_tags: bool = True) -> Policy:
    return Policy(
        thresholds=MappingProxyType(dict(thresholds)),
        quarantine_tags=tuple(quarantine_tags),
        trust_source_flags=trust_source_flags,
        review_band=review_band,
        tag_aliases=MappingProxyType(
            {tag: tuple(names) for tag, names in (tag_aliases or {}).items()}),
        file_by_source_tags=file_by_source_tags,
    )
