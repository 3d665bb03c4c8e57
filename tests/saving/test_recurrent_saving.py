"""`.keras` files with SimpleRNN, LSTM and GRU, both ways with real Keras 3: a Functional model on a
variable-length input with every layer (an encoder LSTM whose states seed a decoder GRU through
initial_state) saved by one library and loaded by the other -- configs, weights and predictions
equal -- and the weights where Keras keeps them: `layers/<rnn>/cell/vars/0..2`."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile

pytestmark = pytest.mark.usefixtures("eager_is_expected")


def _model(m):
    L = m.layers
    init = {"kernel_initializer": "zeros"}  # randomized after; spares Keras a JAX compile per shape
    src, tgt = m.Input((None, 3), name="src"), m.Input((None, 2), name="tgt")
    seq, h, _ = L.LSTM(4, return_sequences=True, return_state=True, name="enc", **init)(src)
    rnn = L.SimpleRNN(4, go_backwards=True, activation="relu", name="rnn", **init)(seq)
    dec = L.GRU(4, return_sequences=True, name="dec", **init)(tgt, initial_state=h)
    before = L.GRU(2, reset_after=False, use_bias=False, name="before", **init)(dec)
    return m.Model([src, tgt], [rnn, before], name="rnns")


def _randomize(model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in model.get_weights()])


def _data(length: int = 6):
    rng = np.random.default_rng(length)
    return [rng.standard_normal((3, length, 3)).astype(np.float32),
            rng.standard_normal((3, length - 2, 2)).astype(np.float32)]


def _check_same(a, b, lengths=(6, 3)) -> None:
    assert [type(lyr).__name__ for lyr in a.layers] == [type(lyr).__name__ for lyr in b.layers]
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.get_config() == lb.get_config(), la.name
    assert [w.path for w in a.weights] == [w.path for w in b.weights]
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    for length in lengths:
        x = _data(length)
        for oa, ob in zip(a.predict(x, verbose=0), b.predict(x, verbose=0), strict=True):
            assert_close(np.asarray(oa), np.asarray(ob), 1e-5, 1e-6)


def test_kcompile_to_keras(tmp_path):
    keras = keras_module()
    ours = _model(kcompile)
    _randomize(ours)
    ours.save(tmp_path / "ours.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as z, z.open("model.weights.h5") as f, \
            h5py.File(f) as h5:
        assert [h5[f"layers/lstm/cell/vars/{i}"].shape for i in range(3)] == [(3, 16), (4, 16), (16,)]
        assert len(h5["layers/lstm/vars"]) == 0 and h5["layers/lstm/cell/vars"].attrs["name"] == \
            "lstm_cell"
        assert h5["layers/gru_1/cell/vars/1"].shape == (2, 6) and len(h5["layers/gru_1/cell/vars"]) == 2
    _check_same(ours, keras.saving.load_model(tmp_path / "ours.keras"))


def test_keras_to_kcompile(tmp_path):
    keras = keras_module()
    theirs = _model(keras)
    _randomize(theirs, 2)
    theirs.save(tmp_path / "theirs.keras")
    ours = kcompile.saving.load_model(tmp_path / "theirs.keras")
    _check_same(ours, theirs)
    ours.save(tmp_path / "again.keras")  # and back: Keras reads what kcompile wrote from it
    _check_same(keras.saving.load_model(tmp_path / "again.keras"), theirs, lengths=(6,))
