"""Gradient kernels of convolution and pooling (the ops `conv2d`'s and the pools' vjps emit).

Each output element gathers its contributions (no scatter, so threads split the output without
atomics): dX pixels loop over the kernel taps whose output position exists, dW entries loop over
batch and output pixels. Vectorised along the contiguous channel dimension where one exists.
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
    accumulator that `contribute(img, y, x, c0, count, mask, acc)` adds into, then one store.
    Threads split the N*H rows."""
    b = kb.b
    vw = kb.vw
    lo, hi = split_range(kb, b.mul(n, kb.i64(h)), tid, nt)
    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(h))
        y = b.srem(row, kb.i64(h))
        with kb.loop(kb.i64(0), kb.i64(wd), 1, "x") as x:
            for c0 in range(0, c, vw):
                cnt = min(vw, c - c0)
                mask = kb.lane_mask(kb.i64(cnt)) if cnt < vw else None
                acc = kb.var(kb.vec_type(), kb.vconst(0.0))
                contribute(img, y, x, c0, cnt, mask, acc)
                idx = b.add(b.mul(b.add(b.mul(row, kb.i64(wd)), x), kb.i64(c)), kb.i64(c0))
                kb.store_vector(kb.get(acc), out, idx, mask)


@lowering("conv2d_input_grad")
def lower_conv_input_grad(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    dy, w = node.inputs
    _, h, wd, ci = node.outputs[0].shape
    _, oh, ow, co = dy.shape
    kh, kw = w.shape[:2]
    sh, sw = node.attrs["strides"]
    dh, dw = node.attrs["dilation"]
    (pt, _), (pl, _) = spatial_pads((h, wd), (kh, kw), (sh, sw), (dh, dw), node.attrs["padding"])
    fn, kb, (dyp, wp), out, n, tid, nt = ctx.new_kernel(node, "conv_dx")
    b = kb.b
    vw = kb.vw

    def contribute(img, y, x, c0, cnt, mask, acc):
        for i in range(kh):
            oy, ok_y = _tap_origin(kb, y, i, pt, sh, dh, oh)
            for j in range(kw):
                ox, ok_x = _tap_origin(kb, x, j, pl, sw, dw, ow)
                with kb.if_then(b.and_(ok_y, ok_x)):
                    dbase = b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(oh)), oy), kb.i64(ow)), ox),
                                  kb.i64(co))
                    wbase = kb.i64(((i * kw + j) * ci + c0) * co)
                    with kb.loop(kb.i64(0), kb.i64(co), 1, "o") as o:
                        g = kb.splat(kb.load(dyp, b.add(dbase, o)))
                        # w[i, j, c0:c0+vw, o]: stride co between lanes
                        vec = ir.Constant(kb.vec_type(), [0.0] * vw)
                        for lane in range(cnt):
                            val = kb.load(wp, b.add(wbase, b.add(kb.i64(lane * co), o)))
                            vec = b.insert_element(vec, val, kb.i32(lane))
                        kb.set(acc, kb.fma(g, vec, kb.get(acc)))

    _gather_pixels(kb, out, n, tid, nt, h, wd, ci, contribute)
    kb.finish()
    return fn


@lowering("conv2d_filter_grad")
def lower_conv_filter_grad(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    x, dy = node.inputs
    _, h, wd, ci = x.shape
    _, oh, ow, co = dy.shape
    kh, kw = node.attrs["kernel_hw"]
    sh, sw = node.attrs["strides"]
    dh, dw = node.attrs["dilation"]
    (pt, _), (pl, _) = spatial_pads((h, wd), (kh, kw), (sh, sw), (dh, dw), node.attrs["padding"])
    fn, kb, (xp, dyp), out, n, tid, nt = ctx.new_kernel(node, "conv_dw")
    b = kb.b
    vw = kb.vw
    taps = kb.i64(kh * kw * ci)  # one (kh, kw, ci) row of dW per work item
    lo, hi = split_range(kb, taps, tid, nt)
    with kb.loop(lo, hi, 1, "t") as t:
        i = b.sdiv(t, kb.i64(kw * ci))
        j = b.srem(b.sdiv(t, kb.i64(ci)), kb.i64(kw))
        c = b.srem(t, kb.i64(ci))
        for o0 in range(0, co, vw):
            cnt = min(vw, co - o0)
            mask = kb.lane_mask(kb.i64(cnt)) if cnt < vw else None
            acc = kb.var(kb.vec_type(), kb.vconst(0.0))
            with kb.loop(kb.i64(0), n, 1, "img") as img:
                with kb.loop(kb.i64(0), kb.i64(oh), 1, "oy") as oy:
                    iy = b.add(b.sub(b.mul(oy, kb.i64(sh)), kb.i64(pt)), b.mul(i, kb.i64(dh)))
                    ok_y = b.and_(b.icmp_signed(">=", iy, kb.i64(0)), b.icmp_signed("<", iy, kb.i64(h)))
                    with kb.if_then(ok_y):
                        with kb.loop(kb.i64(0), kb.i64(ow), 1, "ox") as ox:
                            ix = b.add(b.sub(b.mul(ox, kb.i64(sw)), kb.i64(pl)), b.mul(j, kb.i64(dw)))
                            ok_x = b.and_(b.icmp_signed(">=", ix, kb.i64(0)),
                                          b.icmp_signed("<", ix, kb.i64(wd)))
                            with kb.if_then(ok_x):
                                xv = kb.load(xp, b.add(b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(h)), iy),
                                                                         kb.i64(wd)), ix), kb.i64(ci)), c))
                                didx = b.add(b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(oh)), oy),
                                                             kb.i64(ow)), ox), kb.i64(co)), kb.i64(o0))
                                kb.set(acc, kb.fma(kb.splat(xv), kb.load_vector(dyp, didx, mask),
                                                   kb.get(acc)))
            kb.store_vector(kb.get(acc), out, b.add(b.mul(t, kb.i64(co)), kb.i64(o0)), mask)
    kb.finish()
    return fn


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

    def contribute(img, y, x_, c0, cnt, mask, acc):
        me = kb.load_vector(xp, b.add(pix(img, y, x_, wd, h), kb.i64(c0)), mask) if is_max else None
        for i in range(ph):
            oy, ok_y = _tap_origin(kb, y, i, pt, sh, 1, oh)
            for j in range(pw):
                ox, ok_x = _tap_origin(kb, x_, j, pl, sw, 1, ow)
                with kb.if_then(b.and_(ok_y, ok_x)):
                    g = kb.load_vector(dyp, b.add(pix(img, oy, ox, ow, oh), kb.i64(c0)), mask)
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
            idx = b.add(b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(h)), yy), kb.i64(wd)), xx), kb.i64(c)),
                        kb.i64(c0))
            other = kb.load_vector(xp, idx, mask)
            other = b.select(kb.splat(inside), other, kb.vconst(-math.inf))
            # earlier taps must be strictly smaller, later ones not larger
            beats = b.fcmp_ordered(">", me, other) if (a, d) < (i, j) else \
                b.fcmp_ordered(">=", me, other) if (a, d) > (i, j) else kb.vconst(True, kb.vw, ir.IntType(1))
            win = b.and_(win, beats)
    return win
