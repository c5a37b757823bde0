"""Python code run in a child process under a resource limit, reporting back as JSON.

A real limit makes a real failure: RLIMIT_FSIZE makes every write past N bytes fail with
EFBIG (SIGXFSZ ignored), RLIMIT_NOFILE makes the next open fail with EMFILE. The limit is
set in the child only, after its imports, so the test process is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.daemon_process import REPOSITORY

PRELUDE = textwrap.dedent("""\
    import json, os, resource, signal, sys

    def limit_file_size(size_bytes):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, size_bytes))

    def limit_open_files():
        # Every descriptor in use now stays usable; the next new one fails with EMFILE.
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 1))

    def report(**fields):
        print(json.dumps(fields))

    def outcome(error):
        return {"type": type(error).__name__, "errno": getattr(error, "errno", None),
                "reason": getattr(error, "reason", None), "message": str(error)}
    """)


def run_limited(body: str, *args: str) -> dict[str, Any]:
    """Run PRELUDE + `body` in a fresh interpreter with `args` as sys.argv[1:]; its last
    stdout line, read as JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), *args], cwd=REPOSITORY,
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result
