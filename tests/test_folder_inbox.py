"""Inbox mode (`move_to`): no file leaves the watched folder without a row that will name it.

The crash tests run the real `megane once` in a subprocess and SIGKILL it from inside, at
an exact moment of the move: a Python audit hook (`sys.addaudithook`, installed by the
test's launcher, not by the product) watches the file-system calls CPython audits
(`os.link`, `os.remove`, `os.rename`, `open`) and kills the process at the chosen one.
A second, clean `megane once` must then collect every file exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from crawler.daemon import Daemon
from crawler.errors import SourceError
from crawler.sources import inbox
from tests.daemon_process import REPOSITORY, connect, files_under, sha256_of, small_photo
from tests.rlimits import run_limited
from tests.test_crash import _seed_model_cache
from tests.test_source_folder import later, make_source, paths, write

NAMES = ("a.jpg", "b.jpg", "c.jpg")
POLL_UNDER_LIMIT = """
    import asyncio, time
    from pathlib import Path
    from crawler.sources.folder import FolderSource

    source = FolderSource("inbox", Path(sys.argv[1]), move_to=Path(sys.argv[2]),
                          extensions=frozenset({"jpg"}), recursive=False, settle_s=0)
    limit_file_size(16)
    try:
        asyncio.run(source.poll(None, time.time() + 60))
    except Exception as error:
        report(**outcome(error))
    else:
        report(type=None)
    """
FILED = ("library", "quarantine")

# Run by the child: SIGKILL this process at one audited file-system call, then run the CLI.
KILLER = textwrap.dedent("""\
    import os, signal, sys, threading

    event, needle, when, config = sys.argv[1:5]
    sys.path.insert(0, os.getcwd())  # the repository under test, not an installed copy
    needle = os.fsencode(needle)
    armed = []

    def names(args):
        for value in args:
            if isinstance(value, (str, bytes, os.PathLike)):
                yield os.fsencode(value)

    def hook(name, args):
        if name == "os.kill":
            return  # audited itself: the kill below
        if armed and threading.get_ident() == armed[0]:
            os.kill(os.getpid(), signal.SIGKILL)  # the first call after the chosen one
        if name == event and any(needle in value for value in names(args)):
            if when == "at":
                os.kill(os.getpid(), signal.SIGKILL)  # before the call happens
            armed.append(threading.get_ident())

    sys.addaudithook(hook)
    from crawler.cli import main
    sys.exit(main(["once", "--config", config]))
    """)


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """A folder on another file system than tmp_path (/dev/shm), for moves that must copy."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm to put move_to on another file system")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="megane-done-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def inbox_config(write_config: Any, inbox_dir: Path, done: Path) -> Any:
    """A config whose one source is the folder `inbox_dir` in inbox mode (move_to `done`)."""
    return write_config("[quarantine]\nreview_band = []\n", sources=f"""
        [[sources]]
        kind = "folder"
        name = "inbox"
        path = "{inbox_dir}"
        move_to = "{done}"
        settle_s = 0
        interval = "1m"
        """)


def _fill_inbox(inbox_dir: Path) -> dict[str, bytes]:
    inbox_dir.mkdir(parents=True, exist_ok=True)
    photos = {name: small_photo(20 + number) for number, name in enumerate(NAMES)}
    for name, data in photos.items():
        (inbox_dir / name).write_bytes(data)
    return photos


async def _run_killed(config: Any, tmp_path: Path, event: str, needle: str,
                      when: str) -> tuple[int, str]:
    """`megane once` in a subprocess that SIGKILLs itself at one file-system call."""
    launcher = tmp_path / "killer.py"
    launcher.write_text(KILLER)
    log_path = tmp_path / "killed.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(launcher), event, needle, when, str(config.path),
            cwd=REPOSITORY, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        code = await asyncio.wait_for(process.wait(), 240)
    return code, log_path.read_text(errors="replace")


def _media(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "catalogue.sqlite"
    if not path.exists():
        return []
    with connect(path) as connection:
        return [dict(row) for row in connection.execute("SELECT * FROM media")]


def _visible(folder: Path) -> list[str]:
    return sorted(path.name for path in files_under(folder) if not path.name.startswith("."))


class TestKilledDuringTheMove:
    """A SIGKILL at each step of a move, then a clean start: every file collected once."""

    @pytest.mark.parametrize(("event", "needle", "when", "left_in", "moved_to"), [
        ("os.rename", inbox.JOURNAL_PREFIX, "at", "abc", ""),
        ("os.link", "b.jpg", "at", "bc", "a"),
        ("os.remove", "b.jpg", "at", "bc", "ab"),
        ("os.remove", "b.jpg", "after", "c", "ab"),
        ("os.remove", "c.jpg", "after", "", "abc"),
    ], ids=["before-journal", "before-link", "linked-not-unlinked", "between-moves",
            "moved-before-commit"])
    async def test_same_filesystem(self, tmp_path: Path, write_config: Any,
                                   shared_classifier: Any, event: str, needle: str,
                                   when: str, left_in: str, moved_to: str) -> None:
        """Killed at this step of moving three files, the next start files each once."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        await self._crash_and_restart(tmp_path, write_config, shared_classifier, inbox_dir,
                                      done, (event, needle, when), (left_in, moved_to))

    @pytest.mark.parametrize(("event", "needle", "when", "left_in", "moved_to"), [
        ("open", inbox.PART_PREFIX, "after", "abc", ""),
        ("os.link", inbox.PART_PREFIX, "at", "abc", ""),
        ("os.remove", "b.jpg", "at", "bc", "ab"),
    ], ids=["part-file-created", "copied-not-named", "copied-not-unlinked"])
    async def test_across_filesystems(self, tmp_path: Path, write_config: Any,
                                      shared_classifier: Any, other_filesystem: Path,
                                      event: str, needle: str, when: str, left_in: str,
                                      moved_to: str) -> None:
        """Killed in the middle of a copy to another file system, the next start removes the
        part file and files each photo once; no truncated copy is ever collected."""
        inbox_dir = tmp_path / "inbox"
        await self._crash_and_restart(tmp_path, write_config, shared_classifier, inbox_dir,
                                      other_filesystem / "done", (event, needle, when),
                                      (left_in, moved_to))

    async def _crash_and_restart(self, tmp_path: Path, write_config: Any,
                                 shared_classifier: Any, inbox_dir: Path, done: Path,
                                 kill_at: tuple[str, str, str],
                                 crash_state: tuple[str, str]) -> None:
        photos = _fill_inbox(inbox_dir)
        config = inbox_config(write_config, inbox_dir, done)
        _seed_model_cache(shared_classifier, config.data_dir)

        code, output = await _run_killed(config, tmp_path, *kill_at)
        assert code == -9, output[-3000:]
        # The disk as the kill left it: files moved (or not) and not one row for them.
        assert _media(config.data_dir) == [], output[-3000:]
        left_in, moved_to = crash_state
        assert _visible(inbox_dir) == [f"{letter}.jpg" for letter in left_in]
        assert _visible(done) == [f"{letter}.jpg" for letter in moved_to]

        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0

        rows = _media(config.data_dir)
        real_done = Path(os.path.realpath(done))
        assert sorted(row["url"] for row in rows) == sorted(
            (real_done / name).as_uri() for name in photos)
        assert {row["state"] for row in rows} <= set(FILED), rows
        for row in rows:
            name = row["url"].rsplit("/", 1)[1]
            assert (done / name).read_bytes() == photos[name]
            assert row["sha256"] == sha256_of(done / name)
            filed = [path for path in files_under(config.data_dir / row["state"])
                     if path.name.startswith(row["sha256"])]
            assert filed, row
        assert _visible(inbox_dir) == []
        assert _visible(done) == sorted(photos)
        assert not [path for path in files_under(done)
                    if path.name.startswith(inbox.PART_PREFIX)]


class TestJournal:
    """The source alone, polled as the poll loop would, its cursor stored or not."""

    async def test_moves_are_journalled_before_they_happen(self, tmp_path: Path) -> None:
        """The journal lists each move with its exact names; the cursor is its generation."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        source = make_source(path=inbox_dir, move_to=done)
        result = await source.poll(None, now=later())
        journal = inbox.read_journal(inbox.journal_path(done, "inbox"))
        assert journal is not None
        assert result.cursor == json.dumps({"moves": journal.generation}, separators=(",", ":"))
        assert [(move.source, move.target) for move in journal.moves] == [("a.jpg", "a.jpg")]
        assert oct(inbox.journal_path(done, "inbox").stat().st_mode & 0o777) == "0o600"

    async def test_uncommitted_poll_is_yielded_again(self, tmp_path: Path) -> None:
        """A poll whose cursor was never stored (its rows may not be) yields its files again."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        source = make_source(path=inbox_dir, move_to=done)
        first = await source.poll(None, now=later())
        again = await source.poll(None, now=later())
        assert paths(again.refs) == paths(first.refs) == {str(done / "a.jpg")}
        assert _visible(done) == ["a.jpg"]

    async def test_confirmed_poll_is_not_yielded_again(self, tmp_path: Path) -> None:
        """Once the cursor holding the journal's generation is stored, the journal is dropped."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        source = make_source(path=inbox_dir, move_to=done)
        first = await source.poll(None, now=later())
        second = await source.poll(first.cursor, now=later())
        assert second.refs == () and second.cursor is None
        assert not inbox.journal_path(done, "inbox").exists()

    async def test_unconfirmed_moves_and_new_files_share_a_poll(self, tmp_path: Path) -> None:
        """Carried moves and new files are yielded together under one new generation."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        source = make_source(path=inbox_dir, move_to=done)
        await source.poll(None, now=later())
        write(inbox_dir / "a.jpg", data=b"\xff\xd8\xff\xe0 a new file, same name")
        result = await source.poll(None, now=later())
        assert paths(result.refs) == {str(done / "a.jpg"), str(done / "a-1.jpg")}
        final = await source.poll(result.cursor, now=later())
        assert final.refs == ()

    async def test_original_of_a_cut_move_is_removed_once(self, tmp_path: Path) -> None:
        """A move cut between link and unlink: the original is removed, not moved again."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        move = inbox.plan_move(inbox_dir, "a.jpg", done, 0.0, taken=set(),
                               part=inbox.new_part_name())
        inbox.write_journal(inbox.journal_path(done, "inbox"), inbox.Journal("g1", (move,)))
        os.link(inbox_dir / "a.jpg", done / "a.jpg")  # the link(2) of perform_move, then kill
        with capture_logs() as logs:
            result = await make_source(path=inbox_dir, move_to=done).poll(None, now=later())
        assert paths(result.refs) == {str(done / "a.jpg")}
        assert _visible(inbox_dir) == [] and _visible(done) == ["a.jpg"]
        assert [line["event"] for line in logs if line["event"].startswith("folder_")] == [
            "folder_move_recovered"]

    def test_original_removed_by_another_process_keeps_the_copy(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When another process (its recovery of the same journal) removes the original
        between our link and our unlink, the moved file is kept: one copy, in move_to."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        move = inbox.plan_move(inbox_dir, "a.jpg", done, 0.0, taken=set(),
                               part=inbox.new_part_name())
        real_link = os.link

        def link_then_other_process_unlinks(*args: Any, **kwargs: Any) -> None:
            real_link(*args, **kwargs)
            (inbox_dir / "a.jpg").unlink()  # the other process's recovery, in between

        monkeypatch.setattr(os, "link", link_then_other_process_unlinks)
        inbox.perform_move(inbox_dir, done, move)
        assert _visible(inbox_dir) == [] and _visible(done) == ["a.jpg"]

    async def test_a_failed_recovery_keeps_the_journal_for_the_next_poll(
            self, tmp_path: Path) -> None:
        """A recovery that fails with an OSError fails the poll naming the journal, keeps it,
        and the next poll (once the fault is gone) recovers the move: nothing is dropped."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "sub" / "a.jpg")
        move = inbox.plan_move(inbox_dir, "sub/a.jpg", done, 0.0, taken=set(),
                               part=inbox.new_part_name())
        journal_file = inbox.journal_path(done, "inbox")
        inbox.write_journal(journal_file, inbox.Journal("g1", (move,)))
        os.rename(inbox_dir / "sub" / "a.jpg", done / "sub" / "a.jpg")  # moved, then killed
        os.rename(done / "sub", done / "sub-aside")
        (done / "sub").write_bytes(b"not a folder")  # ENOTDIR while recovering
        source = make_source(path=inbox_dir, move_to=done, recursive=True)
        with pytest.raises(SourceError, match="cannot finish the moves listed in") as caught:
            await source.poll(None, now=later())
        assert caught.value.reason == "journal_unrecovered"
        assert str(journal_file) in caught.value.detail and journal_file.exists()
        (done / "sub").unlink()
        os.rename(done / "sub-aside", done / "sub")
        result = await source.poll(None, now=later())
        assert paths(result.refs) == {str(done / "sub" / "a.jpg")}

    async def test_new_file_under_a_moved_name_is_kept(self, tmp_path: Path) -> None:
        """After a cut move, a different file since dropped under the same name is not
        deleted: it is moved beside the first under a new name."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        move = inbox.plan_move(inbox_dir, "a.jpg", done, 0.0, taken=set(),
                               part=inbox.new_part_name())
        inbox.write_journal(inbox.journal_path(done, "inbox"), inbox.Journal("g1", (move,)))
        os.rename(inbox_dir / "a.jpg", done / "a.jpg")
        write(inbox_dir / "a.jpg", data=b"\xff\xd8\xff\xe0 someone else's photo")
        result = await make_source(path=inbox_dir, move_to=done).poll(None, now=later())
        assert paths(result.refs) == {str(done / "a.jpg"), str(done / "a-1.jpg")}
        assert (done / "a-1.jpg").read_bytes() == b"\xff\xd8\xff\xe0 someone else's photo"

    async def test_damaged_journal_stops_the_source_with_its_name(self, tmp_path: Path) -> None:
        """A journal that cannot be read fails the poll naming the file; nothing is moved."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        journal_file = inbox.journal_path(done, "inbox")
        journal_file.parent.mkdir(parents=True)
        journal_file.write_text("{not json")
        with pytest.raises(SourceError, match="cannot read the move journal") as caught:
            await make_source(path=inbox_dir, move_to=done).poll(None, now=later())
        assert str(journal_file) in caught.value.detail
        assert caught.value.reason == "journal_unreadable"
        assert _visible(inbox_dir) == ["a.jpg"]

    def test_unwritable_journal_moves_nothing(self, tmp_path: Path) -> None:
        """When the journal cannot be written (a real EFBIG under RLIMIT_FSIZE), the poll
        fails naming it and no file moves."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox_dir / "a.jpg")
        result = run_limited(POLL_UNDER_LIMIT, str(inbox_dir), str(done))
        assert result["type"] == "SourceError", result
        assert result["reason"] == "journal_unwritable"
        assert str(inbox.journal_path(done, "inbox")) in result["message"]
        assert "File too large" in result["message"]
        assert _visible(inbox_dir) == ["a.jpg"]
        assert _visible(done) == []

    @pytest.mark.parametrize("text", [
        '{"version": 1, "generation": "g", "moves": [{"from": "../x.jpg", "to": "x.jpg", '
        '"part": ".megane-part-1", "modified_s": 0}]}',
        '{"version": 1, "generation": "g", "moves": [{"from": "x.jpg", "to": "x.jpg", '
        '"part": "../../etc/passwd", "modified_s": 0}]}',
        '{"version": 2, "generation": "g", "moves": []}',
        '[]',
    ], ids=["climbing-name", "part-outside", "unknown-version", "not-an-object"])
    def test_journal_is_validated(self, text: str) -> None:
        """A journal naming paths outside its folders, or of another version, is refused."""
        with pytest.raises(inbox.JournalError):
            inbox.load_journal(text.encode())
