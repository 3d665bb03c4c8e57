"""GEMM with prepacked weights and a fused epilogue: out = epilogue(A @ B).

B (static, K x N) is packed once per weight change into panels of NR = NV * vw columns, each stored
[K][NR] contiguously, so the micro-kernel streams one panel with unit stride. The micro-kernel keeps
an MR x NR tile of C in registers (6 x 64 = 24 zmm on AVX-512), broadcasts A[m, k] from memory and
issues MR * NV FMAs per k. Threads split the panels, so each core keeps its own weight slice in its
L2. The epilogue (bias, activation, BatchNorm scale/shift, residual) runs on the registers before
the single store. Row and column edges use specialised micro-kernels and masked stores.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import (
    KernelContext,
    ParamLayout,
    apply_epilogue,
    dim_values,
    epilogue_kinds,
    for_panel_variants,
    lowering,
    packer,
    product,
    split_range,
)
from kcompile.codegen.llvm.kernels.elementwise import eval_program
from kcompile.ir.core import Node

MR = 6


def panel_vectors(vw: int) -> int:
    return 4 if vw == 16 else 2


@packer("panels")
def pack_panels(w: np.ndarray, nr: int, vw: int) -> np.ndarray:
    """(K, N) -> panels of nr columns (the last one padded with zeros to a multiple of vw)."""
    k, n = w.shape
    npad = -(-n // vw) * vw
    padded = np.zeros((k, npad), np.float32)
    padded[:, :n] = w
    parts = [np.ascontiguousarray(padded[:, p:p + nr]).ravel() for p in range(0, npad, nr)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class GemmPlan:
    """Static facts of one GEMM: sizes, panel geometry, epilogue operand kinds."""

    def __init__(self, node: Node, vw: int) -> None:
        a, w = node.inputs[0], node.inputs[1]
        self.k, self.n = w.shape
        self.m_shape = a.shape[:-1]
        self.vw = vw
        self.nv = panel_vectors(vw)
        self.nr = self.nv * vw
        self.npad = -(-self.n // vw) * vw
        self.panels = -(-self.npad // self.nr) if self.n else 0
        self.last_nv = (self.npad - (self.panels - 1) * self.nr) // vw if self.panels else 0
        self.kinds = epilogue_kinds(node)


@lowering("matmul")
def lower_matmul(ctx: KernelContext, node: Node) -> ir.Function:
    program = (("matmul", ("i0", "i1"), ()),)
    return emit_gemm(ctx, node, program)


def emit_gemm(ctx: KernelContext, node: Node, program: tuple) -> ir.Function:
    w = node.inputs[1]
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM GEMM is float32 only, got {v.dtype} in "
                                      f"{node.label or node.op}; use jit_compile=False")
    if w.type.rank != 2 or not ctx.is_static(w):
        return _emit_dynamic_matmul(ctx, node, program)
    plan = GemmPlan(node, ctx.target.vector_width)
    ctx.want_layout(1, ParamLayout("panels", (plan.nr, plan.vw)))
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "gemm")
    b = kb.b
    m = product(kb, dim_values(kb, plan.m_shape, n))
    if plan.panels == 0 or plan.k == 0:
        _zero_k_fill(kb, ins, out, m, plan, program, tid, nt)
        kb.finish()
        return fn
    micro = {}
    p_lo, p_hi = split_range(kb, kb.i64(plan.panels), tid, nt)
    with kb.loop(p_lo, p_hi, 1, "p") as p:
        col0 = b.mul(p, kb.i64(plan.nr))
        bpanel = kb.gep(ins[1], b.mul(p, kb.i64(plan.k * plan.nr)))
        full_rows = b.mul(b.sdiv(m, kb.i64(MR)), kb.i64(MR))
        rem = b.sub(m, full_rows)

        def call(rows: int, nvec: int, edge: bool, row0: ir.Value) -> None:
            key = (rows, nvec, edge)
            if key not in micro:
                micro[key] = _micro_kernel(ctx, node, plan, program, rows, nvec, edge)
            b.call(micro[key], [ins[0], bpanel, out, row0, col0,
                                *[ins[i] for i in range(2, len(ins))]])

        def for_panel(nvec: int, edge: bool) -> None:
            with kb.loop(kb.i64(0), full_rows, MR, "m") as m0:
                call(MR, nvec, edge, m0)
            for r in range(1, MR):
                with kb.if_then(b.icmp_signed("==", rem, kb.i64(r))):
                    call(r, nvec, edge, full_rows)

        for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, plan.n % plan.vw != 0,
                           for_panel)
    kb.finish()
    return fn


def _micro_kernel(ctx: KernelContext, node: Node, plan: GemmPlan, program: tuple, rows: int,
                  nvec: int, edge: bool) -> ir.Function:
    """C[row0:row0+rows, col0:col0+nvec*vw] = epilogue(A rows @ B panel); with `edge`, the last
    vector is stored masked to the n % vw real columns."""
    n_extra = len(node.inputs) - 2
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_gemm_{rows}x{nvec}",
                [PTR, PTR, PTR, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    a_ptr, b_ptr, out, row0, col0 = fn.args[:5]
    extras = list(fn.args[5:])
    vw, k_dim, n_dim = plan.vw, plan.k, plan.n
    stride = nvec * vw  # the panel's row stride (the last panel is packed narrower)
    # Few rows leave the FMA latency exposed (one chain per accumulator): split K over `ksplit`
    # accumulator sets and add them at the end.
    ksplit = max(1, min(4, 12 // (rows * nvec)))
    ksplit = ksplit if k_dim >= 4 * ksplit else 1
    sets = [[[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(rows)]
            for _ in range(ksplit)]
    a_rows = [kb.gep(a_ptr, b.mul(b.add(row0, kb.i64(r)), kb.i64(k_dim))) for r in range(rows)]
    k_main = k_dim - k_dim % ksplit

    def step(k: ir.Value, accs: list) -> None:
        brow = b.mul(k, kb.i64(stride))
        bvals = [kb.vload(b_ptr, b.add(brow, kb.i64(v * vw))) for v in range(nvec)]
        for r in range(rows):
            av = kb.splat(kb.load(a_rows[r], k))
            for v in range(nvec):
                kb.set(accs[r][v], kb.fma(av, bvals[v], kb.get(accs[r][v])))

    with kb.loop(kb.i64(0), kb.i64(k_main), ksplit, "k") as k0:
        for s_ in range(ksplit):
            step(b.add(k0, kb.i64(s_)), sets[s_])
    for kk in range(k_main, k_dim):
        step(kb.i64(kk), sets[0])
    accs = sets[0]
    for extra in sets[1:]:
        for r in range(rows):
            for v in range(nvec):
                kb.set(accs[r][v], b.fadd(kb.get(accs[r][v]), kb.get(extra[r][v])))
    for r in range(rows):
        row = b.add(row0, kb.i64(r))
        for v in range(nvec):
            col = b.add(col0, kb.i64(v * vw))
            mask = kb.lane_mask(kb.i64(n_dim % vw)) if edge and v == nvec - 1 else None
            idx = b.add(b.mul(row, kb.i64(n_dim)), col)
            value = apply_epilogue(kb, program, plan.kinds, extras, kb.get(accs[r][v]), col, idx, mask)
            kb.store_vector(value, out, idx, mask)
    kb.finish()
    return fn


def _zero_k_fill(kb: KernelBuilder, ins, out, m, plan: GemmPlan, program, tid, nt) -> None:
    """K == 0 (or N == 0): the product is zeros; still apply the epilogue."""
    b = kb.b
    lo, hi = split_range(kb, m, tid, nt)
    with kb.loop(lo, hi, 1, "m") as row:
        for c in range(plan.n):
            def operand(i: int, c=c):
                kind = plan.kinds[i]
                idx = kb.i64(0) if kind == "scalar" else kb.i64(c) if kind == "channel" else \
                    b.add(b.mul(row, kb.i64(plan.n)), kb.i64(c))
                return kb.load(ins[i], idx)
            value = eval_program(kb, program, operand, [kb.f32(0.0)]) if len(program) > 1 \
                else kb.f32(0.0)
            kb.store(value, out, b.add(b.mul(row, kb.i64(plan.n)), kb.i64(c)))


def _emit_dynamic_matmul(ctx: KernelContext, node: Node, program: tuple) -> ir.Function:
    """Both operands computed at run time (or batched B): a straightforward vectorised loop."""
    a_t, b_t = node.inputs[0].type, node.inputs[1].type
    out_t = node.outputs[0].type
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "matmul")
    b = kb.b
    mdim, kdim, ndim = a_t.shape[-2], a_t.shape[-1], b_t.shape[-1]
    batch_shape = out_t.shape[:-2]
    batches = product(kb, dim_values(kb, batch_shape, n))
    m = n if mdim is None else kb.i64(mdim)
    a_batch = product(kb, dim_values(kb, a_t.shape[:-2], n))
    b_batch = product(kb, dim_values(kb, b_t.shape[:-2], n))
    lo, hi = split_range(kb, batches, tid, nt)
    vw = kb.vw
    with kb.loop(lo, hi, 1, "bt") as bt:
        # operands with a size-1 (or absent) batch are broadcast
        a_off = b.mul(b.select(b.icmp_signed("==", a_batch, kb.i64(1)), kb.i64(0), bt),
                      b.mul(m, kb.i64(kdim)))
        b_off = b.mul(b.select(b.icmp_signed("==", b_batch, kb.i64(1)), kb.i64(0), bt),
                      kb.i64(kdim * ndim))
        o_off = b.mul(bt, b.mul(m, kb.i64(ndim)))
        with kb.loop(kb.i64(0), m, 1, "mm") as i:
            for c0 in range(0, ndim, vw):
                cnt = min(vw, ndim - c0)
                mask = kb.lane_mask(kb.i64(cnt)) if cnt < vw else None
                acc = kb.var(kb.vec_type(), kb.vconst(0.0))
                with kb.loop(kb.i64(0), kb.i64(kdim), 1, "kk") as k:
                    av = kb.splat(kb.load(ins[0], b.add(a_off, b.add(b.mul(i, kb.i64(kdim)), k))))
                    bidx = b.add(b_off, b.add(b.mul(k, kb.i64(ndim)), kb.i64(c0)))
                    bv = kb.load_vector(ins[1], bidx, mask)
                    kb.set(acc, kb.fma(av, bv, kb.get(acc)))
                idx = b.add(o_off, b.add(b.mul(i, kb.i64(ndim)), kb.i64(c0)))
                if len(program) > 1:
                    raise NotImplementedError("epilogues on a dynamic matmul are not fused")
                kb.store_vector(kb.get(acc), out, idx, mask)
    kb.finish()
    return fn

