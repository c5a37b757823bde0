"""Load and validate `config.toml` into frozen, typed settings (SPEC §4).

Config is read once, in `main()`; nothing else reads the file or the environment.
Every problem is collected and reported at once, each naming the key at fault and, where it
can be found, the line (`config.toml:12: http.max_bytes: ...`).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from crawler.errors import ConfigError

DEFAULT_CONFIG_PATHS = (Path("config.toml"), Path("/etc/megane-crawler/config.toml"))

LOG_FORMATS = ("json", "console", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENGINES = ("auto", "tensorflow", "litert")
DEVICES = ("auto", "cpu", "gpu")
SOURCE_KINDS = ("mastodon", "bluesky", "booru", "rss", "folder")


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path = Path("./data")
    log_format: str = "auto"
    log_level: str = "info"
    download_workers: int = 16
    decode_workers: int = 2
    queue_size: int = 64
    shutdown_grace_s: float = 10.0
    max_attempts: int = 5
    metrics_port: int = 0
    watchdog: bool = True


@dataclass(frozen=True)
class HttpConfig:
    user_agent: str = "megane-crawler/0.1 (+https://github.com/megane-crawler/megane-crawler)"
    max_connections: int = 32
    per_host_connections: int = 4
    per_host_rate: float = 4.0
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_bytes: int = 50 * 1024 * 1024
    max_feed_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    max_retry_after_s: float = 300.0
    allowed_private_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ImagesConfig:
    max_width: int = 7680
    max_height: int = 4320
    max_frames: int = 1000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "HEIF")
    jpeg_draft: bool = True


@dataclass(frozen=True)
class ClassifierConfig:
    model: str | None = None  # None: serve models/ACTIVE, else builtin (crawler.serving)
    engine: Literal["auto", "tensorflow", "litert"] = "auto"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    batch_size: int = 16
    max_batch_delay_ms: int = 200
    inference_timeout_s: float = 120.0
    threads: int = 0


@dataclass(frozen=True)
class QuarantineConfig:
    tags: tuple[str, ...] = ("nsfw",)
    trust_source_flags: bool = True
    review_band: tuple[float, float] | None = None
    safe_rating_is_nsfw: bool = False


@dataclass(frozen=True)
class SourceConfig:
    """One `[[sources]]` table. `settings` holds the kind's own keys, already validated."""

    kind: str
    name: str
    interval_s: float
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    min_interval_s: float = 0.0
    max_interval_s: float = 0.0

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    http: HttpConfig
    images: ImagesConfig
    classifier: ClassifierConfig
    thresholds: Mapping[str, float]
    quarantine: QuarantineConfig
    tag_aliases: Mapping[str, tuple[str, ...]]
    sources: tuple[SourceConfig, ...]
    review: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    training: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # `[tag_aliases] file_by_source_tags`: source tags matching an alias file the image.
    file_by_source_tags: bool = True

    @property
    def data_dir(self) -> Path:
        return self.daemon.data_dir


def find_config(explicit: str | None) -> Path:
    """The config path: the one given, else ./config.toml, else /etc/megane-crawler/config.toml."""
    if explicit:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration_s(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"90s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300 or \"5m\"")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 300 or \"5m\", got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


class _Problems:
    """Collects problems, each prefixed with the file and line of the key where found."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.items: list[str] = []

    def line_of(self, section: str, key: str | None, index: int | None = None) -> int | None:
        """The line of `key` in `[section]` (the index-th `[[section]]`), else of the header."""
        header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
        key_line = re.compile(r"^\s*[\"']?" + re.escape(key or "") + r"[\"']?\s*=")
        occurrence = -1
        # Section "" is the top level: the keys before the first [header].
        matching = section == ""
        section_line: int | None = None
        for number, line in enumerate(self.lines, start=1):
            found = header.match(line)
            if found:
                matching = found.group(1) == section
                if matching:
                    occurrence += 1
                    matching = index is None or occurrence == index
                    if matching and section_line is None:
                        section_line = number
                continue
            if matching and key and key_line.match(line):
                return number
        return section_line

    def add(self, section: str, key: str | None, message: str, index: int | None = None) -> None:
        line = self.line_of(section, key, index)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        dotted = section if key is None else (f"{section}.{key}" if section else key)
        if index is not None:
            dotted = f"sources[{index}]" + ("" if key is None else f".{key}")
        self.items.append(f"{where}: {dotted}: {message}")


def key_line(path: Path, text: str, section: str, key: str) -> int | None:
    """The line of `key` in `[section]` of the config text (for warnings), if found."""
    return _Problems(path, text).line_of(section, key)


def _table(raw: Mapping[str, Any], name: str, problems: _Problems) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, None, f"must be a table ([{name}])")
        return {}
    return value


def _check_keys(
    section: str, table: Mapping[str, Any], allowed: set[str], problems: _Problems
) -> None:
    for key in table:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            problems.add(section, key, f"unknown key; known keys are: {hint}")


def _get(
    section: str,
    table: Mapping[str, Any],
    key: str,
    default: Any,
    kind: type | tuple[type, ...],
    problems: _Problems,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        problems.add(section, key, f"expected {_kind_name(kinds)}, got a boolean")
        return default
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        # TOML has nan and inf; neither is a usable timeout, rate or size.
        problems.add(section, key, f"must be a finite number, got {value!r}")
        return default
    if not isinstance(value, kinds):
        problems.add(section, key, f"expected {_kind_name(kinds)}, got {value!r}")
        return default
    if minimum is not None and value < minimum:  # type: ignore[operator]
        problems.add(section, key, f"must be at least {minimum}, got {value!r}")
        return default
    if maximum is not None and value > maximum:  # type: ignore[operator]
        problems.add(section, key, f"must be at most {maximum}, got {value!r}")
        return default
    if choices is not None and value not in choices:
        problems.add(section, key, f"must be one of {', '.join(choices)}; got {value!r}")
        return default
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array"}
    return " or ".join(names.get(kind, kind.__name__) for kind in kinds)


def _string_list(
    section: str, table: Mapping[str, Any], key: str, default: tuple[str, ...],
    problems: _Problems,
) -> tuple[str, ...]:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(section, key, f"expected an array of strings, got {value!r}")
        return default
    return tuple(value)


def _load_daemon(raw: Mapping[str, Any], base: Path, problems: _Problems) -> DaemonConfig:
    table = _table(raw, "daemon", problems)
    defaults = DaemonConfig()
    _check_keys("daemon", table, set(DaemonConfig.__dataclass_fields__), problems)
    data_dir_value = _get("daemon", table, "data_dir", str(defaults.data_dir), str, problems)
    data_dir = Path(data_dir_value).expanduser()
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    return DaemonConfig(
        data_dir=data_dir,
        log_format=_get("daemon", table, "log_format", defaults.log_format, str, problems,
                        choices=LOG_FORMATS),
        log_level=_get("daemon", table, "log_level", defaults.log_level, str, problems,
                       choices=LOG_LEVELS),
        download_workers=_get("daemon", table, "download_workers", defaults.download_workers,
                              int, problems, minimum=1, maximum=1024),
        decode_workers=_get("daemon", table, "decode_workers", defaults.decode_workers, int,
                            problems, minimum=1, maximum=64),
        queue_size=_get("daemon", table, "queue_size", defaults.queue_size, int, problems,
                        minimum=1, maximum=100_000),
        shutdown_grace_s=_get("daemon", table, "shutdown_grace_s", defaults.shutdown_grace_s,
                              float, problems, minimum=0),
        max_attempts=_get("daemon", table, "max_attempts", defaults.max_attempts, int, problems,
                          minimum=1, maximum=100),
        metrics_port=_get("daemon", table, "metrics_port", defaults.metrics_port, int, problems,
                          minimum=0, maximum=65535),
        watchdog=_get("daemon", table, "watchdog", defaults.watchdog, bool, problems),
    )


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


def _load_http(raw: Mapping[str, Any], problems: _Problems) -> HttpConfig:
    table = _table(raw, "http", problems)
    d = HttpConfig()
    _check_keys("http", table, set(HttpConfig.__dataclass_fields__), problems)
    hosts = _string_list("http", table, "allowed_private_hosts", (), problems)
    for host in hosts:
        if not _HOST_PORT.match(host):
            problems.add("http", "allowed_private_hosts",
                         f"{host!r} is not host:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\")")
    user_agent = _get("http", table, "user_agent", d.user_agent, str, problems)
    if not user_agent.strip():
        problems.add("http", "user_agent", "must not be empty; name your crawler and a contact")
    return HttpConfig(
        user_agent=user_agent,
        max_connections=_get("http", table, "max_connections", d.max_connections, int, problems,
                             minimum=1, maximum=4096),
        per_host_connections=_get("http", table, "per_host_connections",
                                  d.per_host_connections, int, problems, minimum=1,
                                  maximum=1024),
        per_host_rate=_get("http", table, "per_host_rate", d.per_host_rate, float, problems,
                           minimum=0.01),
        timeout_s=_get("http", table, "timeout_s", d.timeout_s, float, problems, minimum=0.1),
        connect_timeout_s=_get("http", table, "connect_timeout_s", d.connect_timeout_s, float,
                               problems, minimum=0.1),
        max_bytes=_get("http", table, "max_bytes", d.max_bytes, int, problems, minimum=1024),
        max_feed_bytes=_get("http", table, "max_feed_bytes", d.max_feed_bytes, int, problems,
                            minimum=1024),
        max_redirects=_get("http", table, "max_redirects", d.max_redirects, int, problems,
                           minimum=0, maximum=30),
        max_retries=_get("http", table, "max_retries", d.max_retries, int, problems, minimum=0,
                         maximum=20),
        retry_backoff_s=_get("http", table, "retry_backoff_s", d.retry_backoff_s, float,
                             problems, minimum=0),
        max_retry_after_s=_get("http", table, "max_retry_after_s", d.max_retry_after_s, float,
                               problems, minimum=0),
        allowed_private_hosts=frozenset(host.lower() for host in hosts),
    )


def _load_images(raw: Mapping[str, Any], problems: _Problems) -> ImagesConfig:
    table = _table(raw, "images", problems)
    d = ImagesConfig()
    _check_keys("images", table, set(ImagesConfig.__dataclass_fields__), problems)
    formats = _string_list("images", table, "formats", d.formats, problems)
    return ImagesConfig(
        max_width=_get("images", table, "max_width", d.max_width, int, problems, minimum=1),
        max_height=_get("images", table, "max_height", d.max_height, int, problems, minimum=1),
        max_frames=_get("images", table, "max_frames", d.max_frames, int, problems, minimum=1),
        formats=tuple(item.upper() for item in formats),
        jpeg_draft=_get("images", table, "jpeg_draft", d.jpeg_draft, bool, problems),
    )


def _load_classifier(raw: Mapping[str, Any], problems: _Problems) -> ClassifierConfig:
    table = _table(raw, "classifier", problems)
    d = ClassifierConfig()
    _check_keys("classifier", table, set(ClassifierConfig.__dataclass_fields__), problems)
    model = _get("classifier", table, "model", d.model, str, problems)
    if model is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", model):
        problems.add("classifier", "model",
                     f"{model!r} is not a model version name (see `megane models list`)")
    return ClassifierConfig(
        model=model,
        engine=_get("classifier", table, "engine", d.engine, str, problems, choices=ENGINES),
        device=_get("classifier", table, "device", d.device, str, problems, choices=DEVICES),
        batch_size=_get("classifier", table, "batch_size", d.batch_size, int, problems,
                        minimum=1, maximum=1024),
        max_batch_delay_ms=_get("classifier", table, "max_batch_delay_ms",
                                d.max_batch_delay_ms, int, problems, minimum=0,
                                maximum=60_000),
        inference_timeout_s=_get("classifier", table, "inference_timeout_s",
                                 d.inference_timeout_s, float, problems, minimum=0.1),
        threads=_get("classifier", table, "threads", d.threads, int, problems, minimum=0,
                     maximum=256),
    )


def _load_thresholds(raw: Mapping[str, Any], problems: _Problems) -> Mapping[str, float]:
    table = _table(raw, "thresholds", problems)
    thresholds: dict[str, float] = {"nsfw": 0.8}
    for tag, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add("thresholds", tag, f"expected a number between 0 and 1, got {value!r}")
        elif not 0.0 <= float(value) <= 1.0:
            problems.add("thresholds", tag, f"must be between 0 and 1, got {value!r}")
        else:
            thresholds[tag] = float(value)
    return MappingProxyType(thresholds)


def _load_quarantine(raw: Mapping[str, Any], problems: _Problems) -> QuarantineConfig:
    table = _table(raw, "quarantine", problems)
    d = QuarantineConfig()
    _check_keys("quarantine", table, set(QuarantineConfig.__dataclass_fields__), problems)
    band: tuple[float, float] | None = None
    if "review_band" in table:
        value = table["review_band"]
        if (
            isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and 0.0 <= value[0] < value[1] <= 1.0
        ):
            band = (float(value[0]), float(value[1]))
        elif value not in ([], None):
            problems.add("quarantine", "review_band",
                         f"expected [low, high] with 0 <= low < high <= 1, got {value!r}")
    tags = _string_list("quarantine", table, "tags", d.tags, problems)
    return QuarantineConfig(
        tags=tags,
        trust_source_flags=_get("quarantine", table, "trust_source_flags",
                                d.trust_source_flags, bool, problems),
        review_band=band,
        safe_rating_is_nsfw=_get("quarantine", table, "safe_rating_is_nsfw",
                                 d.safe_rating_is_nsfw, bool, problems),
    )


# The one policy key of `[tag_aliases]`; every other key is a tag. Told apart by its value
# (true/false, where a tag has an array of names), so a tag cannot be called this.
FILE_BY_SOURCE_TAGS = "file_by_source_tags"


def _load_aliases(raw: Mapping[str, Any], problems: _Problems) -> Mapping[str, tuple[str, ...]]:
    table = _table(raw, "tag_aliases", problems)
    from crawler.sources.common import normalize_tag

    aliases: dict[str, tuple[str, ...]] = {}
    for tag in table:
        if tag == FILE_BY_SOURCE_TAGS:
            continue
        aliases[tag] = tuple(
            normalize_tag(alias) for alias in _string_list("tag_aliases", table, tag, (), problems)
        )
    return MappingProxyType(aliases)


def _load_file_by_source_tags(raw: Mapping[str, Any], problems: _Problems) -> bool:
    table = raw.get("tag_aliases", {})
    if not isinstance(table, dict) or FILE_BY_SOURCE_TAGS not in table:
        return True
    value = table[FILE_BY_SOURCE_TAGS]
    if not isinstance(value, bool):
        problems.add("tag_aliases", FILE_BY_SOURCE_TAGS,
                     f"expected true or false, got {value!r} (this name is the policy key, "
                     "not a tag)")
        return True
    return value


def _load_sources(raw: Mapping[str, Any], problems: _Problems) -> tuple[SourceConfig, ...]:
    from crawler.sources import validate_source_settings

    value = raw.get("sources", [])
    if not isinstance(value, list):
        problems.add("sources", None, "must be an array of tables ([[sources]])")
        return ()
    sources: list[SourceConfig] = []
    names: set[str] = set()
    for index, table in enumerate(value):
        if not isinstance(table, dict):
            problems.add("sources", None, "each [[sources]] entry must be a table", index)
            continue
        kind = table.get("kind")
        if kind not in SOURCE_KINDS:
            problems.add("sources", "kind",
                         f"must be one of {', '.join(SOURCE_KINDS)}; got {kind!r}", index)
            continue
        name = table.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", name):
            problems.add("sources", "name",
                         "required: a short name of letters, digits, '.', '_' or '-'", index)
            continue
        if name in names:
            problems.add("sources", "name", f"{name!r} is used by another source", index)
            continue
        names.add(name)
        intervals: dict[str, float] = {}
        for key, default in (("interval", 600.0), ("min_interval", 0.0), ("max_interval", 0.0)):
            if key in table:
                try:
                    intervals[key] = parse_duration_s(table[key])
                except ValueError as error:
                    problems.add("sources", key, str(error), index)
                    intervals[key] = default or 600.0
            else:
                intervals[key] = default
        interval_s = intervals["interval"]
        min_interval_s = intervals["min_interval"] or max(interval_s / 4, 30.0)
        max_interval_s = intervals["max_interval"] or interval_s * 8
        settings = {
            key: item for key, item in table.items()
            if key not in {"kind", "name", "interval", "min_interval", "max_interval"}
        }
        for message in validate_source_settings(kind, settings):
            key, _, text = message.partition(": ")
            problems.add("sources", key if text else None, text or message, index)
        sources.append(SourceConfig(
            kind=kind, name=name, interval_s=interval_s,
            settings=MappingProxyType(settings),
            min_interval_s=min(min_interval_s, interval_s),
            max_interval_s=max(max_interval_s, interval_s),
        ))
    return tuple(sources)


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
    problems = _Problems(path, text)
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
        daemon=_load_daemon(raw, base, problems),
        http=_load_http(raw, problems),
        images=_load_images(raw, problems),
        classifier=_load_classifier(raw, problems),
        thresholds=_load_thresholds(raw, problems),
        quarantine=_load_quarantine(raw, problems),
        tag_aliases=_load_aliases(raw, problems),
        sources=_load_sources(raw, problems),
        review=MappingProxyType(dict(_table(raw, "review", problems))),
        training=MappingProxyType(dict(_table(raw, "training", problems))),
        file_by_source_tags=_load_file_by_source_tags(raw, problems),
    )
    from crawler.review.settings import ReviewSettings

    from classifier.training.errors import TrainingError
    from classifier.training.settings import TrainingSettings

    try:
        ReviewSettings.from_mapping(config.review, str(path))
    except ConfigError as error:
        problems.items.extend(error.problems)
    try:
        TrainingSettings.from_mapping(config.training)
    except TrainingError as error:
        text = str(error).removeprefix("bad [training] settings: ")
        for problem in text.split("; "):
            dotted, _, message = problem.partition(": ")
            key = dotted.removeprefix("training.")
            problems.add("training", key, message or problem)
    for tag in config.quarantine.tags:
        if tag not in config.thresholds:
            problems.add("quarantine", "tags",
                         f"tag {tag!r} has no threshold; add it under [thresholds]")
    if problems.items:
        raise ConfigError(str(path), problems.items)
    return config
