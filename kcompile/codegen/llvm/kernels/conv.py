"""Direct 2-D convolution in NHWC with packed kernels and a fused epilogue -- no im2col buffer.

Layout choice: activations stay NHWC (Keras's layout, so no reorders at model boundaries) and the
kernel is packed per block of NR output channels as [KH][KW][Cin][NR]; that is the channel-blocked
direct convolution (the output-channel block is the vector dim) with the channel-last input giving
unit-stride broadcasts. The micro-kernel holds MR output pixels of one output row x NR channels in
registers and accumulates over (kh, kw, ci). Interior pixels (every tap in bounds) take the fast
path; border pixels take a one-pixel path that skips out-of-bounds taps, which is how padding='same'
costs no padded copy. Threads split the N*OH output rows.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import (
    KernelContext,
    ParamLayout,
    apply_epilogue,
    epilogue_kinds,
    for_panel_variants,
    lowering,
    packer,
    split_range,
)
from kcompile.codegen.llvm.kernels.gemm import panel_vectors
from kcompile.ir.core import Node
from kcompile.ir.ops.conv import spatial_pads

MR = 6


@packer("conv_panels")
def pack_conv(w: np.ndarray, nr: int, vw: int) -> np.ndarray:
    """HWIO -> per block of nr output channels [KH][KW][Cin][nr] (last block zero-padded to vw)."""
    kh, kw, ci, co = w.shape
    copad = -(-co // vw) * vw
    padded = np.zeros((kh, kw, ci, copad), np.float32)
    padded[..., :co] = w
    parts = [np.ascontiguousarray(padded[..., p:p + nr]).ravel() for p in range(0, copad, nr)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class ConvPlan:
    def __init__(self, node: Node, program: tuple, vw: int) -> None:
        x, w = node.inputs[0], node.inputs[1]
        attrs = dict(program[0][2])
        _, self.h, self.w, self.ci = x.shape
        self.kh, self.kw, _, self.co = w.shape
        _, self.oh, self.ow, _ = node.outputs[0].shape
        self.sh, self.sw = attrs["strides"]
        self.dh, self.dw = attrs["dilation"]
        (self.pt, _), (self.pl, _) = spatial_pads((self.h, self.w), (self.kh, self.kw),
                                                   (self.sh, self.sw), (self.dh, self.dw),
                                                   attrs["padding"])
        self.vw = vw
        self.nv = panel_vectors(vw)
        self.nr = self.nv * vw
        self.copad = -(-self.co // vw) * vw
        self.panels = -(-self.copad // self.nr)
        self.last_nv = (self.copad - (self.panels - 1) * self.nr) // vw
        self.kinds = epilogue_kinds(node)
        self.static = True  # packed weights (False: run-time HWIO weights read in place)
        # output columns whose taps are all in bounds horizontally: ow*sw - pl >= 0 and
        # ow*sw - pl + (kw-1)*dw <= w-1
        self.ow_lo = min(self.ow, -(-self.pl // self.sw))
        self.ow_hi = max(self.ow_lo, min(self.ow, (self.w - 1 - (self.kw - 1) * self.dw + self.pl)
                                         // self.sw + 1))
        self.oh_lo = min(self.oh, -(-self.pt // self.sh))
        self.oh_hi = max(self.oh_lo, min(self.oh, (self.h - 1 - (self.kh - 1) * self.dh + self.pt)
                                         // self.sh + 1))


@lowering("conv2d")
def lower_conv2d(ctx: KernelContext, node: Node) -> ir.Function:
    return emit_conv(ctx, node, (("conv2d", ("i0", "i1"), tuple(sorted(node.attrs.items()))),))


def emit_conv(ctx: KernelContext, node: Node, program: tuple) -> ir.Function:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM conv2d is float32 only, got {v.dtype} in "
                                      f"{node.label or node.op}; use jit_compile=False")
    from kcompile.codegen.llvm.kernels import winograd

    static = ctx.is_static(node.inputs[1])
    if static and os.environ.get("KCOMPILE_WINOGRAD", "1") != "0" and \
            winograd.applies(node, program, ctx.target.vector_width):
        return winograd.emit_winograd(ctx, node, program)
    plan = ConvPlan(node, program, ctx.target.vector_width)
    plan.static = static
    if static:
        ctx.want_layout(1, ParamLayout("conv_panels", (plan.nr, plan.vw)))
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "conv")
    b = kb.b
    extras = ins[2:]
    rows = b.mul(n, kb.i64(plan.oh))
    lo, hi = split_range(kb, rows, tid, nt)
    micro: dict[tuple, ir.Function] = {}

    def call(kind: str, npix: int, nvec: int, edge: bool, args: list) -> None:
        key = (kind, npix, nvec, edge)
        if key not in micro:
            micro[key] = _conv_micro(ctx, node, plan, program, kind, npix, nvec, edge)
        b.call(micro[key], args + list(extras))

    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(plan.oh))
        oh = b.srem(row, kb.i64(plan.oh))
        interior_row = b.and_(b.icmp_signed(">=", oh, kb.i64(plan.oh_lo)),
                              b.icmp_signed("<", oh, kb.i64(plan.oh_hi)))
        with kb.loop(kb.i64(0), kb.i64(plan.panels), 1, "p") as p:
            # packed: panel p holds [KH][KW][Cin][NR]; run-time HWIO: columns start at col0
            wpanel = kb.gep(ins[1], b.mul(p, kb.i64(plan.kh * plan.kw * plan.ci * plan.nr
                                                    if plan.static else plan.nr)))
            col0 = b.mul(p, kb.i64(plan.nr))

            def per_panel(nvec: int, edge: bool) -> None:
                def border(ow0: int, ow1: int) -> None:
                    if ow1 <= ow0:
                        return
                    with kb.loop(kb.i64(ow0), kb.i64(ow1), 1, "bw") as ow:
                        call("checked", 1, nvec, edge, [ins[0], wpanel, out, img, oh, ow, col0])

                def interior() -> None:
                    border(0, plan.ow_lo)
                    span = plan.ow_hi - plan.ow_lo
                    full = span - span % MR
                    if full:
                        with kb.loop(kb.i64(plan.ow_lo), kb.i64(plan.ow_lo + full), MR, "ow") as ow:
                            call("fast", MR, nvec, edge, [ins[0], wpanel, out, img, oh, ow, col0])
                    if span % MR:
                        call("fast", span % MR, nvec, edge,
                             [ins[0], wpanel, out, img, oh, kb.i64(plan.ow_lo + full), col0])
                    border(plan.ow_hi, plan.ow)

                if plan.oh_lo == 0 and plan.oh_hi == plan.oh:  # no border rows ('valid')
                    interior()
                else:
                    with b.if_else(interior_row) as (inner, outer):
                        with inner:
                            interior()
                        with outer:
                            border(0, plan.ow)

            for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, plan.co % plan.vw != 0,
                               per_panel)
    kb.finish()
    return fn


def _conv_micro(ctx: KernelContext, node: Node, plan: ConvPlan, program: tuple, kind: str,
                npix: int, nvec: int, edge: bool) -> ir.Function:
    """Output pixels (img, oh, ow .. ow+npix-1) x channels [col0, col0 + nvec*vw)."""
    ctx.counter += 1
    n_extra = len(node.inputs) - 2
    fn = define(ctx.module, f"k{ctx.counter}_conv_{kind}_{npix}x{nvec}",
                [PTR, PTR, PTR, I64, I64, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, wp, out, img, oh, ow, col0 = fn.args[:7]
    extras = list(fn.args[7:])
    vw, ci = plan.vw, plan.ci
    stride = nvec * vw if plan.static else plan.co  # one (kh, kw, ci) row of the weights
    edge_mask = kb.lane_mask(kb.i64(plan.co % vw)) if edge else None
    w_mask = None if plan.static else edge_mask
    ksplit = max(1, min(3, 12 // (npix * nvec)))
    sets = [[[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(npix)]
            for _ in range(ksplit)]
    ih0 = b.sub(b.mul(oh, kb.i64(plan.sh)), kb.i64(plan.pt))
    iw0 = b.sub(b.mul(ow, kb.i64(plan.sw)), kb.i64(plan.pl))
    img_base = b.mul(img, kb.i64(plan.h * plan.w * ci))

    def taps(kh: ir.Value, kw: ir.Value) -> None:
        ih = b.add(ih0, b.mul(kh, kb.i64(plan.dh)))
        iw = b.add(iw0, b.mul(kw, kb.i64(plan.dw)))
        pix = [b.add(img_base, b.mul(b.add(b.mul(ih, kb.i64(plan.w)), b.add(iw, kb.i64(r * plan.sw))),
                                     kb.i64(ci))) for r in range(npix)]
        wbase = b.mul(b.add(b.mul(kh, kb.i64(plan.kw)), kw), kb.i64(ci * stride))

        def step(c: ir.Value, accs: list) -> None:
            wrow = b.add(wbase, b.mul(c, kb.i64(stride)))
            bvals = [kb.load_vector(wp, b.add(wrow, kb.i64(v * vw)), w_mask if v == nvec - 1 else None)
                     for v in range(nvec)]
            for r in range(npix):
                av = kb.splat(kb.load(x, b.add(pix[r], c)))
                for v in range(nvec):
                    kb.set(accs[r][v], kb.fma(av, bvals[v], kb.get(accs[r][v])))

        main = ci - ci % ksplit
        if main:
            with kb.loop(kb.i64(0), kb.i64(main), ksplit, "ci") as c0:
                for s_ in range(ksplit):
                    step(b.add(c0, kb.i64(s_)), sets[s_])
        for c in range(main, ci):
            step(kb.i64(c), sets[0])

    def tap(kh: ir.Value, kw: ir.Value, ok_h: ir.Value | None) -> None:
        if kind != "checked":
            taps(kh, kw)
            return
        iw = b.add(iw0, b.mul(kw, kb.i64(plan.dw)))
        ok = b.and_(ok_h, b.and_(b.icmp_signed(">=", iw, kb.i64(0)),
                                 b.icmp_signed("<", iw, kb.i64(plan.w))))
        with kb.if_then(ok):
            taps(kh, kw)

    def row_ok(kh: ir.Value) -> ir.Value | None:
        if kind != "checked":
            return None
        ih = b.add(ih0, b.mul(kh, kb.i64(plan.dh)))
        return b.and_(b.icmp_signed(">=", ih, kb.i64(0)), b.icmp_signed("<", ih, kb.i64(plan.h)))

    if ci <= 8:  # few channels: the tap loops themselves would dominate, so unroll them here
        for i in range(plan.kh):
            ok_h = row_ok(kb.i64(i))
            for j in range(plan.kw):
                tap(kb.i64(i), kb.i64(j), ok_h)
    else:
        with kb.loop(kb.i64(0), kb.i64(plan.kh), 1, "kh") as kh:
            ok_h = row_ok(kh)
            with kb.loop(kb.i64(0), kb.i64(plan.kw), 1, "kw") as kw:
                tap(kh, kw, ok_h)
    accs = sets[0]
    for extra in sets[1:]:
        for r in range(npix):
            for v in range(nvec):
                kb.set(accs[r][v], b.fadd(kb.get(accs[r][v]), kb.get(extra[r][v])))
    out_row = b.add(b.mul(img, kb.i64(plan.oh)), oh)
    for r in range(npix):
        pixel = b.add(b.mul(out_row, kb.i64(plan.ow)), b.add(ow, kb.i64(r)))
        for v in range(nvec):
            col = b.add(col0, kb.i64(v * vw))
            mask = kb.lane_mask(kb.i64(plan.co % vw)) if edge and v == nvec - 1 else None
            idx = b.add(b.mul(pixel, kb.i64(plan.co)), col)
            value = apply_epilogue(kb, program, plan.kinds, extras, kb.get(accs[r][v]), col, idx, mask)
            kb.store_vector(value, out, idx, mask)
    kb.finish()
    return fn
