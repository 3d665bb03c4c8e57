"""Every layer kind exported with `model.export(format="onnx")`: onnxruntime on one exported file
== kcompile's compiled `predict` at batch sizes 1, 7 and 64."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_testing import export_and_compare, op_types, randomize_weights

import kcompile as keras
from kcompile import activations, layers


@pytest.fixture(autouse=True)
def _private_cache(module_cache_dir):
    yield


def _functional(input_shape, build, name="inp"):
    inp = keras.Input(input_shape, name=name)
    out = build(inp)
    return keras.Model(inp, out)


def _check(model, tmp_path, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    randomize_weights(model, rng)
    return export_and_compare(model, tmp_path / "model.onnx", rng, **kwargs)


DENSE_ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "exponential"]


def test_dense_with_every_activation(tmp_path):
    """One Dense head per activation (outputs in DENSE_ACTIVATIONS order), plus a rank-3 input
    (Dense on the last axis: MatMul rather than Gemm)."""

    def build(x):
        heads = [layers.Dense(6, activation=a, name=f"dense_{a or 'linear'}")(x)
                 for a in DENSE_ACTIVATIONS]
        seq = layers.Reshape((2, 5))(x)
        return [*heads, layers.Dense(3, activation="relu", use_bias=False)(seq)]

    proto = _check(_functional((10,), build), tmp_path)
    assert [o.name for o in proto.graph.output] == [f"output_{k}" for k in range(9)]


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, strides=2, padding="same"),  # odd input: asymmetric 'same' padding
    dict(kernel_size=(3, 2), strides=(2, 1), padding="valid", activation="relu"),
    dict(kernel_size=3, dilation_rate=2, padding="same", activation="tanh"),
    dict(kernel_size=(2, 3), dilation_rate=(1, 2), padding="valid", use_bias=False),
    dict(kernel_size=1, strides=3, padding="same", activation="sigmoid"),
], ids=["3x3", "s2-same", "3x2-s21-relu", "dil2-same", "dil12-nobias", "1x1-s3-same"])
def test_conv2d(tmp_path, kwargs):
    model = _functional((9, 11, 3), lambda x: layers.Conv2D(5, **kwargs)(x))
    proto = _check(model, tmp_path)
    ops = op_types(proto)
    assert ops.count("Conv") == 1 and ops.count("Transpose") == 2  # NHWC in, NHWC out


def test_conv_stack_stays_nchw(tmp_path):
    """conv-relu-conv-pool-conv-GAP: one transpose at the input, none inside or at the end."""
    model = _functional((12, 12, 2), lambda x: layers.GlobalAveragePooling2D()(
        layers.Conv2D(4, 3, padding="same")(layers.MaxPooling2D(2)(
            layers.Conv2D(3, 3, activation="relu")(layers.Conv2D(3, 3, activation="gelu")(x))))))
    proto = _check(model, tmp_path)
    assert op_types(proto).count("Transpose") == 1


@pytest.mark.parametrize("layer", [
    lambda: layers.MaxPooling2D(2),
    lambda: layers.MaxPooling2D(3, strides=2, padding="same"),
    lambda: layers.MaxPooling2D((2, 3), strides=(1, 2)),
    lambda: layers.AveragePooling2D(2, padding="same"),  # odd size: the edge window is partial
    lambda: layers.AveragePooling2D(3, strides=1, padding="valid"),
    lambda: layers.AveragePooling2D((3, 2), strides=(2, 3), padding="same"),
], ids=["max2", "max3-s2-same", "max23-s12", "avg2-same", "avg3-s1", "avg32-s23-same"])
def test_pooling(tmp_path, layer):
    _check(_functional((7, 9, 3), lambda x: layer()(x)), tmp_path)


def test_global_pooling(tmp_path):
    def build(x):
        return [layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x),
                layers.GlobalAveragePooling2D(keepdims=True)(x),
                layers.GlobalMaxPooling2D(keepdims=True)(layers.Conv2D(2, 1)(x))]

    _check(_functional((5, 6, 3), build), tmp_path)


def test_batch_normalization(tmp_path):
    """After a conv (NHWC, as ONNX BatchNormalization in NCHW), after a Dense (rank 2: channels on
    axis 1) and on a rank-3 tensor (written as arithmetic)."""

    def build(x):
        conv = layers.BatchNormalization()(layers.Conv2D(4, 3)(x))
        flat = layers.Flatten()(x)
        dense = layers.BatchNormalization(epsilon=1e-2)(layers.Dense(5)(flat))
        seq = layers.BatchNormalization()(layers.Reshape((6, 10))(flat))
        return [conv, dense, seq]

    proto = _check(_functional((5, 4, 3), build), tmp_path)
    assert op_types(proto).count("BatchNormalization") == 2


def test_flatten_and_reshape(tmp_path):
    """Flatten after a conv reads NHWC order; Reshape keeps the batch dim dynamic."""

    def build(x):
        conv = layers.Conv2D(3, 2, activation="relu")(x)
        flat = layers.Flatten()(conv)
        back = layers.Reshape((-1, 3))(flat)
        return [layers.Dense(4)(flat), layers.Reshape((2, 5, 6))(x), back]

    _check(_functional((5, 4, 3), build), tmp_path)


def test_add_and_concatenate(tmp_path):
    """Merges of conv branches (in NCHW) and of dense branches; concat on several axes."""

    def build(x):
        a = layers.Conv2D(4, 3, padding="same")(x)
        b = layers.Conv2D(4, 1, activation="relu")(x)
        summed = layers.Add()([a, b, layers.Conv2D(4, 3, padding="same", dilation_rate=2)(x)])
        joined = layers.Concatenate()([a, b, x])
        rows = layers.Concatenate(axis=1)([a, b])
        flat = layers.Flatten()(x)
        dense = layers.Add()([layers.Dense(3)(flat), layers.Dense(3, activation="tanh")(flat)])
        both = layers.Concatenate()([dense, layers.Dense(2)(flat)])
        residual = layers.Add()([layers.Conv2D(3, 1)(x), x])  # a conv twin meets a plain input
        return [summed, joined, rows, both, residual]

    _check(_functional((6, 5, 3), build), tmp_path)


@pytest.mark.parametrize("activation", [
    "relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "exponential", "linear",
    lambda x: activations.gelu(x, approximate=True),
    lambda x: activations.softmax(x, axis=1),
], ids=["relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "exponential", "linear",
        "gelu-tanh", "softmax-axis1"])
def test_activation_layer(tmp_path, activation):
    """On a rank-2 and a rank-4 (conv output: NCHW twin) input."""

    def build(x):
        return [layers.Activation(activation)(layers.Flatten()(x)),
                layers.Activation(activation)(layers.Conv2D(3, 1)(x))]

    _check(_functional((3, 4, 2), build), tmp_path)


def test_dropout_is_dropped(tmp_path):
    model = keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="relu"),
                              layers.Dropout(0.5), layers.Dense(4), layers.Dropout(0.2)])
    proto = _check(model, tmp_path)
    assert not {"Dropout", "RandomUniform", "RandomUniformLike"} & set(op_types(proto))
    assert [i.name for i in proto.graph.input] == [model.input_signature()[0][0].name]
