"""A folder source never reads, moves or deletes through a folder swapped for a symlink.

Issue 12 item 3: O_NOFOLLOW guards only a path's last component. These tests swap a scanned
sub-folder (or a move_to sub-folder) for a real symlink to a private folder between the scan
and the read or move, and check that nothing of the private folder is read, filed, moved or
deleted, and that the item is refused with its reason.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from tests.test_source_folder import make_source
from crawler.config import SourceConfig, load_config
from crawler.daemon import Daemon
from crawler.errors import PermanentFetchError
from crawler.localcopy import allow_root, copy_to_spool
from crawler.sources import folder
from crawler.sources.base import PollResult, SourceContext
from crawler.sources.folder import scan, sniff_file
from crawler.sources.inbox import _copy_at, move_into
from storage.catalogue import Catalogue
from storage.placement import DataLayout


def photo_bytes(seed: int) -> bytes:
    """A real JPEG, different for each seed."""
    image = Image.new("RGB", (64, 48), (seed * 40 % 256, 90, 200 - seed * 30 % 200))
    for x in range(0, 64, 4):
        image.putpixel((x, (x * seed) % 48), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (1_000_000, 1_000_000))
    return path


def swap_for_symlink(directory: Path, target: Path) -> None:
    """Move `directory` aside and put a symlink to `target` in its place."""
    directory.rename(directory.with_name(directory.name + ".old"))
    directory.symlink_to(target, target_is_directory=True)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An inbox with sub/a.jpg, a private folder holding its own a.jpg, and a spool."""
    (tmp_path / "spool").mkdir()
    write(tmp_path / "inbox" / "sub" / "a.jpg", photo_bytes(1))
    private = tmp_path / "private"
    write(private / "a.jpg", photo_bytes(2))
    return {"root": tmp_path, "inbox": tmp_path / "inbox", "private": private,
            "spool": tmp_path / "spool"}


class TestReadThroughSwappedFolder:
    async def test_swapped_sub_folder_is_refused(self, tree: dict[str, Path]) -> None:
        """A sub-folder swapped for a symlink after the scan is not read: symlink in path."""
        source = make_source(path=tree["inbox"], recursive=True, settle_s=0)
        (ref,) = (await source.poll(None, now=time.time() + 10)).refs
        swap_for_symlink(tree["inbox"] / "sub", tree["private"])
        with pytest.raises(PermanentFetchError) as caught:
            copy_to_spool(ref.url, tree["spool"], max_bytes=1 << 20)
        assert caught.value.reason == "not_regular_file: symlink in path"
        assert "a.jpg" in str(caught.value)
        assert list(tree["spool"].iterdir()) == []

    async def test_unswapped_sub_folder_is_read(self, tree: dict[str, Path]) -> None:
        """Without a swap the same file is read through the walked folders."""
        source = make_source(path=tree["inbox"], recursive=True, settle_s=0)
        (ref,) = (await source.poll(None, now=time.time() + 10)).refs
        copy = copy_to_spool(ref.url, tree["spool"], max_bytes=1 << 20)
        assert copy.path.read_bytes() == photo_bytes(1)

    def test_file_outside_every_folder_is_refused(self, tree: dict[str, Path]) -> None:
        """A file:// URL under no folder source's folder, or climbing out with .., is refused."""
        allow_root(tree["inbox"])
        for url in ((tree["private"] / "a.jpg").as_uri(),
                    f"file://{tree['inbox']}/sub/../../private/a.jpg"):
            with pytest.raises(PermanentFetchError) as caught:
                copy_to_spool(url, tree["spool"], max_bytes=1 << 20)
            assert caught.value.reason == "outside_folder", url
            assert "a.jpg" in str(caught.value)
        assert list(tree["spool"].iterdir()) == []

    def test_sniff_through_swapped_folder_reads_nothing(self, tree: dict[str, Path]) -> None:
        """`sniff` (and `megane import`) do not read magic bytes through a swapped folder."""
        assert sniff_file("sub/a.jpg", root=tree["inbox"]) == "JPEG"
        swap_for_symlink(tree["inbox"] / "sub", tree["private"])
        assert sniff_file("sub/a.jpg", root=tree["inbox"]) is None


class TestSymlinkedRoot:
    async def test_root_may_be_a_symlink(self, tree: dict[str, Path]) -> None:
        """The configured folder may itself be a symlink: its files are yielded and read."""
        link = tree["root"] / "inbox-link"
        link.symlink_to(tree["inbox"], target_is_directory=True)
        source = make_source(path=link, recursive=True, settle_s=0)
        (ref,) = (await source.poll(None, now=time.time() + 10)).refs
        assert ref.url == (tree["inbox"] / "sub" / "a.jpg").as_uri()
        copy = copy_to_spool(ref.url, tree["spool"], max_bytes=1 << 20)
        assert copy.path.read_bytes() == photo_bytes(1)

    async def test_symlinked_folder_inside_root_is_skipped(self, tree: dict[str, Path]) -> None:
        """A symlink to a folder inside the root is not followed by the scan."""
        (tree["inbox"] / "linked").symlink_to(tree["private"], target_is_directory=True)
        source = make_source(path=tree["inbox"], recursive=True, settle_s=0)
        refs = (await source.poll(None, now=time.time() + 10)).refs
        assert [ref.url for ref in refs] == [(tree["inbox"] / "sub" / "a.jpg").as_uri()]


class TestMoveThroughSwappedFolder:
    def test_swapped_source_folder_moves_and_deletes_nothing(self,
                                                             tree: dict[str, Path]) -> None:
        """With move_to, a source sub-folder swapped after the scan moves nothing; the
        private file stays where it was and the refusal is logged with its reason."""
        done = tree["root"] / "done"
        source = make_source(path=tree["inbox"], move_to=done, recursive=True, settle_s=0)
        entries = scan(tree["inbox"], extensions=source.extensions, recursive=True,
                       settled_before_s=time.time() + 10)
        assert [entry.name for entry in entries] == ["sub/a.jpg"]
        swap_for_symlink(tree["inbox"] / "sub", tree["private"])
        with capture_logs() as logs:
            result = source._move_all(entries, done)
        assert result.refs == ()
        assert (tree["private"] / "a.jpg").read_bytes() == photo_bytes(2)
        assert not (done / "sub" / "a.jpg").exists()
        (failure,) = [line for line in logs if line["event"] == "folder_move_failed"]
        assert failure["reason"] == "not_regular_file: symlink in path"
        assert failure["file_name"] == "sub/a.jpg"

    def test_swapped_destination_folder_writes_nothing_there(self,
                                                             tree: dict[str, Path]) -> None:
        """A move_to sub-folder that is a symlink is not written through; the file stays."""
        done = tree["root"] / "done"
        done.mkdir()
        (done / "sub").symlink_to(tree["private"], target_is_directory=True)
        with pytest.raises(OSError, match="symlink in path"):
            move_into(tree["inbox"], "sub/a.jpg", done)
        assert sorted(path.name for path in tree["private"].iterdir()) == ["a.jpg"]
        assert (tree["inbox"] / "sub" / "a.jpg").read_bytes() == photo_bytes(1)

    def test_move_keeps_one_copy_and_numbers_collisions(self, tree: dict[str, Path]) -> None:
        """A move by descriptors lands in move_to, removes the original, never overwrites."""
        done = tree["root"] / "done"
        write(done / "sub" / "a.jpg", b"already here")
        moved = move_into(tree["inbox"], "sub/a.jpg", done)
        assert moved == done / "sub" / "a-1.jpg"
        assert moved.read_bytes() == photo_bytes(1)
        assert (done / "sub" / "a.jpg").read_bytes() == b"already here"
        assert not (tree["inbox"] / "sub" / "a.jpg").exists()

    def test_copy_across_filesystems_keeps_bytes_mode_and_time(self,
                                                               tree: dict[str, Path]) -> None:
        """The cross-filesystem path copies by descriptors, keeps mode and mtime, and
        refuses to overwrite an existing name."""
        destination = tree["root"] / "dest"
        destination.mkdir()
        os.chmod(tree["inbox"] / "sub" / "a.jpg", 0o640)
        source_dir = os.open(tree["inbox"] / "sub", os.O_RDONLY | os.O_DIRECTORY)
        target_dir = os.open(destination, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _copy_at(source_dir, b"a.jpg", target_dir, b"b.jpg")
            with pytest.raises(FileExistsError):
                _copy_at(source_dir, b"a.jpg", target_dir, b"b.jpg")
        finally:
            os.close(source_dir)
            os.close(target_dir)
        copied = destination / "b.jpg"
        assert copied.read_bytes() == photo_bytes(1)
        assert copied.stat().st_mode & 0o777 == 0o640
        assert copied.stat().st_mtime == 1_000_000


class SwappingFolderSource(folder.FolderSource):
    """A real folder source; after its first poll the sub-folder is swapped for a symlink."""

    def __init__(self, *args: Any, swap: tuple[Path, Path], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.swap: tuple[Path, Path] | None = swap

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        result = await super().poll(cursor, now)
        if self.swap is not None:
            swap_for_symlink(*self.swap)
            self.swap = None
        return result


class TestThroughTheDaemon:
    async def test_nothing_private_reaches_data_dir(self, tree: dict[str, Path],
                                                    shared_classifier: Any) -> None:
        """Through the real daemon, the swapped item is rejected with its reason and no
        byte of the private file appears anywhere under data_dir."""
        work = tree["root"]
        write(tree["inbox"] / "top.jpg", photo_bytes(3))
        config_path = work / "config.toml"
        config_path.write_text(
            f'[daemon]\ndata_dir = "{work / "data"}"\n\n'
            f'[[sources]]\nkind = "folder"\nname = "inbox"\npath = "{tree["inbox"]}"\n'
            "recursive = true\nsettle_s = 0\n")
        config = load_config(config_path)
        source = SwappingFolderSource(
            "inbox", tree["inbox"], move_to=None, extensions=frozenset({"jpg"}),
            recursive=True, settle_s=0, swap=(tree["inbox"] / "sub", tree["private"]))
        daemon = Daemon(config, classifier=shared_classifier, sources=[source])
        assert await daemon.run(once=True) == 0
        catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
        try:
            rows = {row["url"].rsplit("/", 2)[-2] + "/" + row["url"].rsplit("/", 1)[-1]: row
                    for row in await catalogue.media_list()}
        finally:
            await catalogue.close()
        assert rows["sub/a.jpg"]["reason"] == "not_regular_file: symlink in path"
        assert rows["sub/a.jpg"]["sha256"] is None
        assert rows["inbox/top.jpg"]["sha256"] is not None  # the other item is unaffected
        private = photo_bytes(2)
        stored = [path for path in (work / "data").rglob("*")
                  if path.is_file() and path.read_bytes() == private]
        assert stored == []
        assert (tree["private"] / "a.jpg").read_bytes() == private
