"""Inbox mode of a folder source: files moved into `move_to` under a write-ahead journal.

A file that has left the watched folder can only be found again through a catalogue row
that names it, and that row is committed after the poll returns (`crawler.polling`). So
every move is written down first, in a journal beside the moved files, and a poll that finds
a journal the catalogue has not confirmed yields its files again; the catalogue skips the
URLs it already has, so nothing is lost across `kill -9` and nothing is recorded twice. It is
the write-ahead intent log of a mail store (Maildir's tmp/ then new/, mbsync's journal): no
moment in which a moved file exists only in a folder nobody watches.

One poll, in order (`FolderSource._move_all` drives it):

1. `read_journal`: `move_to/.megane-moves-<id>.json` (`<id>` from the source's name), the
   moves of the last poll that moved anything, under a random `generation`.
2. If the stored cursor does not hold that generation, those moves may not be in the
   catalogue: `recover` finishes each one that was cut short (a link made but the original
   not yet removed; a half-written copy across filesystems is deleted, the original kept)
   and returns those whose file is in `move_to`, to be yielded again.
3. `plan_move`: each new file gets a name in `move_to` that is free now (`a.jpg`, then
   `a-1.jpg`, ...), and the journal of carried and planned moves is written under a new
   generation (fsynced: `storage.atomic.write_file_atomic`) before anything moves.
4. `perform_move`: each file is hard-linked to its planned name and then unlinked (across
   filesystems: copied to a hidden part file, fsynced, linked to its name); the folders are
   fsynced so the moves are on disk before the rows that name them.
5. The poll's cursor is the new generation: the catalogue stores it only after the rows, so
   a stored generation confirms every move of its journal, and the next poll drops it.

Both folders are walked from their root by descriptors (`crawler.localcopy.open_dirs`): a
sub-folder swapped for a symlink after the scan can neither move nor delete a file outside
the folders.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from crawler.localcopy import (
    NotRegularFileError,
    OutsideFolderError,
    decode_name,
    display_name,
    encode_name,
    kind_of,
    open_dirs,
    open_regular,
    open_root,
)
from storage.atomic import write_file_atomic
from storage.placement import PRIVATE_FILE_MODE

log = structlog.get_logger()

JOURNAL_PREFIX = ".megane-moves-"
PART_PREFIX = ".megane-part-"
JOURNAL_VERSION = 1
COMPARE_CHUNK_BYTES = 1 << 20
# link(2) errors that mean "no hard link here" (another filesystem, FAT, a link limit).
NO_LINK_ERRNOS = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK)


class JournalError(ValueError):
    """A move journal that cannot be read back (not written by us, or damaged)."""


@dataclass(frozen=True)
class Move:
    """One file moved from the watched folder into `move_to`.

    Names are relative to their folder, surrogate-escaped `str` (`os.fsdecode`); `part` is
    the hidden name a copy across filesystems is written under, in the target's folder.
    """

    source: str
    target: str
    part: str
    modified_s: float


@dataclass(frozen=True)
class Journal:
    """The moves of one poll, under the generation its cursor confirms."""

    generation: str
    moves: tuple[Move, ...]


def journal_path(move_to: Path, source_name: str) -> Path:
    """Where the journal of source `source_name` lives (hidden: no scan lists it)."""
    key = hashlib.sha256(source_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return move_to / f"{JOURNAL_PREFIX}{key}.json"


def dump_journal(journal: Journal) -> bytes:
    """The journal as JSON bytes; names keep their exact bytes (percent-encoded)."""
    return json.dumps({
        "version": JOURNAL_VERSION,
        "generation": journal.generation,
        "moves": [{"from": encode_name(move.source), "to": encode_name(move.target),
                   "part": move.part, "modified_s": move.modified_s}
                  for move in journal.moves],
    }, separators=(",", ":")).encode("ascii")


def load_journal(data: bytes) -> Journal:
    """The journal `dump_journal` wrote; JournalError for anything else."""
    try:
        value = json.loads(data)
        if value.get("version") != JOURNAL_VERSION or not isinstance(value["generation"], str):
            raise JournalError("not a move journal of this version")
        moves = tuple(
            Move(source=decode_name(item["from"]), target=decode_name(item["to"]),
                 part=str(item["part"]), modified_s=float(item["modified_s"]))
            for item in value["moves"]
        )
    except JournalError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        raise JournalError(f"not a move journal: {error}") from None
    for move in moves:
        try:
            _names(move.source)
            _names(move.target)
        except OutsideFolderError as error:
            raise JournalError(str(error)) from None
        if not move.part.startswith(PART_PREFIX) or "/" in move.part:
            raise JournalError(f"bad part name {move.part!r}")
    return Journal(value["generation"], moves)


def read_journal(path: Path) -> Journal | None:
    """The journal at `path`, or None when there is none (JournalError, OSError)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return load_journal(data)


def write_journal(path: Path, journal: Journal) -> None:
    """Write the journal whole and durably (temp name, fsync, rename, fsync folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, dump_journal(journal), PRIVATE_FILE_MODE)


def remove_journal(path: Path) -> None:
    """Remove a journal whose moves are all confirmed (or have nothing left to yield)."""
    path.unlink(missing_ok=True)


def _names(name: str) -> list[bytes]:
    """The path components of a relative name; `..`, `.` and empty ones are refused."""
    names = os.fsencode(name).split(b"/")
    if any(part in (b"", b".", b"..") for part in names):
        raise OutsideFolderError(name)
    return names


@contextmanager
def _folder_of(root: Path, name: str, *, create: bool = False) -> Iterator[tuple[int, bytes]]:
    """The open folder holding `root/name` (walked without symlinks) and the file's name."""
    names = _names(name)
    root_fd = open_root(root)
    try:
        directory = open_dirs(root_fd, names[:-1], create=create)
    finally:
        os.close(root_fd)
    try:
        yield directory, names[-1]
    finally:
        os.close(directory)


def plan_move(root: Path, name: str, move_to: Path, modified_s: float, *,
              taken: set[str], part: str) -> Move:
    """A move of `root/name` to the first name in `move_to` that is free now and not in
    `taken` (`a.jpg`, `a-1.jpg`, ...); missing folders of `move_to` are made."""
    move_to.mkdir(parents=True, exist_ok=True)
    with _folder_of(move_to, name, create=True) as (target_dir, base):
        stem, dot, suffix = base.rpartition(b".")
        if not stem:
            stem, dot, suffix = base, b"", b""
        parent = name.rpartition("/")[0]
        counter = 0
        candidate = base
        while True:
            target = (parent + "/" if parent else "") + os.fsdecode(candidate)
            if target not in taken and not _exists(candidate, target_dir):
                taken.add(target)
                return Move(source=name, target=target, part=part, modified_s=modified_s)
            counter += 1
            candidate = stem + b"-%d" % counter + dot + suffix


def _exists(name: bytes, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def perform_move(root: Path, move_to: Path, move: Move) -> None:
    """Move `root/move.source` to `move_to/move.target`, never overwriting.

    Raises FileExistsError when the planned name was taken since, NotRegularFileError for
    anything but a regular file, OSError otherwise; exactly one copy remains either way.
    """
    with _folder_of(Path(os.path.realpath(root)), move.source) as (source_dir, name), \
            _folder_of(move_to, move.target, create=True) as (target_dir, target):
        mode = os.stat(name, dir_fd=source_dir, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(kind_of(mode))
        try:
            # linkat without AT_SYMLINK_FOLLOW never follows the name's last component.
            os.link(name, target, src_dir_fd=source_dir, dst_dir_fd=target_dir,
                    follow_symlinks=False)
        except OSError as error:
            if error.errno not in NO_LINK_ERRNOS:
                raise
            _copy_then_name(source_dir, name, target_dir, target, os.fsencode(move.part))
        try:
            os.unlink(name, dir_fd=source_dir)
        except FileNotFoundError:
            return  # another process finished this move (its recovery): the target is the copy
        except OSError:
            os.unlink(target, dir_fd=target_dir)  # leave exactly one copy, in the folder
            raise


def _copy_then_name(source_dir: int, name: bytes, target_dir: int, target: bytes,
                    part: bytes) -> None:
    """Across filesystems: copy to the hidden `part`, then give it the name `target`.

    A crash mid-copy leaves only the part file (removed by `recover`), never a truncated
    file under a name the catalogue could read.
    """
    _copy_at(source_dir, name, target_dir, part)
    try:
        try:
            os.link(part, target, src_dir_fd=target_dir, dst_dir_fd=target_dir)
        except OSError as error:
            if error.errno not in NO_LINK_ERRNOS:
                raise
            # No hard links at all here (FAT): check, then rename (one writer per source).
            if _exists(target, target_dir):
                raise FileExistsError(errno.EEXIST, "name taken", os.fsdecode(target)) from None
            os.rename(part, target, src_dir_fd=target_dir, dst_dir_fd=target_dir)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(part, dir_fd=target_dir)


def _copy_at(source_dir: int, name: bytes, target_dir: int, target: bytes) -> None:
    """Copy a regular file across filesystems, by names relative to open folders; the copy
    keeps the permission bits and times and is fsynced. Raises FileExistsError when
    `target` is taken."""
    reader = open_regular(name, dir_fd=source_dir)
    try:
        status = os.fstat(reader)
        writer = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, PRIVATE_FILE_MODE, dir_fd=target_dir)
        try:
            while chunk := os.read(reader, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(writer, view):]
            os.fchmod(writer, stat.S_IMODE(status.st_mode))
            os.utime(writer, ns=(status.st_atime_ns, status.st_mtime_ns))
            os.fsync(writer)
        except BaseException:
            os.close(writer)
            os.unlink(target, dir_fd=target_dir)
            raise
        os.close(writer)
    finally:
        os.close(reader)


def recover(root: Path, move_to: Path, moves: Sequence[Move], source_name: str) -> list[Move]:
    """The moves of an unconfirmed journal whose file is in `move_to`, each finished.

    A part file left by a copy cut short is removed (its original is still in the watched
    folder and is moved again). A move cut between the link and the unlink still has its
    original: it is unlinked when it is the same file (same inode, or the same bytes for a
    copy), so the file is not moved and collected a second time.

    Any other OSError (EIO, EACCES, ...) is raised: the caller fails the poll and keeps the
    journal, so the next poll tries the recovery again and no move is dropped.
    """
    found: list[Move] = []
    for move in moves:
        if _recover_one(root, move_to, move):
            found.append(move)
            log.info("folder_move_recovered", source=source_name,
                     file_name=display_name(move.target))
    return found


def _recover_one(root: Path, move_to: Path, move: Move) -> bool:
    try:
        with _folder_of(move_to, move.target) as (target_dir, target):
            with suppress(FileNotFoundError):
                os.unlink(os.fsencode(move.part), dir_fd=target_dir)
            try:
                moved = os.stat(target, dir_fd=target_dir, follow_symlinks=False)
            except FileNotFoundError:
                return False  # never moved: the original, if still there, is scanned again
            if not stat.S_ISREG(moved.st_mode):
                return False
            _finish_unlink(root, move, target_dir, target, moved)
    except FileNotFoundError:
        return False  # the target's folder is gone: nothing of this move is in move_to
    return True


def _finish_unlink(root: Path, move: Move, target_dir: int, target: bytes,
                   moved: os.stat_result) -> None:
    """Remove the original of a finished link or copy, if it is still there, unchanged."""
    try:
        with _folder_of(Path(os.path.realpath(root)), move.source) as (source_dir, name):
            original = os.stat(name, dir_fd=source_dir, follow_symlinks=False)
            if not stat.S_ISREG(original.st_mode):
                return
            if os.path.samestat(original, moved) or _same_bytes(
                    source_dir, name, target_dir, target, original, moved):
                os.unlink(name, dir_fd=source_dir)
    except FileNotFoundError:
        return


def _same_bytes(source_dir: int, name: bytes, target_dir: int, target: bytes,
                original: os.stat_result, moved: os.stat_result) -> bool:
    """A finished copy: same size, same modification time (the copy keeps it), same bytes."""
    if (original.st_size, original.st_mtime_ns) != (moved.st_size, moved.st_mtime_ns):
        return False
    first = open_regular(name, dir_fd=source_dir)
    try:
        second = open_regular(target, dir_fd=target_dir)
        try:
            while True:
                left = os.read(first, COMPARE_CHUNK_BYTES)
                if left != os.read(second, len(left) or 1):
                    return False
                if not left:
                    return True
        finally:
            os.close(second)
    finally:
        os.close(first)


def sync_folders(folders: Sequence[Path]) -> None:
    """fsync each folder (a link or unlink in it becomes durable); a vanished one is skipped."""
    for folder in dict.fromkeys(folders):
        try:
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def new_part_name() -> str:
    """A fresh hidden name for a copy in progress."""
    return f"{PART_PREFIX}{secrets.token_hex(8)}"


def move_into(root: Path, name: str, destination_dir: Path) -> Path:
    """Move `root/name` to `destination_dir/name` now, never overwriting: -1, -2... on
    collision; the path it got. (No journal: for one-off moves and tests.)"""
    taken: set[str] = set()
    while True:
        move = plan_move(root, name, destination_dir, 0.0, taken=taken, part=new_part_name())
        try:
            perform_move(root, destination_dir, move)
        except FileExistsError:
            continue
        return Path(os.path.realpath(destination_dir)) / move.target
