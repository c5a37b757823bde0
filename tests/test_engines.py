"""The inference engines: parity with onnxruntime, fixed batch shapes, no retracing, caching."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import numpy.typing as npt
import pytest
from classifier_fixtures import (
    PARITY_TOLERANCE,
    OnnxReference,
    onnx_reference,
    photo_batch,
    pretrained_model,
    random_batch,
    tflite_cache_dir,
)

from classifier.engines import (
    Engine,
    LiteRTEngine,
    TensorFlowEngine,
    gpu_devices,
    make_engine,
    resolve_engine,
)
from classifier.errors import InferenceError, ModelError
from classifier.opennsfw import MODEL_KEY

BATCH_SIZE = 4


@pytest.fixture(scope="module")
def tensorflow_engine(pretrained_model: keras.Model) -> TensorFlowEngine:
    """A TensorFlow engine with a fixed batch of 4."""
    return TensorFlowEngine(pretrained_model, batch_size=BATCH_SIZE)


@pytest.fixture(scope="module")
def litert_engine(pretrained_model: keras.Model, tflite_cache_dir: Path) -> LiteRTEngine:
    """A LiteRT engine with a fixed batch of 4."""
    return LiteRTEngine.from_model(
        lambda: pretrained_model,
        cache_dir=tflite_cache_dir,
        model_key=MODEL_KEY,
        batch_size=BATCH_SIZE,
    )


@pytest.fixture(params=["tensorflow", "litert"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn."""
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


class TestParity:
    def test_photos(
        self, engine: Engine, onnx_reference: OnnxReference, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """On real photos the engine's NSFW probability and features equal onnxruntime's."""
        output = engine.run(photo_batch)
        reference = onnx_reference.run(photo_batch)
        assert np.abs(output.probabilities - reference.probabilities).max() < PARITY_TOLERANCE
        assert (
            np.abs(output.features - reference.features).max()
            < 1e-3 * np.abs(reference.features).max()
        )

    def test_random_tensors(
        self, engine: Engine, onnx_reference: OnnxReference, random_batch: npt.NDArray[np.float32]
    ) -> None:
        """On random tensors the engine's NSFW probability equals onnxruntime's."""
        output = engine.run(random_batch)
        reference = onnx_reference.run(random_batch)
        assert np.abs(output.probabilities - reference.probabilities).max() < PARITY_TOLERANCE


class TestBatching:
    def test_partial_batch_is_padded(
        self, engine: Engine, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """A batch smaller than batch_size gives the same scores as inside a full batch."""
        full = engine.run(photo_batch[:BATCH_SIZE])
        partial = engine.run(photo_batch[:1])
        assert partial.probabilities.shape == (1, 2)
        assert partial.features.shape == (1, 1024)
        np.testing.assert_allclose(partial.probabilities, full.probabilities[:1], atol=1e-6)

    def test_large_batch_is_split(
        self, engine: Engine, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """A batch larger than batch_size is run in chunks and comes back whole and in order."""
        whole = engine.run(photo_batch)
        one_by_one = np.concatenate(
            [engine.run(photo_batch[i : i + 1]).probabilities for i in range(len(photo_batch))]
        )
        assert whole.probabilities.shape == (len(photo_batch), 2)
        np.testing.assert_allclose(whole.probabilities, one_by_one, atol=1e-6)

    def test_empty_batch(self, engine: Engine) -> None:
        """An empty batch returns empty outputs without running the model."""
        output = engine.run(np.zeros((0, 224, 224, 3), np.float32))
        assert output.probabilities.shape == (0, 2)
        assert output.features.shape == (0, 1024)

    def test_wrong_shape_raises(self, engine: Engine) -> None:
        """A batch of the wrong image size raises InferenceError."""
        with pytest.raises(InferenceError, match="shape"):
            engine.run(np.zeros((1, 256, 256, 3), np.float32))

    def test_concurrent_callers_are_serialised(
        self, engine: Engine, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """Two threads calling at once both get their own, correct results."""
        expected = engine.run(photo_batch[:2]).probabilities
        results: list[npt.NDArray[np.float32]] = []

        def call() -> None:
            results.append(engine.run(photo_batch[:2]).probabilities)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            np.testing.assert_allclose(result, expected, atol=1e-6)


class TestTensorFlowEngine:
    def test_never_retraces(
        self, pretrained_model: keras.Model, photo_batch: npt.NDArray[np.float32]
    ) -> None:
        """Batches of 1, 3, 4 and 7 images all run through the single traced graph."""
        engine = TensorFlowEngine(pretrained_model, batch_size=BATCH_SIZE)
        for count in (1, 3, 4, 7):
            engine.run(photo_batch[:count])
        assert engine.trace_count == 1
        assert engine._function.experimental_get_tracing_count() == 1

    def test_runs_on_cpu_without_gpu(self, tensorflow_engine: TensorFlowEngine) -> None:
        """The engine is placed on the GPU when there is one, else on the CPU."""
        assert tensorflow_engine.device == ("/GPU:0" if gpu_devices() else "/CPU:0")

    @pytest.mark.skipif(bool(gpu_devices()), reason="this host has a GPU")
    def test_gpu_request_without_gpu_raises(self, pretrained_model: keras.Model) -> None:
        """Asking for the GPU on a host without one raises ModelError."""
        with pytest.raises(ModelError, match="GPU"):
            TensorFlowEngine(pretrained_model, device="gpu")


class TestLiteRTEngine:
    def test_conversion_is_cached(
        self, litert_engine: LiteRTEngine, tflite_cache_dir: Path
    ) -> None:
        """A second engine reuses the cached .tflite file without building the model again."""
        modified = litert_engine.model_path.stat().st_mtime_ns

        def build_model() -> keras.Model:
            raise AssertionError("the model should not be built when the file is cached")

        again = LiteRTEngine.from_model(
            build_model, cache_dir=tflite_cache_dir, model_key=MODEL_KEY, batch_size=2
        )
        assert again.model_path == litert_engine.model_path
        assert again.model_path.stat().st_mtime_ns == modified
        assert list(tflite_cache_dir.glob("*.tmp")) == []

    def test_uses_all_cores_by_default(self, litert_engine: LiteRTEngine) -> None:
        """threads=0 means one interpreter thread per usable core."""
        import os

        assert litert_engine.threads == len(os.sched_getaffinity(0))


class TestEngineChoice:
    @pytest.mark.skipif(bool(gpu_devices()), reason="this host has a GPU")
    def test_auto_is_litert_on_cpu(self) -> None:
        """engine='auto' picks LiteRT on a host without GPU."""
        assert resolve_engine("auto", "auto") == "litert"

    def test_auto_with_cpu_device_is_litert(self) -> None:
        """engine='auto' with device='cpu' picks LiteRT even when a GPU exists."""
        assert resolve_engine("auto", "cpu") == "litert"

    def test_explicit_engine_is_kept(self) -> None:
        """An explicit engine name is used as is."""
        assert resolve_engine("tensorflow", "auto") == "tensorflow"

    def test_unknown_engine_raises(self) -> None:
        """An unknown engine name raises ModelError."""
        with pytest.raises(ModelError, match="onnx"):
            resolve_engine("onnx", "auto")  # type: ignore[arg-type]

    def test_make_engine_builds_the_choice(
        self, pretrained_model: keras.Model, tflite_cache_dir: Path
    ) -> None:
        """make_engine returns an engine of the resolved kind with the requested batch size."""
        engine = make_engine(
            lambda: pretrained_model,
            engine="litert",
            batch_size=3,
            cache_dir=tflite_cache_dir,
            model_key=MODEL_KEY,
        )
        assert isinstance(engine, LiteRTEngine)
        assert engine.batch_size == 3
