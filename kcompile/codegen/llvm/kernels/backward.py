"""Gradient kernels of pooling (the ops the pools' vjps emit); conv2d's are in conv_grad.py.

Each input pixel gathers its contributions (no scatter, so threads split the output without
atomics): it loops over the windows that contain it, vectorised along the channels.
"""

from __future__ import annotations

import math

from llvmlite import ir

from kcompile.codegen.llvm.builder import KernelBuilder
from kcompile.codegen.llvm.kernels.common import KernelContext, lowering, split_range
from kcompile.ir.core import Node
from kcompile.ir.ops.conv import spatial_pads


def _require_f32(node: Node) -> None:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM {node.op} is float32 only; use jit_compile=False")


def _tap_origin(kb: KernelBuilder, pos: ir.Value, k: int, pad: int, stride: int, dil: int,
                size: int) -> tuple[ir.Value, ir.Value]:
    """For input position `pos` and tap `k`: (output index, valid?) with o*stride - pad + k*dil = pos."""
    b = kb.b
    num = b.sub(b.add(pos, kb.i64(pad)), kb.i64(k * dil))
    o = b.sdiv(num, kb.i64(stride))
    ok = b.and_(b.icmp_signed(">=", num, kb.i64(0)),
                b.and_(b.icmp_signed("==", b.srem(num, kb.i64(stride)), kb.i64(0)),
                       b.icmp_signed("<", o, kb.i64(size))))
    return o, ok


def _gather_pixels(kb: KernelBuilder, out: ir.Value, n: ir.Value, tid: ir.Value, nt: ir.Value,
                   h: int, wd: int, c: int, contribute) -> None:
    """For every (image, y, x) of an NHWC gradient and each vector of its c channels: an
    accumulator that `contribute(img, y, x, c0, mask, acc)` adds into, then one store (c0 an i64,
    mask None or the last vector's lanes). Threads split the N*H rows."""
    b = kb.b
    vw = kb.vw
    lo, hi = split_range(kb, b.mul(n, kb.i64(h)), tid, nt)
    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(h))
        y = b.srem(row, kb.i64(h))
        with kb.loop(kb.i64(0), kb.i64(wd), 1, "x") as x:
            def vector(c0: ir.Value, mask: ir.Value | None) -> None:
                acc = kb.var(kb.vec_type(), kb.vconst(0.0))
                contribute(img, y, x, c0, mask, acc)
                idx = b.add(b.mul(b.add(b.mul(row, kb.i64(wd)), x), kb.i64(c)), c0)
                kb.store_vector(kb.get(acc), out, idx, mask)

            full = c - c % vw
            if full:  # a loop over the channel vectors, not copies (compile time)
                with kb.loop(kb.i64(0), kb.i64(full), vw, "c") as c0:
                    vector(c0, None)
            if c % vw:
                vector(kb.i64(full), kb.lane_mask(kb.i64(c % vw)))


@lowering("max_pool2d_grad", "avg_pool2d_grad")
def lower_pool_grad(ctx: KernelContext, node: Node) -> ir.Function:
    """Per input pixel and channel vector: sum the gradients of the windows it wins (max: it is the
    window's first maximum) or belongs to (avg: divided by the window's in-bounds count)."""
    _require_f32(node)
    is_max = node.op == "max_pool2d_grad"
    if is_max:
        x, dy = node.inputs
        _, h, wd, c = x.shape
    else:
        (dy,) = node.inputs
        h, wd = node.attrs["input_hw"]
        c = dy.shape[3]
    _, oh, ow, _ = dy.shape
    ph, pw = node.attrs["pool_size"]
    sh, sw = node.attrs["strides"]
    (pt, _), (pl, _) = spatial_pads((h, wd), (ph, pw), (sh, sw), (1, 1), node.attrs["padding"])
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, node.op)
    xp, dyp = (ins[0], ins[1]) if is_max else (None, ins[0])
    b = kb.b
    f32 = kb.f32(0).type

    def pix(img, yy, xx, width, height):
        return b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(height)), yy), kb.i64(width)), xx), kb.i64(c))

    def contribute(img, y, x_, c0, mask, acc):
        me = kb.load_vector(xp, b.add(pix(img, y, x_, wd, h), c0), mask) if is_max else None
        for i in range(ph):
            oy, ok_y = _tap_origin(kb, y, i, pt, sh, 1, oh)
            for j in range(pw):
                ox, ok_x = _tap_origin(kb, x_, j, pl, sw, 1, ow)
                with kb.if_then(b.and_(ok_y, ok_x)):
                    g = kb.load_vector(dyp, b.add(pix(img, oy, ox, ow, oh), c0), mask)
                    if is_max:
                        g = b.select(_first_max(kb, xp, img, oy, ox, i, j, me, c0, mask,
                                                (h, wd, c, ph, pw, sh, sw, pt, pl)),
                                     g, kb.vconst(0.0))
                    else:
                        g = b.fdiv(g, kb.splat(b.sitofp(_count(kb, oy, ox, h, wd, ph, pw, sh, sw,
                                                                pt, pl), f32)))
                    kb.set(acc, b.fadd(kb.get(acc), g))

    _gather_pixels(kb, out, n, tid, nt, h, wd, c, contribute)
    kb.finish()
    return fn


def _count(kb, oy, ox, h, wd, ph, pw, sh, sw, pt, pl) -> ir.Value:
    b = kb.b
    y0 = b.sub(b.mul(oy, kb.i64(sh)), kb.i64(pt))
    x0 = b.sub(b.mul(ox, kb.i64(sw)), kb.i64(pl))
    ny = b.sub(kb.min_i64(b.add(y0, kb.i64(ph)), kb.i64(h)), kb.max_i64(y0, kb.i64(0)))
    nx = b.sub(kb.min_i64(b.add(x0, kb.i64(pw)), kb.i64(wd)), kb.max_i64(x0, kb.i64(0)))
    return b.mul(ny, nx)


def _first_max(kb, xp, img, oy, ox, i, j, me, c0, mask, geom) -> ir.Value:
    """Lanes where the pixel at window tap (i, j) is the window's first maximum."""
    h, wd, c, ph, pw, sh, sw, pt, pl = geom
    b = kb.b
    y0 = b.sub(b.mul(oy, kb.i64(sh)), kb.i64(pt))
    x0 = b.sub(b.mul(ox, kb.i64(sw)), kb.i64(pl))
    win = kb.vconst(True, kb.vw, ir.IntType(1))
    for a in range(ph):
        for d in range(pw):
            yy, xx = b.add(y0, kb.i64(a)), b.add(x0, kb.i64(d))
            inside = b.and_(b.and_(b.icmp_signed(">=", yy, kb.i64(0)), b.icmp_signed("<", yy, kb.i64(h))),
                            b.and_(b.icmp_signed(">=", xx, kb.i64(0)), b.icmp_signed("<", xx, kb.i64(wd))))
            yy = b.select(inside, yy, kb.i64(0))
            xx = b.select(inside, xx, kb.i64(0))
            idx = b.add(b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(h)), yy), kb.i64(wd)), xx), kb.i64(c)), c0)
            other = kb.load_vector(xp, idx, mask)
            other = b.select(kb.splat(inside), other, kb.vconst(-math.inf))
            # earlier taps must be strictly smaller, later ones not larger
            beats = b.fcmp_ordered(">", me, other) if (a, d) < (i, j) else \
                b.fcmp_ordered(">=", me, other) if (a, d) > (i, j) else kb.vconst(True, kb.vw, ir.IntType(1))
            win = b.and_(win, beats)
    return win
