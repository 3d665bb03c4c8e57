"""TensorType, the printer, the verifier and the interpreter's input checks."""

from __future__ import annotations

import numpy as np
import pytest

from kcompile.ir.core import Graph, Node, TensorType, topo_sort
from kcompile.ir.interpret import run


def _graph():
    g = Graph(name="g")
    x = g.add_input(TensorType((None, 3)), "x")
    w = g.add_param(TensorType((3, 2)), "w")
    h = g.add_node("matmul", [x, w], label="dense")[0]
    g.outputs = g.add_node("relu", [h])
    return g, x, w, h


def test_tensor_type():
    t = TensorType((None, 28, 28, 1))
    assert str(t) == "float32[Nx28x28x1]" and t.rank == 4
    assert t.with_batch(5).shape == (5, 28, 28, 1)
    assert t.matches((7, 28, 28, 1), np.float32) and not t.matches((7, 28, 28, 2))
    assert not t.matches((7, 28, 28, 1), np.float64)
    with pytest.raises(TypeError, match="unsupported dtype"):
        TensorType((1,), "complex64")
    with pytest.raises(ValueError, match="negative"):
        TensorType((-1,))


def test_printer_shows_one_op_per_line():
    g, *_ = _graph()
    text = str(g)
    lines = text.splitlines()
    assert lines[0] == "graph g("
    assert any("= matmul(%x, %w)  # dense" in line for line in lines)
    assert any("float32[Nx2] = relu(" in line for line in lines)
    assert lines[-2].startswith("  return")


def test_verifier_catches_broken_graphs():
    g, x, w, h = _graph()
    g.verify()
    g.nodes.reverse()  # relu before matmul: use before definition
    with pytest.raises(ValueError, match="before it is defined"):
        g.verify()
    g, x, w, h = _graph()
    g.nodes[0].outputs[0].type = TensorType((None, 5))  # wrong declared type
    with pytest.raises(ValueError, match="infer gives"):
        g.verify()
    g, x, w, h = _graph()
    g.nodes.append(g.nodes[0])  # the same value defined twice
    with pytest.raises(ValueError, match="defined twice"):
        g.verify()
    g, *_ = _graph()
    g.outputs = [Node("relu", [], {}, [TensorType((1,))]).outputs[0]]
    with pytest.raises(ValueError, match="not defined"):
        g.verify()


def test_topo_sort_and_users():
    g, x, w, h = _graph()
    assert topo_sort(g.outputs) == g.nodes
    assert g.users()[h] == [g.nodes[1]]


def test_interpreter_rejects_bad_inputs():
    g, *_ = _graph()
    w = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="expected 1 input"):
        run(g, [], [w])
    with pytest.raises(ValueError, match=r"input 'x'.*float32.*\(None, 3\).*\(2, 4\)"):
        run(g, [np.ones((2, 4), np.float32)], [w])
    with pytest.raises(ValueError, match="float32"):
        run(g, [np.ones((2, 3), np.float64)], [w])
    with pytest.raises(TypeError, match="NumPy array"):
        run(g, [[[1.0, 2.0, 3.0]]], [w])
    np.testing.assert_allclose(run(g, [np.ones((2, 3), np.float32)], [w])[0], np.full((2, 2), 3.0))


def test_dropout_masks_are_deterministic_and_scaled():
    from kcompile.ir.ops.random import uniform

    g = Graph(name="d")
    x = g.add_input(TensorType((None, 1000)), "x")
    key = g.add_input(TensorType((2,), "uint32"), "key")
    g.outputs = g.add_node("dropout", [x, key], {"rate": 0.25, "salt": 3})
    ones = np.ones((4, 1000), np.float32)
    a = run(g, [ones, np.array([1, 2], np.uint32)])[0]
    b = run(g, [ones, np.array([1, 2], np.uint32)])[0]
    c = run(g, [ones, np.array([1, 3], np.uint32)])[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)
    u = uniform(np.array([5, 6], np.uint32), 1, (100_000,))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
