"""Where converted TFLite files live: one cache per user, shared by every command and data_dir.

The cache is keyed by the model's content (see `engines.cached_tflite`), never by the data_dir
that asked for it, so `megane classify`, the daemon and a brand new data_dir all reuse the one
conversion (~6 s on 2 cores). The folder is, first match wins:

1. `$MEGANE_CACHE_DIR` (an explicit override),
2. `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`, i.e. /var/cache/megane-crawler),
3. `$XDG_CACHE_HOME/megane-crawler`,
4. `~/.cache/megane-crawler`,

with the .tflite files in its `tflite/` subfolder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

CACHE_ENV = "MEGANE_CACHE_DIR"
APPLICATION = "megane-crawler"
TFLITE_SUBDIR = "tflite"


def cache_root(environ: Mapping[str, str]) -> Path:
    """The per-user cache folder of megane-crawler (not created here)."""
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    if environ.get("CACHE_DIRECTORY"):
        # systemd may list several folders separated by ':'; ours is the first.
        return Path(environ["CACHE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]).expanduser() / APPLICATION
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / APPLICATION


def tflite_cache_dir(environ: Mapping[str, str]) -> Path:
    """The folder of converted .tflite files (see the module docstring)."""
    return cache_root(environ) / TFLITE_SUBDIR
