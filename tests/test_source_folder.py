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
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from crawler.config import SourceConfig
from crawler.errors import PermanentFetchError, SourceError
from crawler.localcopy import allow_root, copy_to_spool, path_from_file_url
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
        assert len(json.loads(result.cursor)["raw_names"]) < 20

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


JPEG_BYTES = b"\xff\xd8\xff\xe0jpeg"
LATIN1_NAME = b"caf\xe9.jpg"


def write_bytes_name(directory: Path, name: bytes, data: bytes = JPEG_BYTES,
                     mtime: float | None = None) -> Path:
    """Write a file whose name is raw bytes (git cannot keep such names, so tests make them)."""
    raw = os.fsencode(directory) + b"/" + name
    with open(raw, "wb") as file:
        file.write(data)
    if mtime is not None:
        os.utime(raw, (mtime, mtime))
    return Path(os.fsdecode(raw))


class TestFileNamesInAnyEncoding:
    async def test_latin1_name_is_yielded_and_read(self, tmp_path: Path) -> None:
        """A Latin-1 file name becomes a percent-encoded URL that reads back the same file."""
        (tmp_path / "spool").mkdir()
        inbox = tmp_path / "in"
        inbox.mkdir()
        written = write_bytes_name(inbox, LATIN1_NAME, mtime=1_000_000)
        result = await make_source(path=inbox).poll(None, now=later())
        (ref,) = result.refs
        assert ref.url == f"file://{inbox}/caf%E9.jpg"
        assert ref.url.isascii()
        assert dict(ref.extra) == {"file_name": "caf\ufffd.jpg"}
        assert path_from_file_url(ref.url) == written
        copy = copy_to_spool(ref.url, tmp_path / "spool", max_bytes=1 << 20)
        assert copy.path.read_bytes() == JPEG_BYTES

    async def test_cursor_at_a_latin1_name_is_stored_and_honoured(self, tmp_path: Path) -> None:
        """When the newest file has a non-UTF-8 name the cursor is UTF-8 text and still works."""
        write(tmp_path / "plain.jpg", mtime=1_000_000)
        write_bytes_name(tmp_path, LATIN1_NAME, mtime=1_000_001)
        source = make_source(path=tmp_path)
        first = await source.poll(None, now=later())
        assert len(first.refs) == 2
        assert first.cursor is not None
        first.cursor.encode("utf-8")  # what SQLite needs; surrogates would raise here
        assert json.loads(first.cursor)["raw_names"] == ["caf%E9.jpg"]
        assert (await source.poll(first.cursor, now=later())).refs == ()

    async def test_cursor_of_an_older_version_is_honoured(self, tmp_path: Path) -> None:
        """A cursor written before `raw_names` (plain `names`) still hides the files it saw."""
        written = write(tmp_path / "é.jpg", mtime=1_000_000)
        changed_ns = max(written.stat().st_mtime_ns, written.stat().st_ctime_ns)
        old_cursor = json.dumps({"after_ns": changed_ns, "names": ["é.jpg"]})
        assert (await make_source(path=tmp_path).poll(old_cursor, now=later())).refs == ()

    async def test_latin1_names_in_move_to_mode_and_sub_folders(self, tmp_path: Path) -> None:
        """An inbox moves a non-UTF-8 file and its URL still reads it; folder tags stay text."""
        (tmp_path / "spool").mkdir()
        inbox, done = tmp_path / "inbox", tmp_path / "done"
        (inbox / "sub").mkdir(parents=True)
        os.mkdir(os.fsencode(inbox) + b"/d\xe9j\xe0")
        write_bytes_name(Path(os.fsdecode(os.fsencode(inbox) + b"/d\xe9j\xe0")), LATIN1_NAME)
        result = await make_source(path=inbox, move_to=done, recursive=True).poll(
            None, now=later())
        (ref,) = result.refs
        assert ref.tags == ("d\ufffdj\ufffd",)
        assert ref.url.endswith("/done/d%E9j%E0/caf%E9.jpg")
        copy = copy_to_spool(ref.url, tmp_path / "spool", max_bytes=1 << 20)
        assert copy.path.read_bytes() == JPEG_BYTES

    @hypothesis_settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(names=st.sets(st.binary(min_size=1, max_size=60).filter(
        lambda name: b"/" not in name and b"\x00" not in name and name not in (b".", b"..")),
        min_size=1, max_size=6))
    async def test_any_byte_names(self, tmp_path_factory: pytest.TempPathFactory,
                                  names: set[bytes]) -> None:
        """Arbitrary byte names either yield refs whose URLs read the same bytes, or fail as
        the source's documented SourceError; the cursor is always storable text."""
        root = tmp_path_factory.mktemp("names")
        (root / "spool").mkdir()
        inbox = root / "in"
        inbox.mkdir()
        expected: dict[bytes, bytes] = {}
        for number, name in enumerate(names):
            try:
                write_bytes_name(inbox, name, data=JPEG_BYTES + bytes([number]))
            except OSError:
                continue  # a name this filesystem refuses
            if not name.startswith(b"."):
                expected[name] = JPEG_BYTES + bytes([number])
        assume(expected)
        try:
            result = await make_source(path=inbox, sniff=True).poll(None, now=later())
        except SourceError:
            return
        assert result.cursor is not None
        result.cursor.encode("utf-8")
        read: dict[bytes, bytes] = {}
        for ref in result.refs:
            assert ref.url.isascii()
            json.dumps([ref.url, ref.tags, ref.extra]).encode("utf-8")
            path = path_from_file_url(ref.url)
            copy = copy_to_spool(ref.url, root / "spool", max_bytes=1 << 20)
            read[os.fsencode(path.name)] = copy.path.read_bytes()
        assert read == expected
        again = await make_source(path=inbox, sniff=True).poll(result.cursor, now=later())
        assert again.refs == ()


class TestSniff:
    async def test_magic_bytes_decide(self, tmp_path: Path) -> None:
        """With `sniff`, an extension-less JPEG and a .tif are yielded, a text file is not."""
        write(tmp_path / "no-extension", data=JPEG_BYTES)
        write(tmp_path / "scan.tif", data=b"II*\x00\x08\x00\x00\x00" + bytes(64))
        write(tmp_path / "notes.jpg", data=b"just some text, named like a photo")
        result = await make_source(path=tmp_path, sniff=True).poll(None, now=later())
        assert paths(result.refs) == {str(tmp_path / "no-extension"), str(tmp_path / "scan.tif")}

    async def test_inbox_moves_only_images(self, tmp_path: Path) -> None:
        """In inbox mode with `sniff`, images are moved and yielded; a text file stays put."""
        inbox, done = tmp_path / "inbox", tmp_path / "done"
        write(inbox / "IMG_0001", data=JPEG_BYTES)
        write(inbox / "readme.txt", data=b"not a photo")
        source = make_source(path=inbox, move_to=done, sniff=True)
        result = await source.poll(None, now=later())
        assert paths(result.refs) == {str(done / "IMG_0001")}
        assert (inbox / "readme.txt").exists() and not (done / "readme.txt").exists()

    def test_sniff_must_be_a_boolean(self, tmp_path: Path) -> None:
        """A non-boolean `sniff` is a config problem naming the key."""
        assert folder.validate({"path": str(tmp_path), "sniff": "yes"}) == [
            "sniff: must be true or false"]


class TestSafeRead:
    async def test_symlink_swapped_in_after_the_scan_is_refused(self, tmp_path: Path) -> None:
        """A file replaced by a symlink to a private file after the scan is never read."""
        (tmp_path / "spool").mkdir()
        inbox = tmp_path / "in"
        photo_path = write(inbox / "photo.jpg", mtime=1_000_000)
        secret = write(tmp_path / "private" / "id_rsa", data=b"PRIVATE KEY")
        (ref,) = (await make_source(path=inbox).poll(None, now=later())).refs
        photo_path.unlink()
        photo_path.symlink_to(secret)
        with pytest.raises(PermanentFetchError) as caught:
            copy_to_spool(ref.url, tmp_path / "spool", max_bytes=1 << 20)
        assert caught.value.reason == "not_regular_file: symlink"
        assert "photo.jpg" in str(caught.value)
        assert list((tmp_path / "spool").iterdir()) == []

    @pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
    def test_special_files_are_refused_without_blocking(self, tmp_path: Path,
                                                        kind: str) -> None:
        """A FIFO (which would block an ordinary open), directory or socket is refused."""
        import socket

        (tmp_path / "spool").mkdir()
        allow_root(tmp_path)  # as a folder source over tmp_path would
        target = tmp_path / "thing.jpg"
        server = None
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "directory":
            target.mkdir()
        else:
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(target))
        try:
            with pytest.raises(PermanentFetchError) as caught:
                copy_to_spool(target.as_uri(), tmp_path / "spool", max_bytes=1 << 20)
        finally:
            if server is not None:
                server.close()
        assert caught.value.reason == f"not_regular_file: {kind}"

    def test_missing_file_is_file_not_found(self, tmp_path: Path) -> None:
        """A file gone since the scan is file_not_found, naming it."""
        (tmp_path / "spool").mkdir()
        allow_root(tmp_path)  # as a folder source over tmp_path would
        with pytest.raises(PermanentFetchError) as caught:
            copy_to_spool((tmp_path / "gone.jpg").as_uri(), tmp_path / "spool", 1 << 20)
        assert caught.value.reason == "file_not_found"
        assert "gone.jpg" in str(caught.value)


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
