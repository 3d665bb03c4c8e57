"""Differential testing: random small Sequential and Functional models, compiled == eager at several
batch sizes from one compile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcompile as keras
from kcompile import layers

ACTIVATIONS = ["relu", "sigmoid", "tanh", "gelu", "linear", "softmax"]


pytestmark = pytest.mark.usefixtures("module_cache_dir")


@st.composite
def conv_stack(draw):
    h = draw(st.integers(3, 12))
    w = draw(st.integers(3, 12))
    c = draw(st.integers(1, 20))
    input_shape = (h, w, c)
    stack = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pool", "bn", "act", "dropout"]))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            s = draw(st.sampled_from([1, 2]))
            pad = draw(st.sampled_from(["same", "valid"]))
            if pad == "valid" and (h < k or w < k):
                continue
            stack.append(layers.Conv2D(draw(st.integers(1, 20)), k, strides=s, padding=pad,
                                       activation=draw(st.sampled_from(ACTIVATIONS[:5]))))
            h = -(-h // s) if pad == "same" else (h - k) // s + 1
            w = -(-w // s) if pad == "same" else (w - k) // s + 1
        elif kind == "pool" and h >= 2 and w >= 2:
            pad = draw(st.sampled_from(["same", "valid"]))
            cls = draw(st.sampled_from([layers.MaxPooling2D, layers.AveragePooling2D]))
            stack.append(cls(2, padding=pad))
            h = -(-h // 2) if pad == "same" else h // 2
            w = -(-w // 2) if pad == "same" else w // 2
        elif kind == "bn":
            stack.append(layers.BatchNormalization())
        elif kind == "act":
            stack.append(layers.Activation(draw(st.sampled_from(ACTIVATIONS[:5]))))
        else:
            stack.append(layers.Dropout(0.5))
    stack.append(draw(st.sampled_from([layers.Flatten, layers.GlobalAveragePooling2D,
                                       layers.GlobalMaxPooling2D]))())
    stack.append(layers.Dense(draw(st.integers(1, 9)), activation=draw(st.sampled_from(ACTIVATIONS))))
    return input_shape, stack


def _randomise_bn(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])


def _check(model, input_shapes, seed):
    rng = np.random.default_rng(seed)
    for batch in (1, 3, 17):
        xs = [rng.standard_normal((batch, *s)).astype(np.float32) for s in input_shapes]
        x = xs if len(xs) > 1 else xs[0]
        report = keras.compare(model, x, repeats=1, print_report=False)
        assert report.ok(), str(report)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_stack(), st.integers(0, 2**16))
def test_random_sequential_models(spec, seed):
    shape, stack = spec
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape), *stack])
    _randomise_bn(model, seed)
    _check(model, [shape], seed)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from(["add", "concat"]),
       st.sampled_from(ACTIVATIONS), st.integers(0, 2**16))
def test_random_functional_models(d1, d2, merge, activation, seed):
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((d1,)), keras.Input((d2,))
    ha = layers.Dense(8, activation=activation)(a)
    hb = layers.Dense(8, activation="relu")(b)
    merged = layers.Add()([ha, hb]) if merge == "add" else layers.Concatenate()([ha, hb])
    out1 = layers.Dense(3, activation="softmax")(merged)
    out2 = layers.Dense(2)(layers.Activation("tanh")(merged))
    model = keras.Model([a, b], [out1, out2, merged])
    _check(model, [(d1,), (d2,)], seed)
