"""Every layer against real Keras 3 (JAX backend) with identical weights: outputs at batch 1 and
batch > 1, parameter counts, weight shapes and order. kcompile runs compiled (the default) and eager
(jit_compile=False) -- both must match Keras."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile
from kcompile import layers as kl

RNG = np.random.default_rng(42)


def _pair(make, input_shape, extra_weights=None):
    """(kcompile model, keras model) of Input -> layer, with kcompile's weights copied to Keras."""
    keras = keras_module()
    ours = kcompile.Sequential([kcompile.Input(input_shape), make(kl)])
    theirs = keras.Sequential([keras.Input(input_shape), make(keras.layers)])
    if extra_weights is not None:
        ours.set_weights(extra_weights(ours.get_weights()))
    copy_weights(ours, theirs)
    return ours, theirs


def _check(ours, theirs, input_shape, batches=(1, 5)):
    assert ours.count_params() == theirs.count_params()
    assert [w.shape for w in ours.get_weights()] == [tuple(w.shape) for w in theirs.get_weights()]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    for batch in batches:
        x = RNG.standard_normal((batch, *input_shape)).astype(np.float32)
        want = np.asarray(theirs.predict(x, verbose=0))
        assert_close(ours.predict(x), want)
        assert_close(ours(x), want)
    ours.compile(jit_compile=False)
    assert_close(ours.predict(x), want)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softmax", "tanh", "gelu", "linear", None])
def test_dense_activations(activation):
    ours, theirs = _pair(lambda L: L.Dense(7, activation=activation), (11,))
    _check(ours, theirs, (11,))


def test_dense_without_bias_on_rank3_input():
    ours, theirs = _pair(lambda L: L.Dense(4, use_bias=False), (3, 6))
    _check(ours, theirs, (3, 6))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softmax", "tanh", "gelu", "linear"])
def test_activation_layer(activation):
    ours, theirs = _pair(lambda L: L.Activation(activation), (4, 9))
    _check(ours, theirs, (4, 9))


def test_activation_functions_by_object():
    keras = keras_module()
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    for name in ("relu", "sigmoid", "softmax", "tanh", "gelu", "linear"):
        ours = getattr(kcompile.activations, name)(x)
        assert_close(ours, np.asarray(getattr(keras.activations, name)(x)))
    ours, theirs = _pair(lambda L: L.Dense(3, activation=(kcompile.activations.tanh if L is kl else
                                                         keras.activations.tanh)), (5,))
    _check(ours, theirs, (5,))


def test_dropout_is_identity_at_inference():
    ours, theirs = _pair(lambda L: L.Dropout(0.5), (6,))
    _check(ours, theirs, (6,))


@pytest.mark.parametrize("target", [(12,), (3, 4), (2, -1)])
def test_flatten_and_reshape(target):
    ours, theirs = _pair(lambda L: L.Reshape(target), (2, 3, 2))
    _check(ours, theirs, (2, 3, 2))
    ours, theirs = _pair(lambda L: L.Flatten(), (2, 3, 2))
    _check(ours, theirs, (2, 3, 2))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("channels", [(3, 17), (17, 3)])
def test_conv2d(padding, strides, channels):
    cin, cout = channels
    make = lambda L: L.Conv2D(cout, (3, 2), strides=strides, padding=padding, activation="relu")  # noqa: E731
    ours, theirs = _pair(make, (9, 8, cin))
    _check(ours, theirs, (9, 8, cin))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_dilated_and_winograd_shapes(padding):
    ours, theirs = _pair(lambda L: L.Conv2D(20, 3, dilation_rate=2, padding=padding), (11, 10, 4))
    _check(ours, theirs, (11, 10, 4))
    ours, theirs = _pair(lambda L: L.Conv2D(24, 3, padding=padding, use_bias=False), (7, 9, 17))
    _check(ours, theirs, (7, 9, 17))


@pytest.mark.parametrize("cls", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("pool,strides", [(2, None), (3, 1), (3, 2), ((2, 3), (1, 2))])
def test_pooling(cls, padding, pool, strides):
    ours, theirs = _pair(lambda L: getattr(L, cls)(pool, strides=strides, padding=padding), (7, 9, 5))
    _check(ours, theirs, (7, 9, 5))


@pytest.mark.parametrize("cls", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(cls, keepdims):
    ours, theirs = _pair(lambda L: getattr(L, cls)(keepdims=keepdims), (5, 6, 17))
    _check(ours, theirs, (5, 6, 17))


def _bn_stats(weights):
    c = weights[0].shape[0]
    rng = np.random.default_rng(7)
    return [rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
            rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2.0, c).astype(np.float32)]


@pytest.mark.parametrize("input_shape", [(6,), (4, 5, 3)])
def test_batch_normalization_inference(input_shape):
    ours, theirs = _pair(lambda L: L.BatchNormalization(), input_shape, _bn_stats)
    _check(ours, theirs, input_shape)
    assert [w.trainable for w in ours.layers[0].weights] == [True, True, False, False]


def test_merge_layers_functional():
    keras = keras_module()

    def build(K):
        a, b = K.Input((5,)), K.Input((5,))
        added = K.layers.Add()([a, b])
        cat = K.layers.Concatenate()([a, added])
        cat0 = K.layers.Concatenate(axis=1)([K.layers.Reshape((1, 5))(a), K.layers.Reshape((1, 5))(b)])
        return K.Model([a, b], [added, cat, cat0])

    ours, theirs = build(kcompile), build(keras)
    for batch in (1, 4):
        xs = [RNG.standard_normal((batch, 5)).astype(np.float32) for _ in range(2)]
        for o, t in zip(ours.predict(xs), theirs.predict(xs, verbose=0), strict=True):
            assert_close(o, np.asarray(t))
