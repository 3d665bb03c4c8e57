"""GEMM with a register-tiled micro-kernel and a fused epilogue: out = epilogue(A @ B).

Static B (weights at inference) is packed once per weight change into panels of NR = NV * vw
columns, each stored [K][NR] contiguously, and threads split the panels so each core keeps its own
weight slice in its L2. Run-time B (training: weights and gradients are graph inputs, plain or
transposed) is packed the same way at run time, one KC x NR block at a time into a stack buffer,
by the thread that sweeps the rows with it; K longer than KC accumulates into C block by block and
the epilogue runs after the last block. The micro-kernel keeps an MR x NR tile of C in registers
(6 x 64 = 24 zmm on AVX-512), broadcasts A[m, k] from memory (any strides, so a transposed A costs
nothing) and issues MR * NV FMAs per k. Batched operands loop over the batch with per-operand
strides.
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
from kcompile.ir.core import Node, TensorType, Value

MR = 6
KC_BYTES = 128 * 1024  # the packed run-time B block (K rows x NR columns) a thread keeps
A_BLOCK_BYTES = 192 * 1024  # the rows of A a thread keeps in L2 while its static panels pass
MC_MAX_ROWS = 192


def panel_vectors(vw: int) -> int:
    return 4 if vw == 16 else 2


@packer("panels")
def pack_panels(w: np.ndarray, nr: int, vw: int, transpose: bool = False) -> np.ndarray:
    """(K, N) (or (N, K) when `transpose`) -> panels of nr columns, the last one padded with zeros
    to a multiple of vw."""
    if transpose:
        w = w.T
    k, n = w.shape
    npad = -(-n // vw) * vw
    padded = np.zeros((k, npad), np.float32)
    padded[:, :n] = w
    parts = [np.ascontiguousarray(padded[:, p:p + nr]).ravel() for p in range(0, npad, nr)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class GemmPlan:
    """Static facts of one GEMM: dims (None = the batch size), strides, panel geometry."""

    def __init__(self, node: Node, attrs: dict, vw: int, static_b: bool) -> None:
        a, w = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        self.ta, self.tb = attrs.get("transpose_a", False), attrs.get("transpose_b", False)
        self.batch_shape = out.shape[:-2]
        self.a_batch = a.shape[:-2]
        self.b_batch = w.shape[:-2]
        self.m, self.n = out.shape[-2], out.shape[-1]
        self.k = a.shape[-2] if self.ta else a.shape[-1]
        self.a_rows, self.a_cols = a.shape[-2], a.shape[-1]
        self.static_b = static_b
        self.vw = vw
        self.nv = panel_vectors(vw)
        self.nr = self.nv * vw
        if self.n is None:
            raise NotImplementedError("matmul with a batch-sized N dimension is not compiled yet")
        self.npad = -(-self.n // vw) * vw
        self.panels = -(-self.npad // self.nr) if self.n else 0
        self.last_nv = (self.npad - (self.panels - 1) * self.nr) // vw if self.panels else 0
        self.kinds = epilogue_kinds(node)


def _dim(kb: KernelBuilder, d, n: ir.Value) -> ir.Value:
    return n if d is None else kb.i64(d)


@lowering("matmul")
def lower_matmul(ctx: KernelContext, node: Node) -> ir.Function:
    a, w = node.inputs
    attrs = tuple(sorted(node.attrs.items()))
    program = (("matmul", ("i0", "i1"), attrs),)
    if a.type.rank > 2 and w.type.rank == 2 and not node.attrs.get("transpose_a", False):
        # (..., M, K) @ (K, N): the leading dims are rows of one GEMM, whose B is packed once
        # rather than per batch item
        rows = a.shape[:-1]
        flat = Node("matmul", [Value(TensorType((None if None in rows else int(np.prod(rows)),
                                                 a.shape[-1]), a.dtype)), w],
                    node.attrs, [TensorType((None if None in rows else int(np.prod(rows)),
                                             node.outputs[0].shape[-1]), a.dtype)], node.label)
        return _row_view(ctx, node, flat, program, rows)
    return emit_gemm(ctx, node, program)


def _row_view(ctx: KernelContext, node: Node, flat: Node, program: tuple, rows: tuple) -> ir.Function:
    """Run the GEMM of a 2-D view whose row count is the product of `rows` (the operands are
    contiguous, so the view is free): the view's kernel is called with the batch size scaled by
    the static part of the product."""
    inner = emit_gemm(ctx, flat, program)
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, node.op)
    static_rows = int(np.prod([d for d in rows if d is not None], dtype=np.int64))
    kb.b.call(inner, [*ins, out, kb.b.mul(n, kb.i64(static_rows)) if None in rows else n, tid, nt])
    kb.finish()
    return fn


@lowering("outer_sum")
def lower_outer_sum(ctx: KernelContext, node: Node) -> ir.Function:
    """a^T b over every leading dim: the GEMM of the (rows, P)^T x (rows, Q) view."""
    a, w = node.inputs
    rows = a.shape[:-1]
    count = None if None in rows else int(np.prod(rows))
    flat = Node("matmul", [Value(TensorType((count, a.shape[-1]), a.dtype)),
                           Value(TensorType((count, w.shape[-1]), w.dtype))],
                {"transpose_a": True}, [node.outputs[0].type], node.label)
    program = (("matmul", ("i0", "i1"), (("transpose_a", True), ("transpose_b", False))),)
    return _row_view(ctx, node, flat, program, rows)


def emit_gemm(ctx: KernelContext, node: Node, program: tuple) -> ir.Function:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM GEMM is float32 only, got {v.dtype} in "
                                      f"{node.label or node.op}; use jit_compile=False")
    w = node.inputs[1]
    attrs = dict(program[0][2])
    static_b = ctx.is_static(w) and w.type.rank == 2
    plan = GemmPlan(node, attrs, ctx.target.vector_width, static_b)
    if static_b:
        ctx.want_layout(1, ParamLayout("panels", (plan.nr, plan.vw, plan.tb)))
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "gemm")
    b = kb.b
    m, kdim = _dim(kb, plan.m, n), _dim(kb, plan.k, n)
    a_rows, a_cols = _dim(kb, plan.a_rows, n), _dim(kb, plan.a_cols, n)
    sam, sak = (kb.i64(1), a_cols) if plan.ta else (a_cols, kb.i64(1))
    if plan.panels == 0:
        kb.finish()
        return fn
    batches = product(kb, dim_values(kb, plan.batch_shape, n))
    a_bstride = kb.i64(0) if not plan.a_batch else b.mul(a_rows, a_cols)
    b_bstride = kb.i64(0) if not plan.b_batch else b.mul(kdim, kb.i64(plan.n))
    c_bstride = b.mul(m, kb.i64(plan.n))
    full_rows = b.mul(b.sdiv(m, kb.i64(MR)), kb.i64(MR))
    rem = b.sub(m, full_rows)

    def call(rows, nvec, edge, a_ptr, b_ptr, c_off, row0, col0, b_stride, k_len=None,
             phase="only", flags=()):
        key = ("gemm", plan.vw, plan.n, program, tuple(sorted(plan.kinds.items())), len(node.inputs),
               rows, nvec, edge, phase)
        micro = ctx.shared_function(
            key, lambda: _micro_kernel(ctx, node, plan, program, rows, nvec, edge, phase))
        b.call(micro, [a_ptr, b_ptr, out, c_off, row0, col0, kdim if k_len is None else k_len,
                       sam, sak, b_stride, *flags, *[ins[i] for i in range(2, len(ins))]])

    if static_b:  # threads split the packed panels; each panel sweeps the rows chunk by chunk
        p_lo, p_hi = split_range(kb, kb.i64(plan.panels), tid, nt)
        # Rows go in chunks of `mc` whose A block stays in L2 while every panel of this thread
        # passes over it: without the chunks a large batch streams all of A from memory once per
        # panel (32 times for N = 512).
        mc = max(MR, min(MC_MAX_ROWS, A_BLOCK_BYTES // (4 * max(plan.k or 1, 1))) // MR * MR)
        with kb.loop(kb.i64(0), batches, 1, "bt") as bt:
            a_ptr = kb.gep(ins[0], b.mul(bt, a_bstride))
            c_ptr = b.mul(bt, c_bstride)  # element offset of this batch's C (and full operands)
            with kb.loop(kb.i64(0), full_rows, mc, "mc") as mc0:
                mc_end = b.add(mc0, kb.i64(mc))
                mc_end = b.select(b.icmp_signed("<", mc_end, full_rows), mc_end, full_rows)
                with kb.loop(p_lo, p_hi, 1, "p") as p:
                    col0 = b.mul(p, kb.i64(plan.nr))
                    bpanel = kb.gep(ins[1], b.mul(p, b.mul(kdim, kb.i64(plan.nr))))

                    def full(nvec: int, edge: bool) -> None:
                        stride = kb.i64(nvec * plan.vw)
                        with kb.loop(mc0, mc_end, MR, "m") as m0:
                            call(MR, nvec, edge, a_ptr, bpanel, c_ptr, m0, col0, stride)

                    for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv,
                                       plan.n % plan.vw != 0, full)
            with kb.if_then(b.icmp_signed(">", rem, kb.i64(0))):  # the last m % MR rows
                with kb.loop(p_lo, p_hi, 1, "p") as p:
                    col0 = b.mul(p, kb.i64(plan.nr))
                    bpanel = kb.gep(ins[1], b.mul(p, b.mul(kdim, kb.i64(plan.nr))))

                    def tail(nvec: int, edge: bool) -> None:
                        stride = kb.i64(nvec * plan.vw)
                        for r in range(1, MR):
                            with kb.if_then(b.icmp_signed("==", rem, kb.i64(r))):
                                call(r, nvec, edge, a_ptr, bpanel, c_ptr, full_rows, col0, stride)

                    for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv,
                                       plan.n % plan.vw != 0, tail)
    else:  # run-time B: packed per panel and K block into a stack buffer, as BLIS does
        # Work items are (batch, panel, row chunk): a thread packs its KC x NR slice of B once
        # and sweeps the rows with it. Rows are cut into chunks only when there are too few
        # panels to give every thread work (N smaller than 2 * nthreads panels).
        kc_max = max(KC_BYTES // (4 * plan.nr), 16)
        buf = kb.buffer(ir.FloatType(), kc_max * plan.nr)
        blocks = b.sdiv(b.add(m, kb.i64(MR - 1)), kb.i64(MR))
        bp = b.mul(batches, kb.i64(plan.panels))
        want = b.mul(nt, kb.i64(2))
        spread = b.sdiv(b.add(want, b.sub(bp, kb.i64(1))), kb.max_i64(bp, kb.i64(1)))
        mchunks = kb.max_i64(kb.min_i64(blocks, spread), kb.i64(1))
        per = b.sdiv(b.add(blocks, b.sub(mchunks, kb.i64(1))), mchunks)
        kblocks = kb.max_i64(b.sdiv(b.add(kdim, kb.i64(kc_max - 1)), kb.i64(kc_max)), kb.i64(1))
        lo, hi = split_range(kb, b.mul(bp, mchunks), tid, nt)
        with kb.loop(lo, hi, 1, "item") as item:
            chunk = b.srem(item, mchunks)
            pb = b.sdiv(item, mchunks)
            bt = b.sdiv(pb, kb.i64(plan.panels))
            p = b.srem(pb, kb.i64(plan.panels))
            c_ptr = b.mul(bt, c_bstride)
            col0 = b.mul(p, kb.i64(plan.nr))
            b_base = kb.gep(ins[1], b.mul(bt, b_bstride))
            blk_lo = b.mul(chunk, per)
            blk_hi = kb.min_i64(blocks, b.add(blk_lo, per))

            def for_cols(nvec: int, edge: bool) -> None:
                width = nvec * plan.vw
                with kb.loop(kb.i64(0), kblocks, 1, "kb") as kbi:
                    k0 = b.mul(kbi, kb.i64(kc_max))
                    kc = kb.min_i64(kb.i64(kc_max), b.sub(kdim, k0))
                    _pack_panel(kb, plan, b_base, buf, k0, kc, col0, kdim, nvec, edge)
                    a_ptr = kb.gep(ins[0], b.add(b.mul(bt, a_bstride), b.mul(k0, sak)))
                    first = b.icmp_signed("==", kbi, kb.i64(0))
                    last = b.icmp_signed("==", kbi, b.sub(kblocks, kb.i64(1)))

                    def rows_loop(phase: str, flags: tuple = ()) -> None:
                        with kb.loop(blk_lo, blk_hi, 1, "blk") as blk:
                            row0 = b.mul(blk, kb.i64(MR))
                            rows_here = b.sub(m, row0)
                            args = (a_ptr, buf, c_ptr, row0, col0, kb.i64(width), kc, phase, flags)
                            with b.if_else(b.icmp_signed(">=", rows_here, kb.i64(MR))) as (full, part):
                                with full:
                                    call(MR, nvec, edge, *args)
                                with part:
                                    for r in range(1, MR):
                                        with kb.if_then(b.icmp_signed("==", rows_here, kb.i64(r))):
                                            call(r, nvec, edge, *args)

                    if plan.k is not None and plan.k <= kc_max:  # one K block
                        rows_loop("only")
                    else:  # which block this is goes to the micro-kernel as two flags
                        rows_loop("blocks", (b.zext(first, I64), b.zext(last, I64)))

            for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv,
                               plan.n % plan.vw != 0, for_cols)
    kb.finish()
    return fn


def _pack_panel(kb: KernelBuilder, plan: GemmPlan, b_base: ir.Value, buf: ir.Value, k0: ir.Value,
                kc: ir.Value, col0: ir.Value, kdim: ir.Value, nvec: int, edge: bool) -> None:
    """buf[k][0:nvec*vw] = B[k0 + k, col0:col0 + nvec*vw] for k < kc, zero past column N. B is
    (K, N) row-major, or (N, K) when transposed (then each column is a contiguous run along K)."""
    b = kb.b
    vw, width = plan.vw, nvec * plan.vw
    if not plan.tb:
        mask = kb.lane_mask(kb.i64(plan.n % vw)) if edge else None
        with kb.loop(kb.i64(0), kc, 1, "pk") as k:
            src = b.mul(b.add(k0, k), kb.i64(plan.n))
            for v in range(nvec):
                m = mask if v == nvec - 1 else None
                val = kb.masked_load(b_base, b.add(src, b.add(col0, kb.i64(v * vw))), m) \
                    if m is not None else kb.vload(b_base, b.add(src, b.add(col0, kb.i64(v * vw))))
                kb.vstore(val, buf, b.add(b.mul(k, kb.i64(width)), kb.i64(v * vw)))
        return
    cols = kb.min_i64(kb.i64(width), b.sub(kb.i64(plan.n), col0))
    # whole vw x vw tiles: vw column runs loaded along K, transposed in registers, stored as rows
    full_cols = b.mul(b.sdiv(cols, kb.i64(vw)), kb.i64(vw))
    kc_vec = b.mul(b.sdiv(kc, kb.i64(vw)), kb.i64(vw))
    with kb.loop(kb.i64(0), full_cols, vw, "pjv") as j0:
        srcs = [kb.gep(b_base, b.add(b.mul(b.add(col0, b.add(j0, kb.i64(jj))), kdim), k0))
                for jj in range(vw)]
        with kb.loop(kb.i64(0), kc_vec, vw, "pkv") as k:
            rows = transpose_tile(kb, [kb.vload(src, k) for src in srcs])
            for kk, row in enumerate(rows):
                kb.vstore(row, buf, b.add(b.mul(b.add(k, kb.i64(kk)), kb.i64(width)), j0))
        with kb.loop(kc_vec, kc, 1, "pkt") as k:  # the K tail of these columns
            for jj in range(vw):
                kb.store(kb.load(srcs[jj], k), buf,
                         b.add(b.mul(k, kb.i64(width)), b.add(j0, kb.i64(jj))))
    with kb.loop(full_cols, cols, 1, "pj") as j:  # the last cols % vw columns, scalar
        src = kb.gep(b_base, b.add(b.mul(b.add(col0, j), kdim), k0))
        with kb.loop(kb.i64(0), kc, 1, "pk") as k:
            kb.store(kb.load(src, k), buf, b.add(b.mul(k, kb.i64(width)), j))
    if edge or plan.n % plan.nr:
        with kb.loop(cols, kb.i64(width), 1, "pz") as j:
            with kb.loop(kb.i64(0), kc, 1, "pk") as k:
                kb.store(ir.Constant(ir.FloatType(), 0.0), buf, b.add(b.mul(k, kb.i64(width)), j))


def transpose_tile(kb: KernelBuilder, vectors: list[ir.Value]) -> list[ir.Value]:
    """The transpose of an n x n tile held as n vectors of n lanes (n a power of two): log2(n)
    stages, each swapping one bit of the (vector, lane) index with two shuffles per pair."""
    n = len(vectors)
    vs = list(vectors)
    bit = 1
    while bit < n:
        lo_mask = [k if not k & bit else n + k - bit for k in range(n)]
        hi_mask = [k + bit if not k & bit else n + k for k in range(n)]
        for j in range(n):
            if j & bit:
                continue
            a, c = vs[j], vs[j | bit]
            vs[j] = kb.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(ir.IntType(32), n), lo_mask))
            vs[j | bit] = kb.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(ir.IntType(32), n),
                                                                 hi_mask))
        bit *= 2
    return vs


def _micro_kernel(ctx: KernelContext, node: Node, plan: GemmPlan, program: tuple, rows: int,
                  nvec: int, edge: bool, phase: str = "only") -> ir.Function:
    """C[row0:row0+rows, col0:col0+nvec*vw] = epilogue(A rows @ B columns). A[m, k] is at
    a + m*sam + k*sak; B's row k starts at b + k*sb (B is a packed panel, zero-padded to whole
    vectors). With `edge`, the last vector covers only the n % vw real columns: stored masked.
    `phase` "only": K is one block, store the epilogue of the sum; "blocks": two run-time flags
    say whether this is the first block (else add to C) and the last (then apply the epilogue) --
    one variant instead of four, for compile time (the flags are read once per tile)."""
    n_extra = len(node.inputs) - 2
    n_flags = 2 if phase == "blocks" else 0
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_gemm_{rows}x{nvec}_{phase}",
                [PTR, PTR, PTR, I64, I64, I64, I64, I64, I64, I64] + [I64] * n_flags + [PTR] * n_extra,
                ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    a_ptr, b_ptr, out, c_off, row0, col0, k_dim, sam, sak, sb = fn.args[:10]
    if phase == "blocks":  # K in blocks, this call's block given at run time
        first, last = (b.icmp_signed("!=", flag, kb.i64(0)) for flag in fn.args[10:12])
    extras = list(fn.args[10 + n_flags:])
    vw, n_dim = plan.vw, plan.n
    edge_mask = kb.lane_mask(kb.i64(n_dim % vw)) if edge else None
    # Few rows leave the FMA latency exposed (one chain per accumulator): split K over `ksplit`
    # accumulator sets and add them at the end.
    ksplit = max(1, min(4, 12 // (rows * nvec)))
    sets = [[[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(rows)]
            for _ in range(ksplit)]
    a_rows = [kb.gep(a_ptr, b.mul(b.add(row0, kb.i64(r)), sam)) for r in range(rows)]

    def step(k: ir.Value, accs: list) -> None:
        brow = b.mul(k, sb)
        bvals = [kb.vload(b_ptr, b.add(brow, kb.i64(v * vw))) for v in range(nvec)]
        for r in range(rows):
            av = kb.splat(kb.load(a_rows[r], b.mul(k, sak)))
            for v in range(nvec):
                kb.set(accs[r][v], kb.fma(av, bvals[v], kb.get(accs[r][v])))

    k_main = b.mul(b.sdiv(k_dim, kb.i64(ksplit)), kb.i64(ksplit))
    with kb.loop(kb.i64(0), k_main, ksplit, "k") as k0:
        for s_ in range(ksplit):
            step(b.add(k0, kb.i64(s_)), sets[s_])
    with kb.loop(k_main, k_dim, 1, "kr") as kr:
        step(kr, sets[0])
    accs = sets[0]
    for extra in sets[1:]:
        for r in range(rows):
            for v in range(nvec):
                kb.set(accs[r][v], b.fadd(kb.get(accs[r][v]), kb.get(extra[r][v])))
    for r in range(rows):
        row = b.add(row0, kb.i64(r))
        for v in range(nvec):
            col = b.add(col0, kb.i64(v * vw))
            mask = edge_mask if v == nvec - 1 else None
            idx = b.add(c_off, b.add(b.mul(row, kb.i64(n_dim)), col))
            value = kb.get(accs[r][v])
            if phase == "blocks":  # later blocks add to C; the last one applies the epilogue
                value = b.select(first, value, b.fadd(kb.load_vector(out, idx, mask), value))
                value = b.select(last, apply_epilogue(kb, program, plan.kinds, extras, value, col, idx,
                                                      mask), value)
            else:
                value = apply_epilogue(kb, program, plan.kinds, extras, value, col, idx, mask)
            kb.store_vector(value, out, idx, mask)
    kb.finish()
    return fn
