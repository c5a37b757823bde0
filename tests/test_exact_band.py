"""Opt-in int8 inference with float32 near decisions: classifier/exact_band.py, its keys, warnings.

Real LiteRT engines (int8 "dynamic range" and float32 files converted from the real model),
real photos from scikit-image, real `megane classify` and `megane check-config` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from classifier.engines import LiteRTEngine, cached_tflite, make_engine
from classifier.errors import ModelError
from classifier.exact_band import EXACT_MARGIN, ExactBandEngine, points_outside
from classifier.models import shared_open_nsfw_model
from classifier.opennsfw import MODEL_KEY, NSFW_INDEX
from crawler.config import ConfigError, load_config
from crawler.precision import precision_warnings
from tests.classifier_fixtures import photo_images, tflite_cache_dir

REPOSITORY = Path(__file__).resolve().parent.parent


def _engine(cache: Path, quantization: str, batch_size: int = 4) -> LiteRTEngine:
    path = cached_tflite(shared_open_nsfw_model, cache, quantization,  # type: ignore[arg-type]
                         model_key=MODEL_KEY)
    return LiteRTEngine(path, batch_size=batch_size, threads=2)


@pytest.fixture(scope="module")
def engines(tflite_cache_dir: Path) -> tuple[LiteRTEngine, LiteRTEngine]:
    """(int8 dynamic-range engine, float32 engine) on the shared test cache."""
    return _engine(tflite_cache_dir, "dynamic_range"), _engine(tflite_cache_dir, "none")


@pytest.fixture(scope="module")
def varied_batch() -> npt.NDArray[np.float32]:
    """Real photos and crops of them (24 images), preprocessed, spanning a range of scores."""
    from classifier.preprocess import preprocess

    images = []
    for image in photo_images().values():
        rgb = image.convert("RGB")
        width, height = rgb.size
        images += [rgb, rgb.crop((0, 0, width // 2, height // 2)),
                   rgb.crop((width // 3, height // 3, width, height))]
    images.append(Image.new("RGB", (300, 300), (224, 172, 150)))  # flat skin tone
    return np.stack([preprocess(image) for image in images[:24]])


def test_int8_error_is_within_the_margin(engines: tuple[LiteRTEngine, LiteRTEngine],
                                         varied_batch: npt.NDArray[np.float32]) -> None:
    """On real photos int8 moves the NSFW probability by less than EXACT_MARGIN (the band's
    premise; bench/int8_error.py measures harder images), though it does move it."""
    fast, exact = engines
    difference = np.abs(fast.run(varied_batch).probabilities[:, NSFW_INDEX]
                        - exact.run(varied_batch).probabilities[:, NSFW_INDEX])
    assert difference.max() < EXACT_MARGIN
    assert difference.max() > 0  # int8 really is another computation


def test_rows_in_the_band_get_float32_outputs(engines: tuple[LiteRTEngine, LiteRTEngine],
                                              varied_batch: npt.NDArray[np.float32]) -> None:
    """Images whose int8 score is in the band carry the float32 engine's probabilities and
    features; the others keep the int8 ones."""
    fast, exact = engines
    int8 = fast.run(varied_batch)
    float32 = exact.run(varied_batch)
    scores = np.sort(int8.probabilities[:, NSFW_INDEX])
    band = (float(scores[len(scores) // 2]), 1.0)  # the upper half of this batch
    engine = ExactBandEngine(fast, exact, band)
    output = engine.run(varied_batch)
    inside = int8.probabilities[:, NSFW_INDEX] >= band[0]
    assert 0 < inside.sum() < len(inside)
    assert engine.rescored == inside.sum()
    np.testing.assert_allclose(output.probabilities[inside], float32.probabilities[inside],
                               atol=1e-6)
    np.testing.assert_allclose(output.features[inside], float32.features[inside], atol=1e-4)
    np.testing.assert_array_equal(output.probabilities[~inside], int8.probabilities[~inside])
    np.testing.assert_array_equal(output.features[~inside], int8.features[~inside])


def test_float32_runs_only_for_rows_in_the_band(
        engines: tuple[LiteRTEngine, LiteRTEngine],
        varied_batch: npt.NDArray[np.float32]) -> None:
    """A band no score reaches re-scores nothing and returns the int8 output unchanged; a band
    of [0, 1] re-scores every image."""
    fast, exact = engines
    engine = ExactBandEngine(fast, exact, (1.0, 1.0))
    output = engine.run(varied_batch)
    assert engine.rescored == 0
    np.testing.assert_array_equal(output.probabilities, fast.run(varied_batch).probabilities)
    engine.band = (0.0, 1.0)
    engine.run(varied_batch[:3])
    engine.run(varied_batch[3:6])
    assert engine.rescored == 6


def test_a_bad_band_is_refused(engines: tuple[LiteRTEngine, LiteRTEngine]) -> None:
    """A band outside [0, 1] or upside down is a ModelError naming it."""
    fast, exact = engines
    for band in ((0.5, 0.2), (-0.1, 0.5), (0.2, 1.5)):
        with pytest.raises(ModelError, match="exact band"):
            ExactBandEngine(fast, exact, band)


def test_make_engine_builds_what_is_asked(tflite_cache_dir: Path) -> None:
    """int8 with a band is an ExactBandEngine over both files, without a band plain int8;
    float32 is plain LiteRT; an unknown quantization is refused."""
    common = {"engine": "litert", "device": "cpu", "batch_size": 4,
              "cache_dir": tflite_cache_dir, "model_key": MODEL_KEY}
    banded = make_engine(shared_open_nsfw_model, quantization="dynamic_range",
                         exact_band=(0.1, 1.0), **common)  # type: ignore[arg-type]
    assert isinstance(banded, ExactBandEngine) and banded.band == (0.1, 1.0)
    assert banded.name == "litert int8, float32 in [0.1, 1]"
    plain = make_engine(shared_open_nsfw_model, quantization="dynamic_range", exact_band=None,
                        **common)  # type: ignore[arg-type]
    assert isinstance(plain, LiteRTEngine)
    assert plain.model_path.name.endswith("-dynamic_range.tflite")
    exact = make_engine(shared_open_nsfw_model, quantization="none", exact_band=(0.1, 1.0),
                        **common)  # type: ignore[arg-type]
    assert isinstance(exact, LiteRTEngine) and exact.model_path.name.endswith("-none.tflite")
    with pytest.raises(ModelError, match="unknown quantization"):
        make_engine(shared_open_nsfw_model, quantization="int4",  # type: ignore[arg-type]
                    **common)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="litert engine only"):
        make_engine(shared_open_nsfw_model, **{**common, "engine": "tensorflow"},  # type: ignore[arg-type]
                    quantization="dynamic_range")


def test_points_outside() -> None:
    """A decision point counts as covered only with EXACT_MARGIN to spare on each side; a band
    reaching 1 covers everything above its low end."""
    points = [("a", 0.05 + EXACT_MARGIN), ("b", 0.05 + EXACT_MARGIN / 2),
              ("c", 0.99 - EXACT_MARGIN), ("d", 0.99)]
    assert points_outside((0.05, 0.99), points) == [("b", 0.05 + EXACT_MARGIN / 2), ("d", 0.99)]
    assert points_outside((0.05, 1.0), points) == [("b", 0.05 + EXACT_MARGIN / 2)]


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n' + textwrap.dedent(body))
    return path


class TestConfig:
    """`[classifier] quantization` and `exact_band`."""

    def test_defaults(self, tmp_path: Path) -> None:
        """Unset: float32 ("none"), and the band [0.10, 1.0] for when int8 is chosen."""
        config = load_config(_config(tmp_path, ""))
        options = config.classifier.engine_options()
        assert options["quantization"] == "none"
        assert options["exact_band"] == (0.10, 1.0)

    def test_values(self, tmp_path: Path) -> None:
        """An explicit band and quantization are read; [] means no band."""
        config = load_config(_config(tmp_path, """
            [classifier]
            quantization = "dynamic_range"
            exact_band = [0.2, 0.95]
            """))
        assert config.classifier.quantization == "dynamic_range"
        assert config.classifier.exact_band == (0.2, 0.95)
        config = load_config(_config(tmp_path, "[classifier]\nexact_band = []\n"))
        assert config.classifier.exact_band is None

    @pytest.mark.parametrize(("body", "key"), [
        ('quantization = "int4"', "classifier.quantization"),
        ('quantization = "auto"', "classifier.quantization"),
        ('device = "gpu"\nquantization = "dynamic_range"', "classifier.quantization"),
        ("exact_band = [0.9, 0.1]", "classifier.exact_band"),
        ("exact_band = [0.1]", "classifier.exact_band"),
        ('exact_band = "wide"', "classifier.exact_band"),
        ('engine = "tensorflow"\nquantization = "dynamic_range"', "classifier.quantization"),
    ])
    def test_bad_values_name_the_key(self, tmp_path: Path, body: str, key: str) -> None:
        """Each bad value is a problem naming file:line and the key."""
        path = _config(tmp_path, "[classifier]\n" + body + "\n")
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert f": {key}: " in str(raised.value), str(raised.value)
        assert str(path) in str(raised.value)


INT8 = '[classifier]\nquantization = "dynamic_range"\n'


class TestWarnings:
    """check-config (and the daemon) say which decisions int8 output would make."""

    def test_shipped_config_with_int8_is_covered(self, tmp_path: Path) -> None:
        """The shipped thresholds and review band lie inside the default band: switching the
        shipped config to int8 gives no warning."""
        shipped = (REPOSITORY / "config.toml").read_text()
        assert 'quantization = "none"' in shipped
        path = tmp_path / "config.toml"
        path.write_text(shipped.replace('data_dir = "', f'data_dir = "{tmp_path}/data"  # ', 1)
                        .replace('quantization = "none"', 'quantization = "dynamic_range"', 1))
        config = load_config(path)
        assert config.classifier.quantization == "dynamic_range"
        assert precision_warnings(config) == []

    def test_threshold_outside_the_band(self, tmp_path: Path) -> None:
        """A band of [0.30, 1.0] leaves a review band edge at 0.40 uncovered: the warning names
        the key's line and the band that would cover it."""
        path = _config(tmp_path, INT8 + "exact_band = [0.30, 1.0]\n"
                       "[quarantine]\nreview_band = [0.40, 0.80]\n")
        warnings = precision_warnings(load_config(path))
        line = path.read_text().splitlines().index("review_band = [0.40, 0.80]") + 1
        assert len(warnings) == 1
        assert warnings[0].startswith(f"{path}:{line}: quarantine.review_band: 0.40 ")
        assert "[0.30, 1.00] with 0.30 to spare" in warnings[0]
        assert "set exact_band = [0.10, 1.00]" in warnings[0]

    def test_one_suggestion_covers_every_point(self, tmp_path: Path) -> None:
        """Two uncovered points get the same suggested band, which covers both."""
        path = _config(tmp_path, INT8 + "exact_band = [0.50, 1.0]\n"
                       "[quarantine]\nreview_band = [0.40, 0.60]\n")
        warnings = precision_warnings(load_config(path))
        assert len(warnings) == 2
        assert all("set exact_band = [0.10, 1.00]" in warning for warning in warnings)
        suggested = load_config(_config(tmp_path, INT8 + "exact_band = [0.10, 1.0]\n"
                                        "[quarantine]\nreview_band = [0.40, 0.60]\n"))
        assert precision_warnings(suggested) == []

    def test_band_not_reaching_one(self, tmp_path: Path) -> None:
        """A band ending at 0.90 leaves the 0.80 threshold without margin above it."""
        path = _config(tmp_path, INT8 + "exact_band = [0.05, 0.90]\n")
        warnings = precision_warnings(load_config(path))
        assert [w.split(": ")[1] for w in warnings] == ["thresholds.nsfw"]

    def test_quarantine_head_tags_are_named(self, tmp_path: Path) -> None:
        """A quarantine tag other than nsfw is scored by a head on int8 features: said."""
        path = _config(tmp_path, INT8 + '[thresholds]\ngore = 0.5\n'
                       '[quarantine]\ntags = ["nsfw", "gore"]\n')
        (warning,) = precision_warnings(load_config(path))
        assert "quarantine.tags: 'gore' is scored by a trained head on int8 features" in warning

    def test_no_warning_without_int8(self, tmp_path: Path) -> None:
        """With float32 (the default) nothing is decided on int8: no warning."""
        path = _config(tmp_path, "[thresholds]\nnsfw = 0.99\ngore = 0.5\n"
                       '[quarantine]\ntags = ["nsfw", "gore"]\n')
        assert precision_warnings(load_config(path)) == []

    def test_no_band_warns(self, tmp_path: Path) -> None:
        """exact_band = [] decides everything on int8 scores: said once."""
        path = _config(tmp_path, INT8 + "exact_band = []\n")
        (warning,) = precision_warnings(load_config(path))
        assert "classifier.exact_band = []" in warning

    def test_check_config_prints_it(self, tmp_path: Path) -> None:
        """`megane check-config` exits 0 and prints the warning on stderr."""
        path = _config(tmp_path, INT8 + "exact_band = [0.6, 1.0]\n")
        completed = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "check-config", "--config", str(path)],
            capture_output=True, text=True, check=False, cwd=REPOSITORY)
        assert completed.returncode == 0, completed.stderr
        assert "warning: " in completed.stderr and "thresholds.nsfw: 0.80" in completed.stderr


def _classify(tmp_path: Path, body: str, files: list[Path]) -> dict[str, float]:
    config = _config(tmp_path, body)
    completed = subprocess.run(
        [sys.executable, "-m", "crawler.cli", "classify", "--json", "--config", str(config),
         *map(str, files)], capture_output=True, text=True, check=False, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    return {item["file"]: item["scores"]["nsfw"] for item in json.loads(completed.stdout)}


def test_classify_command_scores(tmp_path: Path,
                                 engines: tuple[LiteRTEngine, LiteRTEngine]) -> None:
    """`megane classify` gives float32 scores by default; with int8 chosen, float32 scores for
    images in the band and int8 scores elsewhere."""
    from classifier.decode import DecodeLimits, decode_image
    from classifier.preprocess import preprocess

    folder = tmp_path / "photos"
    folder.mkdir()
    files = []
    for name, image in photo_images().items():
        files.append(folder / f"{name}.png")
        image.save(files[-1])
    limits = DecodeLimits(7680, 7680, 1000, ("PNG",))
    batch = np.stack([preprocess(decode_image(path, limits).image) for path in files])
    fast, exact = engines
    int8 = fast.run(batch).probabilities[:, NSFW_INDEX]
    float32 = exact.run(batch).probabilities[:, NSFW_INDEX]
    default = _classify(tmp_path, "", files)
    for index, path in enumerate(files):
        assert default[str(path)] == pytest.approx(float32[index], abs=2e-6)
    band = (float(np.median(int8)), 1.0)
    banded = _classify(tmp_path, INT8 + f"exact_band = [{band[0]!r}, 1.0]\n", files)
    assert any(score < band[0] for score in int8) and any(score >= band[0] for score in int8)
    for index, path in enumerate(files):
        expected = float32[index] if int8[index] >= band[0] else int8[index]
        assert banded[str(path)] == pytest.approx(expected, abs=2e-6), path.name


def test_classify_reports_an_engine_failure(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An engine that fails mid-run makes `classify` exit 2 (internal) naming the model."""
    import classifier.models
    from classifier.errors import InferenceError
    from crawler.classify_files import classify_command

    class FailingClassifier:
        version, tags, batch_size = "builtin", ("nsfw",), 4

        def classify(self, batch: npt.NDArray[np.float32]) -> None:
            raise InferenceError("litert inference failed: test")

    monkeypatch.setattr(classifier.models, "load_classifier",
                        lambda *args, **kwargs: FailingClassifier())
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(image)
    config = load_config(_config(tmp_path, ""))
    assert classify_command(config, [str(image)], as_json=True, environ={}) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: model builtin: litert inference failed: test\n"
    assert captured.out == ""


def test_daemon_logs_its_engine(tmp_path: Path) -> None:
    """`megane once` names the engine it serves with, band included, in `daemon_started`, and
    logs each precision warning."""
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\nlog_format = "json"\n'
                      + INT8 + 'exact_band = [0.25, 1.0]\n'
                      '[quarantine]\nreview_band = [0.40, 0.80]\n')
    completed = subprocess.run(
        [sys.executable, "-m", "crawler.cli", "once", "--config", str(config)],
        capture_output=True, text=True, check=False, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    events = [json.loads(line) for line in completed.stderr.splitlines()
              if line.startswith("{")]
    (started,) = [event for event in events if event.get("event") == "daemon_started"]
    assert started["engine"] == "litert int8, float32 in [0.25, 1]"
    (warning,) = [event for event in events if event.get("event") == "precision_warning"]
    assert "quarantine.review_band: 0.40 " in warning["detail"]


async def test_reload_reports_a_quantization_change_as_needing_a_restart(
        write_config: Any, shared_classifier: Any) -> None:
    """SIGHUP with int8 switched on reports [classifier] as needing a restart and warns
    nothing meanwhile: the running engine (float32) keeps serving."""
    import structlog

    from tests.test_promotion import RunningDaemon

    config = write_config()
    async with RunningDaemon(config, shared_classifier) as daemon:
        config.path.write_text(config.path.read_text().replace(
            'engine = "litert"', 'engine = "litert"\nquantization = "dynamic_range"\n'
                                 'exact_band = [0.6, 1.0]\n[quarantine]\n'
                                 'review_band = [0.40, 0.80]'))
        with structlog.testing.capture_logs() as logs:
            assert await daemon.reload()
    [event] = [entry for entry in logs if entry["event"] == "config_reloaded"]
    assert event["needs_restart"] == ["classifier"]
    assert [entry for entry in logs if entry["event"] == "precision_warning"] == []
    assert daemon.config.classifier.quantization == "dynamic_range"


async def test_reload_warns_about_a_new_uncovered_point(
        write_config: Any, shared_classifier: Any) -> None:
    """Running with int8 configured, a SIGHUP that moves the review band out of the exact band
    logs a precision_warning naming it."""
    import structlog

    from tests.test_promotion import RunningDaemon

    config = write_config('quantization = "dynamic_range"\nexact_band = [0.10, 1.0]\n')
    async with RunningDaemon(config, shared_classifier) as daemon:
        config.path.write_text(config.path.read_text() + "[quarantine]\nreview_band = [0.2, 0.8]\n")
        with structlog.testing.capture_logs() as logs:
            assert await daemon.reload()
    [warning] = [entry for entry in logs if entry["event"] == "precision_warning"]
    assert "quarantine.review_band: 0.20 " in warning["detail"]
