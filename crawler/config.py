"""Load and validate `config.toml` into frozen, typed settings (SPEC §4).

Config is read once, in `main()`; nothing else reads the file or the environment.
Every problem is collected and reported at once, each naming the key at fault and, where it
can be found, the line (`config.toml:12: http.max_bytes: ...`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from crawler.config_checks import Problems, key_line, parse_duration_s, read_table
from crawler.config_sections import (
    FILE_BY_SOURCE_TAGS,
    load_aliases,
    load_classifier,
    load_daemon,
    load_file_by_source_tags,
    load_http,
    load_images,
    load_quarantine,
    load_sources,
    load_thresholds,
)
from crawler.config_types import (
    DEVICES,
    ENGINES,
    LOG_FORMATS,
    LOG_LEVELS,
    SOURCE_KINDS,
    ClassifierConfig,
    Config,
    DaemonConfig,
    HttpConfig,
    ImagesConfig,
    QuarantineConfig,
    SourceConfig,
)
from crawler.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DEVICES",
    "ENGINES",
    "FILE_BY_SOURCE_TAGS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SOURCE_KINDS",
    "ClassifierConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "HttpConfig",
    "ImagesConfig",
    "QuarantineConfig",
    "SourceConfig",
    "config_from_mapping",
    "find_config",
    "key_line",
    "load_config",
    "parse_duration_s",
]

DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/megane-crawler/config.toml"))


def find_config(explicit: str | None) -> Path:
    """The config path: the one given, else ./config.toml, else /etc/megane-crawler/config.toml."""
    if explicit:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


_KNOWN_SECTIONS = {"daemon", "http", "images", "classifier", "thresholds", "quarantine",
                   "tag_aliases", "sources", "review", "training"}


def load_config(path: Path) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [
            f"{path}: file not found; copy the shipped config.toml there or pass --config PATH"
        ]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), [f"{path}: cannot read: {error}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), [f"{path}: not valid TOML: {error}"]) from None
    return config_from_mapping(raw, path, text)


def config_from_mapping(raw: Mapping[str, Any], path: Path, text: str = "") -> Config:
    """Validate an already-parsed TOML document (used by load_config and tests)."""
    problems = Problems(path, text)
    known = ", ".join(sorted(_KNOWN_SECTIONS))
    for section, value in raw.items():
        if section in _KNOWN_SECTIONS:
            continue
        if isinstance(value, dict | list):
            problems.add(section, None, f"unknown section; known sections are: {known}")
        else:
            # A key above every [header], e.g. a forgotten `[daemon]` line.
            problems.add("", section,
                         f"unknown top-level key; keys belong in a section ({known})")
    base = path.parent.resolve() if path.parent else Path.cwd()
    config = Config(
        path=path,
        daemon=load_daemon(raw, base, problems),
        http=load_http(raw, problems),
        images=load_images(raw, problems),
        classifier=load_classifier(raw, problems),
        thresholds=load_thresholds(raw, problems),
        quarantine=load_quarantine(raw, problems),
        tag_aliases=load_aliases(raw, problems),
        sources=load_sources(raw, problems),
        review=MappingProxyType(dict(read_table(raw, "review", problems))),
        training=MappingProxyType(dict(read_table(raw, "training", problems))),
        file_by_source_tags=load_file_by_source_tags(raw, problems),
    )
    from crawler.review.settings import ReviewSettings

    from classifier.training.errors import TrainingError
    from classifier.training.settings import TrainingSettings

    try:
        ReviewSettings.from_mapping(config.review, str(path))
    except ConfigError as error:
        for problem in error.problems:
            # "[review] key: message" -> "config.toml:LINE: review.key: message"
            key, _, message = problem.removeprefix("[review] ").partition(": ")
            if message:
                problems.add("review", key, message)
            else:
                problems.items.append(problem)
    try:
        TrainingSettings.from_mapping(config.training)
    except TrainingError as error:
        text = str(error).removeprefix("bad [training] settings: ")
        for problem in text.split("; "):
            dotted, _, message = problem.partition(": ")
            key = dotted.removeprefix("training.")
            if message == "unknown key":
                known_keys = ", ".join(sorted(TrainingSettings.__dataclass_fields__))
                message = f"unknown key; known keys are: {known_keys}"
            problems.add("training", key, message or problem)
    for tag in config.quarantine.tags:
        if tag not in config.thresholds:
            problems.add("quarantine", "tags",
                         f"tag {tag!r} has no threshold; add it under [thresholds]")
    band = config.quarantine.review_band
    written = raw.get("thresholds", {})
    for tag in config.quarantine.tags:
        threshold = config.thresholds.get(tag)
        if isinstance(written, dict) and tag in written and written[tag] != threshold:
            continue  # its own problem is reported; the default stands in for it
        if band is not None and threshold is not None and band[0] >= threshold:
            # crawler.decide looks at the band only for scores below the tag's threshold.
            problems.add("quarantine", "review_band",
                         f"[{band[0]:g}, {band[1]:g}] starts at or above thresholds.{tag} "
                         f"({threshold:g}), so it never applies; make its low end lower than "
                         f"{threshold:g}")
    if config.classifier.quantization == "dynamic_range" and (
            config.classifier.engine == "tensorflow" or config.classifier.device == "gpu"):
        problems.add("classifier", "quantization",
                     "\"dynamic_range\" runs on the litert engine (CPU) only; use \"none\" "
                     "with engine = \"tensorflow\" or device = \"gpu\"")
    if problems.items:
        raise ConfigError(str(path), problems.items)
    return config
