"""Copying a folder source's file into spool/: whose failure is it, the file's or ours?

A failure of the file (missing, unreadable) costs the item: a permanent rejection. A
failure of our side (the spool's disk full or over a size limit, our process out of
descriptors) is raised as the OSError it is, and the download stage defers the row as it
does for an HTTP download that hits ENOSPC, until the space is back. Each failure here is
real: a child process under RLIMIT_FSIZE or RLIMIT_NOFILE, a name longer than the file
system allows, and a full tmpfs under spool/ through the real daemon.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crawler.daemon import Daemon
from crawler.errors import PermanentFetchError
from crawler.localcopy import allow_root, copy_to_spool
from tests.daemon_process import connect, files_under, small_photo
from tests.rlimits import run_limited
from tests.test_folder_inbox import inbox_config
from tests.test_faults import JumpingClock, _fill, mount_tmpfs  # mount_tmpfs: a fixture

COPY_UNDER_LIMIT = """
    from pathlib import Path
    from crawler.errors import PermanentFetchError
    from crawler.localcopy import allow_root, copy_to_spool

    folder, url, spool, limit = sys.argv[1:5]
    allow_root(folder)
    if limit == "fsize":
        limit_file_size(4096)
    else:
        limit_open_files()
    try:
        copy = copy_to_spool(url, Path(spool), max_bytes=1 << 24)
    except PermanentFetchError as error:
        report(permanent=True, **outcome(error), left=os.listdir(spool))
    except OSError as error:
        report(permanent=False, **outcome(error), left=os.listdir(spool))
    else:
        report(permanent=None, size=copy.size, left=os.listdir(spool))
    """


@pytest.fixture
def photo_file(tmp_path: Path) -> tuple[Path, str, Path]:
    """A 100 KB file in a folder source's folder, its file:// URL, and an empty spool."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    path = folder / "big.jpg"
    path.write_bytes(small_photo(1) + os.urandom(100_000))
    spool = tmp_path / "spool"
    spool.mkdir()
    return folder, path.as_uri(), spool


class TestWhoseFailure:
    def test_spool_write_over_the_size_limit_is_ours(
        self, photo_file: tuple[Path, str, Path]) -> None:
        """A spool write refused (EFBIG under RLIMIT_FSIZE) is raised as OSError, not a
        rejection of the file, and no partial copy is left."""
        folder, url, spool = photo_file
        result = run_limited(COPY_UNDER_LIMIT, str(folder), url, str(spool), "fsize")
        assert result["permanent"] is False, result
        assert result["errno"] == errno.EFBIG, result
        assert result["left"] == []

    def test_out_of_descriptors_is_ours(self, photo_file: tuple[Path, str, Path]) -> None:
        """Our process out of descriptors (EMFILE) when opening the file is raised as
        OSError: the file is not to blame."""
        folder, url, spool = photo_file
        result = run_limited(COPY_UNDER_LIMIT, str(folder), url, str(spool), "nofile")
        assert result["permanent"] is False, result
        assert result["errno"] == errno.EMFILE, result
        assert result["left"] == []

    def test_unreadable_file_is_the_files(self, tmp_path: Path) -> None:
        """A file the system cannot open (a name longer than it allows) is rejected as
        `file_unreadable`, naming the file."""
        folder = tmp_path / "inbox"
        folder.mkdir()
        allow_root(folder)
        (tmp_path / "spool").mkdir()
        url = (folder / ("x" * 300 + ".jpg")).as_uri()
        with pytest.raises(PermanentFetchError) as caught:
            copy_to_spool(url, tmp_path / "spool", max_bytes=1 << 20)
        assert caught.value.reason == "file_unreadable"
        assert "x" * 300 in caught.value.url
        assert list((tmp_path / "spool").iterdir()) == []

    def test_missing_spool_folder_is_ours(self, photo_file: tuple[Path, str, Path]) -> None:
        """A spool folder that is gone is our disk's problem, not a missing file."""
        folder, url, spool = photo_file
        allow_root(folder)
        spool.rmdir()
        with pytest.raises(OSError) as caught:
            copy_to_spool(url, spool, max_bytes=1 << 20)
        assert not isinstance(caught.value, PermanentFetchError)
        assert caught.value.errno == errno.ENOENT


def _rows(data_dir: Path) -> dict[str, dict[str, Any]]:
    with connect(data_dir / "catalogue.sqlite") as connection:
        return {row["url"].rsplit("/", 1)[1]: dict(row)
                for row in connection.execute("SELECT * FROM media")}


class TestFullSpoolThroughTheDaemon:
    async def test_folder_files_wait_for_space_and_are_then_filed(
        self, tmp_path: Path, write_config: Any, shared_classifier: Any,
        mount_tmpfs: Callable[[Path, str], Path],
    ) -> None:
        """ENOSPC copying inbox files into a full spool rejects none of them: the rows are
        deferred as `disk_error`, and once space is back every file is filed."""
        inbox_dir, done = tmp_path / "inbox", tmp_path / "done"
        inbox_dir.mkdir()
        names = [f"{number}.jpg" for number in range(3)]
        for number, name in enumerate(names):
            (inbox_dir / name).write_bytes(small_photo(40 + number, side=256))
        config = inbox_config(write_config, inbox_dir, done)
        spool = mount_tmpfs(config.data_dir / "spool", "256k")
        (spool / "ballast").mkdir()  # start-up sweeps loose files out of spool/ itself
        ballast = _fill(spool / "ballast")
        clock = JumpingClock()

        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert set(rows) == set(names)
        assert {row["state"] for row in rows.values()} == {"pending"}, rows
        assert all(row["reason"].startswith("disk_error") for row in rows.values()), rows
        assert sorted(path.name for path in done.iterdir() if not path.name.startswith(".")) \
            == names
        ballast.unlink()
        subprocess.run(["umount", "-l", str(spool)], check=True)
        clock.jump(3600)
        assert await Daemon(config, classifier=shared_classifier, clock=clock).run(once=True) == 0

        rows = _rows(config.data_dir)
        assert set(rows) == set(names)
        assert {row["state"] for row in rows.values()} <= {"library", "quarantine"}, rows
        filed = {path.name.split(".")[0] for path in files_under(config.data_dir / "library")}
        filed |= {path.name.split(".")[0]
                  for path in files_under(config.data_dir / "quarantine")}
        assert {row["sha256"] for row in rows.values()} <= filed
