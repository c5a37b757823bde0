"""Inference engines: one Keras model, run by TensorFlow or by the LiteRT interpreter.

Both engines take a fixed batch shape and pad partial batches up to it, so the graph is built
(TensorFlow: traced; LiteRT: allocated) once and never again. Both return the NSFW softmax
[N, 2] and the pooled features [N, 1024]. `make_engine(engine="auto")` picks TensorFlow when a
GPU is visible and LiteRT (TFLite + XNNPACK on all cores) otherwise, the faster of the two on CPU.

Float32 is the default everywhere. `quantization="dynamic_range"` (LiteRT only) runs on int8
weights, about 1.6x faster on a CPU but with NSFW scores up to 0.15 away from float32; with an
exact band, `classifier.exact_band` scores the uncertain images again in float32
(bench/BENCHMARKS.md, "int8 against float32": the measured differences).

An engine serves one caller at a time; a lock makes concurrent calls wait rather than corrupt
state. Calls block: run them in a worker thread, never on the event loop.

TensorFlow is imported only when needed (it costs 3 s and 570 MB of RSS): a LiteRT engine
whose .tflite file is already cached never loads it, nor builds the Keras model, and GPU
detection does not import it on hosts without a GPU device node.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from classifier.base import FEATURE_SIZE, INPUT_SIZE
from classifier.errors import InferenceError, ModelError
from classifier.native_logs import quiet_native_stderr
from storage.placement import write_file_atomic

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

ModelFactory = Callable[[], "keras.Model"]

EngineName = Literal["auto", "tensorflow", "litert"]
DeviceName = Literal["auto", "cpu", "gpu"]
Quantization = Literal["none", "fp16", "dynamic_range"]

ENGINES: tuple[str, ...] = ("auto", "tensorflow", "litert")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
QUANTIZATIONS: tuple[str, ...] = ("none", "fp16", "dynamic_range")
EXACT_BATCH_SIZE = 4  # the float32 re-check (ExactBandEngine) runs few images: pad little
CACHE_FILE_MODE = 0o644  # shared by every data_dir of the user; holds only public weights


@dataclass(frozen=True)
class EngineOutput:
    """What an engine returns for N images: softmax [N, 2] and features [N, 1024], float32."""

    probabilities: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]


class Engine(Protocol):
    """Runs the network on a batch of preprocessed images, float32 [N, 224, 224, 3]."""

    name: str
    batch_size: int

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch`; any N is accepted (split into, and padded to, fixed-size batches)."""
        ...


def gpu_device_nodes_present() -> bool:
    """Whether the host has a CUDA or ROCm device node, without which TensorFlow sees no GPU."""
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()


def gpu_devices() -> list[Any]:
    """The GPUs TensorFlow can see (an empty list on CPU-only hosts, without importing TF)."""
    if not gpu_device_nodes_present():
        return []
    from classifier.native_logs import import_tensorflow

    tf = import_tensorflow()
    return list(tf.config.list_physical_devices("GPU"))


def cpu_count() -> int:
    """The cores this process may use (respects CPU affinity, e.g. systemd's CPUAffinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_batch(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if batch.ndim != 4 or batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise InferenceError(
            f"expected a batch of shape [N, {INPUT_SIZE}, {INPUT_SIZE}, 3], got {batch.shape}"
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def _run_in_fixed_batches(
    batch: npt.NDArray[np.float32],
    batch_size: int,
    run_fixed: _FixedRunner,
) -> EngineOutput:
    """Split `batch` into chunks of `batch_size`, zero-pad the last one, run, and trim."""
    batch = check_batch(batch)
    count = batch.shape[0]
    if count == 0:
        return EngineOutput(
            np.zeros((0, 2), np.float32), np.zeros((0, FEATURE_SIZE), np.float32)
        )
    probabilities, features = [], []
    for start in range(0, count, batch_size):
        chunk = batch[start : start + batch_size]
        filled = chunk.shape[0]
        if filled < batch_size:
            padding = np.zeros((batch_size - filled, *chunk.shape[1:]), np.float32)
            chunk = np.concatenate([chunk, padding])
        chunk_probabilities, chunk_features = run_fixed(chunk)
        probabilities.append(chunk_probabilities[:filled])
        features.append(chunk_features[:filled])
    return EngineOutput(
        np.concatenate(probabilities).astype(np.float32, copy=False),
        np.concatenate(features).astype(np.float32, copy=False),
    )


class _FixedRunner(Protocol):
    def __call__(
        self, chunk: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...


class TensorFlowEngine:
    """The Keras model behind a `tf.function` with a fixed input signature.

    On a GPU host the model runs on the first GPU, with memory growth switched on so TensorFlow
    does not grab all GPU memory up front. `trace_count` counts traces: it stays 1.
    """

    name = "tensorflow"

    def __init__(self, model: keras.Model, *, batch_size: int = 16, device: DeviceName = "auto"):
        import tensorflow as tf

        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = _tensorflow_device(device)
        self.trace_count = 0
        self._model = model
        self._lock = threading.Lock()
        signature = [tf.TensorSpec([batch_size, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)]
        self._function = tf.function(self._forward, input_signature=signature, jit_compile=False)

    def _forward(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        self.trace_count += 1  # Python side effect: runs only while tracing.
        probabilities, features = self._model(images, training=False)
        return probabilities, features

    def _run_fixed(
        self, chunk: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        import tensorflow as tf

        with tf.device(self.device):
            probabilities, features = self._function(tf.constant(chunk))
        return probabilities.numpy(), features.numpy()

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch` (see `Engine.run`); TensorFlow failures raise InferenceError."""
        import tensorflow as tf

        with self._lock:
            try:
                return _run_in_fixed_batches(batch, self.batch_size, self._run_fixed)
            except tf.errors.OpError as error:
                raise InferenceError(f"tensorflow inference failed: {error.message}") from error


def _tensorflow_device(device: DeviceName) -> str:
    """Resolve `device` to a TensorFlow device name, enabling GPU memory growth on the way."""
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; expected one of {DEVICES}")
    gpus = gpu_devices()
    if device == "gpu" and not gpus:
        raise ModelError("device = 'gpu' but TensorFlow sees no GPU")
    if device == "cpu" or not gpus:
        return "/CPU:0"
    import tensorflow as tf

    for gpu in gpus:
        # RuntimeError: already initialised by an earlier engine; memory growth is set by then.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "/GPU:0"


class LiteRTEngine:
    """A TFLite file run by the LiteRT interpreter with XNNPACK on `threads` cores (0 = all).

    The interpreter's input is resized once to [batch_size, 224, 224, 3]. Build one from a
    Keras model with `LiteRTEngine.from_model`, which converts it (or reuses the cached file).
    """

    name = "litert"

    def __init__(self, model_path: Path, *, batch_size: int = 16, threads: int = 0):
        from ai_edge_litert.interpreter import Interpreter

        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.threads = threads if threads > 0 else cpu_count()
        self.model_path = Path(model_path)
        self._lock = threading.Lock()
        try:
            with quiet_native_stderr():
                self._interpreter = Interpreter(
                    model_path=str(self.model_path), num_threads=self.threads
                )
                input_detail = self._interpreter.get_input_details()[0]
                self._interpreter.resize_tensor_input(
                    input_detail["index"], [batch_size, INPUT_SIZE, INPUT_SIZE, 3], strict=False
                )
                self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"{self.model_path}: LiteRT could not load it: {error}") from error
        self._input_index = input_detail["index"]
        outputs = {
            int(detail["shape"][-1]): detail["index"]
            for detail in self._interpreter.get_output_details()
        }
        if set(outputs) != {2, FEATURE_SIZE}:
            raise ModelError(f"{self.model_path}: unexpected outputs {sorted(outputs)}")
        self._probabilities_index = outputs[2]
        self._features_index = outputs[FEATURE_SIZE]

    @classmethod
    def from_model(
        cls,
        build_model: ModelFactory,
        *,
        cache_dir: Path,
        model_key: str | None = None,
        quantization: Quantization = "none",
        batch_size: int = 16,
        threads: int = 0,
    ) -> LiteRTEngine:
        """The engine of a Keras model, converted once and cached (see `cached_tflite`)."""
        path = cached_tflite(build_model, Path(cache_dir), quantization, model_key=model_key)
        return cls(path, batch_size=batch_size, threads=threads)

    def _run_fixed(
        self, chunk: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        self._interpreter.set_tensor(self._input_index, chunk)
        self._interpreter.invoke()
        # Copies: the interpreter reuses its output buffers on the next invoke.
        return (
            np.array(self._interpreter.get_tensor(self._probabilities_index)),
            np.array(self._interpreter.get_tensor(self._features_index)),
        )

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch` (see `Engine.run`); interpreter failures raise InferenceError."""
        with self._lock:
            try:
                return _run_in_fixed_batches(batch, self.batch_size, self._run_fixed)
            except (RuntimeError, ValueError) as error:
                raise InferenceError(f"litert inference failed: {error}") from error


def model_fingerprint(model: keras.Model) -> str:
    """A short digest of a Keras model's name and weights, for keying converted files."""
    import keras

    digest = hashlib.sha256(model.name.encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return f"{model.name}-{digest.hexdigest()[:16]}"


def convert_to_tflite(
    model: keras.Model, quantization: Quantization = "none", *, image_size: int = INPUT_SIZE,
) -> bytes:
    """Convert a one-input Keras model to a TFLite flatbuffer (batch dimension left dynamic).

    The one TFLite conversion of the project: the serving cache and `models export-tflite`
    both call it. The model is exported as a SavedModel with an inference-mode endpoint first
    (what `TFLiteConverter.from_keras_model` does, minus its summary printed on stdout, which
    would corrupt `--json` output); converting a `tf.function` that closes over Keras 3
    variables instead yields a file without weights.
    """
    import keras
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantization!r}; expected {QUANTIZATIONS}")
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="input")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False), signature)
    with tempfile.TemporaryDirectory(prefix="megane-tflite-") as saved_model_dir:
        try:
            archive.write_out(saved_model_dir, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
            if quantization == "fp16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif quantization == "dynamic_range":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            return bytes(converter.convert())
        except Exception as error:  # the exporter and converter raise assorted internal types
            raise ModelError(f"TFLite conversion of {model.name} failed: {error}") from error


def cached_tflite(
    build_model: ModelFactory,
    cache_dir: Path,
    quantization: Quantization = "none",
    *,
    model_key: str | None = None,
) -> Path:
    """The .tflite file of a model in `cache_dir`, converting and writing it if absent.

    With `model_key` (a name that changes whenever the weights or architecture do, e.g.
    `opennsfw.MODEL_KEY`) a cached file is found without building the model at all; without
    it the model is built and its weights hashed. Written under a temporary name and renamed,
    so a crash never leaves a truncated file that a later run would trust.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantization!r}; expected {QUANTIZATIONS}")
    model = None
    if model_key is None:
        model = build_model()
        model_key = model_fingerprint(model)
    path = tflite_path(cache_dir, model_key, quantization)
    if path.is_file():
        return path
    flatbuffer = convert_to_tflite(model if model is not None else build_model(), quantization)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, flatbuffer, CACHE_FILE_MODE)
    except OSError as error:
        raise ModelError(f"{cache_dir}: cannot write the TFLite cache: {error}") from error
    return path


def resolve_engine(engine: EngineName, device: DeviceName) -> Literal["tensorflow", "litert"]:
    """`auto` is TensorFlow when a GPU is visible (and not refused), LiteRT otherwise."""
    if engine not in ENGINES:
        raise ModelError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; expected one of {DEVICES}")
    if engine != "auto":
        return engine
    return "tensorflow" if device != "cpu" and gpu_devices() else "litert"


def tflite_path(cache_dir: Path, model_key: str, quantization: Quantization) -> Path:
    """Where `cached_tflite` keeps the converted file of a model and quantization."""
    return Path(cache_dir) / f"{model_key}-{quantization}.tflite"


def tflite_quantizations(
    engine: EngineName, device: DeviceName, quantization: Quantization,
    exact_band: tuple[float, float] | None,
) -> tuple[Quantization, ...]:
    """The converted files (by quantization) `make_engine` loads for this configuration.

    None for TensorFlow; on LiteRT the quantization asked for, and float32 as well for int8
    with an exact band. A quantized model runs on LiteRT, also when `engine` is "auto" on a
    GPU host. Raises ModelError for a configuration that cannot run.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    chosen = resolve_engine(engine if quantization == "none" or engine != "auto" else "litert",
                            device)
    if chosen == "tensorflow":
        if quantization != "none":
            raise ModelError("quantization applies to the litert engine only")
        return ()
    if device == "gpu":
        raise ModelError("engine 'litert' runs on the CPU; use engine 'tensorflow' for the GPU")
    if quantization == "dynamic_range" and exact_band is not None:
        return (quantization, "none")
    return (quantization,)


def make_engine(
    build_model: ModelFactory,
    *,
    engine: EngineName = "auto",
    device: DeviceName = "auto",
    batch_size: int = 16,
    threads: int = 0,
    cache_dir: Path,
    model_key: str | None = None,
    quantization: Quantization = "none",
    exact_band: tuple[float, float] | None = None,
) -> Engine:
    """Build the engine the configuration asks for (see `resolve_engine`).

    `build_model` is only called when needed: always for TensorFlow, and for LiteRT only when
    the converted file is not cached yet under `model_key`. Which engine and files: see
    `tflite_quantizations`. With `dynamic_range` (int8) and an `exact_band`, the result is an
    `ExactBandEngine` over both the int8 and the float32 file.
    """
    files = tflite_quantizations(engine, device, quantization, exact_band)
    if not files:
        return TensorFlowEngine(build_model(), batch_size=batch_size, device=device)
    fast = LiteRTEngine.from_model(
        build_model,
        cache_dir=cache_dir,
        model_key=model_key,
        quantization=quantization,
        batch_size=batch_size,
        threads=threads,
    )
    if exact_band is None or len(files) == 1:
        return fast
    from classifier.exact_band import ExactBandEngine

    exact = LiteRTEngine.from_model(
        build_model, cache_dir=cache_dir, model_key=model_key, quantization="none",
        batch_size=min(EXACT_BATCH_SIZE, batch_size), threads=threads)
    return ExactBandEngine(fast, exact, exact_band)
