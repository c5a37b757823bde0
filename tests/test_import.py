"""`megane import`: a real folder tree written by the test, filed through the real daemon."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crawler.config import Config
from crawler.importer import ImportReport, print_report, run_import, walk
from tests.conftest import photo

REPOSITORY = Path(__file__).parent.parent
FILED = {"library", "quarantine"}
LATIN1_NAME = b"caf\xe9.jpg"


def sixteen_bit_png() -> bytes:
    """A 16-bit grayscale PNG of a real photo (mode I;16).

    Not `camera`, which the tree also holds as a BMP: the two would be near-copies of one
    picture, and which one is stored would depend on arrival order.
    """
    import skimage.data

    gray = np.asarray(Image.fromarray(skimage.data.coins()), dtype=np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    return buffer.getvalue()


def write_tree(root: Path) -> dict[str, str]:
    """A photo folder as people have them; returns each entry's expected outcome."""
    files: dict[str, bytes] = {
        "astronaut.jpg": photo("astronaut"),
        "coffee.png": photo("coffee", "PNG"),
        "scans/chelsea.tif": photo("chelsea", "TIFF"),
        "scans/old/camera.bmp": photo("camera", "BMP"),
        "phone/rocket.avif": photo("rocket", "AVIF"),
        "phone/IMG_0001": photo("colorwheel"),  # no extension: magic bytes decide
        "scans/gray16.png": sixteen_bit_png(),
        "notes.txt": b"shopping list: glasses cleaner, cat food\n",
        "phone/.thumbnail.jpg": photo("astronaut", size=(32, 32)),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with open(os.fsencode(root / "scans") + b"/" + LATIN1_NAME, "wb") as file:
        file.write(photo("coffee", size=(320, 240)))
    (root / "link.jpg").symlink_to(root / "astronaut.jpg")
    expected = {name: "image" for name in files}
    expected |= {"notes.txt": "not_an_image", "phone/.thumbnail.jpg": "hidden",
                 "scans/caf\ufffd.jpg": "image", "link.jpg": "symlink"}
    return expected


def relative_names(report: ImportReport, root: Path) -> dict[str, Any]:
    prefix = f"{root}/"
    return {item.name.removeprefix(prefix): item for item in report.files}


class TestWalk:
    def test_every_entry_is_sorted_into_image_or_skip(self, tmp_path: Path) -> None:
        """Magic bytes, not names, decide; hidden files, links and text are skipped by reason."""
        expected = write_tree(tmp_path)
        found = {entry.name.removeprefix(f"{tmp_path}/"): entry.skip_reason or "image"
                 for entry in walk(tmp_path, recursive=True)}
        assert found == expected

    def test_no_recursive(self, tmp_path: Path) -> None:
        """Without recursion, sub-folders are reported as not walked and their files absent."""
        write_tree(tmp_path)
        found = {entry.name.removeprefix(f"{tmp_path}/"): entry.skip_reason or "image"
                 for entry in walk(tmp_path, recursive=False)}
        assert found == {"astronaut.jpg": "image", "coffee.png": "image",
                         "notes.txt": "not_an_image", "link.jpg": "symlink",
                         "phone": "subfolder_not_walked", "scans": "subfolder_not_walked"}


class TestImport:
    def test_json_reports_every_file(self, tmp_path: Path) -> None:
        """`megane import DIR --json` files every image of the tree and accounts for every file."""
        root = tmp_path / "photos"
        expected = write_tree(root)
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n'
                          '[classifier]\nengine = "litert"\n')
        result = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "import", str(root), "--json",
             "--config", str(config)],
            capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        assert result.returncode == 0, result.stderr[-3000:]
        document = json.loads(result.stdout)
        images = [name for name, outcome in expected.items() if outcome == "image"]
        assert document["found"] == len(expected)
        assert document["images"] == len(images)
        assert sum(document["states"].values()) == len(images)
        assert set(document["states"]) <= FILED, document["states"]
        assert document["skipped"] == {"hidden": 1, "not_an_image": 1, "symlink": 1}
        assert document["rejected"] == {}
        outcomes = {item["name"].removeprefix(f"{root}/"): item for item in document["files"]}
        assert set(outcomes) == set(expected)
        assert outcomes["scans/caf\ufffd.jpg"]["url"].endswith("/photos/scans/caf%E9.jpg")
        assert outcomes["phone/IMG_0001"]["format"] == "JPEG"
        assert outcomes["phone/rocket.avif"]["format"] == "AVIF"
        stored = {path.suffix for path in (tmp_path / "data" / "library").rglob("*.*")}
        assert {".jpg", ".png", ".tif", ".bmp", ".avif"} <= stored

    def test_not_a_folder(self, tmp_path: Path) -> None:
        """Importing a path that is not a folder exits 1 naming it, with nothing on stdout."""
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n')
        missing = tmp_path / "no-such-folder"
        result = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "import", str(missing), "--json",
             "--config", str(config)],
            capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        assert result.returncode == 1
        assert result.stdout == ""
        assert f"{missing}: not a folder" in result.stderr

    async def test_second_import_reports_duplicates_and_progress(
        self, tmp_path: Path, write_config: Any, shared_classifier: Any
    ) -> None:
        """A copy of an imported photo is reported as a duplicate; progress reaches the total."""
        config: Config = write_config()
        first = tmp_path / "first"
        first.mkdir()
        (first / "astronaut.jpg").write_bytes(photo("astronaut"))
        (first / "coffee.png").write_bytes(photo("coffee", "PNG"))
        calls: list[tuple[int, int]] = []
        report = await run_import(config, first, classifier=shared_classifier,
                                  progress=lambda done, total: calls.append((done, total)))
        assert report.images == 2 and set(report.states()) <= FILED
        assert calls[0] == (0, 2) and calls[-1] == (2, 2)
        second = tmp_path / "second"
        second.mkdir()
        (second / "copy of astronaut").write_bytes(photo("astronaut"))
        again = await run_import(config, second, classifier=shared_classifier)
        (copy,) = again.files
        assert copy.duplicate and copy.state in FILED
        assert again.duplicates == 1

    async def test_text_summary(self, tmp_path: Path, write_config: Any,
                                shared_classifier: Any) -> None:
        """The text report is a table of the figures, then one line per file not filed."""
        config: Config = write_config()
        root = tmp_path / "mixed"
        root.mkdir()
        (root / "rocket.jpg").write_bytes(photo("rocket"))
        (root / "readme.md").write_text("# not a photo\n")
        (root / "cut.jpg").write_bytes(photo("coffee")[:4000])
        report = await run_import(config, root, classifier=shared_classifier)
        output = io.StringIO()
        print_report(report, stream=output)
        text = output.getvalue()
        for line in ("found", "images", "rejected: truncated", "not_an_image"):
            assert line in text, text
        assert f"rejected  {root}/cut.jpg  (truncated)" in text
        assert f"skipped   {root}/readme.md  (not_an_image)" in text
        assert report.found == 3 and report.images == 2
