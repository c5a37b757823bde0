"""Keeping TensorFlow's native start-up lines off stderr unless `log_level = "debug"`.

On import TensorFlow's C++ runtime writes lines that are not ours and not JSON ("oneDNN
custom operations are on", "Could not find cuda drivers", on CPU hosts "failed call to
cuInit"...). Two mechanisms, both needed:

- `TF_CPP_MIN_LOG_LEVEL=3` (set by `configure_native_logs`, called from `main()` before
  anything imports TensorFlow) silences what TensorFlow logs once absl is initialised,
  e.g. the cuInit error, and absl's Python logger is set to errors only;
- the lines written *before* absl is initialised ignore every setting, so the first
  `import tensorflow` (`import_tensorflow`) runs with file descriptor 2 captured; afterwards
  the captured lines that are not native log lines (another thread's output) are written
  back to stderr, the native ones are dropped. LiteRT's interpreter start-up line is
  dropped the same way (`quiet_native_stderr`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from types import ModuleType

_NATIVE_LINE = re.compile(
    r"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"  # absl/glog prefix
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions:"
    r"|WARNING:absl:"
    r"|INFO: Created TensorFlow Lite (?:XNNPACK )?delegate)"
)
_state = {"quiet": False}
_import_lock = threading.Lock()


def configure_native_logs(log_level: str, environ: MutableMapping[str, str]) -> None:
    """Silence TensorFlow's native logging unless `log_level` is "debug" (call from main)."""
    quiet = log_level.lower() != "debug"
    _state["quiet"] = quiet
    if not quiet:
        return
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def is_native_line(line: str) -> bool:
    """Whether a stderr line comes from TensorFlow's (or absl's) native logging."""
    return bool(_NATIVE_LINE.match(line))


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, its pre-absl start-up lines dropped when logs are quiet."""
    if "tensorflow" in sys.modules or not _state["quiet"]:
        return importlib.import_module("tensorflow")
    with _import_lock:
        if "tensorflow" in sys.modules:
            return importlib.import_module("tensorflow")
        with _captured_stderr():
            return importlib.import_module("tensorflow")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Drop native log lines written meanwhile (LiteRT's "Created TensorFlow Lite XNNPACK
    delegate" on every interpreter), unless logs are at debug; other lines are kept."""
    if not _state["quiet"]:
        yield
        return
    with _import_lock, _captured_stderr():
        yield


@contextlib.contextmanager
def _captured_stderr() -> Iterator[None]:
    """Point fd 2 at a temporary file meanwhile; replay its non-native lines afterwards."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace")
                    .splitlines(keepends=True) if not is_native_line(line)]
            if kept:
                os.write(2, "".join(kept).encode("utf-8"))
