"""Filing images under data_dir: modes, hard links, moves, idempotence, sweep, a full disk.

Real files under tmp_path; a tiny tmpfs stands in for a full disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.errors import PlacementError
from storage.placement import (
    TEMP_PREFIX,
    DataLayout,
    admit_to_store,
    place,
    remove_everywhere,
    sweep,
    write_file_atomic,
)
from storage.records import Placement

LIBRARY, QUARANTINE, HELD = Placement.LIBRARY, Placement.QUARANTINE, Placement.HELD


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def visible_files(folder: Path) -> list[Path]:
    """Every regular file under `folder`, sorted."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    """A DataLayout under tmp_path/data with its folders made."""
    result = DataLayout(tmp_path / "data")
    result.ensure()
    return result


Spool = Callable[..., str]


@pytest.fixture
def spool(layout: DataLayout) -> Spool:
    """Factory: put bytes in spool/ as a finished download; returns their sha256."""

    def make(data: bytes = b"\xff\xd8 jpeg bytes") -> str:
        digest = hashlib.sha256(data).hexdigest()
        layout.spool_file(digest).write_bytes(data)
        return digest

    return make


class TestEnsure:
    """DataLayout.ensure: the folders of SPEC §5 and their modes."""

    def test_modes(self, tmp_path: Path) -> None:
        """library is 0755; data_dir, quarantine, held, spool, store, models, cache are 0700."""
        layout = DataLayout(tmp_path / "a" / "data")
        layout.ensure()
        assert mode(layout.library) == 0o755
        for private in (layout.root, layout.quarantine, layout.held, layout.spool, layout.store,
                        layout.models, layout.cache):
            assert mode(private) == 0o700, private

    def test_repairs_modes(self, layout: DataLayout) -> None:
        """Running ensure again puts loosened modes back and keeps contents."""
        os.chmod(layout.quarantine, 0o777)
        (layout.held / "keep").write_bytes(b"x")
        layout.ensure()
        assert mode(layout.quarantine) == 0o700
        assert (layout.held / "keep").read_bytes() == b"x"

    def test_paths(self, tmp_path: Path) -> None:
        """The layout's paths are where SPEC §5 says."""
        layout = DataLayout(tmp_path)
        assert layout.catalogue == tmp_path / "catalogue.sqlite"
        assert layout.store_file("ab" + "0" * 62, ".jpg") == tmp_path / "store" / "ab" / (
            "ab" + "0" * 62 + ".jpg")
        assert layout.sidecar("f" * 64) == tmp_path / "quarantine" / ("f" * 64 + ".json")


class TestPlaceLibrary:
    """Filing into library/<tag>/."""

    def test_several_tags_are_hard_links(self, layout: DataLayout, spool: Spool) -> None:
        """An image with several tags appears in each tag folder as one inode, 0644."""
        digest = spool(b"one image")
        paths = place(layout, digest, ".jpg", LIBRARY, ("cat", "megane", "food"))
        assert paths == [
            layout.library / tag / f"{digest}.jpg" for tag in ("cat", "megane", "food")]
        inodes = {path.stat().st_ino for path in paths}
        stored = layout.store_file(digest, ".jpg")
        assert inodes == {stored.stat().st_ino}
        assert stored.stat().st_nlink == 4  # store + three tags
        for path in paths:
            assert path.read_bytes() == b"one image"
            assert mode(path) == 0o644
            assert mode(path.parent) == 0o755
        assert not layout.spool_file(digest).exists()

    def test_untagged(self, layout: DataLayout, spool: Spool) -> None:
        """An image with no tag goes to library/untagged/."""
        digest = spool()
        (path,) = place(layout, digest, ".png", LIBRARY, ())
        assert path == layout.library / "untagged" / f"{digest}.png"
        assert visible_files(layout.library) == [path]

    def test_tag_change_moves_links(self, layout: DataLayout, spool: Spool) -> None:
        """Re-filing with other tags adds the new folders and removes the old ones."""
        digest = spool()
        place(layout, digest, ".jpg", LIBRARY, ("cat", "megane"))
        paths = place(layout, digest, ".jpg", LIBRARY, ("megane", "food"))
        assert visible_files(layout.library) == sorted(paths)
        assert layout.store_file(digest, ".jpg").stat().st_nlink == 3

    @pytest.mark.parametrize("tag", ["../escape", "..", ".", "", "a/b", ".hidden", "nul\0byte",
                                     "back\\slash"])
    def test_unsafe_tag_refused(self, layout: DataLayout, spool: Spool, tag: str) -> None:
        """A tag that is not one plain folder name is a PlacementError; nothing is written."""
        digest = spool()
        with pytest.raises(PlacementError):
            place(layout, digest, ".jpg", LIBRARY, ("cat", tag))
        assert visible_files(layout.library) == []
        assert not (layout.root / "escape").exists()


class TestPlacePrivate:
    """Filing into quarantine/ and held/."""

    def test_quarantine_with_sidecar(self, layout: DataLayout, spool: Spool) -> None:
        """A quarantined image is 0600 in a 0700 folder, with its sidecar JSON beside it."""
        digest = spool()
        sidecar = {"sha256": digest, "reason": "score: nsfw=0.950 >= 0.80",
                   "scores": {"nsfw": 0.95}, "url": "https://e.org/a.jpg"}
        (path,) = place(layout, digest, ".jpg", QUARANTINE, (), sidecar)
        assert path == layout.quarantine / f"{digest}.jpg"
        assert mode(path) == 0o600 and mode(layout.quarantine) == 0o700
        written = layout.sidecar(digest)
        assert json.loads(written.read_text()) == sidecar
        assert mode(written) == 0o600
        assert visible_files(layout.library) == []

    def test_held(self, layout: DataLayout, spool: Spool) -> None:
        """A held image is 0600 in the 0700 held/ folder and nowhere else."""
        digest = spool()
        (path,) = place(layout, digest, ".gif", HELD, ())
        assert path == layout.held / f"{digest}.gif"
        assert mode(path) == 0o600 and mode(layout.held) == 0o700
        assert visible_files(layout.library) == [] and visible_files(layout.quarantine) == []

    def test_held_ignores_tags(self, layout: DataLayout, spool: Spool) -> None:
        """Tags given with a private placement make no library folder."""
        digest = spool()
        place(layout, digest, ".jpg", HELD, ("cat",))
        assert visible_files(layout.library) == []


class TestMoves:
    """Moving an image between library, quarantine and held."""

    def test_library_to_quarantine(self, layout: DataLayout, spool: Spool) -> None:
        """Every library link goes, and the shared inode becomes 0600."""
        digest = spool()
        place(layout, digest, ".jpg", LIBRARY, ("cat", "megane"))
        (path,) = place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "human_label"})
        assert visible_files(layout.library) == []
        assert mode(path) == 0o600
        assert mode(layout.store_file(digest, ".jpg")) == 0o600
        assert layout.store_file(digest, ".jpg").stat().st_nlink == 2
        assert layout.sidecar(digest).exists()

    def test_quarantine_to_library(self, layout: DataLayout, spool: Spool) -> None:
        """A released image becomes 0644 in the library; quarantine copy and sidecar go."""
        digest = spool()
        place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "score"})
        (path,) = place(layout, digest, ".jpg", LIBRARY, ("megane",))
        assert mode(path) == 0o644
        assert visible_files(layout.quarantine) == []
        assert not layout.sidecar(digest).exists()
        assert layout.store_file(digest, ".jpg").stat().st_nlink == 2

    def test_quarantine_to_held_removes_sidecar(self, layout: DataLayout, spool: Spool) -> None:
        """Moving out of quarantine to held removes the sidecar too."""
        digest = spool()
        place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "score"})
        place(layout, digest, ".jpg", HELD, ())
        assert visible_files(layout.quarantine) == []
        assert (layout.held / f"{digest}.jpg").exists()

    def test_held_to_library(self, layout: DataLayout, spool: Spool) -> None:
        """A held image, once classified clean, leaves held/ for the library."""
        digest = spool()
        place(layout, digest, ".jpg", HELD, ())
        place(layout, digest, ".jpg", LIBRARY, ())
        assert visible_files(layout.held) == []
        assert visible_files(layout.library) == [layout.library / "untagged" / f"{digest}.jpg"]

    @pytest.mark.parametrize(
        ("placement", "tags"),
        [(LIBRARY, ("cat", "megane")), (LIBRARY, ()), (QUARANTINE, ()), (HELD, ())],
    )
    def test_idempotent(self, layout: DataLayout, spool: Spool, placement: Placement,
                        tags: tuple[str, ...]) -> None:
        """Placing the same way twice changes nothing and leaves no temp files."""
        digest = spool()
        def snapshot() -> dict[Path, tuple[int, int, bytes]]:
            # The sidecar is rewritten (a new inode), so compare it by content only.
            return {path: (0 if path.suffix == ".json" else path.stat().st_ino, mode(path),
                           path.read_bytes()) for path in visible_files(layout.root)}

        first = place(layout, digest, ".jpg", placement, tags, {"reason": "r"})
        before = snapshot()
        second = place(layout, digest, ".jpg", placement, tags, {"reason": "r"})
        after = snapshot()
        assert first == second
        assert before == after
        assert not any(path.name.startswith(TEMP_PREFIX) for path in after)

    def test_missing_download(self, layout: DataLayout) -> None:
        """Placing content that is neither stored nor spooled names the missing file."""
        digest = "0" * 64
        with pytest.raises(PlacementError) as caught:
            place(layout, digest, ".jpg", LIBRARY, ())
        assert caught.value.path == str(layout.spool_file(digest))

    def test_admit_is_idempotent(self, layout: DataLayout, spool: Spool) -> None:
        """admit_to_store moves the spool file once and returns the stored copy after."""
        digest = spool(b"abc")
        stored = admit_to_store(layout, digest, ".jpg")
        assert admit_to_store(layout, digest, ".jpg") == stored
        assert stored.read_bytes() == b"abc" and mode(stored) == 0o600
        assert mode(stored.parent) == 0o700

    def test_remove_everywhere(self, layout: DataLayout, spool: Spool) -> None:
        """remove_everywhere deletes links, sidecar and the stored copy."""
        digest = spool()
        place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "r"})
        remove_everywhere(layout, digest, ".jpg")
        assert visible_files(layout.root) == []


class TestWriteAtomic:
    """write_file_atomic: temp name, fsync, rename."""

    def test_replaces_whole_file(self, tmp_path: Path) -> None:
        """The target has either the old or the new bytes, and the given mode."""
        target = tmp_path / "file.json"
        write_file_atomic(target, b"old", 0o600)
        write_file_atomic(target, b"new", 0o600)
        assert target.read_bytes() == b"new"
        assert mode(target) == 0o600
        assert [path.name for path in tmp_path.iterdir()] == ["file.json"]


class TestSweep:
    """sweep: leftovers of interrupted work go, referenced downloads stay."""

    def test_removes_temps_and_orphans(self, layout: DataLayout, spool: Spool) -> None:
        """Temp names in every folder, .part files and unreferenced spool files are removed."""
        kept = spool(b"still being processed")
        orphan = spool(b"nobody wants me")
        placed = spool(b"filed")
        place(layout, placed, ".jpg", LIBRARY, ("cat",))
        leftovers = [
            layout.library / "cat" / f"{TEMP_PREFIX}abc-1234",
            layout.quarantine / f"{TEMP_PREFIX}def-5678",
            layout.held / f"{TEMP_PREFIX}x",
            layout.store / placed[:2] / f"{TEMP_PREFIX}y",
            layout.spool / "download.part",
        ]
        for path in leftovers:
            path.write_bytes(b"partial")
        removed = sweep(layout, keep_spool={kept})
        assert sorted(removed) == sorted([*leftovers, layout.spool_file(orphan)])
        assert layout.spool_file(kept).exists()
        assert (layout.library / "cat" / f"{placed}.jpg").exists()
        assert layout.store_file(placed, ".jpg").exists()

    def test_keeps_referenced_part_free_spool(self, layout: DataLayout, spool: Spool) -> None:
        """Sweeping with every spool file referenced removes nothing."""
        digests = {spool(bytes([n])) for n in range(3)}
        assert sweep(layout, keep_spool=digests) == []
        assert {path.name for path in layout.spool.iterdir()} == digests

    def test_sweep_on_missing_folders(self, tmp_path: Path) -> None:
        """A data_dir not made yet sweeps to nothing without error."""
        assert sweep(DataLayout(tmp_path / "none"), keep_spool=set()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at tmp_path/tiny (skips the test if mounting is refused)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


class TestFullDisk:
    """A destination that runs out of space (ENOSPC on a tiny tmpfs)."""

    @pytest.fixture
    def small_library(self, tiny_disk: Path, tmp_path: Path) -> DataLayout:
        """A layout whose library/ is a 64 KiB tmpfs (a link there must become a copy)."""
        layout = DataLayout(tmp_path / "data")
        layout.root.mkdir()
        (layout.library).symlink_to(tiny_disk, target_is_directory=True)
        layout.ensure()
        return layout

    def test_library_full_keeps_previous_placement(self, small_library: DataLayout) -> None:
        """A failed copy into the library is a PlacementError naming the path, no partial file
        is left, and the image stays where it was (held)."""
        layout = small_library
        data = os.urandom(200 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        layout.spool_file(digest).write_bytes(data)
        place(layout, digest, ".jpg", HELD, ())
        with pytest.raises(PlacementError) as caught:
            place(layout, digest, ".jpg", LIBRARY, ("cat",))
        assert caught.value.path == str(layout.library / "cat" / f"{digest}.jpg")
        assert "space" in caught.value.reason.lower()
        assert visible_files(layout.library.resolve()) == []
        assert (layout.held / f"{digest}.jpg").read_bytes() == data
        assert layout.store_file(digest, ".jpg").read_bytes() == data

    def test_small_file_still_fits(self, small_library: DataLayout) -> None:
        """Across file systems a small image is copied rather than linked, and filed."""
        layout = small_library
        data = b"small image"
        digest = hashlib.sha256(data).hexdigest()
        layout.spool_file(digest).write_bytes(data)
        (path,) = place(layout, digest, ".jpg", LIBRARY, ())
        assert path.read_bytes() == data
        assert mode(path) == 0o644

    def test_full_quarantine_fails_closed(self, tiny_disk: Path, tmp_path: Path) -> None:
        """When quarantine cannot take an image, it still leaves the library (never visible)."""
        layout = DataLayout(tmp_path / "data")
        layout.root.mkdir()
        layout.quarantine.symlink_to(tiny_disk, target_is_directory=True)
        layout.ensure()
        data = os.urandom(200 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        layout.spool_file(digest).write_bytes(data)
        place(layout, digest, ".jpg", LIBRARY, ("cat",))
        with pytest.raises(PlacementError) as caught:
            place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "score"})
        assert caught.value.path == str(layout.quarantine / f"{digest}.jpg")
        assert "space" in caught.value.reason.lower()
        assert visible_files(layout.library) == []
        assert [path for path in tiny_disk.iterdir() if path.name.startswith(TEMP_PREFIX)] == []
        assert layout.store_file(digest, ".jpg").read_bytes() == data
        assert mode(layout.store_file(digest, ".jpg")) == 0o600

    def test_full_sidecar_leaves_no_partial(self, tiny_disk: Path, tmp_path: Path) -> None:
        """A sidecar that does not fit leaves no temp file and raises PlacementError."""
        layout = DataLayout(tmp_path / "data")
        layout.root.mkdir()
        layout.quarantine.symlink_to(tiny_disk, target_is_directory=True)
        layout.ensure()
        (tiny_disk / "filler").write_bytes(b"\0" * (60 * 1024))
        data = b"small"
        digest = hashlib.sha256(data).hexdigest()
        layout.spool_file(digest).write_bytes(data)
        with pytest.raises(PlacementError) as caught:
            place(layout, digest, ".jpg", QUARANTINE, (), {"reason": "x" * 20_000})
        assert caught.value.path == str(layout.sidecar(digest))
        assert [path.name for path in tiny_disk.iterdir()
                if path.name.startswith(TEMP_PREFIX)] == []
        assert not layout.sidecar(digest).exists()
