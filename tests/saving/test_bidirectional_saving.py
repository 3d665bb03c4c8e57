"""Bidirectional in files, both ways with real Keras 3: a Functional model on a variable-length input
with Bidirectional over LSTM (concat, sequences), GRU without reset_after (sum, states returned)
and SimpleRNN with a custom backward layer (merge_mode None) saved as `.keras` and `.weights.h5`
by one library and loaded by the other -- configs, weight paths and values, predictions equal --
with the weights where Keras keeps them (`layers/bidirectional/forward_layer/cell/vars/0..2`,
`.../backward_layer/...`); and the model (and a masked one) exported to ONNX, run by onnxruntime."""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import onnx
import pytest
from conftest import assert_close, keras_module

import kcompile

pytestmark = pytest.mark.usefixtures("eager_is_expected")


def _model(m):
    L = m.layers
    init = {"kernel_initializer": "zeros"}  # randomized after; spares Keras a JAX compile per shape
    x = m.Input((None, 3), name="seq")
    seq = L.Bidirectional(L.LSTM(4, return_sequences=True, name="lstm", **init))(x)
    out, *states = L.Bidirectional(
        L.GRU(3, reset_after=False, return_sequences=True, return_state=True, name="gru", **init),
        merge_mode="sum")(seq)
    backward = L.SimpleRNN(2, go_backwards=True, activation="relu", name="back", **init)
    fw, bw = L.Bidirectional(L.SimpleRNN(2, name="rnn", **init), merge_mode=None,
                             backward_layer=backward)(out)
    return m.Model(x, [out, *states, fw, bw], name="bidis")


def _randomize(model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in model.get_weights()])


def _data(batch: int, length: int) -> np.ndarray:
    return np.random.default_rng(length).standard_normal((batch, length, 3)).astype(np.float32)


def _paths(model) -> list[str]:
    return [w.path for w in model.weights]


def _check_same(a, b, shapes=((3, 6), (1, 2))) -> None:
    """Same layers, configs, weights and predictions. A model in memory and one loaded from a file
    differ (in Keras too) in build-config shapes (tuples, lists after JSON) and in weight paths:
    children built while loading are built outside the wrapper ("forward_lstm/lstm_cell/kernel")."""
    assert [type(lyr).__name__ for lyr in a.layers] == [type(lyr).__name__ for lyr in b.layers]
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert json.loads(json.dumps(la.get_config())) == json.loads(json.dumps(lb.get_config()))
    assert [p.split("/", 1)[1] if p.startswith("bidirectional") else p for p in _paths(a)] == \
        [p.split("/", 1)[1] if p.startswith("bidirectional") else p for p in _paths(b)]
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    for batch, length in shapes:
        x = _data(batch, length)
        got, want = a.predict(x, verbose=0), b.predict(x, verbose=0)
        assert len(got) == len(want) == 5
        for oa, ob in zip(got, want, strict=True):
            assert_close(np.asarray(oa), np.asarray(ob), 1e-5, 1e-6)


def _check_layout(h5) -> None:
    for side in ("forward_layer", "backward_layer"):
        cell = h5[f"layers/bidirectional/{side}/cell/vars"]
        assert [cell[str(i)].shape for i in range(3)] == [(3, 16), (4, 16), (16,)]
        assert cell.attrs["name"] == "lstm_cell"
        assert len(h5[f"layers/bidirectional/{side}/vars"]) == 0
        assert h5[f"layers/bidirectional_1/{side}/cell/vars/2"].shape == (9,)
        assert h5[f"layers/bidirectional_2/{side}/cell/vars/0"].shape == (3, 2)
    assert len(h5["layers/bidirectional/vars"]) == 0
    assert h5["layers/bidirectional/forward_layer/vars"].attrs["name"] == "forward_lstm"
    assert h5["layers/bidirectional_2/backward_layer/vars"].attrs["name"] == "back"


def test_kcompile_to_keras(tmp_path):
    keras = keras_module()
    ours = _model(kcompile)
    _randomize(ours)
    ours.save(tmp_path / "ours.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as z, z.open("model.weights.h5") as f, \
            h5py.File(f) as h5:
        _check_layout(h5)
    theirs = keras.saving.load_model(tmp_path / "ours.keras")
    _check_same(ours, theirs)
    again = kcompile.saving.load_model(tmp_path / "ours.keras")  # both libraries load it alike
    assert _paths(again) == _paths(theirs) and _paths(again)[0] == "forward_lstm/lstm_cell/kernel"
    assert [lyr.get_config() for lyr in again.layers] == [lyr.get_config() for lyr in theirs.layers]
    ours.save_weights(tmp_path / "ours.weights.h5")
    with h5py.File(tmp_path / "ours.weights.h5") as h5:
        _check_layout(h5)
    theirs = _model(keras)
    theirs.load_weights(tmp_path / "ours.weights.h5")
    for wa, wb in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, np.asarray(wb))


def test_keras_to_kcompile(tmp_path):
    keras = keras_module()
    theirs = _model(keras)
    _randomize(theirs, 2)
    theirs.save(tmp_path / "theirs.keras")
    ours = kcompile.saving.load_model(tmp_path / "theirs.keras")
    _check_same(ours, theirs)
    again = keras.saving.load_model(tmp_path / "theirs.keras")  # both libraries load it alike
    assert _paths(ours) == _paths(again)
    assert [lyr.get_config() for lyr in ours.layers] == [lyr.get_config() for lyr in again.layers]
    ours.save(tmp_path / "again.keras")  # and back: Keras reads what kcompile wrote from it
    _check_same(keras.saving.load_model(tmp_path / "again.keras"), theirs, shapes=((2, 5),))
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    fresh = _model(kcompile)
    fresh.load_weights(tmp_path / "theirs.weights.h5")
    for wa, wb in zip(fresh.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, np.asarray(wb))


def test_onnx_export_matches_kcompile(tmp_path):
    """One file with a dynamic batch and time dim: onnxruntime == kcompile at batch 1 and 4 and
    two lengths."""
    import onnxruntime as ort

    model = _model(kcompile)
    _randomize(model, 3)
    path = tmp_path / "bidis.onnx"
    model.export(path, format="onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for batch, length in ((1, 7), (4, 2)):
        x = _data(batch, length)
        want = model.predict(x, verbose=0)
        got = sess.run(None, dict(zip(names, [x], strict=True)))
        assert len(got) == len(want) == 5
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert_close(g, w, 1e-5, 1e-5)


def test_masked_onnx_export_matches_kcompile(tmp_path):
    """A Masking layer's mask through two Bidirectional layers (sequences, then the last step
    averaged), exported and run by onnxruntime."""
    import onnxruntime as ort

    L = kcompile.layers
    x = kcompile.Input((6, 3))
    seq = L.Bidirectional(L.GRU(4, return_sequences=True))(L.Masking()(x))
    model = kcompile.Model(x, L.Bidirectional(L.LSTM(2), merge_mode="ave")(seq))
    _randomize(model, 4)
    model.export(tmp_path / "masked.onnx", format="onnx")
    sess = ort.InferenceSession(str(tmp_path / "masked.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        data = _data(batch, 6)
        data[-1, 3:] = 0.0  # padding at the end of the last row, the start of the first
        data[0, :2] = 0.0
        got = sess.run(None, {sess.get_inputs()[0].name: data})[0]
        assert_close(got, model.predict(data, verbose=0), 1e-5, 1e-5)
