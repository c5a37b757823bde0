"""storage.atomic: the one owner of atomic, durable file and folder writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storage.atomic import (
    TEMP_PREFIX,
    batch_durability,
    rename_into_place,
    staged_directory,
    write_file_atomic,
)


def mode_of(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


class TestWriteFileAtomic:
    def test_mode_is_exact_whatever_the_umask(self, tmp_path: Path) -> None:
        """A restrictive umask does not narrow the mode asked for (a model file stays 0644)."""
        target = tmp_path / "model.tflite"
        previous = os.umask(0o077)
        try:
            write_file_atomic(target, b"flatbuffer", 0o644)
        finally:
            os.umask(previous)
        assert target.read_bytes() == b"flatbuffer"
        assert mode_of(target) == 0o644

    def test_failed_write_leaves_no_temp(self, tmp_path: Path) -> None:
        """A write into a folder that is gone raises and leaves no file or temp name behind."""
        target = tmp_path / "missing" / "file.bin"
        with pytest.raises(FileNotFoundError):
            write_file_atomic(target, b"data", 0o600)
        assert not (tmp_path / "missing").exists()
        assert not [path for path in tmp_path.iterdir() if path.name.startswith(TEMP_PREFIX)]

    def test_deferred_durability_still_writes(self, tmp_path: Path) -> None:
        """Inside batch_durability the fsyncs wait for the one sync, the bytes are there."""
        target = tmp_path / "sidecar.json"
        with batch_durability():
            write_file_atomic(target, b"{}", 0o600)
        assert target.read_bytes() == b"{}"


class TestRenameIntoPlace:
    @pytest.mark.parametrize("durable", [True, False])
    def test_replaces_target_and_removes_temp(self, tmp_path: Path, durable: bool) -> None:
        """The finished temp file takes the target's name, durable or not; the old is gone."""
        temp, target = tmp_path / "download.part", tmp_path / "abc"
        target.write_bytes(b"old")
        temp.write_bytes(b"new")
        rename_into_place(temp, target, durable=durable)
        assert target.read_bytes() == b"new"
        assert not temp.exists()

    def test_missing_temp_raises_and_keeps_target(self, tmp_path: Path) -> None:
        """A temp file that vanished raises FileNotFoundError and leaves the target alone."""
        target = tmp_path / "abc"
        target.write_bytes(b"old")
        with pytest.raises(FileNotFoundError):
            rename_into_place(tmp_path / "gone.part", target)
        assert target.read_bytes() == b"old"


class TestStagedDirectory:
    def test_folder_appears_whole(self, tmp_path: Path) -> None:
        """On success the folder appears with every file, the mode asked for, no staging left."""
        folder = tmp_path / "models" / "v1"
        with staged_directory(folder, 0o755) as staging:
            assert not folder.exists()  # nothing visible until the block ends
            (staging / "model.keras").write_bytes(b"weights")
            (staging / "metadata.json").write_text("{}")
        assert sorted(path.name for path in folder.iterdir()) == ["metadata.json", "model.keras"]
        assert mode_of(folder) == 0o755
        assert [path.name for path in folder.parent.iterdir()] == ["v1"]

    def test_failure_removes_staging(self, tmp_path: Path) -> None:
        """An exception inside the block leaves neither the folder nor the staging folder."""
        folder = tmp_path / "v1"
        with pytest.raises(RuntimeError, match="save failed"), \
                staged_directory(folder) as staging:
            (staging / "model.keras").write_bytes(b"partial")
            raise RuntimeError("save failed")
        assert list(tmp_path.iterdir()) == []

    def test_never_overwrites_an_existing_folder(self, tmp_path: Path) -> None:
        """A folder that already holds files is kept; the staged copy is removed, OSError raised."""
        folder = tmp_path / "v1"
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"original")
        with pytest.raises(OSError), staged_directory(folder) as staging:
            (staging / "model.keras").write_bytes(b"replacement")
        assert (folder / "model.keras").read_bytes() == b"original"
        assert [path.name for path in tmp_path.iterdir()] == ["v1"]
