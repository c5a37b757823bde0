"""Run every benchmark, or some: `python -m bench [NAME ...] [--quick] [-- ARGS]`.

    python -m bench                   # all of them (about 15-20 minutes on 2 cores)
    python -m bench --quick           # smaller inputs, one round each (a few minutes)
    python -m bench pipeline rescore  # some
    python -m bench download -- --count 500   # one, with its own options
    python -m bench --list

Each benchmark runs in its own process (`python -m bench.NAME`), so imports, memory and
threads of one never colour another, and writes its section of bench/BENCHMARKS.md.
Benchmarks whose module is missing (e.g. one still being written) are skipped with a
message. `decode` and `memory` print their figures; when they do not write a section
themselves, their output is put in "## Decode" / "## Memory" here.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time

from bench.report import read_section, stamp, summary_row, write_section

BENCHMARKS = ("download", "pipeline", "decode", "classifier", "memory", "rescore",
              "coldstart", "classify", "int8_error")
QUICK_ARGS = {
    "download": ["--count", "300", "--rounds", "1", "--slow-count", "100"],
    "pipeline": ["--count", "150", "--rounds", "1", "--no-serial"],
    "rescore": ["--count", "10000"],
    "coldstart": ["--rounds", "1"],
    "classify": ["--count", "100", "--rounds", "1"],
    "int8_error": ["--blobs", "96", "--search-steps", "10"],
    "decode": ["--seconds", "1", "--rounds", "2"],
    "memory": ["--backlogs", "1000", "10000", "--seconds", "20"],
}
PRINTED_SECTIONS = {"decode": "## Decode", "memory": "## Memory"}


def available(name: str) -> bool:
    return importlib.util.find_spec(f"bench.{name}") is not None


def run(name: str, arguments: list[str]) -> tuple[int, str]:
    """Run one benchmark in a child process; its output is shown as it comes."""
    command = [sys.executable, "-m", f"bench.{name}", *arguments]
    print(f"== {' '.join(['python', '-m', f'bench.{name}', *arguments])}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return process.wait(), "".join(lines)


def printed_section(name: str, output: str, arguments: list[str]) -> str:
    """A section for a benchmark that only prints its figures."""
    title = PRINTED_SECTIONS[name]
    command = " ".join(["python -m bench." + name, *arguments])
    lines = [title, "", stamp(command), ""]
    if name == "decode":
        lines += _decode_summary(output)
    if name == "memory":
        lines += _memory_summary(output)
    lines += ["```", output.strip(), "```", ""]
    return "\n".join(lines)


def _decode_summary(output: str) -> list[str]:
    """Summary rows from bench.decode's output: the draft path against the naive one."""
    rows = []
    current = None
    for line in output.splitlines():
        if line and not line.startswith(" "):
            current = line.split(" (")[0]
        found = re.match(r"\s+decode_image, draft 256 \+ resize\s+([\d.]+) images/s\s+x([\d.]+)",
                         line)
        if found and current:
            ratio = float(found.group(2))
            jpeg = "JPEG" in current
            # Draft mode is JPEG-only: other formats must merely not be slower (validation).
            goal, met = ("> 1x", ratio > 1) if jpeg else ("no slower (>= 0.95x)", ratio >= 0.95)
            rows.append(summary_row(
                f"decode + resize, {current}: ours vs naive", f"{found.group(1)}/s",
                "naive full decode + resize", f"{ratio:.2f}x", goal, "yes" if met else "no"))
    return [*rows, ""] if rows else []


def _memory_summary(output: str) -> list[str]:
    """A summary row from bench.memory's output: peak RSS of the largest vs smallest backlog."""
    peaks = re.findall(r"backlog\s+(\d+): peak RSS\s+([\d.]+) MiB", output)
    ratio = re.search(r"peak RSS ratio (\d+)/(\d+): ([\d.]+)", output)
    if len(peaks) < 2 or ratio is None:
        return []
    (small, small_mib), (large, large_mib) = peaks[0], peaks[-1]
    value = float(ratio.group(3))
    return [summary_row(
        f"peak RSS, backlog {int(large):,} vs {int(small):,} pending", f"{large_mib} MiB",
        f"{small_mib} MiB", f"{value:.2f}x", "flat (<= 1.1x)", "yes" if value <= 1.1 else "no"),
        ""]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, passthrough = argv[:index], argv[index + 1:]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one round each")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    arguments = parser.parse_args(argv)
    if arguments.list:
        for name in BENCHMARKS:
            print(f"{name:12s} {'' if available(name) else '(module missing)'}")
        return 0
    unknown = [name for name in arguments.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    if passthrough and len(arguments.names) != 1:
        parser.error("options after -- need exactly one benchmark name")
    names = arguments.names or list(BENCHMARKS)
    failed = []
    started = time.monotonic()
    for name in names:
        if not available(name):
            print(f"== skipping {name}: bench/{name}.py does not exist yet", flush=True)
            continue
        extra = passthrough or (QUICK_ARGS.get(name, []) if arguments.quick else [])
        before = read_section(PRINTED_SECTIONS[name]) if name in PRINTED_SECTIONS else None
        code, output = run(name, extra)
        if code != 0:
            print(f"== {name} failed (exit {code})", flush=True)
            failed.append(name)
            continue
        if name in PRINTED_SECTIONS and read_section(PRINTED_SECTIONS[name]) == before:
            write_section(printed_section(name, output, extra))
    print(f"== done in {time.monotonic() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
