"""Whole models against real Keras 3 (JAX backend): the Keras-docs MNIST convnet and MLP, multi-input /
multi-output Functional models, a shared layer, a nested model, a subclassed Layer and a subclassed
Model. Each is built in both libraries, kcompile's weights (randomized) are copied to Keras, and
outputs, count_params, weight shapes/names and the "Total params" lines of `summary()` are compared.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile

# A model that falls back to the eager executor warns; here it must compile.
pytestmark = pytest.mark.filterwarnings("error:Model .* runs eagerly:RuntimeWarning")

BATCHES = (1, 5)


def _randomize(model, seed: int = 0, scale: float = 1.0) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([(scale * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in model.get_weights()])


def _summary_totals(model) -> dict[str, int]:
    """The "Total/Trainable/Non-trainable params" numbers of `model.summary()`."""
    chunks: list[str] = []
    model.summary(print_fn=lambda text, *args, **kwargs: chunks.append(str(text)))
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(chunks))  # strip any colour codes
    totals = {}
    for label in ("Total", "Trainable", "Non-trainable"):
        match = re.search(rf"{label} params: ([\d,]+)", text)
        assert match, f"no '{label} params' line in:\n{text}"
        totals[label] = int(match.group(1).replace(",", ""))
    return totals


def _check_structure(ours, theirs, expected_params: int | None = None) -> None:
    assert ours.count_params() == theirs.count_params()
    if expected_params is not None:
        assert ours.count_params() == expected_params
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert len(ours.trainable_weights) == len(theirs.trainable_weights)
    assert len(ours.non_trainable_weights) == len(theirs.non_trainable_weights)
    totals = _summary_totals(ours)
    assert totals == _summary_totals(theirs)
    assert totals["Total"] == ours.count_params()


def _as_list(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else [np.asarray(out)]


def _check_outputs(ours, theirs, make_inputs, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """predict (compiled), model(x) and the eager executor against Keras, at batch 1 and 5."""
    cases = []
    for batch in BATCHES:
        x = make_inputs(batch)
        want = _as_list(theirs(x))
        cases.append((x, want))
        for got in (ours.predict(x), ours(x)):
            got = _as_list(got)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and g.shape[0] == batch
                assert_close(g, w, rtol, atol)
    x, want = cases[-1]
    for k, w in zip(_as_list(theirs.predict(x, verbose=0)), want, strict=True):
        assert_close(k, w, rtol, atol)
    ours.compile(jit_compile=False)
    for x, want in cases:
        for g, w in zip(_as_list(ours.predict(x)), want, strict=True):
            assert_close(g, w, rtol, atol)


def _images(shape, seed: int = 1):
    rng = np.random.default_rng(seed)
    return lambda batch: rng.uniform(0, 1, (batch, *shape)).astype(np.float32)


# --- Keras-docs models ----------------------------------------------------------------------------
def _mnist_convnet(K, input_shape, padding):
    L = K.layers
    return K.Sequential([
        K.Input(shape=input_shape),
        L.Conv2D(32, kernel_size=(3, 3), activation="relu", padding=padding),
        L.MaxPooling2D(pool_size=(2, 2)),
        L.Conv2D(64, kernel_size=(3, 3), activation="relu", padding=padding),
        L.MaxPooling2D(pool_size=(2, 2)),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(10, activation="softmax"),
    ], name="mnist_convnet")


@pytest.mark.parametrize("input_shape,padding,params", [
    ((28, 28, 1), "valid", 320 + 18496 + 5 * 5 * 64 * 10 + 10),  # 34,826 as in the Keras example
    ((8, 8, 1), "same", 320 + 18496 + 2 * 2 * 64 * 10 + 10),
])
def test_mnist_convnet(input_shape, padding, params):
    keras = keras_module()
    ours, theirs = _mnist_convnet(kcompile, input_shape, padding), _mnist_convnet(keras, input_shape,
                                                                                   padding)
    _randomize(ours, scale=0.3)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, params)
    assert [tuple(layer.output.shape) for layer in ours.layers] == \
        [tuple(layer.output.shape) for layer in theirs.layers]
    _check_outputs(ours, theirs, _images(input_shape))
    probs = ours.predict(_images(input_shape, seed=2)(3))
    assert_close(probs.sum(axis=1), np.ones(3))


def _mlp(K):
    L = K.layers
    return K.Sequential([K.Input((784,)), L.Dense(512, activation="relu"), L.Dropout(0.2),
                         L.Dense(512, activation="relu"), L.Dropout(0.2),
                         L.Dense(10, activation="softmax")], name="mlp")


def test_mlp_784_512_512_10():
    keras = keras_module()
    ours, theirs = _mlp(kcompile), _mlp(keras)
    _randomize(ours, scale=0.05)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10)
    _check_outputs(ours, theirs, _images((784,)))


# --- Functional graphs ----------------------------------------------------------------------------
def _two_in_two_out(K):
    L = K.layers
    image = K.Input((6, 6, 2), name="image")
    meta = K.Input((5,), name="meta")
    x = L.Conv2D(4, 3, activation="relu")(image)
    x = L.GlobalAveragePooling2D()(x)
    y = L.Dense(8, activation="tanh")(meta)
    joined = L.Concatenate()([x, y])
    hidden = L.Dense(16, activation="relu")(joined)
    cls = L.Dense(3, activation="softmax", name="cls")(hidden)
    reg = L.Dense(1, name="reg")(L.Add()([hidden, L.Dense(16)(y)]))
    return K.Model(inputs=[image, meta], outputs=[cls, reg], name="two_heads")


def test_functional_two_inputs_two_outputs():
    keras = keras_module()
    ours, theirs = _two_in_two_out(kcompile), _two_in_two_out(keras)
    _randomize(ours, scale=0.5)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs)
    assert [t.shape for t in ours.outputs] == [(None, 3), (None, 1)]
    rng = np.random.default_rng(3)

    def inputs(batch):
        return [rng.standard_normal((batch, 6, 6, 2)).astype(np.float32),
                rng.standard_normal((batch, 5)).astype(np.float32)]

    _check_outputs(ours, theirs, inputs)
    x = inputs(4)  # inputs by name, as Keras allows
    by_name = ours.predict({"image": x[0], "meta": x[1]})
    for g, w in zip(by_name, _as_list(theirs({"image": x[0], "meta": x[1]})), strict=True):
        assert_close(g, w)


def _shared(K):
    L = K.layers
    a, b = K.Input((7,)), K.Input((7,))
    shared = L.Dense(4, activation="tanh", name="shared")
    merged = L.Concatenate()([shared(a), shared(b)])
    return K.Model([a, b], L.Dense(2, name="head")(merged)), shared


def test_shared_layer_weights_counted_once():
    keras = keras_module()
    (ours, shared), (theirs, _) = _shared(kcompile), _shared(keras)
    _randomize(ours)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, 7 * 4 + 4 + 8 * 2 + 2)
    assert len(ours.weights) == 4 and len(shared._inbound_nodes) == 2
    rng = np.random.default_rng(4)
    _check_outputs(ours, theirs, lambda n: [rng.standard_normal((n, 7)).astype(np.float32)
                                            for _ in range(2)])
    # one kernel serves both branches: equal inputs give equal halves of the concatenation
    x = rng.standard_normal((3, 7)).astype(np.float32)
    assert sum(w is shared.kernel for w in ours.weights) == 1
    assert_close(ours.predict([x, x]), np.asarray(theirs([x, x])))
    feats = kcompile.Model(ours.inputs, ours.get_layer("head").input).predict([x, x])
    assert_close(feats[:, :4], feats[:, 4:])


def _nested(K):
    L = K.layers
    inner = K.Sequential([K.Input((6,)), L.Dense(5, activation="relu"), L.BatchNormalization(),
                          L.Dense(4)], name="inner")
    inp = K.Input((6,))
    out = L.Dense(3, activation="softmax")(L.Add()([inner(inp), L.Dense(4)(inp)]))
    return K.Model(inp, out, name="outer")


def test_nested_sequential_inside_functional():
    keras = keras_module()
    ours, theirs = _nested(kcompile), _nested(keras)
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(w.shape).astype(np.float32) for w in ours.weights]
    for i, w in enumerate(ours.weights):
        if w.name == "moving_variance":
            values[i] = rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
    ours.set_weights(values)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, (6 * 5 + 5) + 4 * 5 + (5 * 4 + 4) + (6 * 4 + 4) + (4 * 3 + 3))
    assert [type(lyr).__name__ for lyr in ours.layers] == [type(lyr).__name__ for lyr in theirs.layers]
    assert _summary_totals(ours)["Non-trainable"] == 10  # the inner BatchNorm's moving statistics
    inner = ours.get_layer("inner")
    assert inner.count_params() == theirs.get_layer("inner").count_params() == 35 + 20 + 24
    _check_outputs(ours, theirs, lambda n: rng.standard_normal((n, 6)).astype(np.float32))


# --- subclassing ----------------------------------------------------------------------------------
class OpsDense(kcompile.Layer):
    """A Dense written against the public API: add_weight in build(), kcompile.ops in call()."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = kcompile.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return self.activation(kcompile.ops.add(kcompile.ops.matmul(inputs, self.kernel), self.bias))


class OperatorDense(OpsDense):
    """The same with Python operators on tensors and variables."""

    def call(self, inputs):
        return self.activation(inputs @ self.kernel + self.bias)


@pytest.mark.parametrize("cls", [OpsDense, OperatorDense])
def test_subclassed_layer_matches_keras_dense(cls):
    keras = keras_module()
    ours = kcompile.Sequential([kcompile.Input((9,)), cls(6, activation="relu"),
                                kcompile.layers.Dense(2)])
    theirs = keras.Sequential([keras.Input((9,)), keras.layers.Dense(6, activation="relu"),
                               keras.layers.Dense(2)])
    _randomize(ours)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, 9 * 6 + 6 + 6 * 2 + 2)
    layer = ours.layers[0]
    assert layer.built and [w.path for w in layer.weights] == [f"{layer.name}/kernel",
                                                               f"{layer.name}/bias"]
    rng = np.random.default_rng(6)
    _check_outputs(ours, theirs, lambda n: rng.standard_normal((n, 9)).astype(np.float32))
    x = rng.standard_normal((4, 9)).astype(np.float32)  # eager, outside any model
    assert_close(layer(x), np.asarray(theirs.layers[0](x)))
    fresh = cls(3)
    assert not fresh.built and fresh(x).shape == (4, 3) and fresh.count_params() == 9 * 3 + 3


def _subclassed_model_classes():
    keras = keras_module()

    class Ours(kcompile.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = kcompile.layers.Conv2D(5, 3, padding="same", activation="relu")
            self.pool = kcompile.layers.GlobalMaxPooling2D()
            self.hidden = OpsDense(8, activation="tanh")
            self.out = kcompile.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.out(self.hidden(self.pool(self.conv(inputs))))

    class Theirs(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(5, 3, padding="same", activation="relu")
            self.pool = keras.layers.GlobalMaxPooling2D()
            self.hidden = keras.layers.Dense(8, activation="tanh")
            self.out = keras.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.out(self.hidden(self.pool(self.conv(inputs))))

    return Ours, Theirs


def test_subclassed_model():
    Ours, Theirs = _subclassed_model_classes()
    ours, theirs = Ours(name="sub"), Theirs(name="sub")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
    assert ours(x).shape == np.asarray(theirs(x)).shape == (2, 3)  # builds both on first call
    assert [type(lyr).__name__ for lyr in ours.layers] == ["Conv2D", "GlobalMaxPooling2D", "OpsDense",
                                                           "Dense"]
    _randomize(ours, scale=0.5)
    copy_weights(ours, theirs)
    _check_structure(ours, theirs, (3 * 3 * 3 * 5 + 5) + (5 * 8 + 8) + (8 * 3 + 3))
    _check_outputs(ours, theirs, lambda n: rng.standard_normal((n, 6, 7, 3)).astype(np.float32))
