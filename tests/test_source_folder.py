"""The folder source: the pure watermark selection, and real polls of a temporary folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from crawler.config import SourceConfig
from crawler.errors import SourceError
from crawler.sources import folder
from crawler.sources.base import SourceContext
from crawler.sources.folder import FileEntry, select_new


def entry(changed_ns: int, name: str) -> FileEntry:
    return FileEntry(changed_ns, name, changed_ns / 1e9)


class TestSelectNew:
    @pytest.mark.parametrize(("entries", "after_ns", "names_at", "limit", "chosen", "cursor",
                              "full"), [
        ([], -1, [], 10, [], (-1, []), False),
        ([entry(5, "b"), entry(3, "a")], -1, [], 10, ["a", "b"], (5, ["b"]), False),
        ([entry(5, "b"), entry(3, "a")], 5, ["b"], 10, [], (5, ["b"]), False),
        ([entry(5, "b"), entry(5, "c"), entry(3, "a")], 5, ["b"], 10, ["c"], (5, ["b", "c"]),
         False),
        ([entry(5, "b"), entry(6, "c"), entry(3, "a")], 5, ["b"], 10, ["c"], (6, ["c"]), False),
        ([entry(1, "a"), entry(2, "b"), entry(3, "c")], -1, [], 2, ["a", "b"], (2, ["b"]), True),
        ([entry(2, "a"), entry(2, "b"), entry(2, "c")], -1, [], 2, ["a", "b"], (2, ["a", "b"]),
         True),
        ([entry(2, "a"), entry(2, "b"), entry(2, "c")], 2, ["a", "b"], 2, ["c"],
         (2, ["a", "b", "c"]), False),
        ([entry(1, "late-but-old")], 5, ["b"], 10, [], (5, ["b"]), False),
    ], ids=["empty", "first", "nothing-new", "same-time-new-name", "newer", "page",
            "page-within-one-time", "page-continues", "older-than-watermark"])
    def test_selection(self, entries: list[FileEntry], after_ns: int, names_at: list[str],
                       limit: int, chosen: list[str], cursor: tuple[int, list[str]],
                       full: bool) -> None:
        """Files past the watermark are chosen oldest first; the watermark never skips a file."""
        selection = select_new(entries, after_ns, names_at, limit)
        assert [item.name for item in selection.chosen] == chosen
        assert (selection.after_ns, list(selection.names_at)) == cursor
        assert selection.full is full


def write(path: Path, mtime: float | None = None, data: bytes = b"\xff\xd8\xff\xe0jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def make_source(**settings: Any) -> folder.FolderSource:
    config = SourceConfig(kind="folder", name="inbox", interval_s=60,
                          settings=MappingProxyType({key: str(value) if isinstance(value, Path)
                                                     else value
                                                     for key, value in settings.items()}))
    assert folder.validate(config.settings) == []
    source = folder.create(config, SourceContext(http=None, user_agent="t"))  # type: ignore[arg-type]
    assert isinstance(source, folder.FolderSource)
    return source


def paths(refs: tuple[Any, ...]) -> set[str]:
    return {unquote(urlsplit(ref.url).path) for ref in refs}


def later() -> float:
    """A `now` far enough ahead that every file written so far has settled."""
    return time.time() + 60


class TestFolderSource:
    async def test_new_files_once_each(self, tmp_path: Path) -> None:
        """Each file is yielded once, as an absolute file:// URL; later files on later polls."""
        write(tmp_path / "a.jpg", mtime=1_000_000)
        write(tmp_path / "b.PNG")
        write(tmp_path / "notes.txt")
        write(tmp_path / ".hidden.jpg")
        write(tmp_path / "noextension")
        (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
        source = make_source(path=tmp_path)

        first = await source.poll(None, now=later())
        assert paths(first.refs) == {str(tmp_path / "a.jpg"), str(tmp_path / "b.PNG")}
        assert all(ref.url.startswith("file:///") and ref.source == "inbox"
                   for ref in first.refs)

        again = await source.poll(first.cursor, now=later())
        assert again.refs == ()

        # An old mtime (cp -p, mv from elsewhere) must not hide a new file.
        write(tmp_path / "old-photo.jpg", mtime=1_000_000)
        third = await source.poll(again.cursor, now=later())
        assert paths(third.refs) == {str(tmp_path / "old-photo.jpg")}

    async def test_unsettled_file_waits(self, tmp_path: Path) -> None:
        """A file changed within `settle_s` is left for a later poll, and then yielded."""
        written = write(tmp_path / "fresh.jpg")
        source = make_source(path=tmp_path, settle_s=5)
        mtime = written.stat().st_mtime
        early = await source.poll(None, now=mtime + 1)
        assert early.refs == ()
        settled = await source.poll(early.cursor, now=mtime + 6)
        assert paths(settled.refs) == {str(written)}

    async def test_recursive_tags(self, tmp_path: Path) -> None:
        """With `recursive`, files in sub-folders are found and the folder names become tags."""
        write(tmp_path / "Megane" / "cats" / "x.jpg")
        write(tmp_path / "top.jpg")
        flat = await make_source(path=tmp_path).poll(None, now=later())
        assert paths(flat.refs) == {str(tmp_path / "top.jpg")}
        deep = await make_source(path=tmp_path, recursive=True).poll(None, now=later())
        tags = {unquote(urlsplit(ref.url).path): ref.tags for ref in deep.refs}
        assert tags == {str(tmp_path / "Megane" / "cats" / "x.jpg"): ("megane", "cats"),
                        str(tmp_path / "top.jpg"): ()}

    async def test_extensions(self, tmp_path: Path) -> None:
        """Only the configured extensions are yielded, case-insensitively."""
        write(tmp_path / "a.JPG")
        write(tmp_path / "b.png")
        result = await make_source(path=tmp_path, extensions=[".jpg"]).poll(None, now=later())
        assert paths(result.refs) == {str(tmp_path / "a.JPG")}

    async def test_move_to(self, tmp_path: Path) -> None:
        """With `move_to`, files are moved out before being yielded, never overwriting."""
        inbox, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox / "a.jpg")
        write(done / "a.jpg", data=b"an older file with the same name")
        source = make_source(path=inbox, move_to=done)
        first = await source.poll(None, now=later())
        assert paths(first.refs) == {str(done / "a-1.jpg")}
        assert not (inbox / "a.jpg").exists()
        assert (done / "a.jpg").read_bytes() == b"an older file with the same name"
        assert (await source.poll(first.cursor, now=later())).refs == ()
        write(inbox / "b.jpg")
        assert paths((await source.poll(None, now=later())).refs) == {str(done / "b.jpg")}

    async def test_cursor_is_bounded(self, tmp_path: Path) -> None:
        """The cursor holds a watermark and the names at it, not every name ever seen."""
        for number in range(20):
            write(tmp_path / f"{number}.jpg", mtime=1_000_000 + number)
        result = await make_source(path=tmp_path).poll(None, now=later())
        assert len(result.refs) == 20
        assert result.cursor is not None
        assert len(json.loads(result.cursor)["names"]) < 20

    async def test_folder_gone(self, tmp_path: Path) -> None:
        """A folder removed after start is a SourceError naming it."""
        (tmp_path / "x").mkdir()
        source = make_source(path=tmp_path / "x")
        (tmp_path / "x").rmdir()
        with pytest.raises(SourceError, match="does not exist"):
            await source.poll(None, now=later())

    async def test_query_key(self, tmp_path: Path) -> None:
        """The query key changes with the path and the file selection."""
        assert (make_source(path=tmp_path).query_key()
                != make_source(path=tmp_path, recursive=True).query_key())


class TestValidate:
    def test_problems_name_keys(self, tmp_path: Path) -> None:
        """Every problem names its key and says what to do."""
        write(tmp_path / "file.jpg")
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "path: required"),
            ({"path": "relative/dir"}, "path: must be an absolute path"),
            ({"path": str(tmp_path / "missing")}, "path: folder"),
            ({"path": str(tmp_path), "move_to": str(tmp_path)}, "move_to: must be outside"),
            ({"path": str(tmp_path), "move_to": str(tmp_path / "file.jpg")},
             "move_to: "),
            ({"path": str(tmp_path), "extensions": "jpg, png"}, "extensions: "),
            ({"path": str(tmp_path), "extensions": ["JPG", ".png"]}, ""),
            ({"path": str(tmp_path), "extensions": []}, "extensions: "),
            ({"path": str(tmp_path), "recursive": "yes"}, "recursive: "),
            ({"path": str(tmp_path), "settle_s": -1}, "settle_s: "),
            ({"path": str(tmp_path), "url": "x"}, "url: unknown key"),
        ]
        for settings, expected in cases:
            problems = folder.validate(settings)
            if expected:
                assert len(problems) == 1 and problems[0].startswith(expected), (settings,
                                                                                  problems)
            else:
                assert problems == [], (settings, problems)
