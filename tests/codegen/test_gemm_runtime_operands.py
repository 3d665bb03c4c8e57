"""The GEMM with run-time operands (training: weights and gradients are graph inputs): B packed per
panel and K block at run time, every transpose combination, K split into several blocks, column
and row edges, batched operands, and the narrower ISAs."""

from __future__ import annotations

import numpy as np
import pytest

from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.codegen.llvm.jit import host_target
from kcompile.ir.core import Graph, TensorType

# K = 2100 spans several packed blocks on every ISA (at most 2048 rows of B per block)
SHAPES = [(1, 1, 1), (5, 7, 10), (13, 64, 17), (6, 600, 130), (7, 2100, 33), (64, 33, 64)]


def _run(m, k, n, ta, tb, batch=None, isa=None, epilogue=False):
    rng = np.random.default_rng(m * 1000 + k + n)
    lead = () if batch is None else (batch,)
    a_shape = (*lead, k, m) if ta else (*lead, m, k)
    b_shape = (*lead, n, k) if tb else (*lead, k, n)
    g = Graph(name="gemm")
    # M as the run-time batch dim where it leads (the transposed-A case is static here; the
    # contraction over a run-time batch has its own test below)
    a_type = TensorType((None, *a_shape[1:]) if batch is None and not ta else a_shape)
    a = g.add_input(a_type, "a")
    bv = g.add_input(TensorType(b_shape), "b")
    (out,) = g.add_node("matmul", [a, bv], {"transpose_a": ta, "transpose_b": tb})
    if epilogue:
        (out,) = g.add_node("relu", [out])
    g.outputs = [out]
    cg = compile_graph(g, target=host_target(isa))
    cg.set_params([])
    A = rng.standard_normal(a_shape, dtype=np.float32)
    B = rng.standard_normal(b_shape, dtype=np.float32)
    got = cg.run([A, B])[0]
    want = np.matmul(np.swapaxes(A, -1, -2) if ta else A, np.swapaxes(B, -1, -2) if tb else B)
    if epilogue:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_runtime_gemm_all_transposes(m, k, n, ta, tb):
    _run(m, k, n, ta, tb, epilogue=(m + n) % 2 == 0)


@pytest.mark.parametrize("m,k,n", [(5, 7, 10), (7, 2100, 33)])
def test_runtime_gemm_epilogue_applies_once_after_all_k_blocks(m, k, n):
    _run(m, k, n, False, False, epilogue=True)
    _run(m, k, n, True, True, epilogue=True)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_runtime_gemm_batched(ta, tb):
    _run(6, 40, 20, ta, tb, batch=3)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_runtime_gemm_narrow_isas(isa):
    _run(13, 600, 17, False, True, isa=isa)
    _run(7, 2100, 33, True, False, isa=isa)


def test_runtime_gemm_contracting_over_the_batch():
    """dW = X^T dY: K is the batch size, known only at run time."""
    g = Graph(name="dw")
    x = g.add_input(TensorType((None, 30)), "x")
    dy = g.add_input(TensorType((None, 20)), "dy")
    (out,) = g.add_node("matmul", [x, dy], {"transpose_a": True})
    g.outputs = [out]
    cg = compile_graph(g)
    cg.set_params([])
    rng = np.random.default_rng(3)
    for batch in (1, 5, 2500):
        X = rng.standard_normal((batch, 30), dtype=np.float32)
        D = rng.standard_normal((batch, 20), dtype=np.float32)
        np.testing.assert_allclose(cg.run([X, D])[0], X.T @ D, rtol=1e-4, atol=1e-3)
