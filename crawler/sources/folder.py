"""A watched local directory: image files dropped there are yielded as absolute file:// URLs.

Keys: `path` (an existing directory), `move_to` (optional: each file is moved there before it
is yielded, so the folder works as an inbox), `extensions` (default jpg, jpeg, png, gif,
webp, avif, tif, tiff, bmp, heic, heif), `sniff` (default false: with true, a file's magic
bytes decide whether it is an image and `extensions` is not consulted; `megane import` uses
it), `recursive` (default false; sub-directory names become tags) and `settle_s` (default
2: a file changed less than this long ago may still be being written and waits a poll).

Without `move_to` the cursor is a watermark: the newest change time yielded (the later of
mtime and ctime, so a file moved in with an old mtime still counts as new) plus the names
yielded at exactly that time. Hidden files and symbolic links are ignored.

With `move_to` the folder itself is the queue and the cursor only confirms: every move is
written first to a journal in `move_to` (`crawler.sources.inbox`), and the cursor is the
generation of the last journal whose rows the catalogue has committed. A poll that finds a
journal the cursor does not confirm (a crash, a failed commit) yields its files again, so a
file that has left the folder always gets its row, and the catalogue skips known URLs.

File names are bytes on Linux and need not be UTF-8 (`caf\xe9.jpg` from an old archive).
They are carried as Python's surrogate-escaped `str` (`os.fsdecode`) inside this module,
and leave it losslessly: in the URL as percent-encoded bytes (`file:///in/caf%E9.jpg`), in
the cursor as percent-encoded bytes (`raw_names`), and in logs and tags as a display form
with U+FFFD for the undecodable bytes (`display_name`). Reading a file is the job of
`crawler.localcopy`, which refuses anything but a regular file (no symlink swapped in after
the scan, no FIFO or device).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from classifier.decode import SNIFF_BYTES, sniff_format
from crawler.errors import SourceError
from crawler.localcopy import (
    NotRegularFileError,
    OutsideFolderError,
    allow_root,
    decode_name,
    display_name,
    encode_name,
    open_regular,
    open_under,
)
from crawler.sources import inbox
from crawler.sources.base import PollResult, Source, SourceContext
from crawler.sources.common import dump_cursor, iso_from_epoch, load_cursor, string_list
from storage.records import MediaRef

if TYPE_CHECKING:
    from crawler.config import SourceConfig

log = structlog.get_logger()

KIND = "folder"
KEYS = frozenset({"path", "move_to", "extensions", "recursive", "settle_s", "sniff"})
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "avif", "tif", "tiff", "bmp",
                      "heic", "heif")
DEFAULT_SETTLE_S = 2.0
MAX_FILES_PER_POLL = 500


@dataclass(frozen=True, order=True)
class FileEntry:
    """A candidate file: ordered by change time, then relative name."""

    changed_ns: int
    name: str
    modified_s: float


@dataclass(frozen=True)
class Selection:
    """The files to yield now, the next watermark, and whether more are waiting."""

    chosen: tuple[FileEntry, ...]
    after_ns: int
    names_at: tuple[str, ...]
    full: bool


def select_new(entries: Sequence[FileEntry], after_ns: int, names_at: Sequence[str],
               limit: int = MAX_FILES_PER_POLL) -> Selection:
    """Pick the files past the watermark (`after_ns`, `names_at`), oldest first, up to `limit`."""
    already = set(names_at)
    candidates = sorted(
        entry for entry in entries
        if entry.changed_ns > after_ns or (entry.changed_ns == after_ns
                                           and entry.name not in already)
    )
    chosen = tuple(candidates[:limit])
    if not chosen:
        return Selection((), after_ns, tuple(names_at), False)
    newest = chosen[-1].changed_ns
    at_newest = [entry.name for entry in chosen if entry.changed_ns == newest]
    if newest == after_ns:
        at_newest = list(names_at) + at_newest
    return Selection(chosen, newest, tuple(sorted(at_newest)), len(candidates) > limit)


def sniff_file(path: Path | str, root: Path | None = None) -> str | None:
    """The image format the file's magic bytes name, or None (not an image, unreadable).

    With `root`, `path` is a name relative to it, opened without following a symlink on the
    way (`crawler.localcopy.open_under`); without, only the last component is checked.
    """
    try:
        if root is None:
            descriptor = open_regular(path)
        else:
            descriptor = open_under(os.fsencode(root / path),
                                    [os.fsencode(os.path.realpath(root))])
    except OSError:
        return None
    try:
        return sniff_format(os.read(descriptor, SNIFF_BYTES))
    except OSError:
        return None
    finally:
        os.close(descriptor)


def scan(root: Path, *, extensions: frozenset[str], recursive: bool,
         settled_before_s: float, sniff: bool = False) -> list[FileEntry]:
    """The image files under `root` that have not changed since `settled_before_s`.

    With `sniff` the extensions are not consulted: every regular file is listed, and the
    caller reads the magic bytes (`sniff_file`) of the files it picks, so a poll does not
    re-read the files behind its watermark.
    """
    entries: list[FileEntry] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            listing = list(os.scandir(directory))
        except OSError as error:
            log.warning("folder_unreadable", path=display_name(str(directory)),
                        error=display_name(str(error)))
            continue
        for item in listing:
            if item.name.startswith("."):
                continue
            try:
                if item.is_symlink():
                    continue
                if item.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(Path(item.path))
                    continue
                if not item.is_file(follow_symlinks=False):
                    continue
                if not sniff and (item.name.rsplit(".", 1)[-1].lower() not in extensions
                                  or "." not in item.name):
                    continue
                status = item.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while listing
            if status.st_mtime > settled_before_s:
                continue
            name = Path(item.path).relative_to(root).as_posix()
            entries.append(FileEntry(max(status.st_mtime_ns, status.st_ctime_ns), name,
                                     status.st_mtime))
    return entries


def file_ref(source: str, path: Path, name: str, modified_s: float) -> MediaRef:
    """The MediaRef for a file: its absolute file:// URL; sub-directories become tags.

    The URL percent-encodes the name's bytes, so any file name survives the catalogue;
    `extra` keeps a display form of the name for people.
    """
    tags = tuple(display_name(part).lower() for part in Path(name).parent.parts
                 if part not in ("", "."))
    # `path` starts at a resolved root; nothing below it is resolved (see `_poll`).
    return MediaRef(url=Path(os.path.abspath(path)).as_uri(), source=source, tags=tags,
                    posted_at=iso_from_epoch(modified_s),
                    extra=(("file_name", display_name(name)),))


def file_url(path: Path) -> str:
    """The absolute file:// URL of `path`, its bytes percent-encoded (lossless, ASCII)."""
    return path.resolve().as_uri()


class FolderSource:
    """A directory polled for new image files."""

    kind = KIND

    def __init__(self, name: str, path: Path, *, move_to: Path | None,
                 extensions: frozenset[str], recursive: bool, settle_s: float,
                 sniff: bool = False) -> None:
        self.name = name
        self.path = path
        self.move_to = move_to
        self.extensions = extensions
        self.recursive = recursive
        self.settle_s = settle_s
        self.sniff = sniff
        self._allow_roots()

    def _allow_roots(self) -> None:
        """Let the download stage read files below `path` and `move_to` (and nowhere else)."""
        allow_root(self.path)
        if self.move_to is not None:
            allow_root(self.move_to)

    def query_key(self) -> str:
        key: dict[str, Any] = {"kind": KIND, "path": str(self.path),
                               "move_to": str(self.move_to) if self.move_to else None,
                               "extensions": sorted(self.extensions),
                               "recursive": self.recursive}
        if self.sniff:
            key["sniff"] = True
        return dump_cursor(key)

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """List the folder (in a thread) and yield the files that are new since the cursor."""
        return await asyncio.to_thread(self._poll, cursor, now)

    def _poll(self, cursor: str | None, now: float) -> PollResult:
        if not self.path.is_dir():
            raise SourceError(self.name, f"folder {self.path} does not exist or is not a folder")
        self._allow_roots()  # a root that is a symlink may have been pointed elsewhere
        # Before the scan: finishing a move cut short may remove its original.
        carried = self._recover(cursor, self.move_to) if self.move_to is not None else []
        entries = scan(self.path, extensions=self.extensions, recursive=self.recursive,
                       settled_before_s=now - self.settle_s, sniff=self.sniff)
        if self.move_to is not None:
            return self._move_all(entries, self.move_to, carried)
        state = load_cursor(cursor)
        stored = state.get("after_ns")
        after_ns = stored if isinstance(stored, int) else -1
        raw_names = string_list(state.get("raw_names"))
        # Cursors written before `raw_names` hold plain (UTF-8) names under "names".
        names_at = ([decode_name(text) for text in raw_names] if raw_names is not None
                    else string_list(state.get("names")) or [])
        selection = select_new(entries, after_ns, names_at)
        # Files that are not images still move the watermark, so they are sniffed once.
        # The URL is the resolved root plus the scanned name: a sub-folder swapped for a
        # symlink is not resolved into a path elsewhere (the read refuses it).
        real_root = Path(os.path.realpath(self.path))
        refs = tuple(file_ref(self.name, real_root / entry.name, entry.name, entry.modified_s)
                     for entry in selection.chosen if self._is_image(entry))
        new_cursor = dump_cursor({"after_ns": selection.after_ns,
                                  "raw_names": [encode_name(name)
                                                for name in selection.names_at]})
        return PollResult(refs=refs, cursor=new_cursor, full=selection.full)

    def _is_image(self, entry: FileEntry) -> bool:
        """Extensions already decided, unless `sniff`: then the magic bytes decide."""
        return not self.sniff or sniff_file(entry.name, root=self.path) is not None

    def _recover(self, cursor: str | None, move_to: Path) -> list[inbox.Move]:
        """The moves of an unconfirmed journal whose files are in move_to (finished first).

        A journal whose generation the stored cursor holds is confirmed: its rows are
        committed, and it yields nothing again.
        """
        journal_file = inbox.journal_path(move_to, self.name)
        try:
            journal = inbox.read_journal(journal_file)
        except (inbox.JournalError, OSError) as error:
            raise SourceError(
                self.name, f"cannot read the move journal {display_name(journal_file)}: "
                f"{display_name(str(error))}; it lists files moved into move_to that may not "
                "be collected yet: fix its permissions, or move it away to go on without it",
                reason="journal_unreadable") from None
        if journal is None or journal.generation == load_cursor(cursor).get("moves"):
            return []
        try:
            return inbox.recover(self.path, move_to, journal.moves, self.name)
        except OSError as error:
            raise SourceError(
                self.name, f"cannot finish the moves listed in {display_name(journal_file)}: "
                f"{display_name(str(error))}; the journal is kept and the next poll tries "
                "again: check move_to's disk and permissions",
                reason="journal_unrecovered") from None

    def _move_all(self, entries: list[FileEntry], move_to: Path,
                  carried: Sequence[inbox.Move] = ()) -> PollResult:
        """Journal, then move, the settled images; yield them with the `carried` ones.

        The cursor is the journal's generation (see `crawler.sources.inbox`).
        """
        # Only images are moved; with `sniff`, other files stay in the folder.
        entries = [entry for entry in entries if self._is_image(entry)]
        chosen = sorted(entries)[:max(MAX_FILES_PER_POLL - len(carried), 0)]
        full = len(entries) > len(chosen)
        journal_file = inbox.journal_path(move_to, self.name)
        if not carried and not chosen:
            inbox.remove_journal(journal_file)  # confirmed, or nothing of it left to yield
            return PollResult(refs=(), cursor=None, full=full)
        taken = {move.target for move in carried}
        if not move_to.exists():
            try:
                move_to.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # plan_move fails next, naming the folder it cannot make
            else:
                log.info("folder_created", source=self.name, key="move_to",
                         path=display_name(str(move_to)))
        planned: list[inbox.Move] = []
        for entry in chosen:
            try:
                planned.append(inbox.plan_move(self.path, entry.name, move_to,
                                               entry.modified_s, taken=taken,
                                               part=inbox.new_part_name()))
            except OSError as error:
                self._move_failed(entry.name, error)
        generation = secrets.token_hex(8)
        self._write_journal(journal_file, inbox.Journal(generation, (*carried, *planned)))
        moved: list[inbox.Move] = []
        for move in planned:
            try:
                inbox.perform_move(self.path, move_to, move)
            except OSError as error:
                self._move_failed(move.source, error)
                continue
            moved.append(move)
        if len(moved) < len(planned):
            # A name planned but not moved to is not ours: never yield it after a crash.
            self._write_journal(journal_file, inbox.Journal(generation, (*carried, *moved)))
        # The moves reach the disk before the rows that name them are committed.
        inbox.sync_folders([*((move_to / move.target).parent for move in moved),
                            *((self.path / move.source).parent for move in moved)])
        real_move_to = Path(os.path.realpath(move_to))
        refs = tuple(file_ref(self.name, real_move_to / move.target, move.source,
                              move.modified_s) for move in (*carried, *moved))
        return PollResult(refs=refs, cursor=dump_cursor({"moves": generation}), full=full)

    def _write_journal(self, path: Path, journal: inbox.Journal) -> None:
        try:
            inbox.write_journal(path, journal)
        except OSError as error:
            raise SourceError(
                self.name, f"cannot write the move journal {display_name(path)}: "
                f"{display_name(str(error))}; nothing was moved: free space on move_to's "
                "disk or make move_to writable", reason="journal_unwritable") from None

    def _move_failed(self, name: str, error: OSError) -> None:
        """A file that cannot be moved stays in the folder; the others go on."""
        reason = (f"not_regular_file: {error.kind}" if isinstance(error, NotRegularFileError)
                  else "outside_folder" if isinstance(error, OutsideFolderError)
                  else "move_failed")
        log.warning("folder_move_failed", source=self.name, url=file_url(self.path / name),
                    file_name=display_name(name), reason=reason,
                    error=display_name(str(error)))


def _folder(value: object) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return Path(value).expanduser()


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with a folder source's keys (the folder must exist)."""
    from crawler.config_checks import unknown_source_keys

    problems = unknown_source_keys("a folder source", settings, KEYS)
    path = _folder(settings.get("path"))
    if path is None:
        problems.append("path: required; an absolute path to an existing folder")
    elif not path.is_absolute():
        problems.append(f"path: must be an absolute path, got {settings['path']!r}")
    elif not path.is_dir():
        problems.append(f"path: folder {str(path)!r} does not exist; create it or fix the path")
    if "move_to" in settings:
        move_to = _folder(settings["move_to"])
        if move_to is None or not move_to.is_absolute():
            problems.append("move_to: must be an absolute path to a folder (created if missing)")
        elif path is not None and path.is_absolute():
            resolved, target = path.resolve(), move_to.resolve()
            if target == resolved or (
                settings.get("recursive") and target.is_relative_to(resolved)
            ):
                problems.append("move_to: must be outside `path`, or files would be seen again")
            elif move_to.exists() and not move_to.is_dir():
                problems.append(f"move_to: {str(move_to)!r} exists and is not a folder")
    if "extensions" in settings:
        extensions = settings["extensions"]
        if not (isinstance(extensions, list) and extensions
                and all(isinstance(item, str) and item.strip(". ") for item in extensions)):
            problems.append("extensions: must be a list of file extensions, "
                            "e.g. [\"jpg\", \"png\"]")
    for flag in ("recursive", "sniff"):
        if flag in settings and not isinstance(settings[flag], bool):
            problems.append(f"{flag}: must be true or false")
    if "settle_s" in settings:
        settle = settings["settle_s"]
        if isinstance(settle, bool) or not isinstance(settle, int | float) or settle < 0:
            problems.append("settle_s: must be a number of seconds >= 0")
    return problems


def create(config: SourceConfig, context: SourceContext) -> Source:
    """Build a FolderSource from a validated `[[sources]]` table."""
    settings = config.settings
    path = Path(str(settings["path"])).expanduser()
    move_to = _folder(settings.get("move_to"))
    extensions = frozenset(item.strip(". ").lower()
                           for item in string_list(settings.get("extensions"))
                           or list(DEFAULT_EXTENSIONS))
    return FolderSource(config.name, path, move_to=move_to, extensions=extensions,
                        recursive=bool(settings.get("recursive", False)),
                        settle_s=float(settings.get("settle_s", DEFAULT_SETTLE_S)),
                        sniff=bool(settings.get("sniff", False)))
