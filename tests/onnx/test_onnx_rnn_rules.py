"""The Scan-based ONNX rules of the recurrent ops (kcompile/ir/ops/rnn_onnx.py) on plain IR graphs:
the masked forward ops (`simple_rnn`, `lstm`, `gru` with masked=True) and the backpropagation-
through-time chains `simple_rnn_bptt`, `lstm_bptt`, `gru_bptt`.

Each graph is written ONCE for every batch size and sequence length: traced at three lengths, the
three files must be identical up to their declared shapes (nothing may bake the length in), and the
merged file, whose batch and time dims are symbolic, is run by onnxruntime at several (batch,
length) pairs -- one step included -- against the ops' NumPy refs through kcompile's interpreter.
Parameters are initializers (inference export) and graph inputs (the training-step form). Masks
hold every pattern Keras can produce: left and right padding, holes, rows all masked or all real.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnx_testing import op_types, session

from kcompile.codegen.onnx import graph_to_onnx
from kcompile.codegen.onnx.dynamic import _without_shapes
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run

N = None
F, U = 3, 4
SHAPES = ((1, 1), (2, 6), (5, 11))  # (batch, length), all from one file
TRACE_LENGTHS = (5, 6, 7)
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


# -- one file for every length -----------------------------------------------------------------------
def _declared(proto: onnx.ModelProto) -> list:
    return [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]


def _any_length(build, params: list[np.ndarray] | None) -> onnx.ModelProto:
    """`build(t)` written at three lengths; the files must agree but for declared shapes, where the
    dims that follow the length become the symbol "time" (as export_free_dims does for models)."""
    protos = [graph_to_onnx(build(t), weights=params, check=False) for t in TRACE_LENGTHS]
    stripped = {_without_shapes(p).SerializeToString() for p in protos}
    assert len(stripped) == 1, "the ONNX graph depends on the sequence length"
    base = protos[0]
    for infos in zip(*(_declared(p) for p in protos), strict=True):
        dims = [vi.type.tensor_type.shape.dim for vi in infos]
        for column in zip(*dims, strict=True):
            values = [d.dim_value if d.HasField("dim_value") else None for d in column]
            if values == list(TRACE_LENGTHS):
                column[0].Clear()
                column[0].dim_param = "time"
            else:
                assert len(set(values)) == 1, f"{infos[0].name}: a dim varies as {values}"
    onnx.checker.check_model(base, full_check=True)
    return base


def _check(build, draw, params: list[np.ndarray], rtol: float = 1e-5, atol: float = 1e-5
           ) -> onnx.ModelProto:
    """One file with `params` as initializers and one with them as inputs; onnxruntime == the
    interpreter at every (batch, length) of SHAPES, and onnx.reference at one of them (the Scans use
    only what every runtime has); `draw(batch, length, rng)` gives the inputs."""
    protos = [_any_length(build, params), _any_length(build, None)]
    for proto, with_params in zip(protos, (False, True), strict=True):
        runners = [(session(proto.SerializeToString()), SHAPES)]
        if not with_params:
            runners.append((ReferenceEvaluator(proto), SHAPES[1:2]))
        names = [i.name for i in proto.graph.input]
        for sess, batch, length in ((r, b, t) for r, shapes in runners for b, t in shapes):
            inputs = draw(batch, length, np.random.default_rng(batch * 100 + length))
            want = run(build(length), inputs, params)
            assert all(np.isfinite(w).all() for w in want), "draw inputs that stay finite"
            got = sess.run(None, dict(zip(names, [*inputs, *params] if with_params else inputs,
                                          strict=True)))
            assert len(got) == len(want)
            for k, (g, w) in enumerate(zip(got, want, strict=True)):
                what = f"{type(sess).__name__}, output {k}, batch {batch}, length {length}, " \
                       f"params as {'inputs' if with_params else 'initializers'}"
                assert g.shape == w.shape and g.dtype == w.dtype, what
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)
    return protos[0]


def _normal(rng, shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def masks(batch: int, length: int, rng) -> np.ndarray:
    """Rows of every kind Keras produces (left/right padding, holes, all real, all masked), then
    random ones."""
    m = (rng.random((batch, length)) < 0.6).astype(np.float32)
    kinds = [np.ones(length), np.r_[np.zeros(length // 2), np.ones(length - length // 2)],
             np.r_[np.ones(length - length // 3), np.zeros(length // 3)], np.zeros(length)]
    for row, kind in zip(m, kinds, strict=False):
        row[:] = kind
    if batch == 1:  # a single row: padding on both ends and a hole, where the length allows
        m[0] = 1
        m[0, [0, length // 2, length - 1][:length - 1]] = 0
    return m


# -- masked forward ops ------------------------------------------------------------------------------
FORWARD = [(cell, ra, gb, st, acts) for cell in ("simple_rnn", "lstm", "gru")
           for ra in ((True, False) if cell == "gru" else (False,))
           for gb in (False, True) for st in (False, True)
           for acts in (("tanh", "sigmoid"), ("relu", "tanh"))
           if not (st and acts[0] == "relu")] + \
    [(cell, cell == "gru", False, False, ("linear", "sigmoid")) for cell in ("simple_rnn", "lstm", "gru")]
FORWARD_IDS = [f"{c}{'-reset_before' if c == 'gru' and not ra else ''}{'-backwards' if gb else ''}"
               f"{'-states' if st else ''}-{a[0]}-{a[1]}" for c, ra, gb, st, a in FORWARD]


def _forward_graph(cell, reset_after, go_backwards, states, acts, masked=True, tape=False):
    g_units = GATES[cell] * U
    n_states = 2 if cell == "lstm" else 1
    attrs = {"activation": acts[0], "go_backwards": go_backwards, "masked": masked}
    if tape:
        attrs["tape"] = True
    if cell != "simple_rnn":
        attrs["recurrent_activation"] = acts[1]
    if cell == "gru":
        attrs["reset_after"] = reset_after

    def build(t):
        g = Graph()
        x = g.add_input(TensorType((N, t, F)), "x")
        s = [g.add_input(TensorType((N, U)), f"state{k}") for k in range(n_states if states else 0)]
        m = [g.add_input(TensorType((N, t)), "mask")] if masked else []
        w = [g.add_param(TensorType(shape), name) for shape, name in
             (((F, g_units), "kernel"), ((U, g_units), "recurrent"),
              ((2, g_units) if reset_after else (g_units,), "bias"))]
        g.outputs = g.add_node(cell, [x, *w, *s, *m], attrs)
        return g

    def draw(batch, length, rng):
        return [_normal(rng, (batch, length, F)),
                *(_normal(rng, (batch, U)) for _ in range(n_states if states else 0)),
                *([masks(batch, length, rng)] if masked else [])]

    rng = np.random.default_rng(7)
    params = [_normal(rng, (F, g_units), 0.5), _normal(rng, (U, g_units), 0.5),
              _normal(rng, (2, g_units) if reset_after else (g_units,), 0.5)]
    return build, draw, params


@pytest.mark.parametrize(("cell", "reset_after", "go_backwards", "states", "acts"), FORWARD,
                         ids=FORWARD_IDS)
def test_masked_forward(cell, reset_after, go_backwards, states, acts):
    build, draw, params = _forward_graph(cell, reset_after, go_backwards, states, acts)
    proto = _check(build, draw, params)
    assert "Scan" in op_types(proto)
    assert not {"RNN", "LSTM", "GRU"} & set(op_types(proto))


def test_unmasked_forward_keeps_onnx_recurrent_ops():
    for cell, onnx_op in (("simple_rnn", "RNN"), ("lstm", "LSTM"), ("gru", "GRU")):
        build, _, params = _forward_graph(cell, cell == "gru", False, False, ("tanh", "sigmoid"),
                                          masked=False)
        types = op_types(graph_to_onnx(build(4), weights=params))
        assert onnx_op in types and "Scan" not in types


def test_masked_steps_carry_the_state():
    """A row masked from some step on repeats its last real output, and the final state is that
    output; a fully masked row keeps its initial state everywhere (checked on onnxruntime alone)."""
    build, draw, params = _forward_graph("lstm", False, False, True, ("tanh", "sigmoid"))
    proto = _any_length(build, params)
    rng = np.random.default_rng(3)
    x, h0, c0, _ = draw(2, 6, rng)
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    y, h, c = session(proto.SerializeToString()).run(None, {"x": x, "state0": h0, "state1": c0,
                                                            "mask": mask})
    np.testing.assert_array_equal(y[0, 3:], np.broadcast_to(y[0, 2], (3, U)))
    np.testing.assert_array_equal(h[0], y[0, 2])
    np.testing.assert_array_equal(y[1], np.broadcast_to(h0[1], (6, U)))
    np.testing.assert_array_equal(c[1], c0[1])


# -- the tape ------------------------------------------------------------------------------------------
TAPE = [(cell, ra, gb, st, masked, acts) for cell in ("lstm", "gru")
        for ra in ((True, False) if cell == "gru" else (False,))
        for gb, st, masked, acts in ((False, False, False, ("tanh", "sigmoid")),
                                     (True, True, False, ("tanh", "sigmoid")),
                                     (True, False, True, ("relu", "tanh")),
                                     (False, True, True, ("tanh", "sigmoid")))]
TAPE_IDS = [f"{c}{'-reset_before' if c == 'gru' and not ra else ''}{'-backwards' if gb else ''}"
            f"{'-states' if st else ''}{'-masked' if m else ''}-{a[0]}" for c, ra, gb, st, m, a in TAPE]


@pytest.mark.parametrize(("cell", "reset_after", "go_backwards", "states", "masked", "acts"), TAPE,
                         ids=TAPE_IDS)
def test_forward_with_tape(cell, reset_after, go_backwards, states, masked, acts):
    """tape=True: the gates' pre-activations recomputed from the sequence output with MatMuls over
    all steps, next to ONNX's LSTM/GRU (unmasked) or the Scan (masked); one step included."""
    build, draw, params = _forward_graph(cell, reset_after, go_backwards, states, acts, masked,
                                         tape=True)
    proto = _check(build, draw, params)
    assert ("Scan" if masked else cell.upper()) in op_types(proto)


# -- backpropagation through time ----------------------------------------------------------------------
ACTS = [("tanh", "sigmoid"), ("relu", "tanh"), ("sigmoid", "linear"), ("linear", "relu")]
ACT_IDS = [f"{a}-{r}" for a, r in ACTS]


def _bptt_graph(op, seqs, rows, acts_attrs, masked, recurrent_shape):
    """An IR graph of one *_bptt op: sequence inputs (name, width), row inputs (name), the
    recurrent kernel as a param, then the mask."""

    def build(t):
        g = Graph()
        values = {name: g.add_input(TensorType((N, t, w)), name) for name, w in seqs}
        values.update({name: g.add_input(TensorType((N, U)), name) for name in rows})
        m = [g.add_input(TensorType((N, t)), "mask")] if masked else []
        values["recurrent"] = g.add_param(TensorType(recurrent_shape), "recurrent")
        order = {"simple_rnn_bptt": ("y", "recurrent", "dy", "dh_T"),
                 "lstm_bptt": ("z", "c0", "recurrent", "dy", "dh_T", "dc_T"),
                 "gru_bptt": ("zx", "hr", "hp", "recurrent", "dy", "dh_T")}[op]
        g.outputs = g.add_node(op, [*(values[k] for k in order), *m], {**acts_attrs, "masked": masked})
        return g

    return build


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "linear"])
def test_simple_rnn_bptt(activation, masked):
    build = _bptt_graph("simple_rnn_bptt", [("y", U), ("dy", U)], ["dh_T"],
                        {"activation": activation}, masked, (U, U))

    def draw(batch, length, rng):
        y = _normal(rng, (batch, length, U))  # an output of the activation: in its range
        y = {"tanh": np.tanh(y), "sigmoid": 1 / (1 + np.exp(-y)), "relu": np.maximum(y, 0)}.get(
            activation, y).astype(np.float32)
        return [y, _normal(rng, (batch, length, U)), _normal(rng, (batch, U)),
                *([masks(batch, length, rng)] if masked else [])]

    _check(build, draw, [_normal(np.random.default_rng(11), (U, U), 0.4)])


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("acts", ACTS, ids=ACT_IDS)
def test_lstm_bptt(acts, masked):
    build = _bptt_graph("lstm_bptt", [("z", 4 * U), ("dy", U)], ["c0", "dh_T", "dc_T"],
                        {"activation": acts[0], "recurrent_activation": acts[1]}, masked, (U, 4 * U))

    def draw(batch, length, rng):
        # inputs in build's order: z, dy (sequences), c0, dh_T, dc_T (rows), the mask
        return [_normal(rng, (batch, length, 4 * U)), _normal(rng, (batch, length, U)),
                *(_normal(rng, (batch, U)) for _ in range(3)),
                *([masks(batch, length, rng)] if masked else [])]

    proto = _check(build, draw, [_normal(np.random.default_rng(12), (U, 4 * U), 0.3)],
                   rtol=2e-5)
    assert op_types(proto).count("Scan") == 2  # the cell states forwards, then the chain backwards


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("acts", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gru_bptt(reset_after, acts, masked):
    build = _bptt_graph("gru_bptt", [("zx", 3 * U), ("hr", 3 * U), ("hp", U), ("dy", U)], ["dh_T"],
                        {"activation": acts[0], "recurrent_activation": acts[1],
                         "reset_after": reset_after}, masked, (U, 3 * U))

    def draw(batch, length, rng):
        return [_normal(rng, (batch, length, 3 * U)), _normal(rng, (batch, length, 3 * U)),
                _normal(rng, (batch, length, U)), _normal(rng, (batch, length, U)),
                _normal(rng, (batch, U)), *([masks(batch, length, rng)] if masked else [])]

    _check(build, draw, [_normal(np.random.default_rng(13), (U, 3 * U), 0.3)], rtol=2e-5)
