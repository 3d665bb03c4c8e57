"""Training-step export of recurrent models: the gradient's BPTT chains (`*_bptt`) are Scans running
backwards over time, the rest of the decomposition ordinary GEMMs. A few steps in onnxruntime
(kcompile.onnx.TrainingSession) give the losses, weights and optimizer slots of the same steps run
by kcompile (eagerly) from the same state, at rtol 1e-4. Batch sizes vary between steps: one file
serves them all.

Masked models (Embedding(mask_zero=True) into a recurrent layer) export their forward ops as Scans
that carry the states over masked steps; those tests skip while the layers do not take masks yet
(the rules are checked at IR level in test_onnx_rnn_rules.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_close
from onnx_testing import op_types, session

import kcompile as keras
from kcompile import layers as L
from kcompile import optimizers
from kcompile.onnx import TrainingSession

LENGTH, FEATURES = 7, 3
BATCHES = (8, 3, 8, 1)


pytestmark = pytest.mark.usefixtures("eager_is_expected")


def _model(kind: str):
    x = keras.Input((LENGTH, FEATURES), name="seq")
    if kind == "lstm":
        out = L.Dense(2)(L.LSTM(5)(x))
    elif kind == "gru":
        out = L.Dense(2)(L.GRU(5)(x))
    elif kind == "gru_reset_before":
        out = L.Dense(2)(L.GRU(5, reset_after=False)(x))
    elif kind == "simple_rnn_backwards":
        out = L.Dense(2)(L.SimpleRNN(5, go_backwards=True)(x))
    elif kind == "sequences_time_distributed":
        out = L.TimeDistributed(L.Dense(2))(L.LSTM(5, return_sequences=True)(x))
    elif kind == "stacked":  # every cell, both directions, states into the loss through a Dense
        seq = L.LSTM(4, return_sequences=True, go_backwards=True)(x)
        seq = L.SimpleRNN(4, return_sequences=True, activation="relu")(seq)
        last, h = L.GRU(3, reset_after=False, return_state=True, go_backwards=True)(seq)
        out = L.Dense(2)(L.Concatenate()([last, h]))
    else:
        raise ValueError(kind)
    return keras.Model(x, out, name=kind)


def _label_shape(kind: str) -> tuple:
    return (LENGTH, 2) if kind == "sequences_time_distributed" else (2,)


def _train_both(model, path, batches):
    """Export (the state now), then the same steps eagerly and in onnxruntime; returns the largest
    relative difference seen (losses, weights, slots)."""
    model.export(path, training=True)
    ts = TrainingSession(path)
    worst = 0.0

    def close(got, want):
        nonlocal worst
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape
        assert_close(got, want, 1e-4, 1e-5)
        worst = max(worst, float(np.max(np.abs(got - want) / (np.abs(want) + 1e-5), initial=0)))

    for x, y in batches:
        close(ts.train_on_batch(x, y), model.train_on_batch(x, y))
    for g, w in zip(ts.get_weights(), model.get_weights(), strict=True):
        close(g, w)
    slots = [s for group in model.optimizer.slots for s in group]
    assert len(ts.meta["slots"]) == len(slots)
    for name, w in zip(ts.meta["slots"], slots, strict=True):
        close(ts.state[name], w)
    assert ts.iterations == model.optimizer.iterations
    return worst


KINDS = ["lstm", "gru", "gru_reset_before", "simple_rnn_backwards", "sequences_time_distributed",
         "stacked"]


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_training_steps(kind, tmp_path):
    keras.utils.set_random_seed(10 + KINDS.index(kind))
    model = _model(kind)
    model.compile(optimizer=optimizers.Adam(0.01), loss="mse", jit_compile=False)
    rng = np.random.default_rng(KINDS.index(kind))
    batches = [(rng.standard_normal((b, LENGTH, FEATURES)).astype(np.float32),
                rng.standard_normal((b, *_label_shape(kind))).astype(np.float32)) for b in BATCHES]
    _train_both(model, tmp_path / f"{kind}.onnx", batches)
    proto = onnx.load(str(tmp_path / f"{kind}.onnx"))
    types = op_types(proto)
    assert "Scan" in types and not {"Loop"} & set(types)


def test_training_from_a_trained_state_with_momentum(tmp_path):
    """Exported mid-training (non-zero slots), SGD with momentum: the file holds the whole state."""
    keras.utils.set_random_seed(21)
    model = _model("gru")
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="mse", jit_compile=False)
    rng = np.random.default_rng(21)

    def batch(b):
        return (rng.standard_normal((b, LENGTH, FEATURES)).astype(np.float32),
                rng.standard_normal((b, 2)).astype(np.float32))

    model.train_on_batch(*batch(4))
    _train_both(model, tmp_path / "mid.onnx", [batch(b) for b in (5, 2, 5)])


# -- masked models (Embedding(mask_zero=True) -> recurrent layer) ------------------------------------------
VOCAB = 11


def _padded_tokens(rng, batch: int, length: int) -> np.ndarray:
    """Token ids with 0 = padding: right-padded, left-padded, and rows with holes."""
    tokens = rng.integers(1, VOCAB, (batch, length))
    for k in range(batch):
        cut = int(rng.integers(1, length))
        if k % 3 == 0:
            tokens[k, cut:] = 0
        elif k % 3 == 1:
            tokens[k, :cut] = 0
        else:
            tokens[k, rng.random(length) < 0.3] = 0
    return tokens.astype(np.int32)


def _masked_model(cell: str, length: int | None = None, **kwargs):
    x = keras.Input((length,), dtype="int32", name="tokens")
    emb = L.Embedding(VOCAB, 4, mask_zero=True)
    layer = {"lstm": L.LSTM, "gru": L.GRU, "simple_rnn": L.SimpleRNN}[cell]
    out = L.Dense(2)(layer(5, **kwargs)(emb(x)))
    return keras.Model(x, out, name=f"masked_{cell}")


MASKED = [("lstm", {}), ("gru", {"go_backwards": True}), ("gru", {"reset_after": False}),
          ("simple_rnn", {})]
MASKED_IDS = ["lstm", "gru-backwards", "gru-reset_before", "simple_rnn"]


@pytest.mark.parametrize(("cell", "kwargs"), MASKED, ids=MASKED_IDS)
def test_masked_forward_export(cell, kwargs, tmp_path):
    keras.utils.set_random_seed(30)
    model = _masked_model(cell, **kwargs)
    path = tmp_path / "masked.onnx"
    model.export(path)
    proto = onnx.load(str(path))
    assert "Scan" in op_types(proto)
    sess = session(path)
    rng = np.random.default_rng(30)
    for batch, length in ((1, 5), (6, 9), (4, 2)):
        tokens = _padded_tokens(rng, batch, length)
        want = model.predict(tokens, verbose=0)
        got = sess.run(None, {sess.get_inputs()[0].name: tokens})[0]
        assert_close(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize(("cell", "kwargs"), MASKED, ids=MASKED_IDS)
def test_masked_training_steps(cell, kwargs, tmp_path):
    keras.utils.set_random_seed(31)
    model = _masked_model(cell, 6, **kwargs)
    model.compile(optimizer=optimizers.Adam(0.01), loss="mse", jit_compile=False)
    rng = np.random.default_rng(31)
    batches = [(_padded_tokens(rng, b, 6), rng.standard_normal((b, 2)).astype(np.float32))
               for b in BATCHES]
    _train_both(model, tmp_path / "masked_train.onnx", batches)
