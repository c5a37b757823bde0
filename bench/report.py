"""bench/BENCHMARKS.md, edited one "## " section at a time, and the machine it came from.

Every benchmark replaces only its own section; sections written by other modules (e.g.
"## Classifier" by `bench.classifier`) are kept as they are. A section may carry summary
rows as HTML comments, `<!-- summary: | figure | value | baseline | ratio | goal | met | -->`;
after each write the "## Summary" table at the top is rebuilt from every section's rows.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

BENCHMARKS_PATH = Path(__file__).resolve().parent / "BENCHMARKS.md"
SUMMARY_TITLE = "## Summary"
# The order sections take when first written; existing sections keep their place.
SECTION_ORDER = ("## Summary", "## Download", "## Pipeline", "## Decode", "## Memory",
                 "## Rescore", "## Cold start", "## Profile", "## Classifier",
                 "## int8 against float32", "## Classify command")
_SUMMARY_ROW = re.compile(r"^<!-- summary: (\|.*\|) -->$", re.MULTILINE)
_HEADER = """# Benchmarks

Reproduce everything with `python -m bench` (one benchmark: `python -m bench NAME`; list:
`python -m bench --list`). Each figure is a ratio against a baseline measured in the same
run on the same machine: the machines here are shared, so absolute figures of separate
runs differ by up to 2x while ratios within one run hold.
"""


def cpu_model() -> str:
    """The CPU's model name from lscpu (platform.processor() where lscpu is missing)."""
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.CalledProcessError):
        pass
    return model


def machine() -> str:
    """`<CPU model>, <n> cores, <arch>, <memory>, no GPU` from lscpu and /proc/meminfo."""
    model = cpu_model()
    memory = ""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        memory = f", {int(found.group(1)) / 2**20:.0f} GiB RAM" if found else ""
    except OSError:
        pass
    gpu = "a GPU" if Path("/dev/nvidia0").exists() or Path("/dev/dri").exists() else "no GPU"
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}{memory}, {gpu}"


def stamp(command: str) -> str:
    """The line every section starts with: when, where, and the command that made it."""
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}, Python "
            f"{platform.python_version()}, by `{command}`.")


def summary_row(figure: str, value: str, baseline: str, ratio: str, goal: str, met: str) -> str:
    """A summary row to put in a section (an HTML comment, invisible when rendered)."""
    cells = " | ".join(cell.replace("|", "/") for cell in
                       (figure, value, baseline, ratio, goal, met))
    return f"<!-- summary: | {cells} | -->"


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first "## " heading, and (title, whole section text) pairs."""
    parts = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    head, sections = parts[0], []
    for part in parts[1:]:
        title = part.split("\n", 1)[0].strip()
        sections.append((title, part.rstrip("\n") + "\n"))
    return head, sections


def _summary(sections: list[tuple[str, str]]) -> str:
    rows = []
    for title, body in sections:
        found = _SUMMARY_ROW.findall(body)
        if found:
            rows.extend(found)
        elif title not in (SUMMARY_TITLE, "## Profile"):
            rows.append(f"| {title[3:]} | see its section | | | | |")
    return "\n".join([
        SUMMARY_TITLE, "",
        "| figure | value | baseline (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
        *rows, ""])


def write_section(section: str, path: Path = BENCHMARKS_PATH) -> None:
    """Replace (or add) the section whose "## " title `section` starts with; keep the rest."""
    title = section.split("\n", 1)[0].strip()
    if not title.startswith("## "):
        raise ValueError(f"a section starts with a '## ' title, not {title!r}")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, sections = _split(text)
    head = _HEADER + f"\nMachine: {machine()}.\n"
    titles = [name for name, _ in sections]
    new = section.rstrip("\n") + "\n"
    if title in titles:
        sections[titles.index(title)] = (title, new)
    else:
        rank = SECTION_ORDER.index(title) if title in SECTION_ORDER else len(SECTION_ORDER)
        position = len(sections)
        for index, (name, _) in enumerate(sections):
            other = SECTION_ORDER.index(name) if name in SECTION_ORDER else len(SECTION_ORDER)
            if other > rank:
                position = index
                break
        sections.insert(position, (title, new))
    summary = _summary(sections)
    titles = [name for name, _ in sections]
    if SUMMARY_TITLE in titles:
        sections[titles.index(SUMMARY_TITLE)] = (SUMMARY_TITLE, summary)
    else:
        sections.insert(0, (SUMMARY_TITLE, summary))
    body = "\n".join(part for _, part in sections)
    path.write_text(head.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n", encoding="utf-8")


def read_section(title: str, path: Path = BENCHMARKS_PATH) -> str | None:
    """The current text of one section, or None."""
    if not path.exists():
        return None
    _, sections = _split(path.read_text(encoding="utf-8"))
    return next((body for name, body in sections if name == title), None)
