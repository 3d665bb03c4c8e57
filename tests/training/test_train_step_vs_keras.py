"""Training steps (forward + loss -> autodiff -> optimizer) against real Keras 3 on identical
weights and data, eager and compiled; bad training input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import keras_module

import kcompile
from kcompile import layers as kl

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 6)).astype(np.float32)
Y_INT = RNG.integers(0, 3, 16)
Y_REAL = RNG.standard_normal((16, 3)).astype(np.float32)
Y_BIN = RNG.integers(0, 2, (16, 3)).astype(np.float32)
OPTIMIZERS = [("SGD", {}), ("SGD", {"momentum": 0.9, "nesterov": True}), ("Adam", {}),
              ("AdamW", {}), ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {}),
              ("SGD", {"clipnorm": 0.1}), ("Adam", {"clipvalue": 0.01}),
              ("SGD", {"global_clipnorm": 0.2})]
LOSSES = [("sparse_categorical_crossentropy", Y_INT, "softmax"),
          ("categorical_crossentropy", np.eye(3, dtype=np.float32)[Y_INT], "softmax"),
          ("mean_squared_error", Y_REAL, None), ("mean_absolute_error", Y_REAL, None),
          ("binary_crossentropy", Y_BIN, "sigmoid")]


def _models(keras, activation):
    kcompile.utils.set_random_seed(1)
    ours = kcompile.Sequential([kcompile.Input((6,)), kl.Dense(8, activation="tanh"),
                                kl.BatchNormalization(), kl.Dense(3, activation=activation)])
    theirs = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                               keras.layers.BatchNormalization(),
                               keras.layers.Dense(3, activation=activation)])
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _compare(ours, theirs, y, steps=3):
    for _ in range(steps):
        lo, lt = ours.train_on_batch(X, y), float(theirs.train_on_batch(X, y))
        np.testing.assert_allclose(lo, lt, rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", OPTIMIZERS, ids=[f"{n}{k}" for n, k in OPTIMIZERS])
@pytest.mark.parametrize("jit", [False, True])
def test_optimizers_match_keras(name, kwargs, jit):
    keras = keras_module()
    ours, theirs = _models(keras, "softmax")
    ours.compile(getattr(kcompile.optimizers, name)(learning_rate=0.05, **kwargs),
                 "sparse_categorical_crossentropy", jit_compile=jit)
    theirs.compile(getattr(keras.optimizers, name)(learning_rate=0.05, **kwargs),
                   "sparse_categorical_crossentropy")
    _compare(ours, theirs, Y_INT)


@pytest.mark.parametrize("loss,y,activation", LOSSES, ids=[entry[0] for entry in LOSSES])
@pytest.mark.parametrize("jit", [False, True])
def test_losses_match_keras(loss, y, activation, jit):
    keras = keras_module()
    ours, theirs = _models(keras, activation)
    ours.compile(kcompile.optimizers.Adam(0.01), loss, jit_compile=jit)
    theirs.compile(keras.optimizers.Adam(0.01), loss)
    _compare(ours, theirs, y)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy",
                                  "binary_crossentropy"])
def test_from_logits_losses_match_keras(loss):
    keras = keras_module()
    y = {"sparse_categorical_crossentropy": Y_INT,
         "categorical_crossentropy": np.eye(3, dtype=np.float32)[Y_INT],
         "binary_crossentropy": Y_BIN}[loss]
    logits = (RNG.standard_normal((16, 3)) * 4).astype(np.float32)
    cls = {"sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
           "categorical_crossentropy": "CategoricalCrossentropy",
           "binary_crossentropy": "BinaryCrossentropy"}[loss]
    ours = getattr(kcompile.losses, cls)(from_logits=True)
    theirs = getattr(keras.losses, cls)(from_logits=True)
    np.testing.assert_allclose(ours(y, logits), float(theirs(y, logits)), rtol=1e-5)


def test_compiled_and_eager_training_agree_with_dropout():
    def run(jit):
        kcompile.utils.set_random_seed(3)
        m = kcompile.Sequential([kcompile.Input((6,)), kl.Dense(16, activation="relu"),
                                 kl.Dropout(0.4), kl.Dense(3, activation="softmax")])
        m.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit)
        losses = [m.train_on_batch(X, Y_INT) for _ in range(4)]
        return losses, m.get_weights()

    (le, we), (lc, wc) = run(False), run(True)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    for a, b in zip(wc, we, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_training_input():
    m = kcompile.Sequential([kcompile.Input((6,)), kl.Dense(3, activation="softmax")], name="m")
    with pytest.raises(RuntimeError, match="compile"):
        m.train_on_batch(X, Y_INT)
    with pytest.raises(ValueError, match="Unknown loss"):
        m.compile("adam", "nope")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        m.compile("nope", "mse")
    m.compile("sgd", "sparse_categorical_crossentropy")
    before = m.get_weights()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        m.train_on_batch(X, np.full(16, 3))
    with pytest.raises(ValueError, match=r"labels y have shape \(15,\)"):
        m.train_on_batch(X, Y_INT[:15])
    for a, b in zip(before, m.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
