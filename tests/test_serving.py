"""One answer to "which model is serving?": the daemon at start, status, check-config, classify,
rescore's contact sheet, read-only commands, SIGHUP and TensorFlow's native log lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from PIL import Image

from classifier.decode import DecodeLimits, decode_image
from classifier.models import write_model_version
from classifier.preprocess import preprocess
from crawler.classify_files import classify_files
from crawler.cli import main
from crawler.serving import resolve_serving, tag_coverage
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from tests.classifier_fixtures import RecordingClassifier
from tests.conftest import MediaServer, photo

REPOSITORY = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAMES = ("chelsea", "rocket", "coffee")


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """The commands configure structlog onto the captured output; undo it afterwards."""
    yield
    structlog.reset_defaults()


def _always_head(models_dir: Path, version: str, tag: str = "photo") -> None:
    """A version whose `tag` head says yes to everything (weights 0, bias +8)."""
    write_model_version(models_dir, version, {tag: (np.zeros(1024, np.float32), 8.0)},
                        {}, created_at=NOW)


def _feed_config(write_config: Any, server: MediaServer, body: str = "") -> Any:
    for name in NAMES:
        server.add_bytes(f"/img/{name}.jpg", photo(name))
    server.add_feed("/feed.xml", [{"image": f"/img/{name}.jpg", "title": name}
                                  for name in NAMES])
    return write_config(
        "[quarantine]\nreview_band = []\n" + body, allowed=(server.host_port,),
        sources=f"""
            [[sources]]
            kind = "rss"
            name = "feed"
            url = "{server.base_url}/feed.xml"
            interval = "1h"
            """)


async def _blobs(config: Any) -> list[Any]:
    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        return list(await catalogue.fetch_all(
            "SELECT sha256, placement, model_version, tags FROM blobs"))
    finally:
        await catalogue.close()


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


class TestPromotedWhileStopped:
    async def test_next_start_serves_it_and_refiles_the_library(
        self, media_server: MediaServer, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """`models promote V` with the daemon stopped: the next `once` re-scores every stored
        image under V from cached features, re-files it, and status names V."""
        config = _feed_config(write_config, media_server,
                              '[thresholds]\nnsfw = 0.8\nphoto = 0.5\ncat = 0.5\nfood = 0.5\n'
                              '[tag_aliases]\ncat = ["cat", "neko"]\n')
        layout = DataLayout(config.data_dir)
        assert await _cli("once", "--config", str(config.path)) == 0
        before = await _blobs(config)
        assert {row["model_version"] for row in before} == {"builtin"}
        library = [row["sha256"] for row in before if row["placement"] == "library"]
        assert library

        _always_head(layout.models, "v2")
        assert await _cli("models", "promote", "v2", "--config", str(config.path)) == 0
        capfd.readouterr()
        assert await _cli("once", "--config", str(config.path)) == 0

        after = {row["sha256"]: row for row in await _blobs(config)}
        assert {row["model_version"] for row in after.values()} == {"v2"}
        for sha in library:
            assert json.loads(after[sha]["tags"]) == ["photo"]
            assert (layout.library / "photo" / f"{sha}.jpg").exists()
        capfd.readouterr()
        assert await _cli("status", "--json", "--config", str(config.path)) == 0
        model = json.loads(capfd.readouterr().out)["model"]
        assert (model["version"], model["origin"]) == ("v2", "active")
        assert model["tags"] == ["nsfw", "photo"]
        assert model["tag_coverage"] == {"nsfw": "head", "photo": "head",
                                         "cat": "source_tags", "food": "none"}
        assert await _cli("status", "--config", str(config.path)) == 0
        text = capfd.readouterr().out
        assert "model: v2 (active:" in text and "food=none" in text


class TestResolution:
    def test_order_config_then_active_then_builtin(self, tmp_path: Path) -> None:
        """A set `[classifier] model` pins; unset, ACTIVE serves; neither, builtin."""
        from crawler.promotion import promote

        _always_head(tmp_path, "v1")
        _always_head(tmp_path, "v2")
        assert resolve_serving(None, tmp_path).version == "builtin"
        promote(tmp_path, "v2", configured=None, now=NOW)
        assert (resolve_serving(None, tmp_path).version,
                resolve_serving(None, tmp_path).origin) == ("v2", "active")
        pinned = resolve_serving("v1", tmp_path)
        assert (pinned.version, pinned.origin, pinned.problem) == ("v1", "config", None)
        assert pinned.tags == ("nsfw", "photo")

    @pytest.mark.parametrize(("thresholds", "model_tags", "aliases", "expected"), [
        (["nsfw"], ["nsfw"], {}, {"nsfw": "head"}),
        (["nsfw", "cat"], ["nsfw", "cat"], {"cat": ["neko"]}, {"nsfw": "head", "cat": "head"}),
        (["cat"], ["nsfw"], {"cat": ["neko"]}, {"cat": "source_tags"}),
        (["cat"], ["nsfw"], {"cat": []}, {"cat": "none"}),
        (["food"], [], {}, {"food": "none"}),
    ])
    def test_tag_coverage(self, thresholds: list[str], model_tags: list[str],
                          aliases: dict[str, list[str]], expected: dict[str, str]) -> None:
        """A head wins over source tags; a tag with neither is served by nothing."""
        assert tag_coverage(thresholds, model_tags, aliases) == expected


class TestCheckConfig:
    def test_unknown_configured_version_fails_naming_key_and_versions(
        self, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A `[classifier] model` that is not under models/ is an error listing the known ones."""
        config = write_config()  # its [classifier] table gets the key
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nmodel = "v9"'))
        _always_head(DataLayout(config.data_dir).models, "v1")
        assert main(["check-config", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "[classifier] model" in error and "'v9' not found" in error
        assert "'v1'" in error and "'builtin'" in error

    def test_known_version_passes(self, write_config: Any,
                                  capfd: pytest.CaptureFixture[str]) -> None:
        """A configured version that exists passes check-config."""
        config = write_config()
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nmodel = "v1"'))
        _always_head(DataLayout(config.data_dir).models, "v1")
        assert main(["check-config", "--config", str(config.path)]) == 0
        assert ": ok;" in capfd.readouterr().out

    def test_unknown_version_is_listed_beside_the_other_problems(
        self, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """With other keys wrong too, check-config lists them and the unknown version at once."""
        config = write_config()
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nmodel = "v9"\nthreads = -3')
            + "\n[quarantine]\nreview_band = [0.9, 0.1]\n")
        _always_head(DataLayout(config.data_dir).models, "v1")
        assert main(["check-config", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "3 problem(s)" in error, error
        assert "classifier.threads" in error and "quarantine.review_band" in error
        assert "[classifier] model names 'v9'" in error and "'v1'" in error

    @pytest.mark.parametrize(("classifier_keys", "daemon_keys"), [
        ('model = "../v9"', ""),  # not a version name: reported by the loader alone
        ("model = 9", ""),  # not a string
        ('model = "v9"', "data_dir = 5"),  # models/ cannot be found: no guess at it
    ])
    def test_a_wrong_model_or_data_dir_key_is_reported_once(
        self, write_config: Any, capfd: pytest.CaptureFixture[str],
        classifier_keys: str, daemon_keys: str,
    ) -> None:
        """When the model or data_dir key is itself wrong, only its own problem is listed."""
        config = write_config()
        text = config.path.read_text().replace(
            'engine = "litert"', f'engine = "litert"\n{classifier_keys}\nthreads = -3')
        if daemon_keys:
            text = text.replace(f'data_dir = "{config.data_dir}"', daemon_keys)
        config.path.write_text(text)
        assert main(["check-config", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "2 problem(s)" in error, error
        assert "classifier.threads" in error and "names 'v9'" not in error
        assert ("daemon.data_dir" if daemon_keys else "classifier.model") in error

    def test_an_unreadable_active_file_is_listed_beside_the_other_problems(
        self, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Without a configured version, a broken models/ACTIVE is listed with the rest."""
        config = write_config()
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nthreads = -3'))
        models = DataLayout(config.data_dir).models
        models.mkdir(parents=True)
        (models / "ACTIVE").write_text("v7\n")
        assert main(["check-config", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "2 problem(s)" in error and "classifier.threads" in error, error
        assert f"{models / 'ACTIVE'}: not JSON" in error

    def test_seed2017_version_is_refused_with_a_reason(
        self, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A seed2017 version cannot be promoted nor configured; the error says why."""
        from classifier.training.seed2017 import make_model, save_seed2017

        config = write_config()
        models = DataLayout(config.data_dir).models
        save_seed2017(models, "s1", make_model(["cat"], 32), ["cat"], {}, image_size=32)
        assert main(["models", "promote", "s1", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "seed2017" in error and "not served" in error
        assert not (models / "ACTIVE").exists()
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nmodel = "s1"'))
        assert main(["check-config", "--config", str(config.path)]) == 1
        assert "seed2017" in capfd.readouterr().err


class TestReadOnlyCommands:
    @pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["media", "list"],
                                      ["quarantine", "list", "--json"]])
    def test_missing_data_dir_is_an_error_and_is_not_created(
        self, argv: list[str], write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Read-only commands exit 1 naming the missing data_dir, and never create it."""
        config = write_config()
        assert not config.data_dir.exists()
        assert main([*argv, "--config", str(config.path)]) == 1
        captured = capfd.readouterr()
        assert str(config.data_dir) in captured.err and "does not exist" in captured.err
        assert captured.out == ""
        assert not config.data_dir.exists()


def _photo_files(folder: Path, count: int) -> list[str]:
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        image = Image.fromarray(getattr(skimage.data, NAMES[index % len(NAMES)])())
        side = 120 + 10 * index
        path = folder / f"photo{index}.jpg"
        image.convert("RGB").resize((side, side)).save(path, quality=90)
        files.append(str(path))
    return files


class TestClassify:
    def test_batches_in_input_order_with_errors_in_place(
        self, tmp_path: Path, shared_classifier: Any
    ) -> None:
        """Files are scored in full batches, in input order; a broken file keeps its place."""
        files = _photo_files(tmp_path, 9)
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not an image at all")
        files.insert(3, str(broken))
        recording = RecordingClassifier(shared_classifier)
        progress: list[int] = []
        results = list(classify_files(files, recording, DecodeLimits(), decode_workers=2,
                                      on_progress=progress.append))
        assert [result.file for result in results] == files
        assert results[3].scores is None and str(broken) in (results[3].error or "")
        assert recording.batches == [4, 4, 1]  # batch_size 4: 9 images, the broken one skipped
        assert sum(progress) == len(files)
        decoded = decode_image(Path(files[0]), DecodeLimits(), draft_size=(256, 256))
        single = shared_classifier.classify(preprocess(decoded.image)[np.newaxis])
        assert results[0].scores is not None
        assert abs(results[0].scores["nsfw"] - single.scores[0]["nsfw"]) < 1e-5

    async def test_command_serves_the_active_model(
        self, tmp_path: Path, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """`megane classify` scores every tag of models/ACTIVE's version, exit 1 on a bad file."""
        config = write_config()
        _always_head(DataLayout(config.data_dir).models, "v2")
        assert await _cli("models", "promote", "v2", "--config", str(config.path)) == 0
        files = _photo_files(tmp_path / "in", 3)
        missing = str(tmp_path / "in" / "missing.jpg")
        capfd.readouterr()
        code = await _cli("classify", "--json", "--config", str(config.path), *files, missing)
        captured = capfd.readouterr()
        assert code == 1 and missing in captured.err
        document = json.loads(captured.out)
        assert [item["file"] for item in document] == [*files, missing]
        for item in document[:3]:
            assert set(item["scores"]) == {"nsfw", "photo"} and item["scores"]["photo"] > 0.99
        assert "error" in document[3]
        assert not list(DataLayout(config.data_dir).models.glob(".cache"))


class TestRescore:
    async def test_rescore_refreshes_the_contact_sheet(
        self, media_server: MediaServer, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """After `megane rescore` moves images into quarantine, index.html and their
        thumbnails list them."""
        config = _feed_config(write_config, media_server, "[thresholds]\nnsfw = 0.99\n")
        layout = DataLayout(config.data_dir)
        assert await _cli("once", "--config", str(config.path)) == 0
        shas = [row["sha256"] for row in await _blobs(config)]
        index = layout.quarantine / "index.html"
        assert not any(sha in (index.read_text() if index.exists() else "") for sha in shas)
        config.path.write_text(config.path.read_text().replace("nsfw = 0.99", "nsfw = 0.00001"))
        capfd.readouterr()
        assert await _cli("rescore", "--json", "--config", str(config.path)) == 0
        assert json.loads(capfd.readouterr().out)["changed"] == len(shas)
        page = index.read_text()
        for sha in shas:
            assert sha[:12] in page
            assert (layout.quarantine / ".thumbs" / f"{sha}.jpg").exists()


class TestModelsList:
    def test_long_version_ids_are_never_shortened(
        self, write_config: Any, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """On a narrow terminal every version id is printed whole, on one line."""
        config = write_config()
        version = "2026-03-01T12-00-00Z-retrained-with-hard-negatives-v17"
        _always_head(DataLayout(config.data_dir).models, version)
        monkeypatch.setenv("COLUMNS", "60")
        assert main(["models", "list", "--config", str(config.path)]) == 0
        output = capfd.readouterr().out
        assert any(version in line for line in output.splitlines()), output


class TestReload:
    async def test_needs_restart_is_against_the_running_configuration(
        self, write_config: Any, shared_classifier: Any
    ) -> None:
        """A restart-only change is reported at every reload until the process restarts."""
        from tests.test_promotion import RunningDaemon

        config = write_config()
        async with RunningDaemon(config, shared_classifier) as daemon:
            config.path.write_text(config.path.read_text().replace(
                "timeout_s = 5.0", "timeout_s = 7.0"))
            with structlog.testing.capture_logs() as first:
                assert await daemon.reload()
            with structlog.testing.capture_logs() as second:
                assert await daemon.reload()
        for logs in (first, second):
            [event] = [entry for entry in logs if entry["event"] == "config_reloaded"]
            assert event["needs_restart"] == ["http"]


class TestNativeLogs:
    @pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
    @pytest.mark.parametrize("engine", ["tensorflow", "litert"])
    def test_tensorflow_start_up_lines(self, tmp_path: Path, level: str, shown: bool,
                                       engine: str) -> None:
        """TensorFlow's and LiteRT's native start-up lines reach stderr only with
        log_level = "debug"."""
        files = _photo_files(tmp_path / "in", 1)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            [daemon]
            data_dir = "{tmp_path / 'data'}"
            log_level = "{level}"
            log_format = "json"

            [classifier]
            engine = "{engine}"
            batch_size = 2
            """))
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("TF_CPP")}
        environment["PYTHONPATH"] = str(REPOSITORY)
        completed = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "classify", "--config", str(config), *files],
            capture_output=True, text=True, env=environment, timeout=300, check=False)
        assert completed.returncode == 0, completed.stderr
        assert "nsfw=" in completed.stdout
        native = [line for line in completed.stderr.splitlines()
                  if "oneDNN" in line or "cuInit" in line or "absl::InitializeLog" in line
                  or "cuda drivers" in line or "Created TensorFlow Lite" in line]
        assert bool(native) is shown, completed.stderr

    @pytest.mark.parametrize(("line", "native"), [
        ("I0000 00:00:1796087931.626846    8422 port.cc:153] oneDNN custom operations", True),
        ("E0000 00:00:1796087375.902820   14172 cuda_platform.cc:52] failed call to cuInit", True),
        ("WARNING: All log messages before absl::InitializeLog() is called are written", True),
        ("To enable the following instructions: AVX2 FMA, in other operations", True),
        ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
        ('{"event": "model_selected", "level": "info"}', False),
        ("error: /tmp/x.jpg: empty: the file has no bytes", False),
        ("Traceback (most recent call last):", False),
    ])
    def test_only_native_lines_are_dropped(self, line: str, native: bool) -> None:
        """Our own stderr output (JSON logs, errors, tracebacks) is never taken for TF's."""
        from classifier.native_logs import is_native_line

        assert is_native_line(line) is native


class TestDaemonStart:
    def test_unknown_configured_version_stops_once_with_exit_1(
        self, write_config: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """`megane once` with a `[classifier] model` that does not exist exits 1 naming it."""
        config = write_config()
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nmodel = "v9"'))
        assert main(["once", "--config", str(config.path)]) == 1
        error = capfd.readouterr().err
        assert "[classifier] model" in error and "'v9' not found" in error


class TestClassifyProgress:
    def test_progress_bar_on_a_terminal_results_on_stdout(self, tmp_path: Path) -> None:
        """With stderr on a terminal and many files a progress bar is drawn there; stdout
        carries only the scores."""
        import pty

        from crawler.classify_files import PROGRESS_MIN_FILES

        files = _photo_files(tmp_path / "in", PROGRESS_MIN_FILES)
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\nlog_format = "json"\n'
                          '[classifier]\nbatch_size = 8\n')
        controller, terminal = pty.openpty()
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "crawler.cli", "classify", "--config", str(config),
                 *files],
                stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=300, check=False,
                env={**os.environ, "PYTHONPATH": str(REPOSITORY), "COLUMNS": "100"})
            os.close(terminal)
            drawn = b""
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal's other end is closed: all read
                    break
                if not chunk:
                    break
                drawn += chunk
        finally:
            os.close(controller)
        assert completed.returncode == 0
        lines = completed.stdout.splitlines()
        assert [line.split(": ")[0] for line in lines] == files
        assert all("nsfw=" in line for line in lines)
        assert b"classifying (builtin)" in drawn
