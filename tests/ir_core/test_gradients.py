"""Every op's vjp against central finite differences, in float64 on the eager executor."""

from __future__ import annotations

import numpy as np
import pytest
from test_ir_registry import SAMPLES

from kcompile.ir.autodiff import grad
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.opdef import all_ops

NO_GRADIENT = {"compare", "argmax", "one_hot", "stop_gradient", "constant"}
SECOND_ORDER_ONLY = {"conv2d_input_grad", "conv2d_filter_grad", "max_pool2d_grad",
                     "avg_pool2d_grad", "gelu_grad", "fused", "simple_rnn_bptt", "lstm_bptt",
                     "gru_bptt"}
# inputs where the op is smooth: signs mixed but away from kinks and ties
MIXED = {"relu", "abs", "maximum", "minimum", "max", "max_pool2d", "neg", "tanh", "sigmoid", "gelu",
         "softmax", "log_softmax", "add", "sub", "mul", "matmul", "conv2d", "bias_add", "sum", "mean",
         "pad", "gather", "scatter_add", "simple_rnn", "lstm", "gru"}


def _f64(types):
    return [(shape, "float64" if dtype == "float32" else dtype) for shape, dtype in types]


def _values(types, rng, op):
    arrays = []
    for shape, dtype in types:
        concrete = tuple(2 if d is None else d for d in shape)
        if dtype == "uint32":
            arrays.append(np.array([3, 9], np.uint32))
        elif dtype in ("int32", "int64"):  # ids (gather, scatter_add): repeats accumulate
            arrays.append(rng.integers(0, 4, concrete).astype(dtype))
        elif op in MIXED:
            mag = rng.uniform(0.3, 1.5, concrete)
            arrays.append(mag * rng.choice([-1.0, 1.0], concrete))
        else:
            arrays.append(rng.uniform(0.5, 1.5, concrete))
    return arrays


def _attrs(op, attrs):
    attrs = dict(attrs)
    if op == "constant":
        attrs["value"] = attrs["value"].astype(np.float64)
    return attrs


def _graph(op, types, attrs):
    """y = sum over the op's outputs of sum(output * w_k), with one weight input w_k per output
    (the recurrent ops have several: sequence and final states)."""
    g = Graph(name=f"grad_{op}")
    xs = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    outs = g.add_node(op, xs, attrs)
    ws = [g.add_input(TensorType(o.shape, o.dtype), f"w{k}") for k, o in enumerate(outs)]
    y = None
    for out, w in zip(outs, ws, strict=True):
        term = g.add_node("sum", [g.add_node("mul", [out, w])[0]], {"axes": None})[0]
        y = term if y is None else g.add_node("add", [y, term])[0]
    return g, xs, ws, y


@pytest.mark.parametrize("op", sorted(set(SAMPLES) - NO_GRADIENT - SECOND_ORDER_ONLY))
def test_vjp_matches_finite_differences(op):
    types, attrs = SAMPLES[op]
    types, attrs = _f64(types), _attrs(op, attrs)
    rng = np.random.default_rng(hash(op) % 2**32)
    g, xs, ws, y = _graph(op, types, attrs)
    float_inputs = [x for x in xs if x.dtype == "float64"]
    grads = grad(g, y, float_inputs)
    g.outputs = [y] + [gr for gr in grads if gr is not None]
    g.verify()
    inputs = _values(types, rng, op)
    feeds = inputs + [rng.standard_normal(tuple(2 if d is None else d for d in w.shape)) for w in ws]
    outs = run(g, feeds)
    analytic = iter(outs[1:])
    for x, gr in zip(float_inputs, grads, strict=True):
        k = xs.index(x)
        numeric = np.zeros_like(inputs[k])
        eps = 1e-6
        for idx in np.ndindex(inputs[k].shape):
            plus, minus = [a.copy() for a in feeds], [a.copy() for a in feeds]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (run(g, plus)[0] - run(g, minus)[0]) / (2 * eps)
        if gr is None:
            np.testing.assert_allclose(numeric, 0, atol=1e-6, err_msg=f"{op}: input {k}")
        else:
            np.testing.assert_allclose(next(analytic), numeric, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{op}: input {k}")


@pytest.mark.parametrize("op", sorted(NO_GRADIENT - {"constant"}))
def test_piecewise_constant_ops_pass_no_gradient(op):
    types, attrs = SAMPLES[op]
    types = _f64(types)
    g = Graph(name=op)
    xs = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    (out,) = g.add_node(op, xs, attrs)
    y = g.add_node("sum", [g.add_node("cast", [out], {"dtype": "float64"})[0]], {"axes": None})[0]
    assert grad(g, y, [x for x in xs if x.dtype == "float64"]) == [None] * sum(
        x.dtype == "float64" for x in xs)


@pytest.mark.parametrize("op", sorted(SECOND_ORDER_ONLY - {"fused"}))
def test_second_order_ops_say_so(op):
    types, attrs = SAMPLES[op]
    g, xs, _, y = _graph(op, _f64(types), _attrs(op, attrs))
    with pytest.raises(NotImplementedError, match=op):
        grad(g, y, xs)


def test_every_op_has_a_vjp_or_is_internal():
    missing = [name for name, op in all_ops().items() if op.vjp is None and "internal" not in op.tags]
    assert not missing, f"ops without a vjp: {missing}"


def test_fused_nodes_are_never_differentiated():
    types, attrs = SAMPLES["fused"]
    g, xs, _, y = _graph("fused", types, attrs)
    with pytest.raises(NotImplementedError, match="fused"):
        grad(g, y, xs)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_matmul_transposed_operands(ta, tb, batched):
    lead = (2,) if batched else ()
    a_shape = (*lead, 4, 3) if ta else (*lead, 3, 4)
    b_shape = (5, 4) if tb else (4, 5)
    g = Graph(name="mm")
    a = g.add_input(TensorType(a_shape, "float64"), "a")
    b = g.add_input(TensorType(b_shape, "float64"), "b")
    (out,) = g.add_node("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb})
    w = g.add_input(TensorType(out.shape, "float64"), "w")
    y = g.add_node("sum", [g.add_node("mul", [out, w])[0]], {"axes": None})[0]
    ga, gb = grad(g, y, [a, b])
    g.outputs = [y, ga, gb]
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal(a_shape), rng.standard_normal(b_shape),
             rng.standard_normal(out.shape)]
    _, da, db = run(g, feeds)
    for k, analytic in ((0, da), (1, db)):
        numeric = np.zeros_like(feeds[k])
        for idx in np.ndindex(feeds[k].shape):
            plus, minus = [f.copy() for f in feeds], [f.copy() for f in feeds]
            plus[k][idx] += 1e-6
            minus[k][idx] -= 1e-6
            numeric[idx] = (run(g, plus)[0] - run(g, minus)[0]) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)
