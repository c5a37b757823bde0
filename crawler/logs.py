"""structlog setup: JSON lines under systemd (or any non-terminal), the console renderer on a
terminal. Configured once, from `main()`.

Secrets never reach a log line: values of keys that name a secret are masked, and URLs
lose their password and any token-like query parameter.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEYS = re.compile(r"(token|password|passwd|secret|api_key|apikey|authorization|cookie)",
                         re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&](?:access_token|token|api_key|apikey|password|key|sig|signature)=)[^&#\s]*",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    """Mask a URL's password and token-like query values inside `text`."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{REDACTED}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('key')}{REDACTED}", text)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named keys and secrets inside string values."""
    for key, value in list(event_dict.items()):
        if key != "event" and SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def configure_logging(log_format: str = "auto", log_level: str = "info",
                      stream: TextIO | None = None) -> None:
    """Configure structlog for this process (JSON off a terminal, console on one)."""
    output = stream or sys.stderr
    use_console = log_format == "console" or (
        log_format == "auto" and hasattr(output, "isatty") and output.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=output.isatty() if hasattr(output, "isatty") else False)
        if use_console else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, log_level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
