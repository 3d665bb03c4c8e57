"""fit / evaluate: History, shuffling reproducibility, validation, progress output, Keras parity
for an unshuffled epoch, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import keras_module

import kcompile
from kcompile import layers as kl

RNG = np.random.default_rng(5)
X = RNG.standard_normal((50, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def _model(seed=0):
    kcompile.utils.set_random_seed(seed)
    m = kcompile.Sequential([kcompile.Input((4,)), kl.Dense(8, activation="relu"),
                             kl.Dense(2, activation="softmax")])
    m.compile(kcompile.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return m


def test_fit_learns_and_returns_history(capsys):
    m = _model()
    before = m.evaluate(X, Y)
    hist = m.fit(X, Y, batch_size=8, epochs=5, verbose=2, validation_split=0.2)
    assert hist.epoch == [0, 1, 2, 3, 4]
    assert set(hist.history) == {"loss", "val_loss"} and len(hist.history["loss"]) == 5
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert m.evaluate(X, Y) < before
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 5 and "val_loss" in out
    m.fit(X, Y, epochs=1, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "2/2 [" in out  # 50 rows at the default batch size 32


def test_set_random_seed_makes_fit_reproducible():
    def run():
        m = _model(3)
        m.fit(X, Y, batch_size=7, epochs=2, verbose=0)
        return m.get_weights()

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unshuffled_epoch_matches_keras():
    keras = keras_module()
    ours = _model(1)
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.Dense(2, activation="softmax")])
    theirs.set_weights(ours.get_weights())
    theirs.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    h1 = ours.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    h2 = theirs.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.evaluate(X, Y), theirs.evaluate(X, Y, verbose=0), rtol=1e-4)


def test_callback_hooks_are_called():
    calls = []

    class Spy(kcompile.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            calls.append((epoch, round(logs["loss"], 6)))
            if epoch == 1:
                self.model.stop_training = True

    m = _model()
    hist = m.fit(X, Y, epochs=5, verbose=0, callbacks=[Spy()])
    assert [c[0] for c in calls] == [0, 1] and hist.epoch == [0, 1]


@pytest.mark.parametrize("kwargs,match", [
    ({"validation_split": 1.5}, "validation_split"),
    ({"validation_split": 0.001}, "empty"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_fit_arguments(kwargs, match):
    m = _model()
    with pytest.raises(ValueError, match=match):
        m.fit(X, Y, verbose=0, **kwargs)


def test_mismatched_lengths():
    m = _model()
    with pytest.raises(ValueError, match="50 samples but y has 49"):
        m.fit(X, Y[:49], verbose=0)


def test_validation_data_and_initial_epoch_match_keras(capsys):
    keras = keras_module()
    ours = _model(2)
    ours.compile(kcompile.optimizers.Adam(0.05), "sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.Dense(2, activation="softmax")])
    theirs.set_weights(ours.get_weights())
    theirs.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy",
                   metrics=["accuracy"])
    xv, yv = X[:10] + 0.1, Y[:10]
    vw = np.linspace(0.5, 2.0, 10).astype(np.float32)
    kw = dict(batch_size=16, epochs=4, initial_epoch=2, shuffle=False,
              validation_data=(xv, yv, vw))
    h1 = ours.fit(X, Y, verbose=1, **kw)
    out = capsys.readouterr().out
    h2 = theirs.fit(X, Y, verbose=0, **kw)
    assert h1.epoch == h2.epoch == [2, 3]
    assert list(h1.history) == list(h2.history)
    for key in h2.history:
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-4, atol=1e-6)
    assert "Epoch 3/4" in out and "Epoch 4/4" in out and "Epoch 1/4" not in out
    assert "accuracy: " in out and "val_accuracy: " in out and "4/4 [" in out
    with pytest.raises(ValueError, match="validation_data must be a tuple"):
        ours.fit(X, Y, validation_data=xv, verbose=0)
