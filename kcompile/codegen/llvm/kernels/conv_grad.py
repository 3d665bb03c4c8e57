"""Gradients of conv2d: dW as a register-tiled GEMM over the pixels, dX as a convolution.

dW[i, j, c, o] = sum over images and output pixels of x[pixel shifted by tap (i, j), c] * dy[pixel, o]
is a GEMM with M = KH*KW*Cin rows (tap, channel), N = Cout columns and a long reduction K over
N*OH*OW pixels. Row r's operand is x at a fixed offset from the pixel's top-left tap, so a tile of
MR rows keeps MR offsets in registers, broadcasts MR scalars of x per pixel and multiplies them with
the contiguous dy vectors of NR columns: MR * NV FMAs per MR broadcasts + NV loads, like the forward
GEMM. The reduction is cut into blocks of output rows that stay in cache (every thread sweeps a
block for all its tiles, adding into dW), and threads split the (column panel, row tile) pairs, so
dW needs no cross-thread reduction. Pixels whose taps leave the image ('same' padding) run the same
loop with per-row bounds checks; with ci = 1 (a first layer) rows span several taps and still tile.

dX of a stride-1 convolution (any dilation/padding) is a convolution of dY with the spatially
flipped, in/out-transposed kernel: the forward direct/Winograd kernels compute it from a copy packed
by the kernel itself (conv.py). Larger strides take a gather kernel: each dX pixel sums, over the
taps whose output position exists, dy[pixel] @ W[tap]^T, with W packed transposed (channels of dX
contiguous) so that is vector FMAs too.
"""

from __future__ import annotations

import os

from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.backward import _tap_origin
from kcompile.codegen.llvm.kernels.common import (
    KernelContext,
    apply_epilogue,
    epilogue_kinds,
    for_panel_variants,
    lowering,
    split_range,
)
from kcompile.codegen.llvm.kernels.conv import ConvGeom, ConvPlan, emit_direct, pack_runtime_weights
from kcompile.codegen.llvm.kernels.gemm import panel_vectors
from kcompile.codegen.llvm.kernels.scratch import SLOTS, kernel_barrier, thread_scratch
from kcompile.ir.core import Node
from kcompile.ir.ops.conv import spatial_pads

MR = 6
BLOCK_BYTES = 12 * 1024  # dy floats of one column panel per reduction block (kept in L1)
SPLIT_K_FLOATS = 16 * 1024  # dW up to this size: threads split the pixels, not the dW entries


def _require_f32(node: Node) -> None:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM {node.op} is float32 only, got {v.dtype} in "
                                      f"{node.label or node.op}; use jit_compile=False")


# -- dW ---------------------------------------------------------------------------------------------
class FilterGradPlan:
    def __init__(self, node: Node, vw: int) -> None:
        x, dy = node.inputs
        _, self.h, self.w, self.ci = x.shape
        _, self.oh, self.ow, self.co = dy.shape
        self.kh, self.kw = node.attrs["kernel_hw"]
        self.sh, self.sw = node.attrs["strides"]
        self.dh, self.dw = node.attrs["dilation"]
        (self.pt, _), (self.pl, _) = spatial_pads((self.h, self.w), (self.kh, self.kw),
                                                   (self.sh, self.sw), (self.dh, self.dw),
                                                   node.attrs["padding"])
        self.vw = vw
        self.nv = panel_vectors(vw)
        self.nr = self.nv * vw
        self.copad = -(-self.co // vw) * vw
        self.panels = -(-self.copad // self.nr)
        self.last_nv = (self.copad - (self.panels - 1) * self.nr) // vw
        self.m = self.kh * self.kw * self.ci
        self.tiles = -(-self.m // MR)
        self.last_rows = self.m - (self.tiles - 1) * MR
        self.block_rows = max(1, BLOCK_BYTES // (4 * self.nr * self.ow))
        # the output pixels whose every tap is in bounds (as in ConvPlan)
        self.ow_lo = min(self.ow, -(-self.pl // self.sw))
        self.ow_hi = max(self.ow_lo, min(self.ow, (self.w - 1 - (self.kw - 1) * self.dw + self.pl)
                                         // self.sw + 1))
        self.oh_lo = min(self.oh, -(-self.pt // self.sh))
        self.oh_hi = max(self.oh_lo, min(self.oh, (self.h - 1 - (self.kh - 1) * self.dh + self.pt)
                                         // self.sh + 1))


@lowering("conv2d_filter_grad")
def lower_conv_filter_grad(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    plan = FilterGradPlan(node, ctx.target.vector_width)
    from kcompile.codegen.llvm.kernels import winograd_grad

    if os.environ.get("KCOMPILE_WINOGRAD", "1") != "0" and winograd_grad.applies(plan):
        return winograd_grad.emit_winograd_filter_grad(ctx, node, plan)
    fn, kb, (xp, dyp), out, n, tid, nt = ctx.new_kernel(node, "conv_dw")
    b = kb.b
    items = plan.panels * plan.tiles
    rows = b.mul(n, kb.i64(plan.oh))
    micro: dict[tuple, ir.Function] = {}

    def call(nrows: int, nvec: int, edge: bool, args: list) -> None:
        key = (nrows, nvec, edge)
        if key not in micro:
            micro[key] = _dw_micro(ctx, plan, nrows, nvec, edge)
        b.call(micro[key], args)

    def sweep(dst: ir.Value, item_lo: ir.Value, item_hi: ir.Value, row_lo: ir.Value,
              row_hi: ir.Value) -> None:
        """dst[items] = the sum over output rows [row_lo, row_hi), in cache-sized blocks (at least
        one, so an empty range still writes zeros)."""
        span = b.sub(row_hi, row_lo)
        blocks = kb.max_i64(b.sdiv(b.add(span, kb.i64(plan.block_rows - 1)), kb.i64(plan.block_rows)),
                            kb.i64(1))
        with kb.loop(kb.i64(0), blocks, 1, "blk") as blk:
            r0 = b.add(row_lo, b.mul(blk, kb.i64(plan.block_rows)))
            r1 = kb.min_i64(row_hi, b.add(r0, kb.i64(plan.block_rows)))
            first = b.zext(b.icmp_signed("==", blk, kb.i64(0)), I64)
            with kb.loop(item_lo, item_hi, 1, "item") as item:
                p = b.sdiv(item, kb.i64(plan.tiles))
                t = b.srem(item, kb.i64(plan.tiles))
                args = [xp, dyp, dst, r0, r1, b.mul(t, kb.i64(MR)), b.mul(p, kb.i64(plan.nr)), first]

                def per_panel(nvec: int, edge: bool) -> None:
                    if plan.last_rows == MR:
                        call(MR, nvec, edge, args)
                        return
                    with b.if_else(b.icmp_signed("==", t, kb.i64(plan.tiles - 1))) as (last, other):
                        with last:
                            call(plan.last_rows, nvec, edge, args)
                        with other:
                            if plan.tiles > 1:
                                call(MR, nvec, edge, args)

                for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, plan.co % plan.vw != 0,
                                   per_panel)

    if plan.m * plan.co > SPLIT_K_FLOATS:  # threads split the (panel, row tile) items
        lo, hi = split_range(kb, kb.i64(items), tid, nt)
        sweep(out, lo, hi, kb.i64(0), rows)
        kb.finish()
        return fn
    # A small dW (a first layer's): threads split the pixels instead -- each reads its own part of x
    # and dy once, where splitting the columns had both cores pull every dy line -- into per-thread
    # partial sums, then after a barrier split the dW entries to add the partials up.
    size = plan.m * plan.co
    workers = kb.min_i64(nt, kb.i64(SLOTS))
    me = kb.min_i64(tid, workers)
    with kb.if_then(b.icmp_signed("<", tid, workers)):
        row_lo, row_hi = split_range(kb, rows, me, workers)
        sweep(thread_scratch(kb, size, me), kb.i64(0), kb.i64(items), row_lo, row_hi)
    kernel_barrier(kb, nt)
    parts = thread_scratch(kb, size, kb.i64(0))
    vw = plan.vw
    e_lo, e_hi = split_range(kb, kb.i64(-(-size // vw)), tid, nt)
    with kb.loop(e_lo, e_hi, 1, "e") as e:
        at = b.mul(e, kb.i64(vw))
        mask = None
        if size % vw:
            mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(size), at), kb.i64(vw)))
        total = kb.var(kb.vec_type(), kb.vconst(0.0))
        with kb.loop(kb.i64(0), workers, 1, "s") as slot:
            part = kb.load_vector(parts, b.add(b.mul(slot, kb.i64(size)), at), mask)
            kb.set(total, b.fadd(kb.get(total), part))
        kb.store_vector(kb.get(total), out, at, mask)
    kb.finish()
    return fn


def _dw_micro(ctx: KernelContext, plan: FilterGradPlan, nrows: int, nvec: int,
              edge: bool) -> ir.Function:
    """dW rows row0 .. row0+nrows-1 (flat (i, j, c) indices) x columns col0 .. col0+nvec*vw-1,
    summed over the output rows [r0, r1) of the batch; `first` (i64 0/1) starts from zero instead of
    adding to what dW holds."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_conv_dw_{nrows}x{nvec}{'e' if edge else ''}",
                [PTR, PTR, PTR, I64, I64, I64, I64, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, dy, out, r0, r1, row0, col0, first = fn.args
    vw, ci, co = plan.vw, plan.ci, plan.co
    edge_mask = kb.lane_mask(kb.i64(co % vw)) if edge else None

    def mask_of(v: int):
        return edge_mask if v == nvec - 1 else None

    offs, dis, djs, cs = [], [], [], []  # per row: x offset of the tap, its (dy, dx) shift, channel
    for r in range(nrows):
        f = b.add(row0, kb.i64(r))
        i = b.sdiv(f, kb.i64(plan.kw * ci))
        j = b.srem(b.sdiv(f, kb.i64(ci)), kb.i64(plan.kw))
        c = b.srem(f, kb.i64(ci))
        di, dj = b.mul(i, kb.i64(plan.dh)), b.mul(j, kb.i64(plan.dw))
        offs.append(b.add(b.mul(b.add(b.mul(di, kb.i64(plan.w)), dj), kb.i64(ci)), c))
        dis.append(di)
        djs.append(dj)
        cs.append(c)
    accs = [[kb.var(kb.vec_type()) for _ in range(nvec)] for _ in range(nrows)]
    dw_index = [[b.add(b.mul(b.add(row0, kb.i64(r)), kb.i64(co)), b.add(col0, kb.i64(v * vw)))
                 for v in range(nvec)] for r in range(nrows)]
    with b.if_else(b.icmp_signed("!=", first, kb.i64(0))) as (fresh, accumulate):
        with fresh:
            for row in accs:
                for acc in row:
                    kb.set(acc, kb.vconst(0.0))
        with accumulate:
            for r in range(nrows):
                for v in range(nvec):
                    kb.set(accs[r][v], kb.load_vector(out, dw_index[r][v], mask_of(v)))

    with kb.loop(r0, r1, 1, "orow") as orow:
        img = b.sdiv(orow, kb.i64(plan.oh))
        oy = b.srem(orow, kb.i64(plan.oh))
        iy0 = b.sub(b.mul(oy, kb.i64(plan.sh)), kb.i64(plan.pt))
        x_row = b.add(b.mul(img, kb.i64(plan.h)), iy0)  # input row of tap 0 (may be < 0)
        dy_row = b.add(b.mul(orow, kb.i64(plan.ow * co)), col0)

        def pixels(ox0: int, ox1: int, checked: bool) -> None:
            if ox1 <= ox0:
                return
            with kb.loop(kb.i64(ox0), kb.i64(ox1), 1, "ox") as ox:
                ix0 = b.sub(b.mul(ox, kb.i64(plan.sw)), kb.i64(plan.pl))
                d = b.add(dy_row, b.mul(ox, kb.i64(co)))
                bv = [kb.load_vector(dy, b.add(d, kb.i64(v * vw)), mask_of(v)) for v in range(nvec)]
                pix = b.mul(b.add(b.mul(x_row, kb.i64(plan.w)), ix0), kb.i64(ci))
                for r in range(nrows):
                    if checked:
                        iy = b.add(iy0, dis[r])
                        ix = b.add(ix0, djs[r])
                        ok = b.and_(b.icmp_unsigned("<", iy, kb.i64(plan.h)),
                                    b.icmp_unsigned("<", ix, kb.i64(plan.w)))
                        idx = b.select(ok, b.add(pix, offs[r]), kb.i64(0))
                        a = b.select(ok, kb.load(x, idx), kb.f32(0.0))
                    else:
                        a = kb.load(x, b.add(pix, offs[r]))
                    a = kb.splat(a)
                    for v in range(nvec):
                        kb.set(accs[r][v], kb.fma(a, bv[v], kb.get(accs[r][v])))

        def interior_row() -> None:
            pixels(0, plan.ow_lo, True)
            pixels(plan.ow_lo, plan.ow_hi, False)
            pixels(plan.ow_hi, plan.ow, True)

        if plan.oh_lo == 0 and plan.oh_hi == plan.oh:
            interior_row()
        else:
            inside = b.and_(b.icmp_signed(">=", oy, kb.i64(plan.oh_lo)),
                            b.icmp_signed("<", oy, kb.i64(plan.oh_hi)))
            with b.if_else(inside) as (yes, no):
                with yes:
                    interior_row()
                with no:
                    pixels(0, plan.ow, True)
    for r in range(nrows):
        for v in range(nvec):
            kb.store_vector(kb.get(accs[r][v]), out, dw_index[r][v], mask_of(v))
    kb.finish()
    return fn


# -- dX ---------------------------------------------------------------------------------------------
@lowering("conv2d_input_grad")
def lower_conv_input_grad(ctx: KernelContext, node: Node) -> ir.Function:
    step = ("conv2d_input_grad", ("i0", "i1"), tuple(sorted(node.attrs.items())))
    return emit_input_grad(ctx, node, (step,))


def emit_input_grad(ctx: KernelContext, node: Node, program: tuple) -> ir.Function:
    """dX through `program`'s epilogue (its steps after the first, as for a fused conv2d: extra
    operands are inputs 2.., full-shaped or per channel), so a fusion pass may make
    conv2d_input_grad an anchor (e.g. with the ReLU mask of the layer below)."""
    _require_f32(node)
    vw = ctx.target.vector_width
    kinds = epilogue_kinds(node)
    attrs = dict(program[0][2])
    if tuple(attrs["strides"]) == (1, 1):
        from kcompile.codegen.llvm.kernels import winograd

        plan = ConvPlan(ConvGeom.input_grad(node, attrs), vw, kinds)
        if os.environ.get("KCOMPILE_WINOGRAD", "1") != "0" and winograd.applies_to(plan):
            return winograd.emit_winograd(ctx, node, program, plan, "flipped")
        return emit_direct(ctx, node, program, plan, "flipped")
    return _emit_strided_input_grad(ctx, node, program, kinds, attrs)


def _emit_strided_input_grad(ctx: KernelContext, node: Node, program: tuple, kinds: dict[int, str],
                             attrs: dict) -> ir.Function:
    dy, w = node.inputs[0], node.inputs[1]
    _, h, wd, ci = node.outputs[0].shape
    _, oh, ow, co = dy.shape
    kh, kw = w.shape[:2]
    sh, sw = attrs["strides"]
    dh, dw = attrs["dilation"]
    (pt, _), (pl, _) = spatial_pads((h, wd), (kh, kw), (sh, sw), (dh, dw), attrs["padding"])
    vw = ctx.target.vector_width
    # W^T packed as a convolution kernel K[tap][o][c] with panels over the dX channels c
    pplan = ConvPlan(ConvGeom(oh, ow, co, kh, kw, ci, h, wd, 1, 1, dh, dw, 0, 0), vw)
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "conv_dx")
    dyp, wp, extras = ins[0], ins[1], ins[2:]
    b = kb.b
    packed = pack_runtime_weights(ctx, kb, pplan, "transposed", wp, tid, nt)
    geom = (h, wd, oh, ow, ci, co, kh, kw, sh, sw, dh, dw, pt, pl)
    micro: dict[tuple, ir.Function] = {}
    lo, hi = split_range(kb, b.mul(n, kb.i64(h)), tid, nt)
    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(h))
        y = b.srem(row, kb.i64(h))
        with kb.loop(kb.i64(0), kb.i64(wd), 1, "x") as xx:
            with kb.loop(kb.i64(0), kb.i64(pplan.panels), 1, "p") as p:
                wpanel = kb.gep(packed, b.mul(p, kb.i64(kh * kw * co * pplan.nr)))
                col0 = b.mul(p, kb.i64(pplan.nr))

                def per_panel(nvec: int, edge: bool) -> None:
                    key = (nvec, edge)
                    if key not in micro:
                        micro[key] = _gather_micro(ctx, geom, vw, nvec, edge, program, kinds,
                                                   len(node.inputs) - 2)
                    b.call(micro[key], [dyp, wpanel, out, img, y, xx, col0, *extras])

                for_panel_variants(kb, p, pplan.panels, pplan.nv, pplan.last_nv, ci % vw != 0,
                                   per_panel)
    kb.finish()
    return fn


def _gather_micro(ctx: KernelContext, geom: tuple, vw: int, nvec: int, edge: bool, program: tuple,
                  kinds: dict[int, str], n_extra: int) -> ir.Function:
    """dX[img, y, x, col0 .. col0+nvec*vw) = sum over valid taps and o of dy[.., o] * K[tap][o][..]."""
    h, wd, oh, ow, ci, co, kh, kw, sh, sw, dh, dw, pt, pl = geom
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_conv_dx_gather_{nvec}{'e' if edge else ''}",
                [PTR, PTR, PTR, I64, I64, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    dy, wpanel, out, img, y, xx, col0 = fn.args[:7]
    extras = list(fn.args[7:])
    width = nvec * vw
    ksplit = max(1, min(4, 8 // nvec))  # independent FMA chains: one pixel has only nvec
    sets = [[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(ksplit)]

    for i in range(kh):
        oy, ok_y = _tap_origin(kb, y, i, pt, sh, dh, oh)
        for j in range(kw):
            ox, ok_x = _tap_origin(kb, xx, j, pl, sw, dw, ow)
            with kb.if_then(b.and_(ok_y, ok_x)):
                dbase = b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(oh)), oy), kb.i64(ow)), ox), kb.i64(co))
                wtap = kb.i64((i * kw + j) * co * width)

                def step(o: ir.Value, accs: list, dbase=dbase, wtap=wtap) -> None:
                    g = kb.splat(kb.load(dy, b.add(dbase, o)))
                    wrow = b.add(wtap, b.mul(o, kb.i64(width)))
                    for v in range(nvec):
                        kb.set(accs[v], kb.fma(g, kb.vload(wpanel, b.add(wrow, kb.i64(v * vw))),
                                               kb.get(accs[v])))

                main = co - co % ksplit
                if main:
                    with kb.loop(kb.i64(0), kb.i64(main), ksplit, "o") as o0:
                        for s_ in range(ksplit):
                            step(b.add(o0, kb.i64(s_)), sets[s_])
                for o in range(main, co):
                    step(kb.i64(o), sets[0])
    pixel = b.add(b.mul(b.add(b.mul(img, kb.i64(h)), y), kb.i64(wd)), xx)
    for v in range(nvec):
        acc = sets[0][v]
        for extra in sets[1:]:
            kb.set(acc, b.fadd(kb.get(acc), kb.get(extra[v])))
        mask = kb.lane_mask(kb.i64(ci % vw)) if edge and v == nvec - 1 else None
        col = b.add(col0, kb.i64(v * vw))
        idx = b.add(b.mul(pixel, kb.i64(ci)), col)
        kb.store_vector(apply_epilogue(kb, program, kinds, extras, kb.get(acc), col, idx, mask), out, idx,
                        mask)
    kb.finish()
    return fn
