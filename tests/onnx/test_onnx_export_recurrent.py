"""ONNX export of recurrent models (ONNX LSTM/GRU/RNN with Keras's gate order, reset_after as
linear_before_reset, go_backwards as a reversed direction): one file per model, run by onnxruntime
at batch 1 and 5 and two sequence lengths (the time dim stays dynamic), against the eager executor.
Masked layers and training steps (Scans over time) are in test_onnx_rnn_training_export.py, their
rules in test_onnx_rnn_rules.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_close
from onnx_testing import op_types, session

import kcompile as keras
from kcompile import layers as L
from kcompile.codegen.onnx.dynamic import export_free_dims, free_dims
from kcompile.models.lowering import InputSig

SHAPES = ((1, 9), (5, 2))  # (batch, length): both batch sizes and both lengths from one file


pytestmark = pytest.mark.usefixtures("eager_is_expected")


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32)
                       for w in model.weights])


def _stacked():
    """Every layer and option: LSTM sequences into a backwards GRU with its state returned and a
    SimpleRNN; a GRU without reset_after seeded with the first GRU's state."""
    x = keras.Input((None, 3), name="seq")
    seq = L.LSTM(4, return_sequences=True)(x)
    last, h = L.GRU(3, return_state=True, go_backwards=True)(seq)
    rnn = L.SimpleRNN(2, return_sequences=True, activation="relu")(seq)
    before = L.GRU(3, reset_after=False, return_sequences=True, go_backwards=True)(
        seq, initial_state=h)
    return keras.Model(x, [last, h, L.Dense(2)(rnn), before], name="stacked")


def _states_in():
    x = keras.Input((None, 2), name="x")
    h0, c0 = keras.Input((3,), name="h0"), keras.Input((3,), name="c0")
    out = L.LSTM(3, return_state=True, go_backwards=True, unit_forget_bias=False,
                 recurrent_activation="tanh", activation=None)(x, initial_state=[h0, c0])
    return keras.Model([x, h0, c0], list(out), name="states")


def _run_both(model, path, rng):
    model.export(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    sigs = model.input_signature()[0]
    assert names == [s.name for s in sigs]
    for batch, length in SHAPES:
        feeds = [rng.standard_normal((batch, length, *s.shape[2:]) if None in s.shape[1:]
                                     else (batch, *s.shape[1:])).astype(np.float32) for s in sigs]
        want = model.predict(feeds if len(feeds) > 1 else feeds[0], verbose=0)
        want = want if isinstance(want, list) else [want]
        got = sess.run(None, dict(zip(names, feeds, strict=True)))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert_close(g, w, 1e-5, 1e-5)
    return proto


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_stacked_layers_one_file_any_length(tmp_path):
    model = _stacked()
    _randomize(model)
    proto = _run_both(model, tmp_path / "stacked.onnx", np.random.default_rng(1))
    types = op_types(proto)
    assert (types.count("LSTM"), types.count("GRU"), types.count("RNN")) == (1, 2, 1)
    assert _dims(proto.graph.input[0]) == ["batch", "seq_dim1", 3]
    assert [_dims(o) for o in proto.graph.output] == [["batch", 3], ["batch", 3],
                                                      ["batch", "seq_dim1", 2],
                                                      ["batch", "seq_dim1", 3]]
    gru = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert sorted(onnx.helper.get_attribute_value(a) for n in gru for a in n.attribute
                  if a.name == "linear_before_reset") == [1]
    # weights are initializers already in ONNX's layout: no layout nodes run per inference
    assert not {"Gather", "Concat", "Reshape"} & set(types)


def test_initial_states_and_other_activations(tmp_path):
    model = _states_in()
    _randomize(model, 2)
    proto = _run_both(model, tmp_path / "states.onnx", np.random.default_rng(2))
    (lstm,) = [n for n in proto.graph.node if n.op_type == "LSTM"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lstm.attribute}
    assert attrs["direction"] == b"reverse"
    assert attrs["activations"] == [b"Tanh", b"Affine", b"Affine"]


def test_fixed_length_inputs_stay_fixed(tmp_path):
    model = keras.Sequential([keras.Input((6, 3)), L.GRU(4), L.Dense(2)])
    _randomize(model, 3)
    path = tmp_path / "fixed.onnx"
    model.export(path)
    proto = onnx.load(str(path))
    assert _dims(proto.graph.input[0]) == ["batch", 6, 3]
    x = np.random.default_rng(3).standard_normal((5, 6, 3)).astype(np.float32)
    assert_close(session(path).run(None, {proto.graph.input[0].name: x})[0],
                 model.predict(x, verbose=0), 1e-5, 1e-5)


def test_length_dependent_graphs_are_refused():
    """Three traces must write the same file up to declared shapes; a size baked into a node
    (here: a fake writer whose Reshape target follows the length) is an error, not a bad file."""
    sigs = [InputSig("x", (None, None, 2), "float32")]
    assert free_dims(sigs) == [(0, 1)]

    def write(concrete):
        t = concrete[0].shape[1]
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", t, 2])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2 * t])
        shape = onnx.numpy_helper.from_array(np.array([-1, 2 * t], np.int64), "shape")
        node = onnx.helper.make_node("Reshape", ["x", "shape"], ["y"], name="flatten")
        graph = onnx.helper.make_graph([node], "g", [x], [y], [shape])
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])

    with pytest.raises(NotImplementedError, match=r"variable-length input dim\(s\) x\[1\].*"
                                                  r"depends on the length at constant 'shape'"):
        export_free_dims(sigs, write)

