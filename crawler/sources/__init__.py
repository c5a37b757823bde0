"""Sources: one module per kind, behind `Source` (see base.py).

Each kind module exposes `validate(settings) -> list[str]` (problems as "key: message")
and `create(config, context) -> Source`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from crawler.sources.base import (
    Document,
    HttpClient,
    PollResult,
    Source,
    SourceContext,
)
from storage.redact import remember_secrets_in

if TYPE_CHECKING:
    from crawler.config import SourceConfig

__all__ = [
    "Document",
    "HttpClient",
    "PollResult",
    "Source",
    "SourceContext",
    "create_source",
    "validate_source_settings",
]


def _module(kind: str) -> ModuleType:
    return importlib.import_module(f"crawler.sources.{kind}")


def validate_source_settings(kind: str, settings: Mapping[str, Any]) -> list[str]:
    """Problems with a source's own keys, each as "key: message"."""
    try:
        module = _module(kind)
    except ModuleNotFoundError:
        return [f"kind: the {kind!r} source is not available in this version"]
    problems: list[str] = module.validate(settings)
    return problems


def create_source(config: SourceConfig, context: SourceContext) -> Source:
    """Build the source for one `[[sources]]` table (already validated).

    Its credentials are remembered by the redactor first, so they are masked wherever
    they might turn up (errors, logs, the catalogue).
    """
    remember_secrets_in(config.settings)
    source: Source = _module(config.kind).create(config, context)
    return source
