"""The settings `config.toml` is loaded into (SPEC §4): frozen dataclasses, units in names.

Defaults here are the defaults of the shipped file; `crawler.config` loads and validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

LOG_FORMATS = ("json", "console", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENGINES = ("auto", "tensorflow", "litert")
QUANTIZATIONS = ("none", "dynamic_range")
DEVICES = ("auto", "cpu", "gpu")
SOURCE_KINDS = ("mastodon", "bluesky", "booru", "rss", "folder")
# Keys every `[[sources]]` table may have, whatever its kind (each kind adds its own).
COMMON_SOURCE_KEYS = frozenset({"kind", "name", "interval", "min_interval", "max_interval"})


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
    # "dynamic_range": int8 weights on LiteRT, opt-in (see classifier.exact_band).
    quantization: Literal["none", "dynamic_range"] = "none"
    exact_band: tuple[float, float] | None = (0.10, 1.0)  # None: int8 scores everywhere

    def engine_options(self) -> dict[str, Any]:
        """The keyword arguments of `classifier.models.load_classifier` these keys set."""
        return {"engine": self.engine, "device": self.device, "batch_size": self.batch_size,
                "threads": self.threads, "quantization": self.quantization,
                "exact_band": self.exact_band}


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
