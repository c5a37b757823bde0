"""HTTP header values from the network: the one Retry-After parser, and what may be sent back.

aiohttp decodes received header bytes as UTF-8 with ``surrogateescape``: a raw Latin-1 byte
such as 0xE4 arrives as the lone surrogate U+DCE4. Such a value cannot be sent again
unchanged (aiohttp encodes outgoing headers as strict UTF-8), so `sendable_header_value`
says which values round-trip byte for byte; the Fetcher drops the others with a log line.

Pure functions; time comes in as `now` (Unix seconds).
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC

# delta-seconds (RFC 9110 §10.2.3) is digits; a decimal fraction is accepted, as some
# servers send "1.5". A sign, an exponent or anything else is not a delay.
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_FORBIDDEN_IN_VALUE = frozenset("\r\n\x00")


def parse_retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value, or None when it is absent or not understood.

    Delta-seconds (``120``, ``1.5``) or an HTTP-date; a date without a zone is read as GMT,
    the only zone HTTP-dates have. A date in the past means 0. Negative numbers, numbers too
    large to be finite, and garbage mean None. Never raises.
    """
    if not value:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        seconds = when.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def sendable_header_value(value: str) -> bool:
    """Whether `value` goes out on the wire as exactly the bytes it was received as.

    False for a value holding lone surrogates (undecodable bytes kept by surrogateescape)
    or CR, LF, NUL (which aiohttp refuses to send).
    """
    if _FORBIDDEN_IN_VALUE.intersection(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_header_value(value: str, limit: int = 200) -> str:
    """`value` fit for a log line: undecodable bytes as ``\\xNN`` escapes, at most `limit`."""
    text = value.encode("utf-8", "surrogateescape" if _only_escaped(value) else "surrogatepass")
    shown = text.decode("utf-8", "backslashreplace")
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _only_escaped(value: str) -> bool:
    return all(not 0xD800 <= ord(char) <= 0xDFFF or 0xDC80 <= ord(char) <= 0xDCFF
               for char in value)
