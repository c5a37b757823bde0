"""structlog setup: JSON lines under systemd (or any non-terminal), the console renderer on a
terminal. Configured once, from `main()`.

Secrets never reach a log line: `redact_event`, the last processor before the renderer,
masks values of secret-named keys and every credential inside any string value.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from storage.redact import REDACTED, is_secret_name, redact_value


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor, last before the renderer: no credential survives it.

    A value under a secret-named key (`storage.redact.is_secret_name`) is replaced whole;
    every other string, also inside dicts and lists and the formatted traceback, goes
    through `storage.redact.redact`.
    """
    for key, value in list(event_dict.items()):
        if key != "event" and is_secret_name(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


def configure_logging(log_format: str = "auto", log_level: str = "info",
                      stream: TextIO | None = None) -> None:
    """Configure structlog for this process (JSON off a terminal, console on one)."""
    output = stream or sys.stderr
    use_console = log_format == "console" or (
        log_format == "auto" and hasattr(output, "isatty") and output.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(
            colors=output.isatty() if hasattr(output, "isatty") else False)
        if use_console else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, log_level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
