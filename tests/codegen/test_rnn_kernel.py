"""The LLVM recurrent kernel (kernels/rnn.py) on plain IR graphs: compiled == eager for every cell
at batch sizes that exercise each row-tile variant and the masked unit edge, batch 0; with run-time
weights (a training step's: read row-major, the edge block masked) and with a (batch, time) mask
(padded steps carry the states); with the tape (tape=True: the gates' pre-activations as extra
outputs, a training step's forward); and the generated code: the step's K loop keeps its 6 x 4
accumulator tile in zmm registers, no spills."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, znver4_fma_tiles

from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run as interpret

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path / "cache"))


def _add_rnn(g: Graph, op: str, attrs: dict, units: int, states: bool, t: int = 5, f: int = 3,
             runtime_weights: bool = False, masked: bool = False, tape: bool = False) -> list:
    """One recurrent node with its own inputs (weights as graph inputs when `runtime_weights`, else
    params; the bias is a param); returns its outputs."""
    gates = GATES[op]
    bias = (2, gates * units) if op == "gru" and attrs.get("reset_after", True) else (gates * units,)
    x = g.add_input(TensorType((None, t, f)), "x")
    weight = g.add_input if runtime_weights else g.add_param
    weights = [weight(TensorType(s), n) for s, n in (((f, gates * units), "kernel"),
                                                   ((units, gates * units), "recurrent"))]
    inits = [g.add_input(TensorType((None, units)), f"s{i}")
             for i in range(2 if op == "lstm" else 1)] if states else []
    mask = [g.add_input(TensorType((None, t)), "mask")] if masked else []
    return g.add_node(op, [x, *weights, g.add_param(TensorType(bias), "bias"), *inits, *mask],
                      {**attrs, "masked": masked, **({"tape": True} if tape else {})})


def _graph(op: str, attrs: dict, units: int, states: bool, t: int = 5, f: int = 3) -> Graph:
    g = Graph(name=op)
    g.outputs = _add_rnn(g, op, attrs, units, states, t, f)
    return g


CASES = [("simple_rnn", {}, 20), ("simple_rnn", {"go_backwards": True, "activation": "relu"}, 16),
         ("lstm", {}, 20), ("lstm", {"go_backwards": True, "recurrent_activation": "tanh"}, 3),
         ("gru", {}, 17), ("gru", {"go_backwards": True, "activation": "sigmoid"}, 32),
         ("gru", {"reset_after": False}, 19),
         ("gru", {"reset_after": False, "go_backwards": True, "activation": "sigmoid"}, 16)]


@pytest.mark.parametrize("states", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize(("op", "attrs", "units"), CASES,
                         ids=[f"{o}-{'-'.join(a) or 'default'}-{u}" for o, a, u in CASES])
def test_compiled_matches_eager(op, attrs, units, states):
    g = _graph(op, attrs, units, states)
    rng = np.random.default_rng(units)
    params = [(rng.standard_normal(p.shape) * 0.4).astype(np.float32) for p in g.params]
    cg = compile_graph(g)
    cg.set_params(params)
    for batch in (0, 1, 2, 5, 17):  # on two threads: single rows, pairs, 6-row tiles
        feeds = [rng.standard_normal((batch, *v.shape[1:])).astype(np.float32) for v in g.inputs]
        got = cg.run(feeds)
        want = interpret(g, feeds, params)
        for a, w in zip(got, want, strict=True):
            assert a.shape == w.shape
            assert_close(a, w)


def _masks(batch: int, t: int, rng) -> np.ndarray:
    """Random 0/1 steps, with leading, trailing and middle zeros, an all-padded and a full row."""
    m = (rng.random((batch, t)) > 0.4).astype(np.float32)
    for row, cols in enumerate([slice(0, 2), slice(t - 2, t), slice(t // 2, t // 2 + 1), slice(0, t)]):
        if row < batch:
            m[row] = 1.0
            m[row, cols] = 0.0
    if batch > 4:
        m[4] = 1.0
    return m


RT_CASES = [(*c, False) for c in CASES] + [(*c, True) for c in CASES if c[0] != "simple_rnn"]


@pytest.mark.parametrize(("op", "attrs", "units", "tape"), RT_CASES,
                         ids=[f"{o}-{'-'.join(a) or 'default'}-{u}{'-tape' if tp else ''}"
                              for o, a, u, tp in RT_CASES])
def test_runtime_weights_and_mask(op, attrs, units, tape):
    """Three nodes in one compiled graph: run-time weights with initial states, run-time weights
    masked without, static weights masked with initial states; with the tape, every output of
    every node (the tape of masked steps included) matches the ref."""
    t = 6
    g = Graph(name=f"{op}_rt")
    variants = [(True, False, True), (True, True, False), (False, True, True)]
    g.outputs = [v for rt, masked, states in variants
                 for v in _add_rnn(g, op, attrs, units, states, t, runtime_weights=rt, masked=masked,
                                   tape=tape)]
    rng = np.random.default_rng(units + 1)
    params = [(rng.standard_normal(p.shape) * 0.4).astype(np.float32) for p in g.params]
    cg = compile_graph(g)
    cg.set_params(params)
    for batch in (1, 3, 7, 32):
        feeds = []
        for v in g.inputs:
            if v.name == "mask":
                feeds.append(_masks(batch, t, rng))
            elif v.shape[0] is None:
                feeds.append(rng.standard_normal((batch, *v.shape[1:])).astype(np.float32))
            else:  # run-time weights
                feeds.append((rng.standard_normal(v.shape) * 0.4).astype(np.float32))
        got = cg.run(feeds)
        want = interpret(g, feeds, params)
        for a, w in zip(got, want, strict=True):
            assert_close(a, w)


def test_step_tile_stays_in_registers():
    tiles = znver4_fma_tiles(_graph("lstm", {}, 128, False, t=50, f=32), 24)
    assert tiles, "no basic block with the 6 rows x 4 gates tile of zmm FMAs"
    assert any("rsp" not in blk and "rbp)" not in blk for blk in tiles), \
        "the K loop of the 6-row LSTM step spills"
