"""Labels → per-tag training examples.

Human labels (origin 'human', the latest per image and tag) are always used. With
`use_source_labels`, weak labels are added for images a human has not labelled for that tag:
label rows of origin 'source', and a positive wherever a source tag/hashtag of the image
matches one of the tag's `[tag_aliases]`. Weak labels are kept apart from human ones: they
train, but only human labels are held out and evaluated, so the report measures what
reviewers decided.

`nsfw` is open_nsfw's own output, not a head: its human labels (quarantine confirm/release)
are collected so the evaluation can report the backbone's threshold, but it is never trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from classifier.training.errors import NotEnoughLabelsError, TrainingError
from classifier.training.settings import TrainingSettings

NSFW_TAG = "nsfw"


class LabelStore(Protocol):
    """What the dataset needs from the catalogue (storage.catalogue.Catalogue)."""

    async def human_labels(self) -> dict[str, dict[str, bool]]: ...

    async def source_labels_by_tag(self) -> dict[str, dict[str, bool]]: ...

    async def stored_image_source_tags(self) -> list[tuple[str, tuple[str, ...]]]: ...


@dataclass(frozen=True)
class TagLabels:
    """One tag's examples: `human` and weak `source` labels, sha256 -> positive?"""

    tag: str
    human: Mapping[str, bool] = field(default_factory=dict)
    source: Mapping[str, bool] = field(default_factory=dict)

    @property
    def all(self) -> dict[str, bool]:
        return {**self.source, **self.human}

    def counts(self) -> dict[str, int]:
        values = list(self.all.values())
        human = list(self.human.values())
        return {
            "positives": sum(values),
            "negatives": len(values) - sum(values),
            "human_positives": sum(human),
            "human_negatives": len(human) - sum(human),
            "source_positives": sum(self.source.values()),
            "source_negatives": len(self.source) - sum(self.source.values()),
        }


@dataclass(frozen=True)
class LabelSet:
    """The examples of every tag to train, and the human nsfw labels (evaluation only)."""

    tags: Mapping[str, TagLabels]
    nsfw: Mapping[str, bool] = field(default_factory=dict)

    def images(self) -> set[str]:
        found = set(self.nsfw)
        for labels in self.tags.values():
            found.update(labels.all)
        return found


async def collect_labels(
    catalogue: LabelStore,
    *,
    tags: Sequence[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    use_source_labels: bool = False,
) -> LabelSet:
    """Read the labels for `tags` (default: every tag with a human label, plus aliased tags
    when source labels are on)."""
    aliases = aliases or {}
    human_by_image = await catalogue.human_labels()
    human: dict[str, dict[str, bool]] = {}
    for sha256, per_tag in human_by_image.items():
        for tag, value in per_tag.items():
            human.setdefault(tag, {})[sha256] = value
    source: dict[str, dict[str, bool]] = {}
    if use_source_labels:
        source = await _source_labels(catalogue, aliases)
    if tags is None:
        chosen = sorted((set(human) | set(source)) - {NSFW_TAG})
    else:
        if NSFW_TAG in tags:
            raise TrainingError(
                "nsfw is open_nsfw's own output and is not trained; it is evaluated from "
                "the human nsfw labels in every report"
            )
        chosen = list(dict.fromkeys(tags))
    result = {}
    for tag in chosen:
        human_tag = human.get(tag, {})
        weak = {sha: value for sha, value in source.get(tag, {}).items() if sha not in human_tag}
        result[tag] = TagLabels(tag, human_tag, weak)
    return LabelSet(result, human.get(NSFW_TAG, {}))


async def _source_labels(
    catalogue: LabelStore, aliases: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, bool]]:
    labels = await catalogue.source_labels_by_tag()
    alias_to_tags: dict[str, set[str]] = {}
    for tag, names in aliases.items():
        for name in names:
            alias_to_tags.setdefault(name.lower().lstrip("#"), set()).add(tag)
    if alias_to_tags:
        for sha256, source_tags in await catalogue.stored_image_source_tags():
            for source_tag in source_tags:
                for tag in alias_to_tags.get(str(source_tag).lower().lstrip("#"), ()):
                    labels.setdefault(tag, {})[sha256] = True
    return labels


def check_minimums(label_set: LabelSet, settings: TrainingSettings) -> None:
    """Raise NotEnoughLabelsError naming every tag short of positives or negatives."""
    minimum = {"positives": settings.min_positives, "negatives": settings.min_negatives}
    if not label_set.tags:
        raise TrainingError(
            "no tag to train: no human labels yet (and no source labels enabled); "
            "label images with `megane label SHA TAG=yes|no` or pass --tags"
        )
    counts = {tag: labels.counts() for tag, labels in label_set.tags.items()}
    missing = {}
    for tag, count in counts.items():
        need = {kind: max(0, minimum[kind] - count[kind]) for kind in minimum}
        if any(need.values()):
            missing[tag] = need
    if missing:
        raise NotEnoughLabelsError(missing, counts, minimum)
