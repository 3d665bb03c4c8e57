"""The LLVM backpropagation-through-time kernels (kernels/rnn_bptt.py) and compiled recurrent training.

Kernel == the ops' NumPy refs for every cell and activation, units below / not a multiple of the
vector width and with a last register tile only partly of units, T = 1, batch 1, 3, 7 and 32 (row
tiles, pairs and single rows on two threads), masks with leading / trailing / middle zeros and
all-padded rows. Several nodes share one compiled graph (an LLVM compile costs ~0.3 s).

Then whole models: the compiled training step (the default jit_compile, no "trains eagerly"
fallback) == the eager one over three Adam steps for SimpleRNN, LSTM and GRU (both reset_after
values), with go_backwards, return_sequences, initial states and Masking.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_close, znver4_fma_tiles

from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run as interpret


@pytest.fixture(autouse=True)
def _cache(module_cache_dir):
    """A private, cold compile cache for this module."""


def _add_bptt(g: Graph, op: str, attrs: dict, u: int, t: int, masked: bool) -> list:
    if op == "simple_rnn_bptt":
        shapes = [("y", (None, t, u)), ("recurrent", (u, u)), ("dy", (None, t, u)), ("dh", (None, u))]
    elif op == "lstm_bptt":
        shapes = [("z", (None, t, 4 * u)), ("c0", (None, u)), ("recurrent", (u, 4 * u)),
                  ("dy", (None, t, u)), ("dh", (None, u)), ("dc", (None, u))]
    else:
        shapes = [("zx", (None, t, 3 * u)), ("hr", (None, t, 3 * u)), ("hp", (None, t, u)),
                  ("recurrent", (u, 3 * u)), ("dy", (None, t, u)), ("dh", (None, u))]
    if masked:
        shapes.append(("mask", (None, t)))
    inputs = [g.add_input(TensorType(s), name) for name, s in shapes]
    return g.add_node(op, inputs, {**attrs, "masked": masked})


def _mask(batch: int, t: int, rng) -> np.ndarray:
    m = (rng.random((batch, t)) > 0.4).astype(np.float32)
    for row, cols in enumerate([slice(0, 2), slice(t - 2, t), slice(t // 2, t // 2 + 1), slice(0, t)]):
        if row < batch:  # leading, trailing, middle zeros, all padded
            m[row] = 1.0
            m[row, cols] = 0.0
    return m


def _feed(v, batch: int, rng, squash: str | None) -> np.ndarray:
    if v.name == "mask":
        return _mask(batch, v.shape[1], rng)
    shape = tuple(batch if d is None else d for d in v.shape)
    if v.name == "recurrent":  # a trained-like scale: the chain neither explodes nor vanishes
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    a = rng.standard_normal(shape).astype(np.float32) * np.float32(0.7)
    if v.name == "y" and squash == "tanh":  # outputs of the activation, as in a real graph
        a = np.tanh(a)
    elif v.name == "y" and squash == "sigmoid":
        a = 1 / (1 + np.exp(-a))
    elif v.name == "y" and squash == "relu":
        a = np.maximum(a, 0)
    return a


# (units, steps, masked): below the vector width, a multiple of it, an edge block, T = 1, and
# (70 units: 5 blocks) a last register tile of 4 blocks with only one block of units; every cell
# (and GRU reset_after / reset_before each) meets all five.
SHAPES = [(3, 1, True), (16, 3, False), (20, 4, True), (37, 5, False), (70, 3, True)]
CONFIGS = [  # (op, attrs, indices into SHAPES)
    ("simple_rnn_bptt", {"activation": "tanh"}, (0, 1, 2)),
    ("simple_rnn_bptt", {"activation": "relu"}, (3, 4, 0)),
    ("simple_rnn_bptt", {"activation": "sigmoid"}, (1, 2, 3)),
    ("simple_rnn_bptt", {"activation": "linear"}, (4, 2, 1)),
    ("lstm_bptt", {}, (0, 1, 2, 4)),
    ("lstm_bptt", {"activation": "relu", "recurrent_activation": "tanh"}, (3, 4, 2)),
    ("lstm_bptt", {"activation": "linear", "recurrent_activation": "sigmoid"}, (0, 3)),
    ("gru_bptt", {"reset_after": True}, (0, 1, 2, 4)),
    ("gru_bptt", {"reset_after": True, "activation": "sigmoid", "recurrent_activation": "tanh"}, (3, 4)),
    ("gru_bptt", {"reset_after": False}, (0, 2, 3, 4)),
    ("gru_bptt", {"reset_after": False, "activation": "relu", "recurrent_activation": "tanh"}, (1, 2)),
]


@pytest.mark.parametrize(("op", "attrs", "shapes"), CONFIGS,
                         ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in a.items())}" for o, a, _ in CONFIGS])
def test_bptt_kernel_matches_ref(op, attrs, shapes):
    g = Graph(name=op)
    g.outputs = [v for i in shapes for v in _add_bptt(g, op, attrs, *SHAPES[i])]
    cg = compile_graph(g)
    cg.set_params([])
    rng = np.random.default_rng(len(op) + len(attrs))
    for batch in (1, 3, 7, 32):
        feeds = [_feed(v, batch, rng, attrs.get("activation")) for v in g.inputs]
        got = cg.run(feeds)
        want = interpret(g, feeds, [])
        for a, w in zip(got, want, strict=True):
            assert a.shape == w.shape
            assert_close(a, w)


def test_carry_gemm_tile_stays_in_registers():
    """LSTM(128)'s step: the K loop of dZ[:, k+1] @ R^T keeps 6 rows x 4 unit blocks in zmm
    registers (24 FMAs per k), no spills."""
    g = Graph(name="lstm_bptt")
    g.outputs = _add_bptt(g, "lstm_bptt", {}, 128, 50, False)
    tiles = znver4_fma_tiles(g, 24)
    assert tiles, "no basic block with the 6 rows x 4 blocks tile of zmm FMAs"
    assert any("rsp" not in blk and "rbp)" not in blk for blk in tiles), "the carry GEMM spills"


# --- whole models: compiled training step == eager ------------------------------------------------
def _model(jit):
    """Every recurrent layer in one functional model (one compile: a training step's graph costs
    seconds): four branches over the same masked input, flattened, concatenated, Dense(3)."""
    import kcompile
    from kcompile import layers

    x = kcompile.Input((6, 5))
    s = [kcompile.Input((7,)) for _ in range(3)]
    h = layers.Masking(0.0)(x)
    branches = [
        layers.LSTM(7, return_sequences=True)(h, initial_state=s[:2]),
        layers.GRU(7, go_backwards=True)(h),
        layers.GRU(7, reset_after=False, return_sequences=True, activation="relu")(h),
        layers.SimpleRNN(7, go_backwards=True)(h, initial_state=s[2:]),
    ]
    flat = [layers.Flatten()(v) if len(v.shape) == 3 else v for v in branches]
    model = kcompile.Model([x, *s], layers.Dense(3)(layers.Concatenate()(flat)))
    model.compile(optimizer=kcompile.optimizers.SGD(0.05, momentum=0.5), loss="mse", jit_compile=jit)
    return model


def test_compiled_training_equals_eager():
    """Three SGD-with-momentum steps (fewer kernels to compile than Adam), compiled (jit_compile left
    at its default, and no "trains eagerly" fallback allowed) == eager; `fit` runs the compiled
    step. (The kernels unmasked, and each op's gradient alone: above and test_compiled_gradients.py.)"""
    import kcompile

    kcompile.utils.set_random_seed(3)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 6, 5)).astype(np.float32)
    x[0, :2] = x[1, -3:] = x[2, 3] = 0.0  # padded steps for Masking(0.0)
    feeds = [x] + [rng.standard_normal((9, 7)).astype(np.float32) for _ in range(3)]
    y = rng.standard_normal((9, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Layer .* does not support masking", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)  # "trains eagerly" would fail the test
        compiled = _model("auto")
        eager = _model(False)
        eager.set_weights(compiled.get_weights())
        history = compiled.fit(feeds, y, epochs=3, batch_size=9, shuffle=False, verbose=0)
        losses = [eager.train_on_batch(feeds, y) for _ in range(3)]
    step, _ = compiled._train_step_for(feeds)
    assert step.compiled is not None
    assert_close(history.history["loss"], losses)
    for a, w in zip(compiled.get_weights(), eager.get_weights(), strict=True):
        assert_close(a, w)
