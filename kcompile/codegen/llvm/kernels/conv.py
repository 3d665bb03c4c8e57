"""Direct 2-D convolution in NHWC with packed kernels and a fused epilogue -- no im2col buffer.

Layout choice: activations stay NHWC (Keras's layout, so no reorders at model boundaries) and the
kernel is packed per block of NR output channels as [KH][KW][Cin][NR]; that is the channel-blocked
direct convolution (the output-channel block is the vector dim) with the channel-last input giving
unit-stride broadcasts. The micro-kernel holds MR output pixels x NR channels in registers and
accumulates over (kh, kw, ci).

Two pixel schedules. When every output pixel sees only in-bounds taps ('valid', or a 1x1 kernel)
the N*OH*OW pixels are one flat list cut into tiles of MR (a tile may cross rows and images, so an
8-wide output row costs no 2-pixel remainder tile). Otherwise threads split the N*OH output rows:
interior pixels take the fast tiles and border pixels a one-pixel path that skips out-of-bounds
taps, which is how padding='same' costs no padded copy.

Weights known at bind time are packed once on the host (`conv_panels`). Run-time weights (a
training step's) are packed by the kernel itself: the threads pack disjoint rows into a module
buffer, meet at a barrier, and then run exactly the static-weight code (scratch.py). The same code
computes the input gradient of a stride-1 convolution, which is a convolution of dY with the
spatially flipped, in/out-transposed kernel: that kernel is packed from the forward weights by
gathering (`source="flipped"`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
from kcompile.codegen.llvm.kernels.scratch import kernel_barrier, scratch_buffer
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


@dataclass(frozen=True)
class ConvGeom:
    """One convolution as the kernels see it: input (h, w, ci), kernel (kh, kw), output (oh, ow,
    co), strides, dilation and the top/left padding."""

    h: int
    w: int
    ci: int
    kh: int
    kw: int
    co: int
    oh: int
    ow: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int

    @classmethod
    def forward(cls, node: Node, attrs: dict) -> ConvGeom:
        x, w = node.inputs[0], node.inputs[1]
        _, h, wd, ci = x.shape
        kh, kw, _, co = w.shape
        _, oh, ow, _ = node.outputs[0].shape
        sh, sw = attrs["strides"]
        dh, dw = attrs["dilation"]
        (pt, _), (pl, _) = spatial_pads((h, wd), (kh, kw), (sh, sw), (dh, dw), attrs["padding"])
        return cls(h, wd, ci, kh, kw, co, oh, ow, sh, sw, dh, dw, pt, pl)

    @classmethod
    def input_grad(cls, node: Node, attrs: dict) -> ConvGeom:
        """dX of a stride-1 conv: dY (n, oh, ow, co) convolved with the flipped kernel, whose
        input channels are the forward's outputs; the padding becomes extent - 1 - pad."""
        dy, w = node.inputs[0], node.inputs[1]
        _, h, wd, ci = node.outputs[0].shape
        _, oh, ow, co = dy.shape
        kh, kw = w.shape[:2]
        dh, dw = attrs["dilation"]
        (pt, _), (pl, _) = spatial_pads((h, wd), (kh, kw), attrs["strides"], (dh, dw), attrs["padding"])
        return cls(oh, ow, co, kh, kw, ci, h, wd, 1, 1, dh, dw, (kh - 1) * dh - pt, (kw - 1) * dw - pl)


class ConvPlan:
    def __init__(self, geom: ConvGeom, vw: int, kinds: dict[int, str] | None = None) -> None:
        g = geom
        self.geom = g
        self.h, self.w, self.ci, self.kh, self.kw, self.co = g.h, g.w, g.ci, g.kh, g.kw, g.co
        self.oh, self.ow, self.sh, self.sw, self.dh, self.dw = g.oh, g.ow, g.sh, g.sw, g.dh, g.dw
        self.pt, self.pl = g.pt, g.pl
        self.vw = vw
        self.nv = panel_vectors(vw)
        self.nr = self.nv * vw
        self.copad = -(-self.co // vw) * vw
        self.panels = -(-self.copad // self.nr)
        self.last_nv = (self.copad - (self.panels - 1) * self.nr) // vw
        self.kinds = kinds or {}
        # output columns whose taps are all in bounds horizontally: ow*sw - pl >= 0 and
        # ow*sw - pl + (kw-1)*dw <= w-1
        self.ow_lo = min(self.ow, -(-self.pl // self.sw))
        self.ow_hi = max(self.ow_lo, min(self.ow, (self.w - 1 - (self.kw - 1) * self.dw + self.pl)
                                         // self.sw + 1))
        self.oh_lo = min(self.oh, -(-self.pt // self.sh))
        self.oh_hi = max(self.oh_lo, min(self.oh, (self.h - 1 - (self.kh - 1) * self.dh + self.pt)
                                         // self.sh + 1))

    @property
    def all_interior(self) -> bool:
        return (self.oh_lo, self.oh_hi, self.ow_lo, self.ow_hi) == (0, self.oh, 0, self.ow)

    @property
    def packed_floats(self) -> int:
        return self.kh * self.kw * self.ci * self.copad


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
    plan = ConvPlan(ConvGeom.forward(node, dict(program[0][2])), ctx.target.vector_width,
                    epilogue_kinds(node))
    source = "packed" if static else "hwio"
    if os.environ.get("KCOMPILE_WINOGRAD", "1") != "0" and winograd.applies_to(plan):
        return winograd.emit_winograd(ctx, node, program, plan, source)
    if static:
        ctx.want_layout(1, ParamLayout("conv_panels", (plan.nr, plan.vw)))
    return emit_direct(ctx, node, program, plan, source)


# -- run-time weight packing ----------------------------------------------------------------------
def load_kernel_vector(kb: KernelBuilder, w: ir.Value, plan: ConvPlan, source: str, tap: ir.Value,
                       k: ir.Value, n0: ir.Value, count: int | ir.Value | None) -> ir.Value:
    """Lanes n0 .. n0+vw-1 of the convolution kernel K[tap][k][n] (tap = i*kw + j, k an input and
    n an output channel of the convolution computed), from the run-time operand `w`; lanes from
    `count` (an int, an i64 or None = all) on are zero and not read. "hwio": w is K itself.
    "flipped": w is the forward kernel of the conv whose input gradient this is,
    K[i][j][k][n] = w[kh-1-i][kw-1-j][n][k] (a strided gather); "transposed": K[i][j][k][n] =
    w[i][j][n][k]."""
    b = kb.b
    if isinstance(count, int):
        count = kb.i64(count)
    if source == "hwio":
        idx = b.add(b.mul(b.add(b.mul(tap, kb.i64(plan.ci)), k), kb.i64(plan.co)), n0)
        if count is None:
            return kb.vload(w, idx)
        return kb.masked_load(w, idx, kb.lane_mask(count))
    src_tap = b.sub(kb.i64(plan.kh * plan.kw - 1), tap) if source == "flipped" else tap
    base = b.add(b.mul(b.mul(src_tap, kb.i64(plan.co)), kb.i64(plan.ci)), k)
    vec = kb.vconst(0.0)
    for lane in range(kb.vw):
        idx = b.add(base, b.mul(b.add(n0, kb.i64(lane)), kb.i64(plan.ci)))
        if count is None:
            value = kb.load(w, idx)
        else:  # past the last channel: no read (the index is clamped to a valid one), a zero
            ok = b.icmp_signed("<", kb.i64(lane), count)
            value = b.select(ok, kb.load(w, b.select(ok, idx, base)), kb.f32(0.0))
        vec = b.insert_element(vec, value, kb.i32(lane))
    return vec


def _pack_fn(ctx: KernelContext, plan: ConvPlan, source: str) -> ir.Function:
    """pack(w, dst, lo, hi): rows [lo, hi) of the (tap, k) rows into the conv_panels layout."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_conv_pack_{source}", [PTR, PTR, I64, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    w, dst, lo, hi = fn.args
    vw, nr = plan.vw, plan.nr
    rows = plan.kh * plan.kw * plan.ci
    with kb.loop(lo, hi, 1, "row") as row:
        tap = b.sdiv(row, kb.i64(plan.ci))
        k = b.srem(row, kb.i64(plan.ci))
        for p in range(plan.panels):
            width = nr if p < plan.panels - 1 else plan.last_nv * vw
            for v in range(width // vw):
                n0 = p * nr + v * vw
                count = None if n0 + vw <= plan.co else plan.co - n0
                vec = load_kernel_vector(kb, w, plan, source, tap, k, kb.i64(n0), count)
                kb.vstore(vec, dst, b.add(kb.i64(p * rows * nr + v * vw), b.mul(row, kb.i64(width))))
    kb.finish()
    return fn


def pack_runtime_weights(ctx: KernelContext, kb: KernelBuilder, plan: ConvPlan, source: str,
                         w: ir.Value, tid: ir.Value, nt: ir.Value) -> ir.Value:
    """Pack run-time weights into a module buffer (threads split the rows), then a barrier."""
    buf = scratch_buffer(kb, plan.packed_floats)
    lo, hi = split_range(kb, kb.i64(plan.kh * plan.kw * plan.ci), tid, nt)
    kb.b.call(_pack_fn(ctx, plan, source), [w, buf, lo, hi])
    kernel_barrier(kb, nt)
    return buf


# -- the direct convolution ------------------------------------------------------------------------
def emit_direct(ctx: KernelContext, node: Node, program: tuple, plan: ConvPlan,
                source: str = "packed") -> ir.Function:
    """out = epilogue(conv(in0, weights)). `source`: "packed" (in1 is packed on the host), "hwio"
    or "flipped" (in1 is a run-time kernel packed here, see `load_kernel_vector`)."""
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "conv")
    b = kb.b
    extras = ins[2:]
    wsrc = ins[1] if source == "packed" else pack_runtime_weights(ctx, kb, plan, source, ins[1],
                                                                  tid, nt)
    micro: dict[tuple, ir.Function] = {}

    def call(kind: str, npix: int, nvec: int, edge: bool, args: list) -> None:
        key = (kind, npix, nvec, edge)
        if key not in micro:
            micro[key] = _conv_micro(ctx, node, plan, program, kind, npix, nvec, edge)
        b.call(micro[key], args + list(extras))

    def panels(body) -> None:
        """body(wpanel, col0, nvec, edge) for every output-channel panel."""
        with kb.loop(kb.i64(0), kb.i64(plan.panels), 1, "p") as p:
            wpanel = kb.gep(wsrc, b.mul(p, kb.i64(plan.kh * plan.kw * plan.ci * plan.nr)))
            col0 = b.mul(p, kb.i64(plan.nr))
            for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, plan.co % plan.vw != 0,
                               lambda nvec, edge: body(wpanel, col0, nvec, edge))

    if plan.all_interior:  # flat pixel tiles, which may cross rows and images
        pixels = b.mul(n, kb.i64(plan.oh * plan.ow))
        tiles = b.sdiv(b.add(pixels, kb.i64(MR - 1)), kb.i64(MR))
        lo, hi = split_range(kb, tiles, tid, nt)
        with kb.loop(lo, hi, 1, "tile") as tile:
            p0 = b.mul(tile, kb.i64(MR))
            left = b.sub(pixels, p0)

            def flat(wpanel, col0, nvec, edge) -> None:
                with b.if_else(b.icmp_signed(">=", left, kb.i64(MR))) as (full, part):
                    with full:
                        call("flat", MR, nvec, edge, [ins[0], wpanel, out, p0, kb.i64(0), kb.i64(0), col0])
                    with part:
                        for r in range(1, MR):
                            with kb.if_then(b.icmp_signed("==", left, kb.i64(r))):
                                call("flat", r, nvec, edge,
                                     [ins[0], wpanel, out, p0, kb.i64(0), kb.i64(0), col0])

            panels(flat)
        kb.finish()
        return fn

    rows = b.mul(n, kb.i64(plan.oh))
    lo, hi = split_range(kb, rows, tid, nt)
    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(plan.oh))
        oh = b.srem(row, kb.i64(plan.oh))
        interior_row = b.and_(b.icmp_signed(">=", oh, kb.i64(plan.oh_lo)),
                              b.icmp_signed("<", oh, kb.i64(plan.oh_hi)))

        def per_panel(wpanel, col0, nvec: int, edge: bool) -> None:
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

            if plan.oh_lo == 0 and plan.oh_hi == plan.oh:  # no border rows
                interior()
            else:
                with b.if_else(interior_row) as (inner, outer):
                    with inner:
                        interior()
                    with outer:
                        border(0, plan.ow)

        panels(per_panel)
    kb.finish()
    return fn


def _conv_micro(ctx: KernelContext, node: Node, plan: ConvPlan, program: tuple, kind: str,
                npix: int, nvec: int, edge: bool) -> ir.Function:
    """Output pixels x channels [col0, col0 + nvec*vw). "fast"/"checked": pixels (img, oh,
    ow .. ow+npix-1) of one row ("checked" skips out-of-bounds taps); "flat": the flat pixel
    indices p0 .. p0+npix-1 (passed as `img`), every tap in bounds."""
    ctx.counter += 1
    n_extra = len(node.inputs) - 2
    fn = define(ctx.module, f"k{ctx.counter}_conv_{kind}_{npix}x{nvec}",
                [PTR, PTR, PTR, I64, I64, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, wp, out, img, oh, ow, col0 = fn.args[:7]
    extras = list(fn.args[7:])
    vw, ci = plan.vw, plan.ci
    stride = nvec * vw  # one (kh, kw, ci) row of the packed weights
    ksplit = max(1, min(3, 12 // (npix * nvec)))
    sets = [[[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(npix)]
            for _ in range(ksplit)]
    if kind == "flat":
        # pixel r's top-left tap: its own image, row and column (a tile may cross rows)
        bases, out_pix = [], []
        for r in range(npix):
            p = b.add(img, kb.i64(r))
            im = b.sdiv(p, kb.i64(plan.oh * plan.ow))
            rest = b.srem(p, kb.i64(plan.oh * plan.ow))
            y = b.sub(b.mul(b.sdiv(rest, kb.i64(plan.ow)), kb.i64(plan.sh)), kb.i64(plan.pt))
            xx = b.sub(b.mul(b.srem(rest, kb.i64(plan.ow)), kb.i64(plan.sw)), kb.i64(plan.pl))
            pix = b.add(b.mul(b.add(b.mul(im, kb.i64(plan.h)), y), kb.i64(plan.w)), xx)
            bases.append(b.mul(pix, kb.i64(ci)))
            out_pix.append(p)
        ih0 = iw0 = None
    else:
        ih0 = b.sub(b.mul(oh, kb.i64(plan.sh)), kb.i64(plan.pt))
        iw0 = b.sub(b.mul(ow, kb.i64(plan.sw)), kb.i64(plan.pl))
        img_base = b.mul(img, kb.i64(plan.h * plan.w))
        bases = [b.mul(b.add(img_base, b.add(b.mul(ih0, kb.i64(plan.w)), b.add(iw0, kb.i64(r * plan.sw)))),
                       kb.i64(ci)) for r in range(npix)]
        out_row = b.add(b.mul(img, kb.i64(plan.oh)), oh)
        out_pix = [b.add(b.mul(out_row, kb.i64(plan.ow)), b.add(ow, kb.i64(r))) for r in range(npix)]

    def taps(kh: ir.Value, kw: ir.Value) -> None:
        shift = b.mul(b.add(b.mul(b.mul(kh, kb.i64(plan.dh)), kb.i64(plan.w)), b.mul(kw, kb.i64(plan.dw))),
                      kb.i64(ci))
        pix = [b.add(base, shift) for base in bases]
        wbase = b.mul(b.add(b.mul(kh, kb.i64(plan.kw)), kw), kb.i64(ci * stride))

        def step(c: ir.Value, accs: list) -> None:
            wrow = b.add(wbase, b.mul(c, kb.i64(stride)))
            bvals = [kb.vload(wp, b.add(wrow, kb.i64(v * vw))) for v in range(nvec)]
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
    for r in range(npix):
        for v in range(nvec):
            col = b.add(col0, kb.i64(v * vw))
            mask = kb.lane_mask(kb.i64(plan.co % vw)) if edge and v == nvec - 1 else None
            idx = b.add(b.mul(out_pix[r], kb.i64(plan.co)), col)
            value = apply_epilogue(kb, program, plan.kinds, extras, kb.get(accs[r][v]), col, idx, mask)
            kb.store_vector(value, out, idx, mask)
    kb.finish()
    return fn
