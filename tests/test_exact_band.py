"""Int8 inference with float32 decisions: classifier/exact_band.py, its config keys and warnings.

Real LiteRT engines (int8 "dynamic range" and float32 files converted from the real model),
real photos from scikit-image, real `megane classify` and `megane check-config` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from classifier.engines import LiteRTEngine, cached_tflite, make_engine, resolve_quantization
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
    premise), though it does move it."""
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
    engine = ExactBandEngine(fast, lambda: exact, band)
    output = engine.run(varied_batch)
    inside = int8.probabilities[:, NSFW_INDEX] >= band[0]
    assert 0 < inside.sum() < len(inside)
    assert engine.rescored == inside.sum()
    np.testing.assert_allclose(output.probabilities[inside], float32.probabilities[inside],
                               atol=1e-6)
    np.testing.assert_allclose(output.features[inside], float32.features[inside], atol=1e-4)
    np.testing.assert_array_equal(output.probabilities[~inside], int8.probabilities[~inside])
    np.testing.assert_array_equal(output.features[~inside], int8.features[~inside])


def test_float32_engine_is_built_only_when_needed(
        engines: tuple[LiteRTEngine, LiteRTEngine],
        varied_batch: npt.NDArray[np.float32]) -> None:
    """A batch with no score in the band never builds the float32 engine; the first one that
    has one builds it once."""
    fast, exact = engines
    built: list[int] = []

    def build() -> LiteRTEngine:
        built.append(1)
        return exact

    engine = ExactBandEngine(fast, build, (1.0, 1.0))
    engine.run(varied_batch)
    assert built == [] and engine.rescored == 0
    engine.band = (0.0, 1.0)
    engine.run(varied_batch[:3])
    engine.run(varied_batch[3:6])
    assert built == [1] and engine.rescored == 6


def test_a_bad_band_is_refused(engines: tuple[LiteRTEngine, LiteRTEngine]) -> None:
    """A band outside [0, 1] or upside down is a ModelError naming it."""
    fast, exact = engines
    for band in ((0.5, 0.2), (-0.1, 0.5), (0.2, 1.5)):
        with pytest.raises(ModelError, match="exact band"):
            ExactBandEngine(fast, lambda: exact, band)


def test_make_engine_resolves_auto(tflite_cache_dir: Path) -> None:
    """`auto` is int8 with the float32 band on LiteRT, plain int8 without a band, float32 when
    asked, and never int8 on TensorFlow."""
    common = {"engine": "litert", "device": "cpu", "batch_size": 4,
              "cache_dir": tflite_cache_dir, "model_key": MODEL_KEY}
    banded = make_engine(shared_open_nsfw_model, quantization="auto", exact_band=(0.3, 0.9),
                         **common)  # type: ignore[arg-type]
    assert isinstance(banded, ExactBandEngine) and banded.band == (0.3, 0.9)
    plain = make_engine(shared_open_nsfw_model, quantization="auto", exact_band=None,
                        **common)  # type: ignore[arg-type]
    assert isinstance(plain, LiteRTEngine)
    assert plain.model_path.name.endswith("-dynamic_range.tflite")
    exact = make_engine(shared_open_nsfw_model, quantization="none", exact_band=(0.3, 0.9),
                        **common)  # type: ignore[arg-type]
    assert isinstance(exact, LiteRTEngine) and exact.model_path.name.endswith("-none.tflite")
    assert resolve_quantization("auto", "tensorflow") == "none"
    assert resolve_quantization("auto", "litert") == "dynamic_range"
    with pytest.raises(ModelError, match="unknown quantization"):
        resolve_quantization("int4", "litert")  # type: ignore[arg-type]


def test_points_outside() -> None:
    """A decision point counts as covered only with EXACT_MARGIN to spare on both sides."""
    band = (0.30, 0.90)
    points = [("a", 0.30 + EXACT_MARGIN), ("b", 0.30 + EXACT_MARGIN / 2),
              ("c", 0.90 - EXACT_MARGIN), ("d", 0.95)]
    assert points_outside(band, points) == [("b", 0.30 + EXACT_MARGIN / 2), ("d", 0.95)]


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n' + textwrap.dedent(body))
    return path


class TestConfig:
    """`[classifier] quantization` and `exact_band`."""

    def test_defaults(self, tmp_path: Path) -> None:
        """Unset: quantization auto and the band [0.30, 0.90], passed on to the loader."""
        config = load_config(_config(tmp_path, ""))
        options = config.classifier.engine_options()
        assert options["quantization"] == "auto"
        assert options["exact_band"] == (0.30, 0.90)

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


class TestWarnings:
    """check-config says which NSFW decisions int8 scores would make."""

    def test_default_config_is_covered(self, tmp_path: Path) -> None:
        """The shipped thresholds and review band lie inside the default band: no warning."""
        shipped = (REPOSITORY / "config.toml").read_text()
        path = tmp_path / "config.toml"
        path.write_text(shipped.replace('data_dir = "', f'data_dir = "{tmp_path}/data"  # ', 1))
        assert precision_warnings(load_config(path)) == []

    def test_threshold_outside_the_band(self, tmp_path: Path) -> None:
        """A threshold of 0.95 is outside [0.30, 0.90]: the warning names its line and the fix."""
        path = _config(tmp_path, "[thresholds]\nnsfw = 0.95\n")
        warnings = precision_warnings(load_config(path))
        line = path.read_text().splitlines().index("nsfw = 0.95") + 1
        assert len(warnings) == 1
        assert warnings[0].startswith(f"{path}:{line}: thresholds.nsfw: 0.95 ")
        assert "exact_band to [0.30, 1.00]" in warnings[0]

    def test_review_band_edge_outside(self, tmp_path: Path) -> None:
        """A review band starting at 0.32 is too close to the band's low end."""
        path = _config(tmp_path, "[quarantine]\nreview_band = [0.32, 0.8]\n")
        warnings = precision_warnings(load_config(path))
        assert [w.split(": ")[1] for w in warnings] == ["quarantine.review_band"]

    def test_no_warning_without_int8(self, tmp_path: Path) -> None:
        """With quantization "none", or on TensorFlow, nothing runs in int8: no warning."""
        for body in ('quantization = "none"', 'engine = "tensorflow"'):
            path = _config(tmp_path, f"[classifier]\n{body}\n[thresholds]\nnsfw = 0.99\n")
            assert precision_warnings(load_config(path)) == []

    def test_no_band_warns(self, tmp_path: Path) -> None:
        """exact_band = [] decides everything on int8 scores: said once."""
        path = _config(tmp_path, "[classifier]\nexact_band = []\n")
        (warning,) = precision_warnings(load_config(path))
        assert "classifier.exact_band = []" in warning

    def test_check_config_prints_it(self, tmp_path: Path) -> None:
        """`megane check-config` exits 0 and prints the warning on stderr."""
        path = _config(tmp_path, "[thresholds]\nnsfw = 0.97\n")
        completed = subprocess.run(
            [sys.executable, "-m", "crawler.cli", "check-config", "--config", str(path)],
            capture_output=True, text=True, check=False, cwd=REPOSITORY)
        assert completed.returncode == 0, completed.stderr
        assert "warning: " in completed.stderr and "thresholds.nsfw: 0.97" in completed.stderr


def _classify(tmp_path: Path, body: str, files: list[Path]) -> dict[str, float]:
    config = _config(tmp_path, body)
    completed = subprocess.run(
        [sys.executable, "-m", "crawler.cli", "classify", "--json", "--config", str(config),
         *map(str, files)], capture_output=True, text=True, check=False, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    return {item["file"]: item["scores"]["nsfw"] for item in json.loads(completed.stdout)}


def test_classify_command_scores(tmp_path: Path,
                                 engines: tuple[LiteRTEngine, LiteRTEngine]) -> None:
    """`megane classify` on the default config gives float32 scores for images in the band
    and int8 scores elsewhere; a band of [0, 1] gives float32 everywhere."""
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
    everywhere = _classify(tmp_path, "[classifier]\nexact_band = [0.0, 1.0]\n", files)
    for index, path in enumerate(files):
        assert everywhere[str(path)] == pytest.approx(float32[index], abs=2e-6)
    band = (0.30, 0.90)
    defaults = _classify(tmp_path, "", files)
    for index, path in enumerate(files):
        expected = float32[index] if band[0] <= int8[index] <= band[1] else int8[index]
        assert defaults[str(path)] == pytest.approx(expected, abs=2e-6), path.name


def test_daemon_logs_its_engine(tmp_path: Path) -> None:
    """`megane once` names the engine it serves with, band included, in `daemon_started`."""
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\nlog_format = "json"\n'
                      '[classifier]\nexact_band = [0.25, 0.95]\n')
    completed = subprocess.run(
        [sys.executable, "-m", "crawler.cli", "once", "--config", str(config)],
        capture_output=True, text=True, check=False, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    events = [json.loads(line) for line in completed.stderr.splitlines()
              if line.startswith("{")]
    (started,) = [event for event in events if event.get("event") == "daemon_started"]
    assert started["engine"] == "litert int8, float32 in [0.25, 0.95]"
