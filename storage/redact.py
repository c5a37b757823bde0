"""The one owner of redaction: text in, the same text with every credential removed.

`redact` takes a URL, an error message or any text that may quote URLs (aiohttp errors,
"not a feed at URL", a SQLite reason) and returns it with
- URL userinfo (``user:password@``) removed,
- the values of credential parameters (`SECRET_NAMES`, and names containing one of
  `SECRET_NAME_PARTS`) replaced by `REDACTED`, in a query string, in ``name=value`` text and
  in JSON-style ``"name": "value"`` pairs,
- Authorization values (``Authorization: Basic ...``) and bearer tokens replaced,
- every configured credential (`remember_secret`, fed from each source's settings when
  the source is built) replaced wherever it appears.

It lives in `storage` because every package may import `storage` (SPEC §2): the catalogue
and the sidecar writer redact at the storage boundary, the CLI and the review UI before
printing, and the log processor (`crawler.logs`) on every string of every event.
The function is idempotent and never raises.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote

REDACTED = "[redacted]"

# Names whose value is a credential, whatever the service: query parameters, config keys,
# log keys. The boorus' own pairs are here too: Gelbooru `api_key` + `user_id`, Moebooru
# `login` + `password_hash`; Mastodon/Bluesky tokens are `access_token`/`app_password`.
SECRET_NAMES = frozenset({
    "token", "key", "api_key", "apikey", "access_token", "refresh_token", "id_token",
    "auth_token", "password", "passwd", "pwd", "password_hash", "secret", "client_secret",
    "sig", "signature", "auth", "authorization", "proxy-authorization", "login", "user_id",
    "session", "sessionid", "cookie", "set-cookie", "app_password", "credential",
    "credentials", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
})
# A name containing one of these is a credential too (`csrf_token`, `x_api_key`, ...).
SECRET_NAME_PARTS = ("token", "secret", "passw", "api_key", "apikey", "signature",
                     "credential", "cookie", "authorization")

_NAME_PATTERN = (
    "(?:" + "|".join(sorted((re.escape(name) for name in SECRET_NAMES), key=len, reverse=True))
    + r"|[\w.-]*(?:" + "|".join(re.escape(part) for part in SECRET_NAME_PARTS) + r")[\w.-]*)"
)
# scheme://userinfo@ -> scheme:// (userinfo holds no "/", "?", "#", "@" or space).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s\"'<>]*@")
_USERINFO_PARTS = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.-]*://(?P<user>[^/?#@\s:\"'<>]*)(?::(?P<password>[^/?#@\s\"'<>]*))?@")
# name=value in a query string or free text; also percent-encoded (name%3Dvalue); a quoted
# value (`password='x y'`, a Python repr or a shell line) is masked whole, quotes included.
_PAIR = re.compile(
    r"(?P<name>(?:(?<![\w.-])|(?<=%3[fF])|(?<=%26))" + _NAME_PATTERN + r")"
    r"(?P<equals>=|%3[dD])(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
    r"|(?:(?!%26)[^&#\s\"'<>;,)\\])*)",
    re.IGNORECASE,
)
# "name": "value" (JSON, Python reprs) with either quote.
_QUOTED = re.compile(
    r"(?P<name>(?P<quote>[\"'])" + _NAME_PATTERN + r"(?P=quote)\s*:\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')",
    re.IGNORECASE,
)
# Authorization: <scheme> <credentials>, as a header line or a name=value pair.
_AUTHORIZATION = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>(?:(?:basic|bearer|digest|token|negotiate)\s+)?[^\s\"',;\\]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<name>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/-]+=*)", re.IGNORECASE)


# Configured credentials, masked wherever they appear (also where no name announces them,
# e.g. a server echoing a Basic token in an error body). Replaced whole under the lock, so
# `redact` reads a consistent pattern without taking it.
MIN_REMEMBERED_CHARS = 6
_remember_lock = threading.Lock()
_remembered: frozenset[str] = frozenset()
_remembered_pattern: re.Pattern[str] | None = None


def remember_secret(value: str) -> None:
    """From now on, in this process, mask `value` (and its URL-encoded forms) everywhere.

    Values shorter than `MIN_REMEMBERED_CHARS` are not remembered: masking them would
    garble ordinary text; their names still mask them.
    """
    global _remembered, _remembered_pattern
    text = value.strip()
    if len(text) < MIN_REMEMBERED_CHARS or text in REDACTED:
        return
    forms = {text, quote(text, safe=""), quote_plus(text, safe="")}
    with _remember_lock:
        if forms <= _remembered:
            return
        _remembered = _remembered | forms
        _remembered_pattern = re.compile("|".join(
            re.escape(form) for form in sorted(_remembered, key=len, reverse=True)))


def remember_secrets_in(settings: Mapping[str, Any]) -> None:
    """Remember the credentials in a source's settings: values of secret-named keys, and the
    userinfo and secret query values of any URL among the values."""
    for key, value in settings.items():
        if isinstance(value, str | int) and not isinstance(value, bool) and is_secret_name(key):
            remember_secret(str(value))
        if isinstance(value, str):
            for match in _USERINFO_PARTS.finditer(value):
                for part in match.group("user", "password"):
                    if part:
                        remember_secret(unquote(part))
            for match in _PAIR.finditer(value):
                remember_secret(unquote(match.group("value")))


def is_secret_name(name: str) -> bool:
    """True when a parameter, config or log key called `name` holds a credential."""
    lowered = name.lower()
    return lowered in SECRET_NAMES or any(part in lowered for part in SECRET_NAME_PARTS)


def redact(text: object) -> str:
    """`text` (a URL, an error, any message; `str()` of anything else) without credentials."""
    shown = text if isinstance(text, str) else str(text)
    remembered = _remembered_pattern
    if remembered is not None:
        shown = remembered.sub(REDACTED, shown)
    shown = _USERINFO.sub(r"\g<scheme>", shown)
    shown = _AUTHORIZATION.sub(_masked_authorization, shown)
    shown = _BEARER.sub(lambda match: f"{match.group('name')}{REDACTED}", shown)
    shown = _QUOTED.sub(_masked_quoted, shown)
    return _PAIR.sub(_masked_pair, shown)


def redact_value(value: Any) -> Any:
    """`value` with `redact` applied to every string inside (dicts, lists, tuples too).

    A mapping entry whose key `is_secret_name` is replaced whole by `REDACTED`. Numbers,
    booleans and None are kept; any other object (an exception, a URL, a path) becomes its
    redacted text.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: REDACTED if isinstance(key, str) and is_secret_name(key) and item
                else redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return redact(value)


def _masked_pair(match: re.Match[str]) -> str:
    if match.group("name").lower().endswith("authorization"):
        return match.group(0)  # already masked by _AUTHORIZATION, its scheme kept
    return f"{match.group('name')}{match.group('equals')}{REDACTED}"


def _masked_authorization(match: re.Match[str]) -> str:
    value = match.group("value")
    scheme, _, rest = value.partition(" ")
    kept = f"{scheme} " if rest else ""
    return f"{match.group('name')}{kept}{REDACTED}"


def _masked_quoted(match: re.Match[str]) -> str:
    quote = match.group("value")[0]
    return f"{match.group('name')}{quote}{REDACTED}{quote}"
