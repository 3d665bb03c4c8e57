"""Every op's `onnx` rule on plain IR graphs (no layers): each sample case of the op registry
(tests/ir/test_op_registry.py, float32 and float64) exported and run by onnxruntime and by
onnx.reference at batch sizes 1 and 3, against the op's NumPy `ref`.

Rules work on any graph, so parameters may be initializers (inference export: weights folded into
the layout ONNX wants) or graph inputs (as in a training-step graph): both are checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from onnx_testing import session

from kcompile.codegen.onnx import DEFAULT_OPSET, MIN_OPSET, graph_to_onnx
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.opdef import all_ops, get_op

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from test_op_registry import CASES, F64_CASES, Case, _build, _draw, _to_f64  # noqa: E402

# onnxruntime's CPU provider has no float64 kernels for Conv, ConvTranspose, AveragePool and Erf
# (exact gelu and its gradient): those float64 cases are checked with onnx.reference only.
ORT_NO_FLOAT64 = {"conv2d", "conv2d-dilated", "conv2d-defaults", "avg_pool2d", "avg_pool2d-same",
                  "gelu-exact", "gelu_grad", "conv2d_input_grad", "conv2d_input_grad-dilated",
                  "avg_pool2d_grad", "avg_pool2d_grad-same"}
# onnx.reference's MaxPool writes indices in padded coordinates without the batch and channel
# offsets (onnxruntime's are the flat NCHW index the ONNX spec describes): max_pool2d_grad is
# checked with onnxruntime only.
REFERENCE_WRONG = {"max_pool2d_grad"}
# onnxruntime's RNN/LSTM/GRU have float32 kernels only: the float64 recurrent cases are checked
# with onnx.reference, which in turn ignores `activations` (and rejects Relu): the cases with other
# activations than the defaults are float32 only, checked with onnxruntime.
ORT_NO_FLOAT64 |= {"simple_rnn", "lstm", "lstm-states-backwards", "gru",
                   "gru-reset-before-state-backwards", "lstm-tape-states-backwards", "gru-tape"}
REFERENCE_IGNORES_ACTIVATIONS = {"simple_rnn-state-backwards-relu", "lstm-activations"}
# Every op has a rule (the BPTT chains and the masked recurrent ops are Scans, rnn_onnx.py); an op
# without one would make the export raise NotImplementedError naming it.
NO_RULE_YET: set[str] = set()
# dropout's mask needs BitwiseXor (opset 18); below that its rule raises a clear error.
NEEDS_OPSET_18 = {"dropout"}
# the mask must be bit-identical to the ref's (eager, compiled and exported training agree)
EXACT = {"dropout"}

ALL_CASES = [(c, "float32") for c in CASES if c.op not in NO_RULE_YET] + \
    [(_to_f64(c), "float64") for c in F64_CASES if c.op not in NO_RULE_YET]
IDS = [f"{c.id}-{d}" for c, d in ALL_CASES]


def test_rules_cover_every_op():
    assert {name for name, op in all_ops().items() if op.onnx is None} == NO_RULE_YET


def test_ops_without_a_rule_say_so(monkeypatch):
    (case,) = [c for c in CASES if c.op == "relu"]
    monkeypatch.setattr(get_op("relu"), "onnx", None)
    with pytest.raises(NotImplementedError, match=r"op 'relu' \(no layer\) has no ONNX rule"):
        graph_to_onnx(_build(case), weights=_data(case, 1)[1])


def _data(case: Case, batch: int):
    rng = np.random.default_rng(batch)
    arrays = [_draw(a, batch, rng) for a in case.args]
    inputs = [x for a, x in zip(case.args, arrays, strict=True) if not a.param]
    params = [x for a, x in zip(case.args, arrays, strict=True) if a.param]
    return inputs, params


def _compare(got: np.ndarray, want: np.ndarray, what: str, exact: bool = False) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET])
@pytest.mark.parametrize(("case", "dtype"), ALL_CASES, ids=IDS)
def test_rule_matches_ref(case, dtype, opset):
    g = _build(case)
    feeds = [_data(case, batch) for batch in (1, 3)]
    if case.op in NEEDS_OPSET_18 and opset < 18:
        with pytest.raises(NotImplementedError, match=rf"op '{case.op}' \(no layer\): .*opset >= 18"):
            graph_to_onnx(g, weights=feeds[0][1], opset_version=opset)
        return
    proto = graph_to_onnx(g, weights=feeds[0][1], opset_version=opset)  # checker full_check inside
    names = [i.name for i in proto.graph.input]
    ort_ok = dtype == "float32" or case.id not in ORT_NO_FLOAT64
    sess = session(proto.SerializeToString()) if ort_ok else None
    evaluator = None if case.op in REFERENCE_WRONG or case.id in REFERENCE_IGNORES_ACTIVATIONS \
        else ReferenceEvaluator(proto)
    exact = case.op in EXACT
    assert sess is not None or evaluator is not None
    for batch, (inputs, _) in zip((1, 3), feeds, strict=True):
        wants = run(g, inputs, feeds[0][1])  # the weights baked into the file
        feed = dict(zip(names, inputs, strict=True))
        for runner, what in ((sess, "onnxruntime"), (evaluator, "onnx.reference")):
            if runner is not None:
                gots = runner.run(None, feed)
                assert len(gots) == len(wants)
                for k, (got, want) in enumerate(zip(gots, wants, strict=True)):
                    _compare(got, want, f"{what}, batch {batch}, output {k}", exact)


RULE_CASES = [c for c in CASES if c.op not in NO_RULE_YET]


@pytest.mark.parametrize("case", RULE_CASES, ids=[c.id for c in RULE_CASES])
def test_params_as_graph_inputs(case):
    """Without weights the params are graph inputs (the training-step form): nothing is folded."""
    g = _build(case)
    inputs, params = _data(case, 3)
    proto = graph_to_onnx(g)
    assert [i.name for i in proto.graph.input] == [v.name for v in (*g.inputs, *g.params)]
    assert not {t.name for t in proto.graph.initializer} & {p.name for p in g.params}
    sess = session(proto.SerializeToString())
    gots = sess.run(None, dict(zip([i.name for i in proto.graph.input], [*inputs, *params],
                                   strict=True)))
    for got, want in zip(gots, run(g, inputs, params), strict=True):
        _compare(got, want, "onnxruntime", case.op in EXACT)


def test_graph_output_names_inputs_params_and_repeats():
    """An output may be an input, a param, a constant or the same value twice: each gets its own
    output name through Identity."""
    g = Graph(name="odd")
    x = g.add_input(TensorType((None, 3)), "x")
    w = g.add_param(TensorType((3,)), "w")
    (y,) = g.add_node("add", [x, w])
    (c,) = g.add_node("constant", [], {"value": np.array(2.0, np.float32)})
    g.outputs = [y, x, w, y, c]
    w_val = np.arange(3, dtype=np.float32)
    proto = graph_to_onnx(g, weights=[w_val])
    sess = session(proto.SerializeToString())
    x_val = np.ones((2, 3), np.float32)
    outs = sess.run(None, {"x": x_val})
    assert [o.name for o in proto.graph.output] == [f"output_{k}" for k in range(5)]
    for got, want in zip(outs, [x_val + w_val, x_val, w_val, x_val + w_val, np.float32(2.0)],
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_layout_twins_are_reused_and_dropped():
    """conv -> bias -> relu -> conv written on plain graphs: NCHW inside, one transpose each way."""
    g = Graph()
    x = g.add_input(TensorType((None, 6, 6, 2)), "x")
    k1, b1 = g.add_param(TensorType((3, 3, 2, 4)), "k1"), g.add_param(TensorType((4,)), "b1")
    k2 = g.add_param(TensorType((1, 1, 4, 3)), "k2")
    (h,) = g.add_node("conv2d", [x, k1], {"padding": "same"})
    (h,) = g.add_node("bias_add", [h, b1])
    (h,) = g.add_node("relu", [h])
    (y,) = g.add_node("conv2d", [h, k2])
    g.outputs = [y]
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(p.shape).astype(np.float32) for p in g.params]
    proto = graph_to_onnx(g, weights=weights)
    assert [n.op_type for n in proto.graph.node] == ["Transpose", "Conv", "Add", "Relu", "Conv",
                                                     "Transpose"]
    assert {t.name for t in proto.graph.initializer} == {"k1_oihw", "b1_c11", "k2_oihw"}
    xv = rng.standard_normal((3, 6, 6, 2)).astype(np.float32)
    sess = session(proto.SerializeToString())
    np.testing.assert_allclose(sess.run(None, {"x": xv})[0], run(g, [xv], weights)[0], rtol=1e-5,
                               atol=1e-5)
