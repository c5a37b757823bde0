"""Validation helpers for `config.toml`: typed reads that collect problems, durations.

Each problem is collected (never raised one by one) with the file and line of the key at
fault, so a user fixes them all at once (`config.toml:12: http.max_bytes: ...`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crawler.config_types import COMMON_SOURCE_KEYS

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


class Problems:
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
    return Problems(path, text).line_of(section, key)


def read_quietly(path: Path) -> str:
    """The text of a config file, or "" when it cannot be read (for locating keys only)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def read_table(raw: Mapping[str, Any], name: str, problems: Problems) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, None, f"must be a table ([{name}])")
        return {}
    return value


def check_keys(
    section: str, table: Mapping[str, Any], allowed: set[str], problems: Problems
) -> None:
    for key in table:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            problems.add(section, key, f"unknown key; known keys are: {hint}")


def read_value(
          section: str,
          table: Mapping[str, Any],
          key: str,
          default: Any,
          kind: type | tuple[type, ...],
          problems: Problems,
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


def read_string_list(
        section: str, table: Mapping[str, Any], key: str, default: tuple[str, ...],
        problems: Problems,
    ) -> tuple[str, ...]:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(section, key, f"expected an array of strings, got {value!r}")
        return default
    return tuple(value)


def unknown_source_keys(what: str, settings: Mapping[str, Any], keys: frozenset[str]) -> list[str]:
    """A problem ("key: message") for each key of a source table that `what` does not know.

    The list of known keys is the kind's own `keys` and the keys common to every source.
    """
    known = COMMON_SOURCE_KEYS | keys
    listed = ", ".join(sorted(known))
    return [f"{key}: unknown key for {what} (known: {listed})"
            for key in settings if key not in known]
