"""Whole models against real Keras 3: the docs' MNIST convnet, the seed MLP, multi-input/output
Functional models, shared layers, nested models, subclassed layers and models; summary totals."""

from __future__ import annotations

import re

import numpy as np
from conftest import assert_close, copy_weights, keras_module

import kcompile
from kcompile import ops

RNG = np.random.default_rng(3)


def _convnet(K, shape, padding):
    L = K.layers
    return K.Sequential([K.Input(shape), L.Conv2D(32, (3, 3), activation="relu", padding=padding),
                         L.MaxPooling2D((2, 2)), L.Conv2D(64, (3, 3), activation="relu", padding=padding),
                         L.MaxPooling2D((2, 2)), L.Flatten(), L.Dropout(0.5),
                         L.Dense(10, activation="softmax")])


def _summary_total(model, keras_model: bool) -> int:
    lines = []
    model.summary(print_fn=lambda s, *a, **k: lines.append(str(s)))
    text = "\n".join(lines)
    return int(re.search(r"Total params: ([\d,]+)", text).group(1).replace(",", ""))


def _compare(ours, theirs, xs):
    copy_weights(ours, theirs)
    assert ours.count_params() == theirs.count_params()
    assert _summary_total(ours, False) == _summary_total(theirs, True) == theirs.count_params()
    for x in xs:
        want = theirs.predict(x, verbose=0)
        got = ours.predict(x)
        if isinstance(want, list):
            for g, w in zip(got, want, strict=True):
                assert_close(g, np.asarray(w))
        else:
            assert_close(got, np.asarray(want))


def test_mnist_convnet_28x28_and_digits_8x8():
    keras = keras_module()
    for shape, padding in (((28, 28, 1), "valid"), ((8, 8, 1), "same")):
        xs = [RNG.random((b, *shape), dtype=np.float32) for b in (1, 6)]
        _compare(_convnet(kcompile, shape, padding), _convnet(keras, shape, padding), xs)


def test_seed_mlp():
    keras = keras_module()

    def build(K):
        return K.Sequential([K.layers.Dense(512, activation="relu", input_shape=(784,)),
                             K.layers.Dense(512, activation="relu"),
                             K.layers.Dense(10, activation="softmax")])

    _compare(build(kcompile), build(keras), [RNG.random((b, 784), dtype=np.float32) for b in (1, 33)])


def test_functional_multi_io_shared_and_nested():
    keras = keras_module()

    def build(K):
        L = K.layers
        inner = K.Sequential([K.Input((8,)), L.Dense(6, activation="tanh"), L.Dense(4)], name="inner")
        a, b = K.Input((8,), name="a"), K.Input((8,), name="b")
        shared = L.Dense(8, activation="relu", name="shared")
        ha, hb = shared(a), shared(b)  # one layer, two calls: weights counted once
        merged = L.Concatenate()([inner(ha), inner(hb)])
        out1 = L.Dense(3, activation="softmax", name="head1")(merged)
        out2 = L.Add()([L.Dense(4, name="head2")(merged), inner(a)])
        return K.Model([a, b], [out1, out2])

    ours, theirs = build(kcompile), build(keras)
    xs = [[RNG.standard_normal((n, 8)).astype(np.float32) for _ in range(2)] for n in (1, 7)]
    _compare(ours, theirs, xs)
    assert len(ours.weights) == len(theirs.weights)


def _scale_layer(base, K_ops):
    """The same user layer, written against kcompile (base=kcompile.layers.Layer, kcompile.ops) or
    Keras: y = (x @ w + b) * s with a learned per-unit scale."""

    class Scale(base):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros")
            self.s = self.add_weight(shape=(self.units,), initializer="ones")

        def call(self, x):
            return K_ops.multiply(K_ops.add(K_ops.matmul(x, self.w), self.b), self.s)

    return Scale


_OurScale = _scale_layer(kcompile.layers.Layer, ops)


def test_subclassed_layer_and_model():
    keras = keras_module()
    their_scale = _scale_layer(keras.layers.Layer, keras.ops)

    class OurModel(kcompile.Model):
        def __init__(self):
            super().__init__()
            self.scale = _OurScale(6)
            self.head = kcompile.layers.Dense(2, activation="sigmoid")

        def call(self, x):
            return self.head(ops.relu(self.scale(x)))

    class TheirModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.scale = their_scale(6)
            self.head = keras.layers.Dense(2, activation="sigmoid")

        def call(self, x):
            return self.head(keras.ops.relu(self.scale(x)))

    ours, theirs = OurModel(), TheirModel()
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    ours(x)
    theirs(x)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    assert ours.count_params() == theirs.count_params() == 5 * 6 + 6 + 6 + 6 * 2 + 2
    for batch in (1, 9):
        xb = RNG.standard_normal((batch, 5)).astype(np.float32)
        assert_close(ours.predict(xb), np.asarray(theirs.predict(xb, verbose=0)))
    # the subclassed layer in a Sequential
    seq_ours = kcompile.Sequential([kcompile.Input((5,)), _OurScale(3)])
    seq_theirs = keras.Sequential([keras.Input((5,)), their_scale(3)])
    seq_ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in seq_ours.get_weights()])
    copy_weights(seq_ours, seq_theirs)
    assert_close(seq_ours.predict(x), np.asarray(seq_theirs.predict(x, verbose=0)))
