"""Training recurrent models (BPTT: the IR's decomposition around lstm_bptt/gru_bptt/simple_rnn_bptt)
against real Keras 3 on identical weights and data: three Adam steps, losses and weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import keras_module

import kcompile

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 6, 3)).astype(np.float32)
Y_INT = RNG.integers(0, 3, 8)
Y_SEQ = RNG.standard_normal((8, 6, 2)).astype(np.float32)
ZEROS = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}  # weights are copied
CASES = [("SimpleRNN", {}, "sparse_categorical_crossentropy"),
         ("LSTM", {}, "sparse_categorical_crossentropy"),
         ("GRU", {}, "sparse_categorical_crossentropy"),
         ("LSTM", {"return_sequences": True, "go_backwards": True}, "mean_squared_error"),
         ("GRU", {"reset_after": False, "return_sequences": True}, "mean_squared_error"),
         ("SimpleRNN", {"return_sequences": True, "go_backwards": True, "activation": "relu"},
          "mean_squared_error")]


def _model(mod, cls, kw, loss):
    classify = loss.startswith("sparse")
    return mod.Sequential([mod.Input((6, 3)), getattr(mod.layers, cls)(5, **ZEROS, **kw),
                           mod.layers.Dense(3 if classify else 2,
                                            activation="softmax" if classify else None)])


RUNS = [(*case, "eager") for case in CASES] + [(*CASES[k], "compiled") for k in (1, 3, 4)]


@pytest.mark.parametrize(("cls", "kw", "loss", "executor"), RUNS,
                         ids=[f"{c}-{'-'.join(k)}-{loss[:4]}-{ex}" for c, k, loss, ex in RUNS])
def test_adam_steps_match_keras(cls, kw, loss, executor):
    keras = keras_module()
    ours, theirs = _model(kcompile, cls, kw, loss), _model(keras, cls, kw, loss)
    rng = np.random.default_rng(1)
    ours.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    ours.compile(kcompile.optimizers.Adam(0.01), loss, jit_compile=executor == "compiled")
    theirs.compile(keras.optimizers.Adam(0.01), loss)
    y = Y_INT if loss.startswith("sparse") else Y_SEQ
    for _ in range(3):
        lo, lt = ours.train_on_batch(X, y), float(theirs.train_on_batch(X, y))
        np.testing.assert_allclose(lo, lt, rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


def test_encoder_decoder_trains_through_initial_state():
    """Gradients flow from the decoder's output into the encoder through the initial states."""
    keras = keras_module()

    def build(mod):
        src, tgt = mod.Input((5, 3)), mod.Input((4, 2))
        _, h, c = mod.layers.LSTM(4, return_state=True, **ZEROS)(src)
        seq = mod.layers.LSTM(4, return_sequences=True, **ZEROS)(tgt, initial_state=[h, c])
        return mod.Model([src, tgt], mod.layers.Dense(1)(seq))

    ours, theirs = build(kcompile), build(keras)
    rng = np.random.default_rng(2)
    ours.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    ours.compile(kcompile.optimizers.Adam(0.01), "mse")
    theirs.compile(keras.optimizers.Adam(0.01), "mse")
    xs = [rng.standard_normal((6, 5, 3)).astype(np.float32),
          rng.standard_normal((6, 4, 2)).astype(np.float32)]
    y = rng.standard_normal((6, 4, 1)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled: no eager fallback
        for _ in range(2):
            np.testing.assert_allclose(ours.train_on_batch(xs, y), float(theirs.train_on_batch(xs, y)),
                                       rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


def test_variable_length_fit():
    """An Input with a free time dim trains on batches of any length (one trace per length)."""
    model = kcompile.Sequential([kcompile.Input((None, 3)), kcompile.layers.GRU(4),
                                 kcompile.layers.Dense(1)])
    model.compile(kcompile.optimizers.Adam(0.01), "mse", jit_compile=True)
    for length in (3, 5):
        x = RNG.standard_normal((4, length, 3)).astype(np.float32)
        history = model.fit(x, x[:, -1, :1], epochs=2, batch_size=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
