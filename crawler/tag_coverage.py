"""Which tags can be filed at all: by a head of the serving model, by source tags, or neither.

A `[thresholds]` entry only has an effect when something produces that tag: a head of the
model that serves (`[classifier] model`, or `models/ACTIVE` when a version was promoted),
or a `[tag_aliases]` entry while `file_by_source_tags` is on. `megane check-config` warns
(exit 0) about every threshold that nothing produces, so a new user does not wait for
`library/cat/` to fill from a model that has no cat head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crawler.config import Config, key_line
from crawler.config_checks import read_quietly

HEAD = "head"
SOURCE_TAGS = "source_tags"


def tag_coverage(
    thresholds: Mapping[str, float], model_tags: Sequence[str],
    tag_aliases: Mapping[str, Sequence[str]], file_by_source_tags: bool,
) -> dict[str, tuple[str, ...]]:
    """tag -> what produces it: ("head",), ("source_tags",), both, or () for nothing (pure)."""
    coverage: dict[str, tuple[str, ...]] = {}
    for tag in thresholds:
        producers = []
        if tag in model_tags:
            producers.append(HEAD)
        if file_by_source_tags and tag_aliases.get(tag):
            producers.append(SOURCE_TAGS)
        coverage[tag] = tuple(producers)
    return coverage


def serving_model_tags(config: Config) -> tuple[str, tuple[str, ...]]:
    """(serving version, the tags it scores), read from the model registry.

    Raises ModelError when the version cannot be read.
    """
    from classifier.models import read_model_version
    from crawler.promotion import serving_version
    from storage.placement import DataLayout

    models_dir = DataLayout(config.data_dir).models
    version, _ = serving_version(models_dir, config.classifier.model)
    metadata, _heads = read_model_version(models_dir, version)
    return version, tuple(str(tag) for tag in metadata["tags"])


def coverage_warnings(config: Config) -> list[str]:
    """One warning per threshold that neither a head nor a source-tag alias produces."""
    from classifier.errors import ModelError

    try:
        version, model_tags = serving_model_tags(config)
    except ModelError as error:
        return [f"{config.path}: cannot tell which tags the serving model scores: {error}"]
    text = read_quietly(config.path)
    warnings = []
    coverage = tag_coverage(config.thresholds, model_tags, config.tag_aliases,
                            config.file_by_source_tags)
    for tag, producers in coverage.items():
        if producers:
            continue
        line = key_line(config.path, text, "thresholds", tag)
        where = f"{config.path}:{line}" if line else str(config.path)
        aliases = ("" if config.file_by_source_tags else
                   " ([tag_aliases] file_by_source_tags is off)")
        warnings.append(
            f"{where}: thresholds.{tag}: no tag {tag!r} can be filed: model {version!r} has "
            f"no {tag!r} head and no [tag_aliases] entry files it{aliases}; add "
            f"`{tag} = [\"...\"]` under [tag_aliases] or train a head (`megane train`)")
    return warnings


__all__ = ["HEAD", "SOURCE_TAGS", "coverage_warnings", "serving_model_tags", "tag_coverage"]
