"""Reductions (sum, mean, max) and softmax as (outer, axis, inner) loop nests.

A tensor reduced over a contiguous block of axes is viewed as (O, R, I): with I == 1 the reduction
runs along contiguous memory with vector accumulators and one horizontal reduction; with I > 1 (e.g.
global average pooling, NHWC over H and W) each thread keeps I-wide vector accumulators, so every
load is a unit-stride vector. Softmax is the same shape with three passes (max, exp and sum, scale).
"""

from __future__ import annotations

import math

from llvmlite import ir

from kcompile.codegen.llvm import mathfn
from kcompile.codegen.llvm.builder import KernelBuilder
from kcompile.codegen.llvm.kernels.common import KernelContext, dim_values, lowering, product, split_range
from kcompile.ir.core import Node
from kcompile.ir.ops._util import norm_axes, norm_axis


def _require_f32(node: Node) -> None:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM {node.op} is float32 only, got {v.dtype} in "
                                      f"{node.label or node.op}; use jit_compile=False")


def _oai(kb: KernelBuilder, shape, first: int, last: int, n: ir.Value):
    dims = dim_values(kb, shape, n)
    return product(kb, dims[:first]), product(kb, dims[first:last + 1]), product(kb, dims[last + 1:])


def _combine(kb: KernelBuilder, op: str, acc: ir.Value, x: ir.Value) -> ir.Value:
    return kb.fmax(acc, x) if op == "max" else kb.b.fadd(acc, x)


def _init(kb: KernelBuilder, op: str, n: int | None = None) -> ir.Value:
    value = -math.inf if op == "max" else 0.0
    return kb.vconst(value, n) if n else kb.f32(value)


@lowering("sum", "mean", "max")
def lower_reduce(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    x = node.inputs[0]
    axes = sorted(norm_axes(node.op, node.attrs["axes"], x.type.rank))
    if not axes:
        axes_block = None
    elif axes == list(range(axes[0], axes[-1] + 1)):
        axes_block = (axes[0], axes[-1])
    else:
        raise NotImplementedError(f"{node.op} over non-adjacent axes {tuple(axes)} is not compiled "
                                  "yet; use jit_compile=False")
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, node.op)
    b = kb.b
    op = node.op
    if axes_block is None:  # nothing reduced: a copy
        total = product(kb, dim_values(kb, x.shape, n))
        with kb.loop(kb.i64(0), total, 1, "c") as i:
            with kb.if_then(b.icmp_signed("==", tid, kb.i64(0))):
                kb.store(kb.load(xp, i), out, i)
        kb.finish()
        return fn
    outer, red, inner = _oai(kb, x.shape, axes_block[0], axes_block[1], n)
    vw = kb.vw
    lo, hi = split_range(kb, outer, tid, nt)
    scale = b.fdiv(kb.f32(1.0), b.sitofp(red, kb.f32(0).type)) if op == "mean" else None
    inner_static = math.prod(d for d in x.shape[axes_block[1] + 1:]) if None not in \
        x.shape[axes_block[1] + 1:] else None
    with kb.loop(lo, hi, 1, "o") as o:
        base = b.mul(o, b.mul(red, inner))
        if inner_static == 1:
            acc = kb.var(kb.vec_type(), _init(kb, op, vw))
            full = b.mul(b.sdiv(red, kb.i64(vw)), kb.i64(vw))
            with kb.loop(kb.i64(0), full, vw, "r") as r:
                kb.set(acc, _combine(kb, op, kb.get(acc), kb.vload(xp, b.add(base, r))))
            cnt = b.sub(red, full)
            with kb.if_then(b.icmp_signed(">", cnt, kb.i64(0))):
                mask = kb.lane_mask(cnt)
                tail = kb.masked_load(xp, b.add(base, full), mask, passthru=_init(kb, op, vw))
                kb.set(acc, _combine(kb, op, kb.get(acc), tail))
            total = kb.reduce_max(kb.get(acc)) if op == "max" else kb.reduce_add(kb.get(acc))
            if scale is not None:
                total = b.fmul(total, scale)
            kb.store(total, out, o)
        else:
            _reduce_inner(kb, op, xp, out, o, base, red, inner, scale)
    kb.finish()
    return fn


def _reduce_inner(kb: KernelBuilder, op: str, xp, out, o, base, red, inner, scale) -> None:
    b = kb.b
    vw = kb.vw
    full = b.mul(b.sdiv(inner, kb.i64(vw)), kb.i64(vw))

    def chunk(i0: ir.Value, mask: ir.Value | None) -> None:
        acc = kb.var(kb.vec_type(), _init(kb, op, vw))
        with kb.loop(kb.i64(0), red, 1, "r") as r:
            idx = b.add(base, b.add(b.mul(r, inner), i0))
            v = kb.vload(xp, idx) if mask is None else kb.masked_load(xp, idx, mask)
            kb.set(acc, _combine(kb, op, kb.get(acc), v))
        value = kb.get(acc)
        if scale is not None:
            value = b.fmul(value, kb.splat(scale))
        idx = b.add(b.mul(o, inner), i0)
        if mask is None:
            kb.vstore(value, out, idx)
        else:
            kb.masked_store(value, out, idx, mask)

    with kb.loop(kb.i64(0), full, vw, "i") as i0:
        chunk(i0, None)
    cnt = b.sub(inner, full)
    with kb.if_then(b.icmp_signed(">", cnt, kb.i64(0))):
        chunk(full, kb.lane_mask(cnt))


@lowering("softmax", "log_softmax")
def lower_softmax(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    x = node.inputs[0]
    log = node.op == "log_softmax"
    axis = norm_axis(node.op, node.attrs["axis"], x.type.rank)
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, node.op)
    b = kb.b
    outer, red, inner = _oai(kb, x.shape, axis, axis, n)
    lo, hi = split_range(kb, outer, tid, nt)
    vw = kb.vw
    with kb.loop(lo, hi, 1, "o") as o:
        base = b.mul(o, b.mul(red, inner))
        if x.shape[axis + 1:] == ():
            _softmax_row(kb, xp, out, base, red, log)
        else:
            full = b.mul(b.sdiv(inner, kb.i64(vw)), kb.i64(vw))
            with kb.loop(kb.i64(0), full, vw, "i") as i0:
                _softmax_strided(kb, xp, out, b.add(base, i0), red, inner, None, log)
            cnt = b.sub(inner, full)
            with kb.if_then(b.icmp_signed(">", cnt, kb.i64(0))):
                _softmax_strided(kb, xp, out, b.add(base, full), red, inner, kb.lane_mask(cnt), log)
    kb.finish()
    return fn


def _softmax_row(kb: KernelBuilder, xp, out, base, red, log: bool) -> None:
    """Contiguous row: vector max, then exp + sum (stored), then scale; for log_softmax the last
    pass writes x - (max + log(sum)) instead."""
    b = kb.b
    vw = kb.vw
    full = b.mul(b.sdiv(red, kb.i64(vw)), kb.i64(vw))
    cnt = b.sub(red, full)
    has_tail = b.icmp_signed(">", cnt, kb.i64(0))
    mask = kb.lane_mask(kb.min_i64(cnt, kb.i64(vw)))
    ninf = kb.vconst(-math.inf)
    mx = kb.var(kb.vec_type(), ninf)
    with kb.loop(kb.i64(0), full, vw, "r") as r:
        kb.set(mx, kb.fmax(kb.get(mx), kb.vload(xp, b.add(base, r))))
    with kb.if_then(has_tail):
        kb.set(mx, kb.fmax(kb.get(mx), kb.masked_load(xp, b.add(base, full), mask, passthru=ninf)))
    m = kb.splat(kb.reduce_max(kb.get(mx)))
    total = kb.var(kb.vec_type(), kb.vconst(0.0))
    with kb.loop(kb.i64(0), full, vw, "r") as r:
        e = mathfn.exp(kb, b.fsub(kb.vload(xp, b.add(base, r)), m))
        if not log:
            kb.vstore(e, out, b.add(base, r))
        kb.set(total, b.fadd(kb.get(total), e))
    with kb.if_then(has_tail):
        e = mathfn.exp(kb, b.fsub(kb.masked_load(xp, b.add(base, full), mask, passthru=ninf), m))
        if not log:
            kb.masked_store(e, out, b.add(base, full), mask)
        kb.set(total, b.fadd(kb.get(total), e))
    if log:
        lse = b.fadd(m, kb.splat(mathfn.log(kb, kb.reduce_add(kb.get(total)))))
        with kb.loop(kb.i64(0), full, vw, "r") as r:
            kb.vstore(b.fsub(kb.vload(xp, b.add(base, r)), lse), out, b.add(base, r))
        with kb.if_then(has_tail):
            kb.masked_store(b.fsub(kb.masked_load(xp, b.add(base, full), mask), lse), out,
                            b.add(base, full), mask)
        return
    inv = kb.splat(b.fdiv(kb.f32(1.0), kb.reduce_add(kb.get(total))))
    with kb.loop(kb.i64(0), full, vw, "r") as r:
        kb.vstore(b.fmul(kb.vload(out, b.add(base, r)), inv), out, b.add(base, r))
    with kb.if_then(has_tail):
        kb.masked_store(b.fmul(kb.masked_load(out, b.add(base, full), mask), inv), out,
                        b.add(base, full), mask)


def _softmax_strided(kb: KernelBuilder, xp, out, start, red, inner, mask, log: bool) -> None:
    b = kb.b

    def load(ptr, r):
        idx = b.add(start, b.mul(r, inner))
        return (kb.vload(ptr, idx) if mask is None else kb.masked_load(ptr, idx, mask)), idx

    def store(v, idx):
        kb.vstore(v, out, idx) if mask is None else kb.masked_store(v, out, idx, mask)

    mx = kb.var(kb.vec_type(), kb.vconst(-math.inf))
    with kb.loop(kb.i64(0), red, 1, "r") as r:
        kb.set(mx, kb.fmax(kb.get(mx), load(xp, r)[0]))
    total = kb.var(kb.vec_type(), kb.vconst(0.0))
    with kb.loop(kb.i64(0), red, 1, "r") as r:
        v, idx = load(xp, r)
        e = mathfn.exp(kb, b.fsub(v, kb.get(mx)))
        if not log:
            store(e, idx)
        kb.set(total, b.fadd(kb.get(total), e))
    if log:
        lse = b.fadd(kb.get(mx), mathfn.log(kb, kb.get(total)))
        with kb.loop(kb.i64(0), red, 1, "r") as r:
            v, idx = load(xp, r)
            store(b.fsub(v, lse), idx)
        return
    inv = b.fdiv(kb.vconst(1.0), kb.get(total))
    with kb.loop(kb.i64(0), red, 1, "r") as r:
        v, idx = load(out, r)
        store(b.fmul(v, inv), idx)


@lowering("argmax")
def lower_argmax(ctx: KernelContext, node: Node) -> ir.Function:
    """First index of the maximum along the axis (scalar loop: metrics only)."""
    x = node.inputs[0]
    axis = norm_axis("argmax", node.attrs["axis"], x.type.rank)
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, "argmax")
    b = kb.b
    outer, red, inner = _oai(kb, x.shape, axis, axis, n)
    lo, hi = split_range(kb, outer, tid, nt)
    i32 = ir.IntType(32)
    with kb.loop(lo, hi, 1, "o") as o:
        with kb.loop(kb.i64(0), inner, 1, "i") as i:
            base = b.add(b.mul(o, b.mul(red, inner)), i)
            best = kb.var(kb.f32(0).type, kb.f32(-math.inf))
            where = kb.var(i32, ir.Constant(i32, 0))
            with kb.loop(kb.i64(0), red, 1, "r") as r:
                v = kb.load(xp, b.add(base, b.mul(r, inner)))
                better = b.or_(b.fcmp_ordered(">", v, kb.get(best)),
                               b.and_(b.fcmp_unordered("uno", v, v),
                                      b.fcmp_ordered("ord", kb.get(best), kb.get(best))))
                with kb.if_then(better):
                    kb.set(best, v)
                    kb.set(where, b.trunc(r, i32))
            kb.store(kb.get(where), out, b.add(b.mul(o, inner), i))
    kb.finish()
    return fn
