"""Classifier: image decoding and preprocessing, TensorFlow models, batched runtime, training.

Public names are re-exported lazily (PEP 562): `import classifier.decode` or
`from classifier import ModelError` stays cheap, and TensorFlow is imported only when a name
that needs it (the model, the engines, the registry) is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from classifier.base import FEATURE_SIZE, INPUT_SIZE, Classifier, ClassifyResult
from classifier.errors import ClassifierError, DecodeError, InferenceError, ModelError

# Eager (Pillow and NumPy only), and it must be: the submodule `classifier.preprocess` would
# otherwise shadow the function of the same name.
from classifier.preprocess import preprocess, preprocess_bytes, preprocess_file

if TYPE_CHECKING:
    from classifier.engines import (
        Engine,
        EngineOutput,
        LiteRTEngine,
        TensorFlowEngine,
        convert_to_tflite,
        make_engine,
        resolve_engine,
    )
    from classifier.models import (
        BUILTIN_VERSION,
        NSFW_TAG,
        Heads,
        LoadedClassifier,
        ModelInfo,
        list_models,
        load_classifier,
        read_model_version,
        shared_open_nsfw_model,
        write_model_version,
    )
    from classifier.opennsfw import load_onnx_weights, make_model, make_pretrained_model

_LAZY_EXPORTS = {
    "classifier.engines": (
        "Engine",
        "EngineOutput",
        "LiteRTEngine",
        "TensorFlowEngine",
        "convert_to_tflite",
        "make_engine",
        "resolve_engine",
    ),
    "classifier.models": (
        "BUILTIN_VERSION",
        "NSFW_TAG",
        "Heads",
        "LoadedClassifier",
        "ModelInfo",
        "list_models",
        "load_classifier",
        "read_model_version",
        "shared_open_nsfw_model",
        "write_model_version",
    ),
    "classifier.opennsfw": ("load_onnx_weights", "make_model", "make_pretrained_model"),
}
_LAZY_MODULE_OF = {name: module for module, names in _LAZY_EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'classifier' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FEATURE_SIZE",
    "INPUT_SIZE",
    "Classifier",
    "ClassifierError",
    "ClassifyResult",
    "DecodeError",
    "InferenceError",
    "ModelError",
    "preprocess",
    "preprocess_bytes",
    "preprocess_file",
    *_LAZY_MODULE_OF,
]
