"""What a new user meets first: a mistyped data_dir, empty listings, a folder given to
`classify`, the one-time TFLite conversion, a `move_to` folder that does not exist yet, and
the shipped config.toml's comments.

Commands run as `python -m crawler.cli` subprocesses on real files; the folder source polls a
real directory; the conversion test converts the real model into a fresh cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from crawler.config import load_config
from crawler.config_types import (
    DEVICES,
    ENGINES,
    LOG_FORMATS,
    LOG_LEVELS,
    QUANTIZATIONS,
    ClassifierConfig,
    DaemonConfig,
    HttpConfig,
    ImagesConfig,
    QuarantineConfig,
)
from crawler.conversion_notice import log_conversion_notice, missing_conversions
from storage.placement import DataLayout
from tests.conftest import photo
from tests.test_source_folder import later, make_source, write

REPOSITORY = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPOSITORY / "config.toml"


def write_config(tmp_path: Path, data_dir: Path, classifier: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        data_dir = "{data_dir}"
        log_format = "json"

        [classifier]
        engine = "litert"
        """) + textwrap.dedent(classifier))
    return path


def megane(tmp_path: Path, *argv: str, env: dict[str, str] | None = None,
           timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """`megane ARGV...` in a subprocess (cwd tmp_path), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "crawler.cli", *argv], cwd=tmp_path, capture_output=True,
        text=True, timeout=timeout_s,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY), **(env or {})}, check=False)


SHA = "ab" * 32


class TestCommandsOnAMissingDataDir:
    @pytest.mark.parametrize("argv", [
        ["rescore"], ["rescore", "--json"], ["label", SHA, "cat=yes"],
        ["quarantine", "release", SHA], ["quarantine", "confirm", SHA], ["delete", SHA],
        ["models", "promote", "builtin"], ["review", "--port", "0"],
    ])
    def test_refused_naming_the_path_and_not_created(self, tmp_path: Path,
                                                     argv: list[str]) -> None:
        """A command that works on what was filed exits 1 naming the missing data_dir and
        leaves no trace of it (a typo in data_dir is not an empty catalogue)."""
        data_dir = tmp_path / "dta"
        config = write_config(tmp_path, data_dir)
        result = megane(tmp_path, *argv, "--config", str(config))
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"{data_dir} does not exist" in result.stderr
        assert str(config) in result.stderr
        assert "re-filed" not in result.stdout
        assert not data_dir.exists()

    def test_rescore_still_runs_on_an_existing_data_dir(self, tmp_path: Path) -> None:
        """On a data_dir that exists (even one without its layout) rescore runs and reports."""
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        config = write_config(tmp_path, data_dir)
        result = megane(tmp_path, "rescore", "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("re-filed 0, unchanged 0, failed 0")
        assert DataLayout(data_dir).catalogue.is_file()


class TestEmptyListings:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        data_dir = tmp_path / "data"
        DataLayout(data_dir).ensure()
        return write_config(tmp_path, data_dir)

    @pytest.mark.parametrize(("argv", "line"), [
        (["quarantine", "list"], "nothing is quarantined or held"),
        (["media", "list"], "no media URLs yet"),
        (["media", "list", "--state", "library"], "no media URLs in state library"),
    ])
    def test_text_mode_says_so(self, tmp_path: Path, config: Path, argv: list[str],
                               line: str) -> None:
        """An empty listing prints one line saying so, not nothing."""
        result = megane(tmp_path, *argv, "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout == line + "\n"

    @pytest.mark.parametrize("argv", [["quarantine", "list"], ["media", "list"]])
    def test_json_mode_is_an_empty_list(self, tmp_path: Path, config: Path,
                                        argv: list[str]) -> None:
        """With --json an empty listing stays an empty JSON array."""
        result = megane(tmp_path, *argv, "--json", "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "[]"

    def test_models_list_with_builtin_alone_says_how_to_train(self, tmp_path: Path,
                                                              config: Path) -> None:
        """`models list` with no trained version shows builtin and says `megane train`."""
        result = megane(tmp_path, "models", "list", "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "builtin" in result.stdout
        assert "no trained versions yet: `megane train`" in result.stdout


class TestClassifyAFolder:
    def test_a_folder_is_named_and_import_suggested(self, tmp_path: Path) -> None:
        """`megane classify DIR` says DIR is a folder and points at `megane import DIR`;
        a file beside it is still scored."""
        photos = tmp_path / "photos"
        photos.mkdir()
        image = photos / "coffee.jpg"
        image.write_bytes(photo("coffee"))
        config = write_config(tmp_path, tmp_path / "data")
        result = megane(tmp_path, "classify", str(photos), str(image), "--config", str(config))
        assert result.returncode == 1
        assert (f"error: {photos} is a folder: classify takes image files "
                f"(`megane import {photos}`") in result.stderr
        assert "not a regular file" not in result.stderr
        assert result.stdout.startswith(f"{image}: nsfw=")


class TestConversionNotice:
    def test_missing_file_is_named_then_not_once_converted(self, tmp_path: Path) -> None:
        """The first `megane classify` on a machine says, before the pause, which cache
        file it converts (the file it then writes); the second run says nothing."""
        from tests.classifier_fixtures import tflite_cache_directory

        image = tmp_path / "coffee.jpg"
        image.write_bytes(photo("coffee"))
        config = write_config(tmp_path, tmp_path / "data")
        cache_root = tmp_path / "fresh-cache"
        expected = missing_conversions(load_config(config).classifier, cache_root / "tflite")
        assert len(expected) == 1  # litert, float32: the one -none.tflite file
        assert not expected[0].exists()
        first = megane(tmp_path, "classify", str(image), "--config", str(config),
                       env={"MEGANE_CACHE_DIR": str(cache_root)})
        assert first.returncode == 0, first.stderr[-2000:]
        notice = [line for line in first.stderr.splitlines() if "converting" in line]
        assert notice == [f"converting the model to TFLite (once per model and machine, "
                          f"about 10 s): {expected[0]}"]
        assert expected[0].is_file()
        shared = tflite_cache_directory()  # spare later tests of this process a conversion
        if not (shared / expected[0].name).exists():
            shared.mkdir(parents=True, exist_ok=True)
            shutil.copy2(expected[0], shared / expected[0].name)
        second = megane(tmp_path, "classify", str(image), "--config", str(config),
                        env={"MEGANE_CACHE_DIR": str(cache_root)})
        assert second.returncode == 0, second.stderr[-2000:]
        assert "converting" not in second.stderr

    def test_megane_once_logs_it_before_converting(self, tmp_path: Path) -> None:
        """The first `megane once` with an empty cache logs `model_converting` naming the file,
        before `daemon_started`, and the file is there afterwards."""
        config = write_config(tmp_path, tmp_path / "data")
        cache_root = tmp_path / "fresh-cache"
        (expected,) = missing_conversions(load_config(config).classifier, cache_root / "tflite")
        result = megane(tmp_path, "once", "--config", str(config),
                        env={"MEGANE_CACHE_DIR": str(cache_root)})
        assert result.returncode == 0, result.stderr[-2000:]
        events = [json.loads(line) for line in result.stderr.splitlines()
                  if line.startswith("{")]
        names = [event["event"] for event in events]
        assert names.index("model_converting") < names.index("daemon_started")
        (notice,) = [event for event in events if event["event"] == "model_converting"]
        assert notice["cache_path"] == str(expected) and expected.is_file()

    @pytest.mark.parametrize(("classifier", "suffixes"), [
        (ClassifierConfig(engine="litert"), ["none"]),
        (ClassifierConfig(engine="litert", quantization="dynamic_range", exact_band=None),
         ["dynamic_range"]),
        (ClassifierConfig(engine="auto", device="cpu", quantization="dynamic_range"),
         ["dynamic_range", "none"]),
        (ClassifierConfig(engine="tensorflow"), []),
    ])
    def test_daemon_event_names_each_missing_file(self, tmp_path: Path,
                                                  classifier: ClassifierConfig,
                                                  suffixes: list[str]) -> None:
        """The daemon's `model_converting` event names each file the engine will convert;
        once the files are there it logs nothing."""
        with capture_logs() as logs:
            missing = log_conversion_notice(classifier, tmp_path)
        assert [path.name.rsplit("-", 1)[1] for path in missing] == \
            [f"{suffix}.tflite" for suffix in suffixes]
        assert [(entry["event"], entry["cache_path"], entry["note"]) for entry in logs] == \
            [("model_converting", str(path), "once per model and machine") for path in missing]
        for path in missing:
            path.write_bytes(b"converted")
        with capture_logs() as logs:
            assert log_conversion_notice(classifier, tmp_path) == []
        assert logs == []


class TestMoveToCreated:
    async def test_created_with_parents_and_logged_once(self, tmp_path: Path) -> None:
        """A missing move_to (and its parents) is made on the first move and logged once as
        `folder_created` with its path; later polls log nothing."""
        inbox = tmp_path / "inbox"
        done = tmp_path / "not" / "yet" / "done"
        write(inbox / "a.jpg", mtime=1_000_000)
        source = make_source(path=inbox, move_to=done)
        with capture_logs() as logs:
            first = await source.poll(None, later())
            write(inbox / "b.jpg", mtime=1_000_001)
            second = await source.poll(first.cursor, later())
        assert sorted(path.name for path in done.iterdir() if not path.name.startswith(".")) \
            == ["a.jpg", "b.jpg"]
        assert len(first.refs) == len(second.refs) == 1
        created = [entry for entry in logs if entry["event"] == "folder_created"]
        assert [(entry["path"], entry["source"], entry["key"]) for entry in created] == \
            [(str(done), "inbox", "move_to")]


def _comment_of(text: str, key: str) -> str:
    """The comment after `key = value` in the shipped file (one line)."""
    match = re.search(rf"^#?\s*{key} = [^#\n]*#(.*)$", text, re.MULTILINE)
    assert match is not None, f"config.toml has no commented `{key} =` line"
    return match.group(1)


def _comment_block(text: str, key: str) -> str:
    """The `key = value  # ...` line and the comment lines continuing it."""
    match = re.search(rf"^{key} = .*\n(?:\s+#.*\n)*", text, re.MULTILINE)
    assert match is not None, f"config.toml has no `{key} =` line"
    return match.group(0)


class TestShippedConfigComments:
    @pytest.mark.parametrize(("key", "choices"), [
        ("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS), ("engine", ENGINES),
        ("device", DEVICES), ("quantization", QUANTIZATIONS),
    ])
    def test_choice_comments_list_every_choice(self, key: str,
                                               choices: tuple[str, ...]) -> None:
        """A key with fixed choices names every choice the loader accepts in its comment."""
        comment = _comment_of(SHIPPED_CONFIG.read_text(encoding="utf-8"), key)
        assert [choice for choice in choices if choice not in comment] == []

    @pytest.mark.parametrize(("section", "settings"), [
        ("daemon", DaemonConfig), ("http", HttpConfig), ("images", ImagesConfig),
        ("classifier", ClassifierConfig), ("quarantine", QuarantineConfig),
    ])
    def test_every_key_is_shown(self, section: str, settings: type) -> None:
        """Every key the loader reads appears in its section of the shipped file (set or
        commented), and a key set there shows its default unless its comment says so."""
        text = SHIPPED_CONFIG.read_text(encoding="utf-8")
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        raw = tomllib.loads(text)[section]
        defaults = settings()
        for field in dataclasses.fields(settings):
            assert re.search(rf"^#?\s*{field.name} = ", body, re.MULTILINE), \
                f"[{section}] {field.name} is not in config.toml"
            if field.name not in raw or field.name == "data_dir":
                continue
            default = getattr(defaults, field.name)
            shown = raw[field.name]
            if isinstance(default, tuple | frozenset):
                default = sorted(default) if isinstance(default, frozenset) else list(default)
            if shown != default:
                assert "(the default)" in _comment_block(body, field.name), \
                    f"[{section}] {field.name} = {shown!r} is not the default {default!r}"
