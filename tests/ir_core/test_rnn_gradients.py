"""The recurrent ops' vjps (backpropagation through time: recomputed gates, a `*_bptt` op for the
chain through time, GEMMs for the rest) against central finite differences, in float64 on the eager
executor: every input -- x, kernel, recurrent kernel, bias and the initial states -- with cotangents
on every output (sequence and final states), for each cell variant, direction and activation, with
and without a mask (leading, middle and trailing masked steps)."""

from __future__ import annotations

import numpy as np
import pytest

from kcompile.ir.autodiff import grad
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run

N, T, F, U = 2, 4, 3, 2
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
CASES = [
    ("simple_rnn", {}), ("simple_rnn", {"go_backwards": True, "activation": "sigmoid"}),
    ("lstm", {}), ("lstm", {"go_backwards": True}),
    ("lstm", {"activation": "relu", "recurrent_activation": "tanh"}),
    ("gru", {}), ("gru", {"go_backwards": True}), ("gru", {"reset_after": False}),
    ("gru", {"reset_after": False, "go_backwards": True, "activation": "linear",
             "recurrent_activation": "tanh"}),
]


MASK = np.array([[0, 1, 0, 1], [1, 1, 1, 0]], np.float64)  # (N, T): leading, middle, trailing zeros


def _op_inputs(g: Graph, op: str, attrs: dict, with_states: bool, masked: bool) -> tuple[list, list]:
    """The graph inputs x, kernel, recurrent kernel, bias (and initial states) of a forward op, and
    its constant mask (or none)."""
    gates = GATES[op]
    bias = (2, gates * U) if op == "gru" and attrs.get("reset_after", True) else (gates * U,)
    shapes = [(None, T, F), (F, gates * U), (U, gates * U), bias]
    if with_states:
        shapes += [(None, U)] * (2 if op == "lstm" else 1)
    xs = [g.add_input(TensorType(s, "float64"), f"x{i}") for i, s in enumerate(shapes)]
    return xs, [g.add_node("constant", [], {"value": MASK})[0]] if masked else []


def _graph(op: str, attrs: dict, with_states: bool, masked: bool = False):
    g = Graph(name=f"grad_{op}")
    xs, mask = _op_inputs(g, op, attrs, with_states, masked)
    outs = g.add_node(op, xs + mask, {**attrs, "masked": masked})
    ws = [g.add_input(TensorType(o.shape, "float64"), f"w{k}") for k, o in enumerate(outs)]
    y = None
    for out, w in zip(outs, ws, strict=True):
        term = g.add_node("sum", [g.add_node("mul", [out, w])[0]], {"axes": None})[0]
        y = term if y is None else g.add_node("add", [y, term])[0]
    grads = grad(g, y, xs)
    assert all(gr is not None for gr in grads)
    g.outputs = [y, *grads]
    g.verify()
    return g, xs, ws


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize(("op", "attrs"), CASES, ids=[f"{o}-{'-'.join(a) or 'default'}"
                                                      for o, a in CASES])
def test_bptt_matches_finite_differences(op, attrs, with_states, masked):
    g, xs, ws = _graph(op, attrs, with_states, masked)
    rng = np.random.default_rng(len(xs) + 7 * len(attrs))
    concrete = [tuple(N if d is None else d for d in v.shape) for v in (*xs, *ws)]
    feeds = [rng.standard_normal(s) * (0.6 if k < len(xs) else 1.0) for k, s in enumerate(concrete)]
    analytic = run(g, feeds)[1:]
    eps = 1e-6
    for k, x in enumerate(xs):
        numeric = np.zeros_like(feeds[k])
        for idx in np.ndindex(feeds[k].shape):
            plus, minus = list(feeds), list(feeds)
            plus[k], minus[k] = feeds[k].copy(), feeds[k].copy()
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (run(g, plus)[0] - run(g, minus)[0]) / (2 * eps)
        np.testing.assert_allclose(analytic[k], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{op} {attrs}: d/d{x.name}")


def test_unread_outputs_get_zero_cotangents():
    """Only the final state is read: the sequence output's cotangent is zero, not missing."""
    g = Graph()
    x = g.add_input(TensorType((None, T, F), "float64"), "x")
    w = [g.add_input(TensorType(s, "float64"), n) for s, n in (((F, 4 * U), "k"), ((U, 4 * U), "r"),
                                                                ((4 * U,), "b"))]
    _, h, _ = g.add_node("lstm", [x, *w])
    y = g.add_node("sum", [h], {"axes": None})[0]
    (gx,) = grad(g, y, [x])
    assert [n.op for n in g.nodes].count("lstm_bptt") == 1
    g.outputs = [gx]
    rng = np.random.default_rng(0)
    (dx,) = run(g, [rng.standard_normal((N, T, F)),
                    *[rng.standard_normal(v.shape) for v in w]])
    assert dx.shape == (N, T, F) and np.all(np.isfinite(dx)) and np.any(dx != 0)


def test_second_derivatives_say_so():
    g, xs, _ = _graph("gru", {}, False)
    grad_node = next(n for n in g.nodes if n.op == "gru_bptt")
    y = g.add_node("sum", [grad_node.outputs[1]], {"axes": None})[0]
    with pytest.raises(NotImplementedError, match="'gru_bptt' has no gradient"):
        grad(g, y, xs)


def test_masked_steps_carry_states_and_get_no_gradient():
    """A fully masked sequence returns its initial state everywhere, and no weight moves it."""
    g = Graph()
    x = g.add_input(TensorType((None, T, F), "float64"), "x")
    w = [g.add_input(TensorType(s, "float64"), n) for s, n in (((F, 3 * U), "k"), ((U, 3 * U), "r"),
                                                                ((2, 3 * U), "b"), ((None, U), "h0"))]
    zeros = g.add_node("constant", [], {"value": np.zeros((N, T))})[0]
    y, h = g.add_node("gru", [x, *w, zeros], {"masked": True})
    loss = g.add_node("sum", [g.add_node("mul", [y, y])[0]], {"axes": None})[0]
    grads = grad(g, loss, [x, *w])
    g.outputs = [y, h, *grads]
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((N, T, F))] + [rng.standard_normal((N if d is None else d, *rest))
                                               for d, *rest in (v.shape for v in w)]
    y_v, h_v, dx, dk, dr, db, dh0 = run(g, feeds)
    np.testing.assert_array_equal(y_v, np.repeat(feeds[-1][:, None], T, axis=1))
    np.testing.assert_array_equal(h_v, feeds[-1])
    for d in (dx, dk, dr, db):
        np.testing.assert_array_equal(d, 0)
    np.testing.assert_allclose(dh0, 2 * T * feeds[-1])


def _tape_graph(op: str, attrs: dict, with_states: bool, masked: bool, tape: bool):
    """The loss of `_graph` (cotangents on the sequence and the final states) on a node with or
    without the tape, and its gradients."""
    g = Graph(name=f"tape_{op}")
    xs, mask = _op_inputs(g, op, attrs, with_states, masked)
    outs = g.add_node(op, xs + mask, {**attrs, "masked": masked, "tape": tape})
    outs = outs[:3 if op == "lstm" else 2]
    ws = [g.add_input(TensorType(o.shape, "float64"), f"w{k}") for k, o in enumerate(outs)]
    y = None
    for out, w in zip(outs, ws, strict=True):
        term = g.add_node("sum", [g.add_node("mul", [out, w])[0]], {"axes": None})[0]
        y = term if y is None else g.add_node("add", [y, term])[0]
    g.outputs = [y, *grad(g, y, xs)]
    return g, [*xs, *ws]


TAPE_CASES = [c for c in CASES if c[0] != "simple_rnn"]


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize(("op", "attrs"), TAPE_CASES, ids=[f"{o}-{'-'.join(a) or 'default'}"
                                                           for o, a in TAPE_CASES])
def test_tape_gives_the_recomputed_gradients(op, attrs, with_states, masked):
    """With tape=True the vjp reads the gates' pre-activations from the forward's extra outputs
    instead of recomputing them with two GEMMs over all steps: the same gradients (to rounding),
    and no GEMM over the inputs x or the earlier states h remains but the weight gradients'."""
    plain, values = _tape_graph(op, attrs, with_states, masked, False)
    taped, _ = _tape_graph(op, attrs, with_states, masked, True)
    rng = np.random.default_rng(5)
    feeds = [rng.standard_normal(tuple(N if d is None else d for d in v.shape)) for v in values]
    for got, want in zip(run(taped, feeds), run(plain, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    gemms = {g: sum(n.op == "matmul" for n in graph.nodes) for g, graph in (("plain", plain),
                                                                            ("taped", taped))}
    recomputed = 2 if op == "lstm" or attrs.get("reset_after", True) else 3
    assert gemms["plain"] - gemms["taped"] == recomputed


def test_tape_outputs_have_no_gradient():
    g = Graph()
    x = g.add_input(TensorType((None, T, F), "float64"), "x")
    w = [g.add_input(TensorType(s, "float64"), n) for s, n in (((F, 4 * U), "k"), ((U, 4 * U), "r"),
                                                                ((4 * U,), "b"))]
    *_, z = g.add_node("lstm", [x, *w], {"tape": True})
    y = g.add_node("sum", [z], {"axes": None})[0]
    with pytest.raises(NotImplementedError, match="tape outputs"):
        grad(g, y, [x])
