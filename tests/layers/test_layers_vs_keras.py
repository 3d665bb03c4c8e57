"""Each kcompile layer against the same layer of real Keras 3 (JAX backend), with identical weights.

Every case builds `Input -> layer` in both libraries with the same layer name, fills kcompile's weights
with random values (positive for variances), copies them to Keras, and then compares:
- structure: count_params, weight shapes, names, trainability, path tails, symbolic output shape and
  `compute_output_shape`;
- numbers, at batch 1 and batch 5: `predict` (compiled), `model(x)` (compiled fast path), the layer
  called eagerly on a NumPy array, and the eager executor (`jit_compile=False`), all against Keras's
  `model(x)` (Keras's own `predict` is checked against it in test_models_vs_keras.py; calling it here
  would add a JAX compilation per case).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile

# A model that falls back to the eager executor warns; here it must compile.
pytestmark = pytest.mark.filterwarnings("error:Model .* runs eagerly:RuntimeWarning")

BATCHES = (1, 5)
NAME = "probe"
# Weights are overwritten by _randomize; a constant initializer spares Keras one JAX compilation of
# its random initializer per new kernel shape (about 0.5 s each).
ZERO = {"kernel_initializer": "zeros"}


def _randomize(model, seed: int = 0) -> None:
    """Random weights everywhere (zero biases / unit stats would hide bugs); variances stay > 0."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        if w.name == "moving_variance":
            values.append(rng.uniform(0.3, 2.5, w.shape).astype(np.float32))
        else:
            values.append(rng.standard_normal(w.shape).astype(np.float32))
    model.set_weights(values)
    for w, v in zip(model.weights, values, strict=True):
        np.testing.assert_array_equal(w.numpy(), v)


def _path_tail(path: str) -> str:
    """'layer/weight': Keras prefixes weights built inside a Sequential with the model's name."""
    return "/".join(path.split("/")[-2:])


def _pair(make, input_shape):
    """(kcompile model, keras model) of Input(input_shape) -> make(layers_module)."""
    keras = keras_module()
    ours = kcompile.Sequential([kcompile.Input(input_shape), make(kcompile.layers)])
    theirs = keras.Sequential([keras.Input(input_shape), make(keras.layers)])
    _randomize(ours)
    copy_weights(ours, theirs)
    return ours, theirs


def _check_structure(ours, theirs) -> None:
    assert ours.count_params() == theirs.count_params()
    assert ours.layers[-1].count_params() == theirs.layers[-1].count_params()
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert [_path_tail(w.path) for w in ours.weights] == [_path_tail(w.path) for w in theirs.weights]
    assert [w.trainable for w in ours.weights] == [w.trainable for w in theirs.weights]
    assert len(ours.trainable_weights) == len(theirs.trainable_weights)
    assert len(ours.non_trainable_weights) == len(theirs.non_trainable_weights)
    assert [tuple(t.shape) for t in ours.outputs] == [tuple(t.shape) for t in theirs.outputs]
    assert [type(lyr).__name__ for lyr in ours.layers] == [type(lyr).__name__ for lyr in theirs.layers]
    assert ours.layers[-1].name == theirs.layers[-1].name == NAME


def _check(ours, theirs, input_shape, seed: int = 1) -> None:
    _check_structure(ours, theirs)
    layer, their_layer = ours.layers[-1], theirs.layers[-1]
    batch_shape = (None, *input_shape)
    assert tuple(layer.compute_output_shape(batch_shape)) == \
        tuple(their_layer.compute_output_shape(batch_shape))
    rng = np.random.default_rng(seed)
    wants = {}
    for batch in BATCHES:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        want = np.asarray(theirs(x))
        wants[batch] = (x, want)
        got = ours.predict(x)
        assert got.shape == want.shape == (batch, *theirs.outputs[0].shape[1:])
        assert_close(got, want)
        assert_close(ours(x), want)
        assert_close(layer(x), want)  # eager: the layer's call() on NumPy, outside any model
    ours.compile(jit_compile=False)
    for x, want in wants.values():
        assert_close(ours.predict(x), want)
        assert_close(ours(x), want)


# --- core layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softmax", "tanh", "gelu", "linear", None])
def test_dense_activations(activation):
    ours, theirs = _pair(lambda L: L.Dense(7, activation=activation, name=NAME, **ZERO), (11,))
    _check(ours, theirs, (11,))


@pytest.mark.parametrize("activation", ["relu", "softmax"])
@pytest.mark.parametrize("input_shape", [(6,), (3, 6)])
def test_dense_without_bias(activation, input_shape):
    ours, theirs = _pair(lambda L: L.Dense(5, activation=activation, use_bias=False, name=NAME, **ZERO),
                         input_shape)
    assert [w.name for w in ours.weights] == ["kernel"]
    _check(ours, theirs, input_shape)


def test_dense_on_rank4_input_acts_on_last_axis():
    ours, theirs = _pair(lambda L: L.Dense(3, activation="tanh", name=NAME, **ZERO), (2, 4, 9))
    _check(ours, theirs, (2, 4, 9))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softmax", "tanh", "gelu", "linear"])
def test_activation_layer(activation):
    ours, theirs = _pair(lambda L: L.Activation(activation, name=NAME), (4, 9))
    assert ours.count_params() == 0
    _check(ours, theirs, (4, 9))


def test_activation_layer_with_callable():
    keras = keras_module()
    ours = kcompile.Sequential([kcompile.Input((8,)), kcompile.layers.Activation(kcompile.activations.gelu)])
    theirs = keras.Sequential([keras.Input((8,)), keras.layers.Activation(keras.activations.gelu)])
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(3, 8)
    assert_close(ours.predict(x), np.asarray(theirs(x)))


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_dropout_is_identity_at_inference(rate):
    ours, theirs = _pair(lambda L: L.Dropout(rate, name=NAME), (6, 3))
    _check(ours, theirs, (6, 3))
    x = np.random.default_rng(3).standard_normal((4, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(ours.predict(x), x)
    np.testing.assert_array_equal(ours(x, training=False), x)


def test_dropout_in_training_zeroes_and_rescales():
    ours = kcompile.Sequential([kcompile.Input((400,)), kcompile.layers.Dropout(0.5, seed=1)])
    x = np.random.default_rng(4).uniform(1.0, 2.0, (5, 400)).astype(np.float32)
    y = np.asarray(ours(x, training=True))
    dropped = y == 0
    assert 0.35 < dropped.mean() < 0.65
    assert_close(y[~dropped], x[~dropped] / 0.5)


@pytest.mark.parametrize("input_shape", [(5,), (2, 3, 2), (4, 1, 3, 2)])
def test_flatten(input_shape):
    ours, theirs = _pair(lambda L: L.Flatten(name=NAME), input_shape)
    _check(ours, theirs, input_shape)


@pytest.mark.parametrize("target", [(12,), (3, 4), (2, -1), (-1, 3), (1, 12, 1)])
def test_reshape(target):
    ours, theirs = _pair(lambda L: L.Reshape(target, name=NAME), (2, 3, 2))
    _check(ours, theirs, (2, 3, 2))


# --- merge layers (functional, several inputs) ----------------------------------------------------
def _merge_pair(make, shapes):
    keras = keras_module()
    models = []
    for K in (kcompile, keras):
        inputs = [K.Input(s) for s in shapes]
        models.append(K.Model(inputs, make(K.layers)(inputs)))
    return models


def _check_merge(ours, theirs, shapes):
    _check_structure(ours, theirs)
    rng = np.random.default_rng(5)
    for batch in BATCHES:
        xs = [rng.standard_normal((batch, *s)).astype(np.float32) for s in shapes]
        want = np.asarray(theirs(xs))
        assert_close(ours.predict(xs), want)
        assert_close(ours(xs), want)
        assert_close(ours.layers[-1](xs), want)
        assert ours.predict(xs).shape == want.shape


@pytest.mark.parametrize("shapes", [[(4,), (4,)], [(3, 4), (3, 4), (3, 4)], [(3, 4), (1, 4)]])
def test_add(shapes):
    ours, theirs = _merge_pair(lambda L: L.Add(name=NAME), shapes)
    _check_merge(ours, theirs, shapes)


@pytest.mark.parametrize("axis,shapes", [
    (-1, [(3, 4), (3, 2)]),
    (-1, [(5,), (1,), (7,)]),
    (1, [(3, 4), (5, 4)]),
    (-2, [(2, 6), (1, 6)]),
    (2, [(2, 1, 3), (2, 4, 3)]),
])
def test_concatenate(axis, shapes):
    ours, theirs = _merge_pair(lambda L: L.Concatenate(axis=axis, name=NAME), shapes)
    _check_merge(ours, theirs, shapes)


# --- convolution ----------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("cin,cout,kernel", [(3, 17, (3, 3)), (17, 3, (3, 2)), (1, 8, (2, 5))])
def test_conv2d(padding, strides, cin, cout, kernel):
    make = lambda L: L.Conv2D(cout, kernel, strides=strides, padding=padding, name=NAME, **ZERO)
    ours, theirs = _pair(make, (9, 8, cin))
    _check(ours, theirs, (9, 8, cin))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel", [3, (2, 3)])
def test_conv2d_dilated(padding, kernel):
    ours, theirs = _pair(lambda L: L.Conv2D(5, kernel, dilation_rate=2, padding=padding, name=NAME, **ZERO),
                         (11, 10, 3))
    _check(ours, theirs, (11, 10, 3))


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 1, "activation": "relu"},
    {"kernel_size": (1, 5), "strides": (2, 1), "padding": "same"},
    {"kernel_size": (4, 1), "strides": (1, 3), "padding": "valid", "use_bias": False},
    {"kernel_size": 3, "dilation_rate": (1, 2), "padding": "same", "activation": "sigmoid"},
    {"kernel_size": 5, "strides": 2, "padding": "same", "activation": "tanh"},
    {"kernel_size": (2, 4), "strides": 3, "padding": "same", "activation": "softmax"},
])
def test_conv2d_variants(kwargs):
    ours, theirs = _pair(lambda L: L.Conv2D(6, name=NAME, **ZERO, **kwargs), (7, 10, 4))
    _check(ours, theirs, (7, 10, 4))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_kernel_as_large_as_input(padding):
    ours, theirs = _pair(lambda L: L.Conv2D(4, (3, 5), strides=2, padding=padding, name=NAME, **ZERO),
                         (3, 5, 2))
    _check(ours, theirs, (3, 5, 2))


def test_conv2d_kernel_is_hwio():
    ours, _ = _pair(lambda L: L.Conv2D(17, (3, 2), name=NAME, **ZERO), (6, 6, 3))
    assert [w.shape for w in ours.weights] == [(3, 2, 3, 17), (17,)]


# --- pooling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("pool,strides", [(2, None), (2, 1), (3, None), (3, 1), (3, 2), ((2, 3), (1, 2))])
def test_pooling(cls, padding, pool, strides):
    ours, theirs = _pair(lambda L: getattr(L, cls)(pool, strides=strides, padding=padding, name=NAME),
                         (7, 9, 5))
    _check(ours, theirs, (7, 9, 5))


@pytest.mark.parametrize("cls", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("pool,strides,padding,input_shape", [
    (3, None, "same", (2, 2, 3)),   # window larger than the input
    (3, 1, "same", (2, 3, 3)),      # every window clipped by the border
    (2, 3, "valid", (7, 8, 3)),     # stride larger than the window
    ((2, 3), (3, 1), "same", (5, 4, 3)),
])
def test_pooling_edges(cls, pool, strides, padding, input_shape):
    ours, theirs = _pair(lambda L: getattr(L, cls)(pool, strides=strides, padding=padding, name=NAME),
                         input_shape)
    _check(ours, theirs, input_shape)


@pytest.mark.parametrize("alias,cls", [("MaxPool2D", "MaxPooling2D"), ("AvgPool2D", "AveragePooling2D"),
                                       ("GlobalMaxPool2D", "GlobalMaxPooling2D"),
                                       ("GlobalAvgPool2D", "GlobalAveragePooling2D")])
def test_pooling_aliases(alias, cls):
    assert getattr(kcompile.layers, alias) is getattr(kcompile.layers, cls)


@pytest.mark.parametrize("cls", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(cls, keepdims):
    ours, theirs = _pair(lambda L: getattr(L, cls)(keepdims=keepdims, name=NAME), (5, 6, 17))
    _check(ours, theirs, (5, 6, 17))
    assert ours.outputs[0].shape == ((None, 1, 1, 17) if keepdims else (None, 17))


# --- normalization --------------------------------------------------------------------------------
@pytest.mark.parametrize("input_shape,axis", [((6,), -1), ((4, 5, 3), -1), ((4, 5, 3), 1), ((4, 5, 3), 2),
                                              ((4, 5, 3), -3), ((7, 3), 1)])
def test_batch_normalization_inference(input_shape, axis):
    ours, theirs = _pair(lambda L: L.BatchNormalization(axis=axis, name=NAME), input_shape)
    weights = ours.get_weights()
    assert [w.name for w in ours.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [w.trainable for w in ours.weights] == [True, True, False, False]
    assert not np.allclose(weights[2], 0) and not np.allclose(weights[3], 1)  # non-trivial stats
    _check(ours, theirs, input_shape)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_batch_normalization_without_center_or_scale(center, scale):
    ours, theirs = _pair(lambda L: L.BatchNormalization(center=center, scale=scale, epsilon=0.01,
                                                        name=NAME), (3, 4, 6))
    expected = [n for n, on in (("gamma", scale), ("beta", center)) if on] + ["moving_mean",
                                                                               "moving_variance"]
    assert [w.name for w in ours.weights] == expected
    _check(ours, theirs, (3, 4, 6))


def test_batch_normalization_matches_formula():
    ours, _ = _pair(lambda L: L.BatchNormalization(name=NAME), (5,))
    gamma, beta, mean, var = ours.get_weights()
    x = np.random.default_rng(9).standard_normal((3, 5)).astype(np.float32)
    assert_close(ours.predict(x), gamma * (x - mean) / np.sqrt(var + 1e-3) + beta)
