"""`megane import DIR`: classify and file a folder tree as if it came from a source.

Every file under DIR is accounted for. The walk (`walk`) sorts each entry into a candidate
image (its magic bytes name an image format, whatever its extension) or a skipped file with
a reason (`not_an_image`, `hidden`, `symlink`, `not_regular_file: fifo`, `unreadable`). The
candidates then go through the real daemon, once, with a folder source named `import` over
DIR in magic-bytes mode (`sniff = true`), so they are filed exactly as a source's images
are. The report (`ImportReport`) gives, per file, its final state and reason, and in total:
files found, candidates, states, duplicates, rejections and skips by reason.

Subfolders are walked unless `recursive` is false; hidden files and folders (a leading dot)
are skipped, as the folder source skips them. File names in any byte encoding are handled:
they are shown with U+FFFD for undecodable bytes and identified by their percent-encoded
file:// URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from crawler.config import Config, SourceConfig
from crawler.localcopy import display_name
from crawler.sources.folder import file_url, sniff_file
from storage.errors import MeganeError
from storage.records import State

log = structlog.get_logger()

SOURCE_NAME = "import"
FINAL_STATES = (State.LIBRARY, State.QUARANTINE, State.HELD, State.REJECTED)
_FINAL = frozenset(state.value for state in FINAL_STATES)
PROGRESS_INTERVAL_S = 0.5
DUPLICATE_PREFIXES = ("duplicate", "near_duplicate")


@dataclass(frozen=True)
class WalkedFile:
    """One entry met by the walk: an image candidate (`skip_reason` None) or a skipped file."""

    path: Path
    url: str
    skip_reason: str | None
    image_format: str | None = None

    @property
    def name(self) -> str:
        return display_name(self.path)


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file: `state` is a catalogue state, or "skipped"."""

    name: str
    url: str
    state: str
    reason: str | None
    format: str | None = None
    sha256: str | None = None

    @property
    def duplicate(self) -> bool:
        return (self.reason or "").startswith(DUPLICATE_PREFIXES)


@dataclass
class ImportReport:
    """The summary `megane import` prints (as a table, or as one JSON document)."""

    directory: str
    recursive: bool
    files: list[FileOutcome] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.files)

    @property
    def images(self) -> int:
        return sum(1 for item in self.files if item.state != "skipped")

    def states(self) -> dict[str, int]:
        counts = Counter(item.state for item in self.files if item.state != "skipped")
        return {state: counts[state] for state in sorted(counts)}

    @property
    def duplicates(self) -> int:
        return sum(1 for item in self.files if item.duplicate)

    def rejected_by_reason(self) -> dict[str, int]:
        counts = Counter(item.reason or "unknown" for item in self.files
                         if item.state == State.REJECTED.value)
        return dict(sorted(counts.items()))

    def skipped_by_reason(self) -> dict[str, int]:
        counts = Counter(item.reason or "unknown" for item in self.files
                         if item.state == "skipped")
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "recursive": self.recursive,
            "found": self.found,
            "images": self.images,
            "states": self.states(),
            "duplicates": self.duplicates,
            "rejected": self.rejected_by_reason(),
            "skipped": self.skipped_by_reason(),
            "files": [dataclasses.asdict(item) for item in self.files],
        }


def walk(root: Path, *, recursive: bool) -> list[WalkedFile]:
    """Every entry under `root` (sub-folders too when `recursive`), sorted into candidate
    images and skipped files. Blocking: run it in a thread."""
    found: list[WalkedFile] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as error:
            found.append(WalkedFile(directory, file_url(directory),
                                    f"unreadable: {error.strerror or 'error'}"))
            continue
        for item in items:
            path = Path(item.path)
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished while listing
            if stat.S_ISDIR(mode):
                if item.name.startswith("."):
                    found.append(WalkedFile(path, file_url(path), "hidden"))
                elif recursive:
                    pending.append(path)
                else:
                    found.append(WalkedFile(path, file_url(path), "subfolder_not_walked"))
                continue
            found.append(_classify(path, item.name, mode, root))
    return sorted(found, key=lambda entry: os.fsencode(entry.path))


def _classify(path: Path, name: str, mode: int, root: Path) -> WalkedFile:
    url = file_url(path)
    if name.startswith("."):
        return WalkedFile(path, url, "hidden")
    if stat.S_ISLNK(mode):
        return WalkedFile(path, url, "symlink")
    if not stat.S_ISREG(mode):
        kind = "fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        return WalkedFile(path, url, f"not_regular_file: {kind}")
    if not os.access(path, os.R_OK):
        return WalkedFile(path, url, "unreadable: permission denied")
    # Read relative to the imported folder, through no symlinked sub-folder.
    image_format = sniff_file(path.relative_to(root), root=root)
    if image_format is None:
        return WalkedFile(path, url, "not_an_image")
    return WalkedFile(path, url, None, image_format)


def import_config(config: Config, directory: Path, *, recursive: bool) -> Config:
    """`config` with one folder source over `directory`, magic bytes deciding, no settling."""
    source = SourceConfig(kind="folder", name=SOURCE_NAME, interval_s=60.0,
                          settings={"path": str(directory), "settle_s": 0,
                                    "recursive": recursive, "sniff": True})
    return dataclasses.replace(config, sources=(source,))


ProgressCallback = Callable[[int, int], None]


async def run_import(config: Config, directory: Path, *, recursive: bool = True,
                     progress: ProgressCallback | None = None,
                     classifier: Any = None) -> ImportReport:
    """Walk `directory`, file its images through the daemon once, and report every file.

    `progress(done, total)` is called now and then with the number of candidate images
    that reached a final state. `classifier` is a loaded model to use instead of loading the
    configured one (the daemon's own seam).
    """
    from crawler.daemon import Daemon

    walked = await asyncio.to_thread(walk, directory, recursive=recursive)
    candidates = [entry for entry in walked if entry.skip_reason is None]
    daemon = Daemon(import_config(config, directory, recursive=recursive), environ=os.environ,
                    classifier=classifier)
    rows: dict[str, dict[str, Any]] = {}
    if candidates:
        before = await _rows_by_url(config)
        known = sum(1 for item in candidates
                    if before.get(item.url, {}).get("state") in _FINAL)
        baseline = sum(1 for row in before.values()
                       if row["source"] == SOURCE_NAME and row["state"] in _FINAL)
        run = asyncio.ensure_future(daemon.run(once=True))
        try:
            if progress is not None:
                await _report_progress(daemon, run, len(candidates), known - baseline, progress)
            await run
        finally:
            if not run.done():
                run.cancel()
        rows = await _rows_by_url(config)
    report = ImportReport(directory=display_name(directory), recursive=recursive)
    for entry in walked:
        if entry.skip_reason is not None:
            report.files.append(FileOutcome(entry.name, entry.url, "skipped", entry.skip_reason))
            continue
        row = rows.get(entry.url)
        if row is None:
            report.files.append(FileOutcome(entry.name, entry.url, "skipped",
                                            "not_yielded: changed or removed during the import",
                                            entry.image_format))
            continue
        report.files.append(FileOutcome(entry.name, entry.url, str(row["state"]),
                                        row["reason"], entry.image_format, row["sha256"]))
    return report


async def _report_progress(daemon: Any, run: asyncio.Future[int], total: int, offset: int,
                           progress: ProgressCallback) -> None:
    """Call `progress` until `run` ends: the import source's final rows, plus `offset`."""
    progress(0, total)
    while not run.done():
        await asyncio.wait({run}, timeout=PROGRESS_INTERVAL_S)
        catalogue = getattr(daemon, "catalogue", None)
        if catalogue is None or run.done():
            continue
        try:
            counts = (await catalogue.counts_by_source()).get(SOURCE_NAME, {})
        except MeganeError as error:  # the bar is cosmetic; the run goes on
            log.debug("import_progress_unavailable", error=str(error))
            continue
        done = offset + sum(count for state, count in counts.items() if state in _FINAL)
        progress(max(0, min(total, done)), total)
    progress(total, total)


async def _rows_by_url(config: Config) -> dict[str, dict[str, Any]]:
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        return {row["url"]: row for row in await catalogue.media_list()}
    finally:
        await catalogue.close()


def print_report(report: ImportReport, *, stream: Any = None) -> None:
    """The summary as rich tables, then one line per file that was not filed."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    summary = Table(title=f"megane import {report.directory}", show_header=True)
    summary.add_column("files")
    summary.add_column("count", justify="right")
    summary.add_row("found", str(report.found))
    summary.add_row("images", str(report.images))
    for state, count in report.states().items():
        summary.add_row(f"  {state}", str(count))
    summary.add_row("  of them duplicates", str(report.duplicates))
    for reason, count in report.rejected_by_reason().items():
        summary.add_row(f"  rejected: {reason}", str(count))
    skipped = report.skipped_by_reason()
    summary.add_row("skipped", str(sum(skipped.values())))
    for reason, count in skipped.items():
        summary.add_row(f"  {reason}", str(count))
    console.print(summary)
    for item in report.files:
        if item.state in ("skipped", State.REJECTED.value):
            console.print(f"{item.state:<9} {item.name}  ({item.reason})", markup=False)


def import_command(config: Config, directory: Path, *, recursive: bool, as_json: bool) -> int:
    """`megane import`: run the import, with a progress bar on a terminal; print the report.

    With `as_json` stdout holds one JSON document and nothing else. On a terminal, the
    progress bar is drawn on stderr, and log lines below warning are held back so the bar
    stays readable (unless `log_level = "debug"`).
    """
    import json

    from crawler.errors import ConfigError

    folder = directory.expanduser().resolve()
    if not folder.is_dir():
        problem = f"{display_name(folder)}: not a folder; give the folder of images to import"
        raise ConfigError(str(folder), [problem])
    interactive = not as_json and sys.stderr.isatty()
    if interactive and config.daemon.log_level != "debug":
        from crawler.logs import configure_logging

        configure_logging(config.daemon.log_format, "warning")
    if interactive:
        report = _run_with_bar(config, folder, recursive)
    else:
        report = asyncio.run(run_import(config, folder, recursive=recursive))
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        print_report(report)
    return 0


def _run_with_bar(config: Config, folder: Path, recursive: bool) -> ImportReport:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task("importing", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return asyncio.run(run_import(config, folder, recursive=recursive, progress=update))


__all__ = [
    "FileOutcome",
    "ImportReport",
    "WalkedFile",
    "import_command",
    "import_config",
    "print_report",
    "run_import",
    "walk",
]
