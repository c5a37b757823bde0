"""`check-config`'s secret check: a config file holding credentials must not be world-readable.

Pure over the parsed TOML and the file's mode; the secret names and patterns are the one
redactor's (`storage.redact`), so what the logs mask is what this check looks for.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage.redact import is_secret_name, redact

OTHERS_READABLE = stat.S_IROTH


def secret_keys(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the keys in `raw` that hold a credential (a secret-named key with a
    value, or a string the redactor would change, such as a URL with ``?token=``)."""
    found: list[str] = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.extend(secret_keys(value, f"{name}."))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    label = item.get("name")
                    found.extend(secret_keys(
                        item, f"{name}[{label!r}]." if isinstance(label, str) else
                        f"{name}[{index}]."))
                elif isinstance(item, str) and redact(item) != item:
                    found.append(f"{name}[{index}]")
        elif (is_secret_name(key) and value not in ("", None)) or (
                isinstance(value, str) and redact(value) != value):
            found.append(name)
    return found


def exposed_secrets_warning(path: Path, raw: Mapping[str, Any], mode: int) -> str | None:
    """A warning naming `path` when it holds secrets and other users may read it, else None.

    Group read stays allowed: the README installs the file as root:<service group> 0640.
    """
    if not mode & OTHERS_READABLE:
        return None
    keys = secret_keys(raw)
    if not keys:
        return None
    return (f"warning: {path} holds credentials ({', '.join(keys)}) and is readable by every "
            f"local user (mode {stat.S_IMODE(mode):04o}); run: chmod 640 {path}")
