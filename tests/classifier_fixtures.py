"""Shared fixtures of the classifier tests: the real model, the ONNX reference, real photos.

The expensive objects (the Keras network, the onnxruntime session, the TFLite conversion) are
built once per test process behind `functools.cache`, whichever test module asks first.
Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from classifier.base import ClassifyResult

# Real photos and pictures bundled with scikit-image (no download): people, animals, food,
# objects, a large 1411 px image, grayscale and RGBA ones.
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "logo",
    "colorwheel",
)
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ReferenceOutput:
    """onnxruntime's softmax [N, 2] and pooled features [N, 1024] for a batch."""

    probabilities: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]


class OnnxReference:
    """The bundled open-nsfw.onnx on onnxruntime, with the pooled features exposed as well."""

    def __init__(self) -> None:
        import onnx
        import onnxruntime

        from classifier.opennsfw import bundled_onnx_path

        with bundled_onnx_path() as path:
            proto = onnx.load(str(path))
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info("Reshape:0", onnx.TensorProto.FLOAT, [None, 1024])
        )
        self._session = onnxruntime.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )

    def run(self, batch: npt.NDArray[np.float32]) -> ReferenceOutput:
        probabilities, features = self._session.run(
            ["outputs", "Reshape:0"], {"input:0": batch}
        )
        return ReferenceOutput(probabilities, features)


@functools.cache
def onnx_reference_instance() -> OnnxReference:
    return OnnxReference()


@functools.cache
def photo_images() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()) for name in PHOTO_NAMES}


@functools.cache
def photo_batch_array() -> npt.NDArray[np.float32]:
    from classifier.preprocess import preprocess

    return np.stack([preprocess(image) for image in photo_images().values()])


@functools.cache
def random_batch_array() -> npt.NDArray[np.float32]:
    # The range of mean-subtracted pixels.
    generator = np.random.default_rng(20170930)
    return generator.uniform(-123, 151, (6, 224, 224, 3)).astype(np.float32)


@functools.cache
def cache_root_directory() -> Path:
    """One megane cache per test process ($MEGANE_CACHE_DIR of the tests and their children)."""
    # This module is imported under two names (tests.classifier_fixtures, classifier_fixtures);
    # the environment makes both copies agree on one folder.
    if os.environ.get("MEGANE_TEST_CACHE_ROOT"):
        return Path(os.environ["MEGANE_TEST_CACHE_ROOT"])
    directory = Path(tempfile.mkdtemp(prefix="megane-test-cache-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["MEGANE_TEST_CACHE_ROOT"] = str(directory)
    return directory


@functools.cache
def tflite_cache_directory() -> Path:
    """One TFLite cache per test process, so the model is converted once (~8 s)."""
    from classifier.cache import CACHE_ENV, tflite_cache_dir

    return tflite_cache_dir({CACHE_ENV: str(cache_root_directory())})


@pytest.fixture(scope="session")
def pretrained_model():  # type: ignore[no-untyped-def]
    """The process-wide pre-trained open_nsfw Keras model."""
    from classifier.models import shared_open_nsfw_model

    return shared_open_nsfw_model()


@pytest.fixture(scope="session")
def onnx_reference() -> OnnxReference:
    """onnxruntime on the bundled ONNX file."""
    return onnx_reference_instance()


@pytest.fixture(scope="session")
def photo_batch() -> npt.NDArray[np.float32]:
    """The real photos, through our preprocessing: float32 [10, 224, 224, 3]."""
    return photo_batch_array()


@pytest.fixture(scope="session")
def random_batch() -> npt.NDArray[np.float32]:
    """Random tensors in the range of preprocessed pixels: float32 [6, 224, 224, 3]."""
    return random_batch_array()


@pytest.fixture(scope="session")
def tflite_cache_dir() -> Path:
    """The shared TFLite cache directory of this test process."""
    return tflite_cache_directory()


class RecordingClassifier:
    """The real classifier, recording the size of every batch it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.version = inner.version
        self.tags = inner.tags
        self.batch_size = inner.batch_size
        self.batches: list[int] = []
        self._lock = threading.Lock()

    @property
    def images(self) -> int:
        """How many images it has been asked to score."""
        return sum(self.batches)

    def classify(self, batch: npt.NDArray[Any]) -> ClassifyResult:
        with self._lock:
            self.batches.append(len(batch))
        result: ClassifyResult = self.inner.classify(batch)
        return result
