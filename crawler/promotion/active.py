"""`models/ACTIVE`: the promoted version, read and written atomically; `promote` writes it.

`megane models promote VERSION` writes `models/ACTIVE` (JSON: version, promoted_at, and for
`--shadow N` a shadow request naming the model to keep serving meanwhile). The daemon serves
ACTIVE's version when the file exists, else `[classifier] model` (`crawler.serving`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from classifier.errors import ModelError
from storage.placement import PRIVATE_FILE_MODE, write_file_atomic

log = structlog.get_logger("megane.promotion")

ACTIVE_FILENAME = "ACTIVE"
SHADOW_FILENAME = "shadow.json"


@dataclass(frozen=True)
class ActiveModel:
    """The content of `models/ACTIVE`.

    `shadow_images` set means the shadow run is still to do; until it is done the daemon
    keeps serving `previous`.
    """

    version: str
    promoted_at: str
    shadow_images: int | None = None
    previous: str | None = None
    shadow_report: str | None = None

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.version, self.promoted_at, self.shadow_images)

    @property
    def serving(self) -> str:
        """The version to serve now (the previous one while a shadow run is pending)."""
        if self.shadow_images and self.previous:
            return self.previous
        return self.version

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"version": self.version, "promoted_at": self.promoted_at}
        if self.shadow_images:
            document["shadow"] = {"images": self.shadow_images, "previous": self.previous}
        if self.shadow_report:
            document["shadow_report"] = self.shadow_report
        return document

    @classmethod
    def from_json(cls, document: Any, where: Path) -> ActiveModel:
        if not isinstance(document, dict) or not isinstance(document.get("version"), str):
            raise ModelError(f"{where}: not an ACTIVE document ({{\"version\": ...}})")
        shadow = document.get("shadow")
        images = previous = None
        if isinstance(shadow, dict):
            images = shadow.get("images")
            previous = shadow.get("previous")
            if not isinstance(images, int) or images < 1 or not isinstance(previous, str):
                raise ModelError(f"{where}: bad shadow request {shadow!r}")
        return cls(document["version"], str(document.get("promoted_at", "")), images,
                   previous, document.get("shadow_report"))


def active_path(models_dir: Path) -> Path:
    return Path(models_dir) / ACTIVE_FILENAME


def read_active(models_dir: Path) -> ActiveModel | None:
    """ACTIVE, or None when absent; ModelError when it is unreadable."""
    path = active_path(models_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ModelError(f"{path}: unreadable: {error}") from error
    try:
        return ActiveModel.from_json(json.loads(text), path)
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: not JSON: {error}") from error


def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write a JSON document atomically and durably (storage's one atomic writer).

    Mode 0600 whatever the umask: it lies in data_dir, private but for library/.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(document), indent=2, sort_keys=True) + "\n"
    write_file_atomic(path, text.encode("utf-8"), PRIVATE_FILE_MODE)


def write_active(models_dir: Path, active: ActiveModel) -> None:
    try:
        write_json_atomic(active_path(models_dir), active.to_json())
    except OSError as error:
        raise ModelError(f"{active_path(models_dir)}: cannot write: {error}") from error


def serving_version(models_dir: Path, configured: str | None) -> tuple[str, str]:
    """(version to serve, origin): see `crawler.serving.resolve_serving`."""
    from crawler.serving import resolve_serving

    serving = resolve_serving(configured, models_dir)
    return serving.version, serving.origin


def promote(
    models_dir: Path, version: str, *, configured: str | None, now: datetime,
    shadow_images: int | None = None,
) -> ActiveModel:
    """Check VERSION loads, then make it active (after a shadow run of N images if asked)."""
    from classifier.models import read_model_version
    from crawler.serving import CONFIG_KEY

    read_model_version(Path(models_dir), version)
    if configured is not None and configured != version:
        raise ModelError(
            f"{CONFIG_KEY} = {configured!r} in config.toml pins the served version, so "
            f"{version!r} would never be served: remove the key (the daemon then serves "
            f"models/ACTIVE) or set it to {version!r}"
        )
    if shadow_images is not None and shadow_images < 1:
        raise ModelError("--shadow needs a number of images of at least 1")
    current, _ = serving_version(models_dir, configured)
    stamp = now.astimezone(UTC).isoformat(timespec="microseconds")
    active = ActiveModel(version, stamp, shadow_images if shadow_images else None,
                         current if shadow_images else None)
    write_active(Path(models_dir), active)
    log.info("model_promotion_requested", version=version, previous=current,
             shadow_images=shadow_images)
    return active

