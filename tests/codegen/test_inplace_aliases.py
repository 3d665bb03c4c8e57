"""In-place outputs: the compiler keeps an alias only when overwriting the input is safe, stops at
a non-finite guard before writing anything, and the training step updates weights in place."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile
from kcompile import layers as kl
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.core import Graph, TensorType


def _update_graph(read_after: bool):
    """loss = sum(x); p_new = p - 0.5 * x (elementwise); optionally a later reader of p."""
    g = Graph(name="upd")
    x = g.add_input(TensorType((4, 3)), "x")
    p = g.add_input(TensorType((4, 3)), "p")
    (loss,) = g.add_node("sum", [x])
    (half,) = g.add_node("constant", [], {"value": np.array([[0.5]], np.float32)})
    (step,) = g.add_node("mul", [x, half])
    (p_new,) = g.add_node("sub", [p, step])
    outs = [loss, p_new]
    if read_after:
        (late,) = g.add_node("sum", [p])
        outs.append(late)
    g.outputs = outs
    return g


def test_safe_alias_is_kept_and_written_in_place():
    cg = compile_graph(_update_graph(False), aliases={1: 1}, guard=0)
    assert cg.program.aliases == {1: 1}
    cg.set_params([])
    x = np.ones((4, 3), np.float32)
    p = np.full((4, 3), 2.0, np.float32)
    outs = cg.run([x, p], out=[None, p])
    assert outs[1] is p
    np.testing.assert_array_equal(p, np.full((4, 3), 1.5, np.float32))


def test_alias_dropped_when_the_input_is_read_later():
    cg = compile_graph(_update_graph(True), aliases={1: 1}, guard=0)
    assert cg.program.aliases == {}
    cg.set_params([])
    p = np.full((4, 3), 2.0, np.float32)
    with pytest.raises(ValueError, match="does not allow to be overwritten"):
        cg.run([np.ones((4, 3), np.float32), p], out=[None, p])


def test_guard_stops_before_writing():
    cg = compile_graph(_update_graph(False), aliases={1: 1}, guard=0)
    cg.set_params([])
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    p = np.full((4, 3), 2.0, np.float32)
    outs = cg.run([x, p], out=[None, p])
    assert np.isnan(outs[0])
    np.testing.assert_array_equal(p, np.full((4, 3), 2.0, np.float32))


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_training_updates_weights_in_place_and_skips_non_finite_steps(jit):
    kcompile.utils.set_random_seed(2)
    m = kcompile.Sequential([kcompile.Input((5,)), kl.Dense(8, activation="relu"),
                             kl.BatchNormalization(), kl.Dense(3, activation="softmax")])
    m.compile(kcompile.optimizers.Adam(0.01), "sparse_categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    m.train_on_batch(x, y)
    arrays = [v.value for v in m.weights]
    if jit:
        step, _ = m._train_step_for(x)
        # weights and both Adam slots in place; the BatchNorm statistics are computed in the
        # forward pass, before the guard, so they are copied after the step instead
        assert len(step.compiled.program.aliases) == 3 * len(step.trainable) == 18
    before = m.get_weights()
    slots = [s.copy() for group in m.optimizer.slots for s in group]
    bad = x.copy()
    bad[3, 2] = np.nan
    assert np.isnan(m.train_on_batch(bad, y))
    for a, b in zip(before, m.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(slots, [s for group in m.optimizer.slots for s in group], strict=True):
        np.testing.assert_array_equal(a, b)
    assert m.optimizer.iterations == 1
    m.train_on_batch(x, y)
    assert all(v.value is a for v, a in zip(m.weights, arrays, strict=True))  # same buffers
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    # predict sees the in-place update (compiled inference re-reads the weights)
    np.testing.assert_allclose(m.predict(x, verbose=0), m.predict(x, verbose=0))
    ref = kcompile.Sequential([kcompile.Input((5,)), kl.Dense(8, activation="relu"),
                               kl.BatchNormalization(), kl.Dense(3, activation="softmax")])
    ref.set_weights(m.get_weights())
    np.testing.assert_allclose(m.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-6)
