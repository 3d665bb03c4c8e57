"""The compiled convolution-gradient kernels (and the forward conv with run-time weights, as in a
training step) against the NumPy reference rules, over a grid of shapes: odd sizes, channel counts
that are not multiples of the vector width, strides, dilation, both paddings, several kernel sizes,
batch 1 and 5, the narrower ISAs, one and two threads."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import assert_close

from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.codegen.llvm.jit import host_target
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run as interpret
from kcompile.ir.ops.conv import output_size

# (h, w, ci, co, kernel, strides, dilation, padding)
CASES = [
    (5, 7, 1, 3, (3, 3), (1, 1), (1, 1), "valid"),
    (9, 8, 3, 17, (3, 3), (1, 1), (1, 1), "same"),
    (11, 9, 17, 64, (3, 3), (1, 1), (1, 1), "same"),  # Winograd dX (and forward)
    (10, 9, 64, 17, (3, 3), (1, 1), (1, 1), "valid"),  # Winograd, channel edges
    (7, 6, 64, 17, (3, 3), (2, 2), (1, 1), "same"),
    (10, 9, 130, 3, (1, 1), (1, 1), (1, 1), "valid"),
    (9, 11, 17, 130, (5, 5), (1, 1), (1, 1), "same"),
    (12, 11, 3, 17, (3, 1), (2, 1), (1, 1), "valid"),
    (9, 13, 17, 17, (3, 3), (1, 1), (2, 2), "same"),
    (12, 10, 64, 64, (3, 3), (2, 2), (2, 1), "valid"),
    (6, 5, 130, 130, (3, 3), (1, 1), (1, 1), "valid"),
    (8, 8, 1, 64, (5, 5), (2, 2), (1, 1), "same"),
    (13, 12, 17, 3, (3, 3), (1, 1), (1, 2), "valid"),
    (28, 28, 1, 64, (3, 3), (1, 1), (1, 1), "valid"),  # the MNIST convnet's first layer
]


def _ids(case) -> str:
    h, w, ci, co, k, s, d, p = case
    return f"{h}x{w}x{ci}-{co}-k{k[0]}{k[1]}-s{s[0]}{s[1]}-d{d[0]}{d[1]}-{p}"


def _graph(op: str, case) -> tuple[Graph, list[tuple]]:
    """A one-node graph of `op` with run-time operands; returns it and the operands' shapes
    (batch dim None)."""
    h, w, ci, co, (kh, kw), strides, dilation, padding = case
    oh = output_size(h, kh, strides[0], dilation[0], padding)
    ow = output_size(w, kw, strides[1], dilation[1], padding)
    attrs = {"strides": strides, "dilation": dilation, "padding": padding}
    x_t, w_t, dy_t = (None, h, w, ci), (kh, kw, ci, co), (None, oh, ow, co)
    g = Graph(name=op)
    if op == "conv2d":
        shapes = [x_t, w_t]
    elif op == "conv2d_input_grad":
        shapes = [dy_t, w_t]
        attrs["input_hw"] = (h, w)
    else:
        shapes = [x_t, dy_t]
        attrs["kernel_hw"] = (kh, kw)
    ins = [g.add_input(TensorType(s), f"in{i}") for i, s in enumerate(shapes)]
    g.outputs = g.add_node(op, ins, attrs)
    return g, shapes


def _check(op: str, case, batches=(1, 5), isa: str | None = None, threads=(None,)) -> None:
    g, shapes = _graph(op, case)
    cg = compile_graph(g, target=host_target(isa))
    cg.set_params([])
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    for batch in batches:
        feeds = [rng.standard_normal(tuple(batch if d is None else d for d in s), dtype=np.float32)
                 for s in shapes]
        want = interpret(g, feeds)[0]
        for nt in threads:
            got = cg.run(feeds, nthreads=nt)[0]
            assert got.shape == want.shape
            assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_filter_grad(case, module_cache_dir) -> None:
    _check("conv2d_filter_grad", case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_input_grad(case, module_cache_dir) -> None:
    _check("conv2d_input_grad", case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_with_runtime_weights(case, module_cache_dir) -> None:
    _check("conv2d", case)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[6]], ids=_ids)
def test_narrow_isas(case, isa, module_cache_dir) -> None:
    for op in ("conv2d_filter_grad", "conv2d_input_grad", "conv2d"):
        _check(op, case, batches=(3,), isa=isa)


@pytest.mark.parametrize("case", [CASES[3], CASES[9], CASES[13]], ids=_ids)
def test_one_and_two_threads_agree(case, module_cache_dir) -> None:
    """The kernels that pack run-time weights meet at a barrier; with one thread it is a no-op."""
    for op in ("conv2d_filter_grad", "conv2d_input_grad", "conv2d"):
        _check(op, case, batches=(4,), threads=(1, 2))


def test_filter_grad_of_an_empty_batch_is_zero(module_cache_dir) -> None:
    g, _ = _graph("conv2d_filter_grad", CASES[2])
    cg = compile_graph(g)
    cg.set_params([])
    x = np.zeros((0, 11, 9, 17), np.float32)
    dy = np.zeros((0, 11, 9, 64), np.float32)
    got = cg.run([x, dy])[0]
    assert got.shape == (3, 3, 17, 64) and not got.any()


@pytest.mark.parametrize("nthreads", [3, 5])
def test_odd_and_oversubscribed_thread_counts(nthreads, module_cache_dir) -> None:
    """Work splits that leave threads idle (the Winograd dW has four rows of positions to share)
    and barriers with more threads than cores."""
    from kcompile.codegen.llvm.runtime import CompiledGraph
    from kcompile.codegen.llvm.threads import get_pool

    for op in ("conv2d_filter_grad", "conv2d_input_grad", "conv2d"):
        g, shapes = _graph(op, CASES[2])
        cg = compile_graph(g)
        cg = CompiledGraph(cg.program, cg.lib, pool=get_pool(nthreads, cg.program.target))
        cg.set_params([])
        rng = np.random.default_rng(nthreads)
        feeds = [rng.standard_normal(tuple(3 if d is None else d for d in s), dtype=np.float32)
                 for s in shapes]
        want = interpret(g, feeds)[0]
        for _ in range(3):
            assert_close(cg.run(feeds)[0], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("op", ["conv2d_filter_grad", "conv2d_input_grad", "conv2d"])
@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[12]], ids=_ids)
def test_avx512_code_generation(op, case) -> None:
    """Code generation only (nothing runs), so an AVX-512 target works on any x86-64 host: the
    kernels build with 16-lane vectors and their FMAs are 512-bit."""
    import re

    from kcompile.codegen.llvm.compiler import _emit_module
    from kcompile.codegen.llvm.jit import Target, emit_assembly
    from kcompile.codegen.llvm.kernels import load_all
    from kcompile.ir.passes import optimize
    from kcompile.ir.passes.memory import plan_memory

    # code generation only: an AVX-512 x86-64 target works on any host
    target = Target("x86_64-unknown-linux-gnu", "znver4",
                    "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx2,+fma,+f16c",
                    "avx512")
    load_all()
    g, _ = _graph(op, case)
    split = optimize(g)
    text, _ = _emit_module(split, plan_memory(split.main), target)
    asm = emit_assembly(text, target)
    assert len(re.findall(r"vfmadd\d+ps\s+[^\n]*zmm", asm)) >= 8


@pytest.mark.parametrize("op", ["max_pool2d_grad", "avg_pool2d_grad"])
@pytest.mark.parametrize("hw,c,pool,strides,padding", [
    ((24, 24), 64, (2, 2), (2, 2), "valid"), ((7, 9), 3, (2, 2), (2, 2), "same"),
    ((9, 8), 17, (3, 3), (1, 1), "same"), ((11, 10), 130, (3, 2), (2, 1), "valid"),
    ((5, 5), 1, (2, 2), (1, 1), "valid")])
def test_pool_grads(op, hw, c, pool, strides, padding, module_cache_dir) -> None:
    from kcompile.ir.ops.conv import output_size

    oh = output_size(hw[0], pool[0], strides[0], 1, padding)
    ow = output_size(hw[1], pool[1], strides[1], 1, padding)
    attrs = {"pool_size": pool, "strides": strides, "padding": padding}
    g = Graph(name=op)
    if op == "max_pool2d_grad":
        shapes = [(None, *hw, c), (None, oh, ow, c)]
    else:
        shapes = [(None, oh, ow, c)]
        attrs["input_hw"] = hw
    ins = [g.add_input(TensorType(s), f"in{i}") for i, s in enumerate(shapes)]
    g.outputs = g.add_node(op, ins, attrs)
    cg = compile_graph(g)
    cg.set_params([])
    rng = np.random.default_rng(c)
    for batch in (1, 5):
        feeds = [rng.standard_normal(tuple(batch if d is None else d for d in s), dtype=np.float32)
                 for s in shapes]
        if op == "max_pool2d_grad":  # ties: the first maximum of a window takes the gradient
            feeds[0][..., ::4] = np.round(feeds[0][..., ::4])
        assert_close(cg.run(feeds)[0], interpret(g, feeds)[0])


@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[8]], ids=_ids)
def test_input_grad_epilogue_for_a_fusion_pass(case, monkeypatch, module_cache_dir) -> None:
    """conv_grad.emit_input_grad runs a fused program's epilogue (here dX * relu-mask, a full-shaped
    operand), ready for a fusion pass that makes conv2d_input_grad an anchor."""
    from kcompile.codegen.llvm import compiler
    from kcompile.codegen.llvm.kernels import conv_grad

    plain, shapes = _graph("conv2d_input_grad", case)
    node = plain.nodes[0]
    g = Graph(name="dx_fused")
    ins = [g.add_input(TensorType(s), f"in{i}") for i, s in enumerate(shapes)]
    mask = g.add_input(TensorType(node.outputs[0].shape), "mask")
    program = (("conv2d_input_grad", ("i0", "i1"), tuple(sorted(node.attrs.items()))),
               ("mul", ("s0", "i2"), ()))
    g.outputs = g.add_node("fused", [*ins, mask], {"program": program})
    original = compiler.lowering_for

    def lowering_for(n):
        if n.op == "fused" and n.attrs["program"][0][0] == "conv2d_input_grad":
            return lambda ctx, nd: conv_grad.emit_input_grad(ctx, nd, nd.attrs["program"])
        return original(n)

    monkeypatch.setattr(compiler, "lowering_for", lowering_for)
    cg = compile_graph(g)
    cg.set_params([])
    rng = np.random.default_rng(7)
    feeds = [rng.standard_normal(tuple(3 if d is None else d for d in s), dtype=np.float32)
             for s in [*shapes, node.outputs[0].shape]]
    feeds[2] = (feeds[2] > 0).astype(np.float32)
    want = interpret(g, feeds)[0]
    assert_close(cg.run(feeds)[0], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
