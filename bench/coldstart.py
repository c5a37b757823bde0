"""Cold start: seconds from launching `megane run` to READY=1 on the notify socket.

    python -m bench.coldstart [--rounds 2] [--no-write]

Each launch is a fresh process, `megane run --config <tmp>/config.toml`, with
`NOTIFY_SOCKET` set to a datagram socket this benchmark binds (as systemd does); the time
runs from `Popen` to the first datagram holding `READY=1`; then SIGTERM, and the exit code
is checked (0). The config has one local RSS feed with no items (so nothing but start-up is
measured), the `builtin` model and the LiteRT engine (`auto` picks it on CPU hosts).

- first start: a new data folder, so the model is built and converted to TFLite;
- warm start: the same data folder again (the conversion is cached in `cache/`);
- references, same run: `python -c "import tensorflow"` and `python -c pass`.

Rounds are interleaved (each round makes a new data folder), best kept. The goal set
here: a warm start takes less time than importing TensorFlow alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import stamp, summary_row, write_section
from bench.servers import MediaHosts, corpus, write_daemon_config

READY_TIMEOUT_S = 300.0


def megane_command() -> list[str]:
    executable = shutil.which("megane")
    return [executable] if executable else [sys.executable, "-m", "crawler.cli"]


def write_config(folder: Path, feed_url: str, allowed: list[str]) -> Path:
    return write_daemon_config(folder, feed_url, allowed, source_name="empty")


def time_to_ready(config: Path, log_path: Path) -> float:
    """Seconds from launching `megane run` to READY=1; the daemon is then stopped."""
    with tempfile.TemporaryDirectory(prefix="megane-notify-") as folder:
        address = str(Path(folder) / "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(1.0)
        environment = dict(os.environ, NOTIFY_SOCKET=address, TF_CPP_MIN_LOG_LEVEL="2")
        environment.pop("WATCHDOG_USEC", None)
        with open(log_path, "ab") as log:
            started = time.perf_counter()
            process = subprocess.Popen([*megane_command(), "run", "--config", str(config)],
                                       stdout=log, stderr=log, env=environment)
            try:
                ready_s = _wait_ready(listener, process, started)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                listener.close()
        if code != 0:
            raise RuntimeError(f"megane run exited {code} after SIGTERM; see {log_path}")
        return ready_s


def _wait_ready(listener: socket.socket, process: subprocess.Popen[bytes],
                started: float) -> float:
    while time.perf_counter() - started < READY_TIMEOUT_S:
        try:
            message = listener.recv(4096).decode(errors="replace")
        except TimeoutError:
            if process.poll() is not None:
                raise RuntimeError(
                    f"megane run exited {process.returncode} before READY=1") from None
            continue
        if "READY=1" in message.split("\n"):
            return time.perf_counter() - started
    raise RuntimeError(f"no READY=1 within {READY_TIMEOUT_S:.0f} s")


def time_command(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return time.perf_counter() - started


def measure(rounds: int, log_path: Path) -> dict[str, float]:
    best = {"first": float("inf"), "warm": float("inf"), "tensorflow": float("inf"),
            "python": float("inf")}
    with MediaHosts(corpus(1), hosts=1, latency_ms=0) as hosts, \
            tempfile.TemporaryDirectory(prefix="megane-bench-start-") as temporary:
        feed = hosts.feed_url(0)
        for number in range(rounds):
            folder = Path(temporary) / f"round-{number}"
            folder.mkdir()
            config = write_config(folder, feed, hosts.allowed)
            figures = {
                "first": time_to_ready(config, log_path),
                "warm": time_to_ready(config, log_path),
                "tensorflow": time_command([sys.executable, "-c", "import tensorflow"]),
                "python": time_command([sys.executable, "-c", "pass"]),
            }
            print(f"  round {number + 1}: " + ", ".join(
                f"{name} {value:.2f} s" for name, value in figures.items()), file=sys.stderr)
            for name, value in figures.items():
                best[name] = min(best[name], value)
    return best


def render(best: dict[str, float], rounds: int, command: str) -> str:
    warm_vs_tf = best["warm"] / best["tensorflow"]
    return "\n".join([
        "## Cold start", "", stamp(command), "",
        ("`megane run` (a fresh process, `NOTIFY_SOCKET` bound by the benchmark) until READY=1; "
        "one empty local RSS feed, `builtin` model, engine `auto` (LiteRT on this CPU host). "
        f"Best of {rounds} interleaved rounds."), "",
        summary_row("cold start, warm (TFLite cached), to READY=1", f"{best['warm']:.2f} s",
                    f"`import tensorflow` {best['tensorflow']:.2f} s", f"{warm_vs_tf:.2f}x",
                    "< 1x (faster than importing TF)", "yes" if warm_vs_tf < 1 else "no"),
        summary_row("cold start, first (build + TFLite conversion), to READY=1",
                    f"{best['first']:.2f} s", f"warm start {best['warm']:.2f} s",
                    f"{best['first'] / best['warm']:.1f}x", "once per model version", "-"),
        "",
        "| start | seconds to READY=1 | ratio to `import tensorflow` |",
        "|---|---|---|",
        (f"| first start (builds open_nsfw, converts to TFLite, caches it) | "
        f"{best['first']:.2f} | {best['first'] / best['tensorflow']:.2f}x |"),
        (f"| warm start (cached TFLite; TensorFlow never imported) | {best['warm']:.2f} | "
        f"{warm_vs_tf:.2f}x |"),
        f"| reference: `python -c \"import tensorflow\"` | {best['tensorflow']:.2f} | 1.00x |",
        (f"| reference: `python -c pass` | {best['python']:.2f} | "
        f"{best['python'] / best['tensorflow']:.2f}x |"),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, best kept")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the .md")
    arguments = parser.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / "megane-bench-coldstart.log"
    log_path.unlink(missing_ok=True)
    best = measure(arguments.rounds, log_path)
    section = render(best, arguments.rounds, "python -m bench.coldstart")
    print(section)
    if not arguments.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
