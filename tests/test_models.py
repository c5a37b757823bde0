"""The model registry: saving versions, listing them, and loading them as classifiers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timezone, UTC
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from classifier_fixtures import (
    OnnxReference,
    onnx_reference,
    photo_batch,
    pretrained_model,
    tflite_cache_dir,
)

from classifier.base import Classifier
from classifier.errors import ModelError
from classifier.models import (
    BUILTIN_VERSION,
    list_models,
    load_classifier,
    read_model_version,
    write_model_version,
)


@pytest.fixture
def head_weights() -> tuple[npt.NDArray[np.float32], float]:
    """A deterministic random head on the 1024 pooled features."""
    generator = np.random.default_rng(7)
    return generator.normal(0, 0.02, 1024).astype(np.float32), -0.5


@pytest.fixture
def models_dir(tmp_path: Path, head_weights: tuple[npt.NDArray[np.float32], float]) -> Path:
    """A registry holding version `v1` with a `megane` head."""
    directory = tmp_path / "models"
    write_model_version(
        directory,
        "v1",
        {"megane": head_weights},
        {"metrics": {"megane": {"auc": 0.9}}},
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    return directory


def _sigmoid(value: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1 / (1 + np.exp(-value))


class TestWriteModelVersion:
    def test_private_whatever_the_umask(self, tmp_path: Path,
                                        head_weights: tuple[npt.NDArray[np.float32], float],
                                        ) -> None:
        """Under umask 022 a version folder is 0700 and its files 0600, like the rest of
        data_dir but library/; no staging folder is left behind."""
        import os
        import stat

        previous = os.umask(0o022)
        try:
            folder = write_model_version(tmp_path / "models", "v2", {"cat": head_weights}, {})
        finally:
            os.umask(previous)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {
            "heads.npz": 0o600, "metadata.json": 0o600}
        assert [path.name for path in (tmp_path / "models").iterdir()] == ["v2"]

    def test_folder_contents(self, models_dir: Path) -> None:
        """A version folder holds heads.npz and metadata.json with the contract's fields."""
        metadata = json.loads((models_dir / "v1" / "metadata.json").read_text())
        assert metadata["tags"] == ["nsfw", "megane"]
        assert metadata["architecture"] == "open_nsfw+logistic_heads"
        assert metadata["preprocessing"]["name"] == "open_nsfw_reference_v1"
        assert metadata["created_at"] == "2026-01-02T03:04:05+00:00"
        assert metadata["metrics"] == {"megane": {"auc": 0.9}}
        assert metadata["base_model"]["onnx_sha256"].startswith("864bb37b")
        assert sorted(path.name for path in (models_dir / "v1").iterdir()) == [
            "heads.npz",
            "metadata.json",
        ]

    def test_existing_version_is_not_overwritten(
        self, models_dir: Path, head_weights: tuple[npt.NDArray[np.float32], float]
    ) -> None:
        """Writing a version that exists raises ModelError and leaves it untouched."""
        with pytest.raises(ModelError, match="already exists"):
            write_model_version(models_dir, "v1", {"cat": head_weights}, {})
        assert read_model_version(models_dir, "v1")[0]["tags"] == ["nsfw", "megane"]

    @pytest.mark.parametrize("version", ["builtin", "../escape", ".hidden", "", "a/b"])
    def test_bad_version_names_are_refused(self, tmp_path: Path, version: str) -> None:
        """Reserved, hidden or path-like version names raise ModelError."""
        with pytest.raises(ModelError, match="invalid model version"):
            write_model_version(tmp_path, version, {}, {})

    @pytest.mark.parametrize("tag", ["nsfw", "Megane", "two words"])
    def test_bad_head_tags_are_refused(
        self, tmp_path: Path, head_weights: tuple[npt.NDArray[np.float32], float], tag: str
    ) -> None:
        """A head named nsfw, or not in snake_case, raises ModelError."""
        with pytest.raises(ModelError, match="invalid head tag"):
            write_model_version(tmp_path, "v1", {tag: head_weights}, {})

    def test_wrong_weight_shape_is_refused(self, tmp_path: Path) -> None:
        """A head weight that is not [1024] raises ModelError and writes nothing."""
        with pytest.raises(ModelError, match="megane"):
            write_model_version(tmp_path, "v1", {"megane": (np.zeros(512, np.float32), 0.0)}, {})
        assert not (tmp_path / "v1").exists()


class TestListModels:
    def test_builtin_first_then_versions(self, models_dir: Path) -> None:
        """builtin is listed first, then each saved version with its tags."""
        infos = list_models(models_dir)
        assert [(info.version, info.tags, info.problem) for info in infos] == [
            (BUILTIN_VERSION, ("nsfw",), None),
            ("v1", ("nsfw", "megane"), None),
        ]

    def test_corrupt_version_is_listed_with_its_problem(self, models_dir: Path) -> None:
        """A folder with broken metadata is listed with a problem instead of raising."""
        (models_dir / "broken").mkdir()
        (models_dir / "broken" / "metadata.json").write_text("{not json")
        (models_dir / ".cache").mkdir()
        infos = {info.version: info for info in list_models(models_dir)}
        assert set(infos) == {BUILTIN_VERSION, "v1", "broken"}
        assert "metadata.json" in (infos["broken"].problem or "")

    def test_missing_directory_lists_builtin(self, tmp_path: Path) -> None:
        """Without a models directory only builtin is listed."""
        assert [info.version for info in list_models(tmp_path / "absent")] == [BUILTIN_VERSION]


class TestLoadClassifier:
    def test_version_with_head(
        self,
        models_dir: Path,
        tflite_cache_dir: Path,
        photo_batch: npt.NDArray[np.float32],
        onnx_reference: OnnxReference,
        head_weights: tuple[npt.NDArray[np.float32], float],
    ) -> None:
        """A saved version scores nsfw from open_nsfw and megane from its head on the features."""
        classifier: Classifier = load_classifier(
            "v1", models_dir, batch_size=4, cache_dir=tflite_cache_dir
        )
        assert classifier.tags == ("nsfw", "megane")
        assert classifier.version == "v1"
        assert classifier.batch_size == 4
        result = classifier.classify(photo_batch[:3])
        reference = onnx_reference.run(photo_batch[:3])
        weight, bias = head_weights
        expected_megane = _sigmoid(reference.features.astype(np.float64) @ weight + bias)
        assert [set(scores) for scores in result.scores] == [{"nsfw", "megane"}] * 3
        assert result.features.shape == (3, 1024)
        np.testing.assert_allclose(
            [s["nsfw"] for s in result.scores], reference.probabilities[:, 1], atol=1e-4
        )
        np.testing.assert_allclose([s["megane"] for s in result.scores], expected_megane, atol=1e-3)

    def test_builtin(
        self, tmp_path: Path, tflite_cache_dir: Path, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """builtin needs no folder and scores only nsfw."""
        classifier = load_classifier(BUILTIN_VERSION, tmp_path, engine="tensorflow", batch_size=2)
        result = classifier.classify(photo_batch[:2])
        assert classifier.tags == ("nsfw",)
        assert [list(scores) for scores in result.scores] == [["nsfw"], ["nsfw"]]

    def test_default_cache_is_shared_by_every_models_dir(
        self, models_dir: Path, tmp_path: Path, tflite_cache_dir: Path
    ) -> None:
        """Without cache_dir every models_dir (data_dir) reuses the one per-user conversion."""
        load_classifier("builtin", tmp_path / "first" / "models", engine="litert")
        cached = sorted(tflite_cache_dir.glob("*-none.tflite"))
        stamps = [path.stat().st_mtime_ns for path in cached]
        classifier = load_classifier("v1", models_dir, engine="litert", batch_size=2)
        assert classifier.engine.model_path.parent == tflite_cache_dir  # type: ignore[attr-defined]
        assert sorted(tflite_cache_dir.glob("*-none.tflite")) == cached
        assert [path.stat().st_mtime_ns for path in cached] == stamps  # not converted again
        assert not list(tflite_cache_dir.glob(".*"))  # no temporary file left behind
        assert not (models_dir / ".cache").exists()
        assert [info.version for info in list_models(models_dir)] == [BUILTIN_VERSION, "v1"]

    def test_cached_litert_never_imports_tensorflow(
        self, models_dir: Path, tflite_cache_dir: Path
    ) -> None:
        """With the conversion cached, a LiteRT classifier loads and runs without TensorFlow."""
        load_classifier(
            "v1", models_dir, engine="litert", cache_dir=tflite_cache_dir
        )  # fills the cache
        script = textwrap.dedent(
            f"""
            import sys
            import numpy as np
            from pathlib import Path
            from classifier import load_classifier
            classifier = load_classifier("v1", Path({str(models_dir)!r}), engine="litert",
                                         cache_dir=Path({str(tflite_cache_dir)!r}), batch_size=1)
            classifier.classify(np.zeros((1, 224, 224, 3), np.float32))
            assert "tensorflow" not in sys.modules and "keras" not in sys.modules
            """
        )
        repository = Path(__file__).resolve().parent.parent
        completed = subprocess.run(
            [sys.executable, "-c", script],
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr

    def test_missing_version_raises(self, models_dir: Path) -> None:
        """An unknown version raises ModelError naming the folder it looked for."""
        with pytest.raises(ModelError, match=str(models_dir / "v9")):
            load_classifier("v9", models_dir)

    def test_corrupt_heads_raise(self, models_dir: Path) -> None:
        """A version whose heads.npz is damaged raises ModelError naming the file."""
        (models_dir / "v1" / "heads.npz").write_bytes(b"garbage")
        with pytest.raises(ModelError, match=r"heads\.npz"):
            load_classifier("v1", models_dir)

    def test_heads_disagreeing_with_metadata_raise(self, models_dir: Path) -> None:
        """metadata.json listing other tags than heads.npz raises ModelError."""
        path = models_dir / "v1" / "metadata.json"
        metadata = json.loads(path.read_text())
        metadata["tags"] = ["nsfw", "cat"]
        path.write_text(json.dumps(metadata))
        with pytest.raises(ModelError, match="cat"):
            load_classifier("v1", models_dir)

    def test_other_preprocessing_raises(self, models_dir: Path) -> None:
        """A version trained with another preprocessing is refused rather than misused."""
        path = models_dir / "v1" / "metadata.json"
        metadata = json.loads(path.read_text())
        metadata["preprocessing"]["name"] = "something_else"
        path.write_text(json.dumps(metadata))
        with pytest.raises(ModelError, match="preprocessing"):
            load_classifier("v1", models_dir)


class TestCacheLocation:
    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            (
                {"MEGANE_CACHE_DIR": "/srv/cache", "XDG_CACHE_HOME": "/x", "HOME": "/h"},
                "/srv/cache/tflite",
            ),
            (
                {"CACHE_DIRECTORY": "/var/cache/megane-crawler:/other", "HOME": "/h"},
                "/var/cache/megane-crawler/tflite",
            ),
            ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/megane-crawler/tflite"),
            ({"HOME": "/h"}, "/h/.cache/megane-crawler/tflite"),
        ],
    )
    def test_resolution_order(self, environ: dict[str, str], expected: str) -> None:
        """The override, then systemd's CacheDirectory, then XDG, then ~/.cache."""
        from classifier.cache import tflite_cache_dir

        assert tflite_cache_dir(environ) == Path(expected)
