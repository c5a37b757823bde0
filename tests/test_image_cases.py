"""The reported image and folder cases (tests/cases/<name>/), each run through the real daemon.

Each case folder holds the inputs and README of a failing input reported against the
product; each test expects the README's right result. Non-UTF-8 file names cannot be kept by
git, so the tests create them from byte names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from classifier.decode import DecodeLimits, decode_image
from crawler.config import Config, load_config
from crawler.daemon import Daemon
from storage.catalogue import Catalogue
from storage.placement import DataLayout

CASES = Path(__file__).parent / "cases"
REPOSITORY = Path(__file__).parent.parent
FILED = ("library", "quarantine")
LATIN1_NAME = b"caf\xe9.jpg"


def case_config(case: str, work: Path, extra: str = "") -> Path:
    """The case's config.toml with {WORK} filled in, written under `work`."""
    text = (CASES / case / "config.toml").read_text().replace("{WORK}", str(work))
    path = work / "config.toml"
    path.write_text(text + "\n" + extra)
    return path


def copy_inputs(case: str, work: Path) -> Path:
    """The case's in/ folder copied to work/in."""
    inbox = work / "in"
    shutil.copytree(CASES / case / "in", inbox)
    return inbox


def place_latin1_pair(case: str, inbox: Path, *, latin1_newest: bool) -> None:
    """cafe.jpg as caf<0xE9>.jpg and plain.jpg, the one named newest written last."""
    inbox.mkdir(parents=True, exist_ok=True)
    latin1 = os.fsencode(inbox) + b"/" + LATIN1_NAME
    plain = inbox / "plain.jpg"
    cafe = (CASES / case / "cafe.jpg").read_bytes()
    plain_bytes = (CASES / case / "plain.jpg").read_bytes()
    with open(latin1, "wb") as file:
        file.write(cafe)
    plain.write_bytes(plain_bytes)
    older, newer = (plain, Path(os.fsdecode(latin1))) if latin1_newest else (
        Path(os.fsdecode(latin1)), plain)
    os.utime(older, (1_700_000_000, 1_700_000_000))
    os.utime(newer, (1_700_000_100, 1_700_000_100))


async def media_of(config: Config) -> dict[str, dict[str, Any]]:
    """The catalogue's rows keyed by the last part of the URL (still percent-encoded)."""
    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        return {row["url"].rsplit("/", 1)[-1]: row for row in await catalogue.media_list()}
    finally:
        await catalogue.close()


class TestPngBadAncillaryCrc:
    async def test_filed(self, tmp_path: Path, shared_classifier: Any) -> None:
        """A PNG whose tEXt chunk has a bad CRC decodes and is filed, as browsers show it."""
        copy_inputs("png_bad_ancillary_crc", tmp_path)
        config = load_config(case_config("png_bad_ancillary_crc", tmp_path))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        row = (await media_of(config))["bad_text_crc.png"]
        assert row["state"] in FILED, row

    def test_decode_says_what_it_dropped(self) -> None:
        """Decoding drops only the damaged tEXt chunk and says so."""
        decoded = decode_image(CASES / "png_bad_ancillary_crc" / "in" / "bad_text_crc.png",
                               DecodeLimits())
        assert decoded.format == "PNG"
        assert decoded.repairs == ("dropped PNG chunk tEXt with a bad CRC",)


class TestTallOrPanorama:
    async def test_reasons_name_the_limit(self, tmp_path: Path, shared_classifier: Any) -> None:
        """800x9000 and 8000x1200 are rejected naming the side and the cap they broke."""
        copy_inputs("tall_or_panorama_image_reason", tmp_path)
        config = load_config(case_config("tall_or_panorama_image_reason", tmp_path))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        media = await media_of(config)
        assert (media["tall_strip.jpg"]["state"], media["tall_strip.jpg"]["reason"]) == (
            "rejected", "too_tall: 9000 > 7680")
        assert (media["panorama.jpg"]["state"], media["panorama.jpg"]["reason"]) == (
            "rejected", "too_wide: 8000 > 7680")

    async def test_raising_the_named_cap_files_them(self, tmp_path: Path,
                                                    shared_classifier: Any) -> None:
        """Raising the cap the reason names is enough for both images to be filed."""
        copy_inputs("tall_or_panorama_image_reason", tmp_path)
        config = load_config(case_config("tall_or_panorama_image_reason", tmp_path,
                                         "[images]\nmax_width = 9000\n"))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        media = await media_of(config)
        assert media["tall_strip.jpg"]["state"] in FILED, media["tall_strip.jpg"]
        assert media["panorama.jpg"]["state"] in FILED, media["panorama.jpg"]


class TestFolderLatin1NameFileNotFound:
    async def test_both_filed(self, tmp_path: Path, shared_classifier: Any) -> None:
        """caf<0xE9>.jpg (older) and plain.jpg (newer) are both read and filed."""
        case = "folder_nonutf8_name_file_not_found"
        place_latin1_pair(case, tmp_path / "in", latin1_newest=False)
        config = load_config(case_config(case, tmp_path))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        media = await media_of(config)
        assert set(media) == {"caf%E9.jpg", "plain.jpg"}
        for name, row in media.items():
            assert row["state"] in FILED, (name, row)

    async def test_both_filed_in_inbox_mode(self, tmp_path: Path,
                                            shared_classifier: Any) -> None:
        """With move_to, the Latin-1 file is moved and then still read and filed."""
        case = "folder_nonutf8_name_file_not_found"
        place_latin1_pair(case, tmp_path / "in", latin1_newest=False)
        config = load_config(case_config(case, tmp_path, f'move_to = "{tmp_path / "done"}"'))
        assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
        media = await media_of(config)
        assert set(media) == {"caf%E9.jpg", "plain.jpg"}
        for name, row in media.items():
            assert row["state"] in FILED, (name, row)
        assert os.path.exists(os.fsencode(tmp_path / "done") + b"/" + LATIN1_NAME)


class TestFolderLatin1NameDaemonCrash:
    def test_once_exits_0_and_files_both(self, tmp_path: Path) -> None:
        """`megane once` with the Latin-1 name as the newest file exits 0 and files both."""
        case = "folder_nonutf8_name_daemon_crash"
        place_latin1_pair(case, tmp_path / "in", latin1_newest=True)
        config_path = case_config(case, tmp_path, "")
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        once = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "once", "--config", str(config_path)],
            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300,
            check=False)
        assert once.returncode == 0, once.stderr[-3000:]
        assert "internal_error" not in once.stdout + once.stderr
        listing = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "media", "list", "--json",
             "--config", str(config_path)],
            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120,
            check=False)
        assert listing.returncode == 0, listing.stderr
        rows = {row["url"].rsplit("/", 1)[-1]: row for row in json.loads(listing.stdout)}
        assert set(rows) == {"caf%E9.jpg", "plain.jpg"}
        for name, row in rows.items():
            assert row["state"] in FILED, (name, row)
