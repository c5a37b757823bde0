"""Private files stay private whatever the umask; check-config warns about a readable secret.

The data_dir test runs a real `megane once` (a subprocess, builtin model, a local feed)
under umask 022 and walks everything it created: only library/ may be readable by others.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.cli import main
from crawler.configsecrets import exposed_secrets_warning, secret_keys
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from tests.conftest import MediaServer, photo

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (files 0644, folders 0755 unless the code says otherwise)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_private_paths(data_dir: Path) -> list[str]:
    """Paths outside library/ that are not 0700 (folders) or 0600 (files).

    A stored copy (store/) that is hard-linked into library/ is the library file itself
    (the same inode) and is readable on purpose.
    """
    library = data_dir / "library"
    library_inodes = {path.lstat().st_ino for path in library.rglob("*") if path.is_file()}
    problems = []
    if mode(data_dir) != 0o700:
        problems.append(f"{data_dir}: {mode(data_dir):04o}")
    for path in data_dir.rglob("*"):
        if path == library or library in path.parents:
            continue
        if path.is_dir():
            if mode(path) != 0o700:
                problems.append(f"{path}: {mode(path):04o}")
        elif path.lstat().st_ino in library_inodes:
            continue
        elif mode(path) != 0o600:
            problems.append(f"{path}: {mode(path):04o}")
    return problems


class TestDataDirUnderUmask022:
    async def test_once_leaves_only_the_library_readable(
        self, umask_022: None, tmp_path: Path, media_server: MediaServer
    ) -> None:
        """After `megane once` under umask 022 every private path is 0700/0600, the
        catalogue's -wal/-shm included; library/ is 0755/0644."""
        for name in ("coffee", "chelsea"):
            media_server.add_bytes(f"/img/{name}.jpg", photo(name))
        media_server.add_feed("/feed.xml", [{"image": "/img/coffee.jpg"},
                                            {"image": "/img/chelsea.jpg", "rating": "adult"}])
        data_dir = tmp_path / "data"
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            [daemon]
            data_dir = "{data_dir}"
            log_format = "json"

            [http]
            allowed_private_hosts = ["{media_server.host_port}"]

            [classifier]
            engine = "litert"

            [[sources]]
            kind = "rss"
            name = "feed"
            url = "{media_server.base_url}/feed.xml"
            """))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crawler.cli", "once", "--config", str(config),
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(process.communicate(), timeout=300)
        assert process.returncode == 0, err.decode()[-3000:]

        layout = DataLayout(data_dir)
        assert list(layout.quarantine.glob("*.json")), "the adult-rated photo has a sidecar"
        library_files = [path for path in layout.library.rglob("*") if path.is_file()]
        assert library_files, "the clean photo is in the library"
        assert all(mode(path) == 0o644 for path in library_files)
        assert mode(layout.library) == 0o755
        catalogue = await Catalogue.open(layout.catalogue)
        try:  # SQLite makes -wal/-shm while a connection is open; look at them then
            await catalogue.ensure_source("probe", "rss", "rss:probe")
            for suffix in ("-wal", "-shm"):
                assert (data_dir / f"catalogue.sqlite{suffix}").exists()
            assert loose_private_paths(data_dir) == []
        finally:
            await catalogue.close()
        assert loose_private_paths(data_dir) == []

    async def test_existing_loose_catalogue_is_made_private(
        self, umask_022: None, tmp_path: Path
    ) -> None:
        """A catalogue made readable by an older version (0644 files) is 0600 once opened."""
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        catalogue = await Catalogue.open(layout.catalogue)
        await catalogue.ensure_source("probe", "rss", "rss:probe")
        await catalogue.close()
        for path in (layout.catalogue, layout.models, layout.root):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        layout.ensure()
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            assert loose_private_paths(layout.root) == []
        finally:
            await catalogue.close()

    def test_models_promote_writes_active_private(self, umask_022: None, tmp_path: Path) -> None:
        """`megane models promote builtin` under umask 022 writes models/ACTIVE 0600 and
        leaves every private path private."""
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\ndata_dir = "{data_dir}"\nlog_format = "json"\n')
        result = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "models", "promote", "builtin",
             "--config", str(config)], cwd=tmp_path, capture_output=True, text=True,
            timeout=300, env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        active = DataLayout(data_dir).models / "ACTIVE"
        assert mode(active) == 0o600
        assert loose_private_paths(data_dir) == []


SECRET_CONFIG = """\
[daemon]
data_dir = "{data_dir}"

[[sources]]
kind = "booru"
name = "gel"
api = "gelbooru"
base_url = "https://gelbooru.example"
tags = "glasses"
api_key = "GelKey9f3a1c77"
user_id = "4242917"
"""

PLAIN_CONFIG = """\
[daemon]
data_dir = "{data_dir}"

[[sources]]
kind = "rss"
name = "feed"
url = "https://feeds.example/a.xml"
"""


class TestCheckConfigSecretWarning:
    @pytest.mark.parametrize(
        ("text", "file_mode", "warned"),
        [
            (SECRET_CONFIG, 0o644, True),
            (SECRET_CONFIG, 0o604, True),
            (SECRET_CONFIG, 0o640, False),  # the README's root:megane 0640
            (SECRET_CONFIG, 0o600, False),
            (PLAIN_CONFIG, 0o644, False),
        ],
    )
    def test_warning(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                     file_mode: int, warned: bool) -> None:
        """check-config warns, naming the file and `chmod 640`, when a config holding a
        secret is readable by every local user; it still exits 0."""
        config = tmp_path / "config.toml"
        config.write_text(text.format(data_dir=tmp_path / "data"))
        os.chmod(config, file_mode)
        assert main(["check-config", "--config", str(config)]) == 0
        err = capsys.readouterr().err
        if warned:
            assert f"warning: {config} holds credentials" in err
            assert "sources['gel'].api_key" in err and "sources['gel'].user_id" in err
            assert f"chmod 640 {config}" in err
            assert "GelKey9f3a1c77" not in err  # the warning names keys, never values
        else:
            assert "warning" not in err

    @pytest.mark.parametrize(
        ("raw", "keys"),
        [
            ({"sources": [{"name": "m", "access_token": "t0ken"}]}, ["sources['m'].access_token"]),
            ({"sources": [{"name": "r", "url": "https://h/f?token=abc"}]}, ["sources['r'].url"]),
            ({"sources": [{"name": "r", "url": "https://u:p@h/f"}]}, ["sources['r'].url"]),
            ({"review": {"token": "x" * 20}}, ["review.token"]),
            ({"sources": [{"name": "b", "api_key": ""}]}, []),
            ({"daemon": {"data_dir": "/var/lib/megane"}}, []),
        ],
    )
    def test_secret_keys(self, raw: dict[str, object], keys: list[str]) -> None:
        """Secret-named keys with a value, and URLs carrying credentials, are found."""
        assert secret_keys(raw) == keys

    def test_no_warning_without_others_read(self, tmp_path: Path) -> None:
        """Group read alone is fine: the service reads the file through its group."""
        path = tmp_path / "config.toml"
        assert exposed_secrets_warning(path, {"x": {"password": "p"}}, 0o100640) is None
        warning = exposed_secrets_warning(path, {"x": {"password": "p"}}, 0o100644)
        assert warning is not None and "(mode 0644)" in warning
