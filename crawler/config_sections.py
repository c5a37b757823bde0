"""Loaders of each `config.toml` section into its settings dataclass.

Each takes the parsed document and a `Problems` collector, reports what is wrong and falls
back to the default for that key, so every problem of a file is reported in one go.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from crawler.config_checks import (
    Problems,
    check_keys,
    parse_duration_s,
    read_string_list,
    read_table,
    read_value,
)
from crawler.config_types import (
    DEVICES,
    ENGINES,
    LOG_FORMATS,
    LOG_LEVELS,
    COMMON_SOURCE_KEYS,
    QUANTIZATIONS,
    SOURCE_KINDS,
    ClassifierConfig,
    DaemonConfig,
    HttpConfig,
    ImagesConfig,
    QuarantineConfig,
    SourceConfig,
)


def load_daemon(raw: Mapping[str, Any], base: Path, problems: Problems) -> DaemonConfig:
    table = read_table(raw, "daemon", problems)
    defaults = DaemonConfig()
    check_keys("daemon", table, set(DaemonConfig.__dataclass_fields__), problems)
    data_dir_value = read_value("daemon", table, "data_dir", str(defaults.data_dir), str, problems)
    data_dir = Path(data_dir_value).expanduser()
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    return DaemonConfig(
        data_dir=data_dir,
        log_format=read_value("daemon", table, "log_format", defaults.log_format, str, problems,
                              choices=LOG_FORMATS),
        log_level=read_value("daemon", table, "log_level", defaults.log_level, str, problems,
                             choices=LOG_LEVELS),
        download_workers=read_value("daemon", table, "download_workers", defaults.download_workers,
                                    int, problems, minimum=1, maximum=1024),
        decode_workers=read_value("daemon", table, "decode_workers", defaults.decode_workers, int,
                                  problems, minimum=1, maximum=64),
        queue_size=read_value("daemon", table, "queue_size", defaults.queue_size, int, problems,
                              minimum=1, maximum=100_000),
        shutdown_grace_s=read_value("daemon", table, "shutdown_grace_s", defaults.shutdown_grace_s,
                                    float, problems, minimum=0),
        max_attempts=read_value("daemon", table, "max_attempts", defaults.max_attempts, int,
                                problems, minimum=1, maximum=100),
        metrics_port=read_value("daemon", table, "metrics_port", defaults.metrics_port, int,
                                problems, minimum=0, maximum=65535),
        watchdog=read_value("daemon", table, "watchdog", defaults.watchdog, bool, problems),
    )


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


def load_http(raw: Mapping[str, Any], problems: Problems) -> HttpConfig:
    table = read_table(raw, "http", problems)
    d = HttpConfig()
    check_keys("http", table, set(HttpConfig.__dataclass_fields__), problems)
    hosts = read_string_list("http", table, "allowed_private_hosts", (), problems)
    for host in hosts:
        if not _HOST_PORT.match(host):
            problems.add("http", "allowed_private_hosts",
                         f"{host!r} is not host:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\")")
    user_agent = read_value("http", table, "user_agent", d.user_agent, str, problems)
    if not user_agent.strip():
        problems.add("http", "user_agent", "must not be empty; name your crawler and a contact")
    config = HttpConfig(
        user_agent=user_agent,
        max_connections=read_value("http", table, "max_connections", d.max_connections, int,
                                   problems, minimum=1, maximum=4096),
        per_host_connections=read_value("http", table, "per_host_connections",
                                        d.per_host_connections, int, problems, minimum=1,
                                        maximum=1024),
        per_host_rate=read_value("http", table, "per_host_rate", d.per_host_rate, float, problems,
                                 minimum=0.01),
        timeout_s=read_value("http", table, "timeout_s", d.timeout_s, float, problems, minimum=0.1),
        connect_timeout_s=read_value("http", table, "connect_timeout_s", d.connect_timeout_s, float,
                                     problems, minimum=0.1),
        max_bytes=read_value("http", table, "max_bytes", d.max_bytes, int, problems, minimum=1024),
        max_feed_bytes=read_value("http", table, "max_feed_bytes", d.max_feed_bytes, int, problems,
                                  minimum=1024),
        max_redirects=read_value("http", table, "max_redirects", d.max_redirects, int, problems,
                                 minimum=0, maximum=30),
        max_retries=read_value("http", table, "max_retries", d.max_retries, int, problems,
                               minimum=0, maximum=20),
        retry_backoff_s=read_value("http", table, "retry_backoff_s", d.retry_backoff_s, float,
                                   problems, minimum=0),
        max_retry_after_s=read_value("http", table, "max_retry_after_s", d.max_retry_after_s, float,
                                     problems, minimum=0),
        allowed_private_hosts=frozenset(host.lower() for host in hosts),
    )
    as_read = (table.get("max_connections", d.max_connections) == config.max_connections
               and table.get("per_host_connections", d.per_host_connections)
               == config.per_host_connections)
    if as_read and config.per_host_connections > config.max_connections:
        # The connector's total limit would cap it: the written value could never be reached.
        problems.add("http", "per_host_connections",
                     f"{config.per_host_connections} is more than max_connections "
                     f"({config.max_connections}); lower per_host_connections or raise "
                     "max_connections")
    return config


def load_images(raw: Mapping[str, Any], problems: Problems) -> ImagesConfig:
    table = read_table(raw, "images", problems)
    d = ImagesConfig()
    check_keys("images", table, set(ImagesConfig.__dataclass_fields__), problems)
    formats = read_string_list("images", table, "formats", d.formats, problems)
    if "formats" in table and formats != d.formats:
        formats = _known_formats(formats, problems) or d.formats
    return ImagesConfig(
        max_width=read_value("images", table, "max_width", d.max_width, int, problems, minimum=1),
        max_height=read_value("images", table, "max_height", d.max_height, int, problems,
                              minimum=1),
        max_frames=read_value("images", table, "max_frames", d.max_frames, int, problems,
                              minimum=1),
        formats=tuple(item.upper() for item in formats),
        jpeg_draft=read_value("images", table, "jpeg_draft", d.jpeg_draft, bool, problems),
    )


def _known_formats(formats: tuple[str, ...], problems: Problems) -> tuple[str, ...]:
    """The names Pillow (and classifier.sniff) know; an unknown one would refuse every file."""
    from PIL import Image

    from classifier.sniff import EXTENSIONS

    Image.init()
    known = set(EXTENSIONS) | set(Image.OPEN)
    if not formats:
        problems.add("images", "formats",
                     "must list at least one format, e.g. [\"JPEG\", \"PNG\"]; with none "
                     "every image would be refused")
        return ()
    unknown = [name for name in formats if name.upper() not in known]
    for name in unknown:
        problems.add("images", "formats",
                     f"{name!r} is not an image format name; use Pillow's names: "
                     f"{', '.join(EXTENSIONS)} (or another Pillow format)")
    return () if unknown else formats


def load_classifier(raw: Mapping[str, Any], problems: Problems) -> ClassifierConfig:
    table = read_table(raw, "classifier", problems)
    d = ClassifierConfig()
    check_keys("classifier", table, set(ClassifierConfig.__dataclass_fields__), problems)
    model = read_value("classifier", table, "model", d.model, str, problems)
    if model is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", model):
        problems.add("classifier", "model",
                     f"{model!r} is not a model version name (see `megane models list`)")
    return ClassifierConfig(
        model=model,
        engine=read_value("classifier", table, "engine", d.engine, str, problems, choices=ENGINES),
        device=read_value("classifier", table, "device", d.device, str, problems, choices=DEVICES),
        batch_size=read_value("classifier", table, "batch_size", d.batch_size, int, problems,
                              minimum=1, maximum=1024),
        max_batch_delay_ms=read_value("classifier", table, "max_batch_delay_ms",
                                      d.max_batch_delay_ms, int, problems, minimum=0,
                                      maximum=60_000),
        inference_timeout_s=read_value("classifier", table, "inference_timeout_s",
                                       d.inference_timeout_s, float, problems, minimum=0.1),
        threads=read_value("classifier", table, "threads", d.threads, int, problems, minimum=0,
                           maximum=256),
        quantization=read_value("classifier", table, "quantization", d.quantization, str,
                                problems, choices=QUANTIZATIONS),
        exact_band=_exact_band(table, d.exact_band, problems),
    )


def _exact_band(table: Mapping[str, Any], default: tuple[float, float] | None,
                problems: Problems) -> tuple[float, float] | None:
    """`[classifier] exact_band`: [low, high] within [0, 1], or [] for int8 scores only."""
    if "exact_band" not in table:
        return default
    value = table["exact_band"]
    if value == []:
        return None
    if (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0.0 <= value[0] <= value[1] <= 1.0
    ):
        return (float(value[0]), float(value[1]))
    problems.add("classifier", "exact_band",
                 f"expected [low, high] with 0 <= low <= high <= 1 (NSFW scores re-checked in "
                 f"float32), or [] for none, got {value!r}")
    return default


def load_thresholds(raw: Mapping[str, Any], problems: Problems) -> Mapping[str, float]:
    table = read_table(raw, "thresholds", problems)
    thresholds: dict[str, float] = {"nsfw": 0.8}
    for tag, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add("thresholds", tag, f"expected a number between 0 and 1, got {value!r}")
        elif not 0.0 <= float(value) <= 1.0:
            problems.add("thresholds", tag, f"must be between 0 and 1, got {value!r}")
        else:
            thresholds[tag] = float(value)
    return MappingProxyType(thresholds)


def load_quarantine(raw: Mapping[str, Any], problems: Problems) -> QuarantineConfig:
    table = read_table(raw, "quarantine", problems)
    d = QuarantineConfig()
    check_keys("quarantine", table, set(QuarantineConfig.__dataclass_fields__), problems)
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
    tags = read_string_list("quarantine", table, "tags", d.tags, problems)
    return QuarantineConfig(
        tags=tags,
        trust_source_flags=read_value("quarantine", table, "trust_source_flags",
                                      d.trust_source_flags, bool, problems),
        review_band=band,
        safe_rating_is_nsfw=read_value("quarantine", table, "safe_rating_is_nsfw",
                                       d.safe_rating_is_nsfw, bool, problems),
    )


# The one policy key of `[tag_aliases]`; every other key is a tag. Told apart by its value
# (true/false, where a tag has an array of names), so a tag cannot be called this.
FILE_BY_SOURCE_TAGS = "file_by_source_tags"


def load_aliases(raw: Mapping[str, Any], problems: Problems) -> Mapping[str, tuple[str, ...]]:
    table = read_table(raw, "tag_aliases", problems)
    from crawler.sources.common import normalize_tag

    aliases: dict[str, tuple[str, ...]] = {}
    for tag in table:
        if tag == FILE_BY_SOURCE_TAGS:
            continue
        aliases[tag] = tuple(
            normalize_tag(alias)
            for alias in read_string_list("tag_aliases", table, tag, (), problems)
        )
    return MappingProxyType(aliases)


def load_file_by_source_tags(raw: Mapping[str, Any], problems: Problems) -> bool:
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


def load_sources(raw: Mapping[str, Any], problems: Problems) -> tuple[SourceConfig, ...]:
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
        # Every check runs whatever the others found, so one pass lists every problem.
        ok = True
        kind = table.get("kind")
        if kind not in SOURCE_KINDS:
            problems.add("sources", "kind",
                         f"must be one of {', '.join(SOURCE_KINDS)}; got {kind!r}", index)
            ok = False
        name = table.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", name):
            problems.add("sources", "name",
                         "required: a short name of letters, digits, '.', '_' or '-'", index)
            ok = False
        elif name in names:
            problems.add("sources", "name",
                         f"{name!r} is used by another source; give each source its own name",
                         index)
            ok = False
        else:
            names.add(name)
        intervals = _source_intervals(table, index, problems)
        settings = {key: item for key, item in table.items() if key not in COMMON_SOURCE_KEYS}
        if kind in SOURCE_KINDS:
            for message in validate_source_settings(kind, settings):
                key, _, text = message.partition(": ")
                problems.add("sources", key if text else None, text or message, index)
                ok = False
        if not ok or intervals is None or not isinstance(kind, str) or not isinstance(name, str):
            continue
        interval_s, min_interval_s, max_interval_s = intervals
        sources.append(SourceConfig(
            kind=kind, name=name, interval_s=interval_s,
            settings=MappingProxyType(settings),
            min_interval_s=min_interval_s, max_interval_s=max_interval_s,
        ))
    return tuple(sources)


DEFAULT_INTERVAL_S = 600.0


def _source_intervals(
    table: Mapping[str, Any], index: int, problems: Problems
) -> tuple[float, float, float] | None:
    """(interval, min_interval, max_interval) in seconds, or None if any is wrong.

    Explicit bounds must hold min_interval <= interval <= max_interval: the scheduler
    (crawler.schedule) would otherwise clamp one of them and silently ignore what was
    written. Defaults (interval / 4, at least 30 s; interval * 8) are clamped to interval.
    """
    given: dict[str, float] = {}
    bad = False
    for key in ("interval", "min_interval", "max_interval"):
        if key in table:
            try:
                given[key] = parse_duration_s(table[key])
            except ValueError as error:
                problems.add("sources", key, str(error), index)
                bad = True
    if bad:
        return None
    interval_s = given.get("interval", DEFAULT_INTERVAL_S)
    interval_text = (repr(table["interval"]) if "interval" in table
                     else f"{DEFAULT_INTERVAL_S:g}s by default")
    low, high = given.get("min_interval"), given.get("max_interval")
    if low is not None and high is not None and low > high:
        problems.add("sources", "min_interval",
                     f"{table['min_interval']!r} is longer than max_interval "
                     f"{table['max_interval']!r}; make min_interval <= interval <= max_interval",
                     index)
        return None
    if low is not None and low > interval_s:
        problems.add("sources", "min_interval",
                     f"{table['min_interval']!r} is longer than interval ({interval_text}); "
                     "make min_interval <= interval, or raise interval", index)
        bad = True
    if high is not None and high < interval_s:
        problems.add("sources", "max_interval",
                     f"{table['max_interval']!r} is shorter than interval ({interval_text}); "
                     "make max_interval >= interval, or lower interval", index)
        bad = True
    if bad:
        return None
    min_interval_s = low if low is not None else min(max(interval_s / 4, 30.0), interval_s)
    max_interval_s = high if high is not None else interval_s * 8
    return interval_s, min_interval_s, max_interval_s
