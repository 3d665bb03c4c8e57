"""Metrics and sample weights against Keras 3: compile(metrics=...) logs in fit/evaluate/
train_on_batch, the eager Metric API, sample_weight / class_weight / weighted_metrics."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile
from kcompile import layers as kl

RNG = np.random.default_rng(11)
X = RNG.standard_normal((40, 5)).astype(np.float32)
Y_INT = (X[:, 0] - X[:, 2] > 0).astype(np.int64) + (X[:, 1] > 0.8)
Y_HOT = np.eye(3, dtype=np.float32)[Y_INT]
Y_BIN = (X[:, 3] > 0).astype(np.float32)[:, None]
Y_REG = (X[:, :2] @ np.array([[1.0, -2.0], [0.5, 1.0]], np.float32)).astype(np.float32)


def _pair(units, activation, loss, metrics, jit=True, weighted=None, optimizer=("Adam", 0.02)):
    keras = keras_module()
    kcompile.utils.set_random_seed(4)
    ours = kcompile.Sequential([kcompile.Input((5,)), kl.Dense(6, activation="tanh"),
                                kl.Dense(units, activation=activation)])
    theirs = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                               keras.layers.Dense(units, activation=activation)])
    theirs.set_weights(ours.get_weights())
    name, lr = optimizer

    def metric_list(mod):
        return [m if isinstance(m, str) else getattr(mod.metrics, m[0])(**m[1]) for m in metrics]

    ours.compile(getattr(kcompile.optimizers, name)(lr), loss, metrics=metric_list(kcompile),
                 weighted_metrics=weighted, jit_compile=jit)
    theirs.compile(getattr(keras.optimizers, name)(lr), loss, metrics=metric_list(keras),
                   weighted_metrics=weighted)
    return ours, theirs


CASES = [
    (3, "softmax", "sparse_categorical_crossentropy", Y_INT,
     ["accuracy", ("SparseCategoricalAccuracy", {"name": "acc"})]),
    (3, "softmax", "categorical_crossentropy", Y_HOT, ["accuracy", "categorical_accuracy", "mse"]),
    (1, "sigmoid", "binary_crossentropy", Y_BIN,
     ["acc", ("BinaryAccuracy", {"threshold": 0.4}), "mae"]),
    (2, None, "mse", Y_REG, ["mse", "mean_absolute_error", ("MeanSquaredError", {"name": "m2"})]),
]


@pytest.mark.parametrize("units,activation,loss,y,metrics", CASES, ids=[c[2] for c in CASES])
@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_fit_metrics_match_keras(units, activation, loss, y, metrics, jit):
    ours, theirs = _pair(units, activation, loss, metrics, jit)
    h1 = ours.fit(X, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    h2 = theirs.fit(X, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    assert list(h1.history) == list(h2.history)
    for key in h2.history:
        assert_close(h1.history[key], h2.history[key], rtol=1e-4, atol=1e-6)
    assert ours.metrics_names[0] == "loss"
    assert_close(ours.evaluate(X, y, verbose=0), theirs.evaluate(X, y, verbose=0), atol=1e-6)
    d1, d2 = ours.evaluate(X, y, verbose=0, return_dict=True), theirs.evaluate(X, y, verbose=0,
                                                                                return_dict=True)
    assert d1.keys() == d2.keys()
    assert_close(ours.train_on_batch(X[:16], y[:16]), theirs.train_on_batch(X[:16], y[:16]),
                 atol=1e-6)
    assert_close(ours.test_on_batch(X[:16], y[:16]), theirs.test_on_batch(X[:16], y[:16]),
                 atol=1e-6)


def test_no_metrics_returns_a_scalar():
    ours, theirs = _pair(3, "softmax", "sparse_categorical_crossentropy", [], True)
    assert isinstance(ours.evaluate(X, Y_INT, verbose=0), float)
    assert isinstance(ours.train_on_batch(X, Y_INT), float)
    assert ours.train_on_batch(X, Y_INT, return_dict=True).keys() == {"loss"}


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_sample_and_class_weights_match_keras(jit):
    sw = RNG.uniform(0.1, 2.0, len(X)).astype(np.float32)
    cw = {0: 0.5, 1: 2.0, 2: 1.5}
    ours, theirs = _pair(3, "softmax", "sparse_categorical_crossentropy", ["accuracy"], jit,
                         weighted=["accuracy"])
    for kw in ({"sample_weight": sw}, {"class_weight": cw}):
        h1 = ours.fit(X, Y_INT, batch_size=16, epochs=2, shuffle=False, verbose=0, **kw)
        h2 = theirs.fit(X, Y_INT, batch_size=16, epochs=2, shuffle=False, verbose=0, **kw)
        assert_close(h1.history["loss"], h2.history["loss"], rtol=1e-4)
        assert list(h1.history) == list(h2.history) == ["accuracy", "loss", "weighted_accuracy"]
        for key in h2.history:
            assert_close(h1.history[key], h2.history[key], rtol=1e-4, atol=1e-6)
        for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
            assert_close(a, b, rtol=1e-4, atol=1e-5)
    # (dicts: Keras's list form repeats a metric that has a weighted twin)
    l1 = ours.train_on_batch(X, Y_INT, class_weight=cw, return_dict=True)
    l2 = theirs.train_on_batch(X, Y_INT, class_weight=cw, return_dict=True)
    assert l1.keys() == l2.keys()
    assert_close(list(l1.values()), list(l2.values()), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be specified at the same time"):
        ours.train_on_batch(X, Y_INT, sample_weight=sw, class_weight=cw)
    e1 = ours.evaluate(X, Y_INT, sample_weight=sw, verbose=0, return_dict=True)
    e2 = theirs.evaluate(X, Y_INT, sample_weight=sw, verbose=0, return_dict=True)
    assert_close(e1["loss"], e2["loss"], rtol=1e-4)
    assert e1.keys() == e2.keys()
    for key in e2:
        assert_close(e1[key], e2[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls,y_true,y_pred", [
    ("SparseCategoricalAccuracy", Y_INT[:6], np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 1, 0]]),
    ("CategoricalAccuracy", Y_HOT[:6], RNG.uniform(size=(6, 3)).astype(np.float32)),
    ("BinaryAccuracy", Y_BIN[:6], RNG.uniform(size=(6, 1)).astype(np.float32)),
    ("MeanSquaredError", Y_REG[:6], RNG.standard_normal((6, 2)).astype(np.float32)),
    ("MeanAbsoluteError", Y_REG[:6], RNG.standard_normal((6, 2)).astype(np.float32)),
    ("Accuracy", np.array([[1.0], [2.0], [3.0]], np.float32), np.array([[1.0], [2.5], [3.0]],
                                                                      np.float32)),
])
def test_eager_metric_api_matches_keras(cls, y_true, y_pred):
    keras = keras_module()
    ours, theirs = getattr(kcompile.metrics, cls)(), getattr(keras.metrics, cls)()
    w = np.linspace(0.5, 1.5, len(y_true)).astype(np.float32)
    for m in (ours, theirs):
        m.update_state(y_true, y_pred)
        m.update_state(y_true[:2], y_pred[:2], sample_weight=w[:2])
    assert_close(ours.result(), float(theirs.result()))
    ours.reset_state()
    assert ours.result() == 0.0


def test_bad_metrics_and_weights():
    m = kcompile.Sequential([kcompile.Input((5,)), kl.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="Unknown metric 'acuracy'"):
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["acuracy"])
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = m.get_weights()
    with pytest.raises(ValueError, match="sample_weight has 3"):
        m.fit(X, Y_INT, sample_weight=np.ones(3), verbose=0)
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        m.train_on_batch(X, Y_INT, sample_weight=np.ones((len(X), 2)))
    with pytest.raises(ValueError, match="no entry for classes"):
        m.fit(X, Y_INT, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        m.fit(X, Y_INT, class_weight=[1.0, 2.0, 3.0], verbose=0)
    for a, b in zip(before, m.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
