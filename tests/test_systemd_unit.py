"""The shipped systemd unit: what it promises, `systemd-analyze verify`, and its security rating."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_PATH = Path(__file__).resolve().parent.parent / "systemd" / "megane-crawler.service"
SHIPPED_EXECUTABLE = "/usr/local/bin/megane"
MAX_EXPOSURE = 2.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each a mapping of key to every value it was given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT_PATH.read_text())["Service"]


def run_systemd_analyze(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


def verifiable_copy(directory: Path) -> Path:
    """A copy of the unit whose ExecStart names an executable that exists on this machine.

    `verify` refuses an ExecStart binary that is missing; the shipped path is where pip puts
    the console script on a real install, so only the copy is rewritten.
    """
    text = UNIT_PATH.read_text()
    if not Path(SHIPPED_EXECUTABLE).exists():
        text = text.replace(f"ExecStart={SHIPPED_EXECUTABLE} ", f"ExecStart={sys.executable} ")
    copy = directory / UNIT_PATH.name
    copy.write_text(text)
    return copy


class TestUnitContents:
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            ("ExecStart", f"{SHIPPED_EXECUTABLE} run --config /etc/megane-crawler/config.toml"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("StateDirectory", "megane-crawler"),
            ("DynamicUser", "yes"),
            ("UMask", "0077"),
            ("Restart", "on-failure"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("RestrictNamespaces", "yes"),
            ("SystemCallArchitectures", "native"),
        ],
    )
    def test_service_setting(self, service: dict[str, list[str]], key: str, value: str) -> None:
        """The [Service] section sets each operational and hardening key the issue requires."""
        assert service.get(key) == [value]

    @pytest.mark.parametrize("key", ["WatchdogSec", "MemoryMax", "TimeoutStopSec", "RestartSec"])
    def test_limit_is_set(self, service: dict[str, list[str]], key: str) -> None:
        """Watchdog, memory and timing limits are set to a value, not left at defaults."""
        assert len(service.get(key, [])) == 1 and service[key][0]

    def test_system_call_filter_starts_from_system_service(
        self, service: dict[str, list[str]]
    ) -> None:
        """The system call allow list is @system-service, narrowed further, never widened."""
        filters = service["SystemCallFilter"]
        assert filters[0] == "@system-service"
        assert all(extra.startswith("~") for extra in filters[1:])

    def test_no_write_execute_restriction(self, service: dict[str, list[str]]) -> None:
        """MemoryDenyWriteExecute stays off, since TensorFlow's JIT-compiled kernels need it."""
        assert "MemoryDenyWriteExecute" not in service


@needs_systemd_analyze
class TestSystemdAnalyze:
    def test_verify_is_silent(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` accepts the unit without a single line on stderr."""
        result = run_systemd_analyze("verify", str(verifiable_copy(tmp_path)))
        assert result.stderr == ""
        assert result.returncode == 0

    def test_security_exposure_is_low(self) -> None:
        """`systemd-analyze --offline=yes security` rates the unit's exposure at most 2.0."""
        result = run_systemd_analyze(
            "--offline=yes", "security", "--threshold=20", "--no-pager", str(UNIT_PATH)
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
        assert result.returncode == 0, result.stderr
