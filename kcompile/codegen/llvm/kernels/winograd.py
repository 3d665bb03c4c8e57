"""Winograd F(m x m, 3 x 3) convolution (m = 2 or 4) for 3x3, stride-1, undilated convs.

Direct convolution already runs at the FMA peak, so the way to go faster is fewer multiplies:
F(2x2, 3x3) computes each 2x2 output block from a 4x4 input tile with 16 (instead of 36) products per
(input channel, output channel) pair -- 2.25x fewer; F(4x4, 3x3) each 4x4 block from a 6x6 tile
with 36 instead of 144 -- 4x fewer, at the price of transforms with larger coefficients (fp32 error
about 5e-6 of the output's scale instead of 4e-7). Inference (weights known at bind time) uses
F(2x2); training's run-time weights F(4x4) where its tiles fit the image (cost model in `choose`);
`KCOMPILE_WINOGRAD` = 0 / 2 / 4 turns Winograd off or forces one tile size.

The kernel is transformed (U = G g G^T, packed into GEMM panels per tile position) once per weight
change on the host, or -- for run-time weights and for the flipped kernel of an input gradient --
by the kernel's threads into a module buffer before a barrier. The N*TH*TW tiles form one flat list
cut into blocks of TB tiles; per block the input transform (V = B^T d B, out-of-bounds pixels read
as zeros, which is how padding works) goes to a block buffer, then per output-channel panel one
GEMM (tiles x Cin) @ (Cin x NR) per tile position runs MR tiles at a time with the usual register
tile (each U panel is reused by every MR-tile group of the block), and the output transform
(Y = A^T M A) feeds the fused epilogue and the store. F(2x2)'s block buffers live on the stack,
F(4x4)'s (9/4 larger, and more tiles per block so U is streamed less) in per-thread scratch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import F32, I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import (
    KernelContext,
    ParamLayout,
    apply_epilogue,
    for_panel_variants,
    packer,
    split_range,
)
from kcompile.codegen.llvm.kernels.conv import ConvPlan
from kcompile.codegen.llvm.kernels.gemm import pack_panels
from kcompile.codegen.llvm.kernels.scratch import SLOTS, kernel_barrier, scratch_buffer, thread_scratch

MR = 6
STACK_BYTES = 192 * 1024  # F(2x2): V (16 x TB x Cin) and M (16 x TB x NR) of one block


@dataclass(frozen=True)
class Spec:
    """F(m x m, 3 x 3): y = A^T [(G g G^T) * (B^T d B)] A over alpha x alpha tiles."""

    m: int
    bt: tuple  # alpha x alpha
    g: tuple  # alpha x 3
    at: tuple  # m x alpha

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def positions(self) -> int:
        return self.alpha ** 2

    @property
    def a(self) -> tuple:  # alpha x m
        return tuple(zip(*self.at, strict=True))

    @property
    def gt(self) -> tuple:  # 3 x alpha
        return tuple(zip(*self.g, strict=True))


F2 = Spec(2, ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
          ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
          ((1, 1, 1, 0), (0, 1, -1, -1)))
# Lavin & Gray's F(4, 3) on the points 0, 1, -1, 2, -2
F4 = Spec(4, ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
              (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
          ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
           (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
          ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)))
SPECS = {2: F2, 4: F4}


def _shape_fits(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ci: int, co: int) -> bool:
    return (kh, kw) == (3, 3) and (sh, sw) == (1, 1) and (dh, dw) == (1, 1) and ci >= 16 and co >= 16


def applies_to(plan: ConvPlan) -> bool:
    """3x3, stride 1, dilation 1, and enough channels for the transforms to pay off."""
    return _shape_fits(plan.kh, plan.kw, plan.sh, plan.sw, plan.dh, plan.dw, plan.ci, plan.co)


def choose(oh: int, ow: int, runtime: bool) -> Spec:
    """F(2x2) for bind-time weights; for run-time ones F(4x4) unless its tiles waste too much of a
    small image (products per image: 36 per 4x4 tile vs 16 per 2x2 tile, plus F(2x2)'s ~10% larger
    transform share). KCOMPILE_WINOGRAD=2 or 4 forces one."""
    env = os.environ.get("KCOMPILE_WINOGRAD", "")
    if env in ("2", "4"):
        return SPECS[int(env)]
    if not runtime:
        return F2
    f4 = 36 * -(-oh // 4) * -(-ow // 4)
    f2 = 16 * -(-oh // 2) * -(-ow // 2)
    return F4 if f4 < 1.1 * f2 else F2


def enabled() -> bool:
    return os.environ.get("KCOMPILE_WINOGRAD", "1") != "0"


@packer("winograd_panels")
def pack_winograd(w: np.ndarray, nr: int, vw: int, m: int = 2) -> np.ndarray:
    """HWIO 3x3 -> U = G g G^T per (ci, co): alpha^2 tile positions, each packed as GEMM panels."""
    spec = SPECS[m]
    g = np.array(spec.g, np.float64)
    u = np.einsum("ai,ijxy,bj->abxy", g, w.astype(np.float64), g).astype(np.float32)
    a = spec.alpha
    return np.concatenate([pack_panels(u[i, j], nr, vw) for i in range(a) for j in range(a)])


# -- transforms -------------------------------------------------------------------------------------
def lincomb(kb: KernelBuilder, coeffs, values: list) -> ir.Value:
    """sum(c * v): adds and subtracts for +-1, an FMA per other coefficient."""
    b = kb.b
    acc = None
    for c, v in zip(coeffs, values, strict=True):
        if c == 0:
            continue
        if acc is None:
            acc = v if c == 1 else b.fneg(v) if c == -1 else b.fmul(kb.vconst(c), v)
        elif c == 1:
            acc = b.fadd(acc, v)
        elif c == -1:
            acc = b.fsub(acc, v)
        else:
            acc = kb.fma(kb.vconst(c), v, acc)
    return acc if acc is not None else kb.vconst(0.0)


def apply_matrix(kb: KernelBuilder, mat, values: list) -> list:
    """mat @ values (a list of vectors), with F(4x4)'s B^T and A^T sharing their common terms."""
    b = kb.b
    if mat == F4.bt:
        d = values
        s12, s34 = b.fadd(d[1], d[2]), b.fadd(d[3], d[4])
        d12, d43 = b.fsub(d[1], d[2]), b.fsub(d[4], d[3])
        d42, d31 = b.fsub(d[4], d[2]), b.fsub(d[3], d[1])
        return [kb.fma(kb.vconst(4.0), d[0], kb.fma(kb.vconst(-5.0), d[2], d[4])),
                kb.fma(kb.vconst(-4.0), s12, s34), kb.fma(kb.vconst(4.0), d12, d43),
                kb.fma(kb.vconst(2.0), d31, d42), kb.fma(kb.vconst(-2.0), d31, d42),
                kb.fma(kb.vconst(4.0), d[1], kb.fma(kb.vconst(-5.0), d[3], d[5]))]
    if mat == F4.at:
        m = values
        s12, s34 = b.fadd(m[1], m[2]), b.fadd(m[3], m[4])
        d12, d34 = b.fsub(m[1], m[2]), b.fsub(m[3], m[4])
        return [b.fadd(b.fadd(m[0], s12), s34), kb.fma(kb.vconst(2.0), d34, d12),
                kb.fma(kb.vconst(4.0), s34, s12), b.fadd(kb.fma(kb.vconst(8.0), d34, d12), m[5])]
    return [lincomb(kb, row, values) for row in mat]


def tile_origin(kb: KernelBuilder, tile: ir.Value, oh: int, ow: int, m: int) -> tuple[ir.Value, ...]:
    """(image, tile row, tile col) of a flat tile index over N x ceil(oh/m) x ceil(ow/m)."""
    b = kb.b
    th_count, tw_count = -(-oh // m), -(-ow // m)
    img = b.sdiv(tile, kb.i64(th_count * tw_count))
    rest = b.srem(tile, kb.i64(th_count * tw_count))
    return img, b.sdiv(rest, kb.i64(tw_count)), b.srem(rest, kb.i64(tw_count))


def input_transform(kb: KernelBuilder, spec: Spec, x: ir.Value, geom: tuple, tile: ir.Value, store,
                    tilebuf: ir.Value, row_ok=None) -> None:
    """(B^T d B)[pos] for the alpha x alpha input tile of flat `tile` (out-of-bounds pixels read as
    0) and every channel vector (padded to whole vectors with zeros): `store(pos, c0, value)`; with
    `row_ok(a) -> i1`, only the rows a of the result where it holds are computed.
    geom = (h, w, ci, oh, ow, pt, pl) of the convolution whose input x is. A tile inside the image
    is read in place at constant offsets from one base; a border tile is first copied, zero-padded,
    into `tilebuf` (alpha * alpha * cpad floats), so the transform itself never checks bounds.
    tilebuf None: every tile is inside."""
    h, wd, ci, oh, ow, pt, pl = geom
    b = kb.b
    vw = kb.vw
    al, m = spec.alpha, spec.m
    cpad = -(-ci // vw) * vw
    img, th, tw = tile_origin(kb, tile, oh, ow, m)
    ih0 = b.sub(b.mul(th, kb.i64(m)), kb.i64(pt))
    iw0 = b.sub(b.mul(tw, kb.i64(m)), kb.i64(pl))
    img_base = b.mul(img, kb.i64(h * wd))
    inside = b.and_(b.and_(b.icmp_signed(">=", ih0, kb.i64(0)), b.icmp_signed("<=", ih0, kb.i64(h - al))),
                    b.and_(b.icmp_signed(">=", iw0, kb.i64(0)), b.icmp_signed("<=", iw0, kb.i64(wd - al))))

    def transform(src: ir.Value, base: ir.Value, row_stride: int, col_stride: int, masked: bool) -> None:
        with kb.loop(kb.i64(0), kb.i64(cpad), vw, "c") as c0:
            cmask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(ci), c0), kb.i64(vw))) if masked else None
            at = b.add(base, c0)

            def pixel(i: int, j: int) -> ir.Value:
                return kb.load_vector(src, b.add(at, kb.i64(i * row_stride + j * col_stride)), cmask)

            if row_ok is None:  # tmp = B^T d column by column (shared terms), then V = tmp B
                d = [pixel(i, j) for i in range(al) for j in range(al)]
                cols = [apply_matrix(kb, spec.bt, [d[i * al + j] for i in range(al)]) for j in range(al)]
                for a in range(al):
                    for bb, value in enumerate(apply_matrix(kb, spec.bt, [cols[j][a] for j in range(al)])):
                        store(a * al + bb, c0, value)
                return
            for a in range(al):  # only some rows: each loads the pixels it needs (few live values)
                with kb.if_then(row_ok(a)):
                    row = [lincomb(kb, spec.bt[a], [pixel(i, j) if spec.bt[a][i] else None
                                                    for i in range(al)]) for j in range(al)]
                    for bb, value in enumerate(apply_matrix(kb, spec.bt, row)):
                        store(a * al + bb, c0, value)

    in_place_base = b.mul(b.add(img_base, b.add(b.mul(ih0, kb.i64(wd)), iw0)), kb.i64(ci))
    if tilebuf is None:  # the caller guarantees every tile is inside
        transform(x, in_place_base, wd * ci, ci, ci % vw != 0)
        return
    with b.if_else(inside) as (fast, border):
        with fast:
            transform(x, in_place_base, wd * ci, ci, ci % vw != 0)
        with border:
            for i in range(al):
                ih = b.add(ih0, kb.i64(i))
                ok_h = b.icmp_unsigned("<", ih, kb.i64(h))
                for j in range(al):
                    iw = b.add(iw0, kb.i64(j))
                    ok = b.and_(ok_h, b.icmp_unsigned("<", iw, kb.i64(wd)))
                    dst = kb.i64((i * al + j) * cpad)
                    with b.if_else(ok) as (pixel, padding):
                        with pixel:
                            src = b.mul(b.add(img_base, b.add(b.mul(ih, kb.i64(wd)), iw)), kb.i64(ci))
                            full = ci - ci % vw
                            if full:
                                with kb.loop(kb.i64(0), kb.i64(full), vw, "cc") as c0:
                                    kb.vstore(kb.vload(x, b.add(src, c0)), tilebuf, b.add(dst, c0))
                            if ci % vw:
                                tail = kb.masked_load(x, b.add(src, kb.i64(full)),
                                                      kb.lane_mask(kb.i64(ci % vw)))
                                kb.vstore(tail, tilebuf, b.add(dst, kb.i64(full)))
                        with padding:
                            with kb.loop(kb.i64(0), kb.i64(cpad), vw, "cz") as c0:
                                kb.vstore(kb.vconst(0.0), tilebuf, b.add(dst, c0))
            transform(tilebuf, kb.i64(0), al * cpad, cpad, False)


def gemm_tile(ctx: KernelContext, rows: int, nvec: int, accumulate: bool) -> ir.Function:
    """tile(a, sar, sak, bp, sb, c, sc, k): C[r][v*vw..] (+)= sum_k A[r*sar + k*sak] * B[k*sb + v*vw..]
    for r < rows, v < nvec: a register tile; C rows are `sc` apart and padded to whole vectors."""
    key = ("wino_gemm", rows, nvec, accumulate)
    cache = ctx.__dict__.setdefault("_winograd_tiles", {})
    if key in cache:
        return cache[key]
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_wino_gemm_{rows}x{nvec}{'_acc' if accumulate else ''}",
                [PTR, I64, I64, PTR, I64, PTR, I64, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    a, sar, sak, bp, sb, c, sc, kdim = fn.args
    vw = kb.vw
    ksplit = max(1, min(3, 12 // (rows * nvec)))
    sets = [[[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nvec)] for _ in range(rows)]
            for _ in range(ksplit)]
    a_rows = [kb.gep(a, b.mul(kb.i64(r), sar)) for r in range(rows)]

    def step(k: ir.Value, accs: list) -> None:
        brow = b.mul(k, sb)
        bv = [kb.vload(bp, b.add(brow, kb.i64(v * vw))) for v in range(nvec)]
        ka = b.mul(k, sak)
        for r in range(rows):
            av = kb.splat(kb.load(a_rows[r], ka))
            for v in range(nvec):
                kb.set(accs[r][v], kb.fma(av, bv[v], kb.get(accs[r][v])))

    k_main = b.mul(b.sdiv(kdim, kb.i64(ksplit)), kb.i64(ksplit))
    with kb.loop(kb.i64(0), k_main, ksplit, "k") as k0:
        for s_ in range(ksplit):
            step(b.add(k0, kb.i64(s_)), sets[s_])
    with kb.loop(k_main, kdim, 1, "kr") as kr:
        step(kr, sets[0])
    for r in range(rows):
        for v in range(nvec):
            value = kb.get(sets[0][r][v])
            for extra in sets[1:]:
                value = b.fadd(value, kb.get(extra[r][v]))
            idx = b.add(b.mul(kb.i64(r), sc), kb.i64(v * vw))
            if accumulate:
                value = b.fadd(kb.vload(c, idx), value)
            kb.vstore(value, c, idx)
    kb.finish()
    cache[key] = fn
    return fn


# -- the convolution --------------------------------------------------------------------------------
class _Blocking:
    def __init__(self, spec: Spec, plan: ConvPlan) -> None:
        m = spec.m
        self.cpad = -(-plan.ci // plan.vw) * plan.vw
        per_tile = spec.positions * (self.cpad + plan.nr)  # floats of V and M per tile
        th, tw = -(-plan.oh // m), -(-plan.ow // m)
        self.per_image = th * tw
        if m == 2:
            self.tb = MR * max(1, min(4, STACK_BYTES // (4 * per_tile * MR)))
            self.on_stack = True
        else:  # more tiles per block: U (9/4 of F(2x2)'s) is streamed once per block
            self.tb = 4 * MR
            self.on_stack = False
        # Tiles that reach past the image (padding, or an output not a multiple of m) read a
        # zero-padded copy of their image made once per image in per-thread scratch, so every tile
        # is transformed without bounds checks; blocks then stay within one image (balanced).
        self.padded = not self.on_stack and not (
            plan.pt == 0 and plan.pl == 0 and th * m + 2 <= plan.h and tw * m + 2 <= plan.w)
        self.hp, self.wp = th * m + 2, tw * m + 2
        self.images = 1  # padded images per block (small images: several, for whole MR groups)
        if self.padded:
            self.blocks_per_image = -(-self.per_image // self.tb)
            if self.per_image < self.tb:
                self.images = self.tb // self.per_image
                self.tb = self.images * self.per_image
            else:
                self.tb = -(-self.per_image // self.blocks_per_image)
        self.pad_size = self.images * self.hp * self.wp * self.cpad if self.padded else 0
        self.v_size = spec.positions * self.tb * self.cpad
        # M: one panel's (stack) or every panel's (scratch: the GEMMs run position by position)
        self.m_size = spec.positions * self.tb * plan.nr * (1 if self.on_stack else plan.panels)


def emit_winograd(ctx: KernelContext, node, program: tuple, plan: ConvPlan,
                  source: str = "packed") -> ir.Function:
    """`source` as in conv.emit_direct: "packed" weights are transformed on the host, run-time ones
    ("hwio", "flipped") by the kernel's threads into a module buffer before a barrier."""
    spec = choose(plan.oh, plan.ow, source != "packed")
    if source == "packed":
        ctx.want_layout(1, ParamLayout("winograd_panels", (plan.nr, plan.vw, spec.m)))
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, f"winograd{spec.m}")
    b = kb.b
    up = ins[1]
    if source != "packed":
        up = scratch_buffer(kb, spec.positions * plan.ci * plan.copad)
        k_lo, k_hi = split_range(kb, kb.i64(plan.ci), tid, nt)
        b.call(_transform_fn(ctx, spec, plan, source), [ins[1], up, k_lo, k_hi])
        kernel_barrier(kb, nt)
    blk_plan = _Blocking(spec, plan)
    tb = blk_plan.tb
    total = b.mul(n, kb.i64(blk_plan.per_image))
    block = _block(ctx, node, spec, plan, program, blk_plan)
    if blk_plan.on_stack:
        blocks = b.sdiv(b.add(total, kb.i64(tb - 1)), kb.i64(tb))
        lo, hi = split_range(kb, blocks, tid, nt)
        with kb.loop(lo, hi, 1, "blk") as blk:
            t0 = b.mul(blk, kb.i64(tb))
            count = kb.min_i64(kb.i64(tb), b.sub(total, t0))
            b.call(block, [ins[0], up, out, ir.Constant(PTR, None), t0, count, *ins[2:]])
        kb.finish()
        return fn
    # per-thread scratch: at most SLOTS threads take blocks
    workers = kb.min_i64(nt, kb.i64(SLOTS))
    buf = thread_scratch(kb, blk_plan.pad_size + blk_plan.v_size + blk_plan.m_size,
                         kb.min_i64(tid, kb.i64(SLOTS - 1)))
    if not blk_plan.padded:
        blocks = b.sdiv(b.add(total, kb.i64(tb - 1)), kb.i64(tb))
        lo, hi = split_range(kb, blocks, kb.min_i64(tid, workers), workers)
        with kb.loop(lo, hi, 1, "blk") as blk:
            t0 = b.mul(blk, kb.i64(tb))
            count = kb.min_i64(kb.i64(tb), b.sub(total, t0))
            b.call(block, [ins[0], up, out, buf, t0, count, *ins[2:]])
        kb.finish()
        return fn
    pad = _pad_image_fn(ctx, plan, blk_plan)
    v_buf = kb.gep(buf, kb.i64(blk_plan.pad_size))
    if blk_plan.images > 1:  # blocks of whole images
        ipb = blk_plan.images
        lo, hi = split_range(kb, b.sdiv(b.add(n, kb.i64(ipb - 1)), kb.i64(ipb)), kb.min_i64(tid, workers),
                             workers)
        with kb.loop(lo, hi, 1, "blk") as blk:
            img0 = b.mul(blk, kb.i64(ipb))
            nimg = kb.min_i64(kb.i64(ipb), b.sub(n, img0))
            with kb.loop(kb.i64(0), nimg, 1, "im") as im:
                dst = kb.gep(buf, b.mul(im, kb.i64(blk_plan.pad_size // ipb)))
                b.call(pad, [ins[0], dst, b.add(img0, im)])
            b.call(block, [buf, up, out, v_buf, b.mul(img0, kb.i64(blk_plan.per_image)),
                           b.mul(nimg, kb.i64(blk_plan.per_image)), *ins[2:]])
        kb.finish()
        return fn
    bpi = blk_plan.blocks_per_image
    lo, hi = split_range(kb, b.mul(n, kb.i64(bpi)), kb.min_i64(tid, workers), workers)
    current = kb.var(I64, kb.i64(-1))
    with kb.loop(lo, hi, 1, "blk") as blk:
        img = b.sdiv(blk, kb.i64(bpi))
        first = b.mul(b.srem(blk, kb.i64(bpi)), kb.i64(tb))
        count = kb.min_i64(kb.i64(tb), b.sub(kb.i64(blk_plan.per_image), first))
        with kb.if_then(b.icmp_signed("!=", img, kb.get(current))):
            b.call(pad, [ins[0], buf, img])
            kb.set(current, img)
        t0 = b.add(b.mul(img, kb.i64(blk_plan.per_image)), first)
        b.call(block, [buf, up, out, v_buf, t0, count, *ins[2:]])
    kb.finish()
    return fn


def _pad_image_fn(ctx: KernelContext, plan: ConvPlan, blk_plan: _Blocking) -> ir.Function:
    """pad(x, dst, img): dst[r][q][c] = x[img][r - pt][q - pl][c] where that is inside the image,
    else 0, for the (hp, wp) rows and columns the tiles read; channels padded to cpad."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_winograd_pad", [PTR, PTR, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, dst, img = fn.args
    vw, ci, cpad = plan.vw, plan.ci, blk_plan.cpad
    full = ci - ci % vw
    with kb.loop(kb.i64(0), kb.i64(blk_plan.hp), 1, "r") as r:
        ih = b.sub(r, kb.i64(plan.pt))
        ok_h = b.icmp_unsigned("<", ih, kb.i64(plan.h))
        with kb.loop(kb.i64(0), kb.i64(blk_plan.wp), 1, "q") as q:
            iw = b.sub(q, kb.i64(plan.pl))
            at = b.mul(b.add(b.mul(r, kb.i64(blk_plan.wp)), q), kb.i64(cpad))
            with b.if_else(b.and_(ok_h, b.icmp_unsigned("<", iw, kb.i64(plan.w)))) as (pixel, padding):
                with pixel:
                    src = b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(plan.h)), ih), kb.i64(plan.w)), iw),
                                kb.i64(ci))
                    if full:
                        with kb.loop(kb.i64(0), kb.i64(full), vw, "c") as c0:
                            kb.vstore(kb.vload(x, b.add(src, c0)), dst, b.add(at, c0))
                    if ci % vw:
                        tail = kb.masked_load(x, b.add(src, kb.i64(full)), kb.lane_mask(kb.i64(ci % vw)))
                        kb.vstore(tail, dst, b.add(at, kb.i64(full)))
                with padding:
                    with kb.loop(kb.i64(0), kb.i64(cpad), vw, "z") as c0:
                        kb.vstore(kb.vconst(0.0), dst, b.add(at, c0))
    kb.finish()
    return fn


def _block(ctx: KernelContext, node, spec: Spec, plan: ConvPlan, program: tuple,
           blk_plan: _Blocking) -> ir.Function:
    """block(x, u, out, buf, t0, count, extras...): tiles t0 .. t0+count-1 (count <= TB): input
    transform, per panel one GEMM per tile position in MR-tile groups, output transform."""
    ctx.counter += 1
    n_extra = len(node.inputs) - 2
    tb = blk_plan.tb
    fn = define(ctx.module, f"k{ctx.counter}_winograd{spec.m}_block{tb}",
                [PTR, PTR, PTR, PTR, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, up, out, buf, t0, count = fn.args[:6]
    extras = list(fn.args[6:])
    vw, ci, co, nr = plan.vw, plan.ci, plan.co, plan.nr
    cpad = blk_plan.cpad
    npos, al, m = spec.positions, spec.alpha, spec.m
    if blk_plan.on_stack:
        v_ptr = kb.buffer(F32, blk_plan.v_size)  # V[pos][tile][c]
        m_ptr = kb.buffer(F32, blk_plan.m_size)  # M[pos][tile][nr] of one panel
    else:
        v_ptr, m_ptr = buf, kb.gep(buf, kb.i64(blk_plan.v_size))
    if blk_plan.padded:  # x is the zero-padded image of these tiles: no bounds, no channel tail
        geom = (blk_plan.hp, blk_plan.wp, cpad, plan.oh, plan.ow, 0, 0)
        first_in_image = b.srem(t0, kb.i64(blk_plan.tb if blk_plan.images > 1 else blk_plan.per_image))
        tilebuf = None
    else:
        geom = (plan.h, plan.w, ci, plan.oh, plan.ow, plan.pt, plan.pl)
        first_in_image = t0
        tilebuf = kb.buffer(F32, spec.positions * cpad)
    with kb.loop(kb.i64(0), count, 1, "t") as t:
        def store(pos: int, c0: ir.Value, value: ir.Value, t=t) -> None:
            kb.vstore(value, v_ptr, b.add(b.mul(b.add(kb.i64(pos * tb), t), kb.i64(cpad)), c0))

        input_transform(kb, spec, x, geom, b.add(first_in_image, t), store, tilebuf)
    groups = b.sdiv(count, kb.i64(MR))
    rest = b.srem(count, kb.i64(MR))
    panel_size = ci * nr  # floats per packed panel of one position (full panels)
    pos_stride = ci * plan.copad  # floats per position (all panels of that position)
    # M for one panel ([pos][tile][nr], stack) or for all ([panel][pos][tile][nr], scratch)
    m_panel_stride = 0 if blk_plan.on_stack else npos * tb * nr

    def gemms(pos: ir.Value, p: ir.Value, nvec: int) -> None:
        """M[p][pos][tiles] = V[pos][tiles] @ U[pos][p] for the block's tiles, MR at a time."""
        bpanel = kb.gep(up, b.add(b.mul(pos, kb.i64(pos_stride)), b.mul(p, kb.i64(panel_size))))
        m_base = kb.gep(m_ptr, b.mul(p, kb.i64(m_panel_stride)))

        def tiles_at(first: ir.Value, rows: int) -> None:
            a = kb.gep(v_ptr, b.mul(b.add(b.mul(pos, kb.i64(tb)), first), kb.i64(cpad)))
            c = kb.gep(m_base, b.mul(b.add(b.mul(pos, kb.i64(tb)), first), kb.i64(nr)))
            b.call(gemm_tile(ctx, rows, nvec, False),
                   [a, kb.i64(cpad), kb.i64(1), bpanel, kb.i64(nvec * vw), c, kb.i64(nr), kb.i64(ci)])

        with kb.loop(kb.i64(0), groups, 1, "g") as g:
            tiles_at(b.mul(g, kb.i64(MR)), MR)
        for r in range(1, MR):
            with kb.if_then(b.icmp_signed("==", rest, kb.i64(r))):
                tiles_at(b.mul(groups, kb.i64(MR)), r)

    def output(p: ir.Value, nvec: int, edge: bool) -> None:
        """Y = A^T M A for the block's tiles and panel p, through the epilogue to `out`."""
        col0 = b.mul(p, kb.i64(nr))
        m_base = kb.gep(m_ptr, b.mul(p, kb.i64(m_panel_stride)))
        with kb.loop(kb.i64(0), count, 1, "t") as t:
            img, th, tw = tile_origin(kb, b.add(t0, t), plan.oh, plan.ow, m)
            oy0, ox0 = b.mul(th, kb.i64(m)), b.mul(tw, kb.i64(m))
            base = b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(plan.oh)), oy0), kb.i64(plan.ow)), ox0),
                         kb.i64(co))
            whole = b.and_(b.icmp_signed("<=", oy0, kb.i64(plan.oh - m)),
                           b.icmp_signed("<=", ox0, kb.i64(plan.ow - m)))

            def outputs(checked: bool) -> None:
                for v in range(nvec):
                    mm = [[kb.vload(m_base, b.add(b.mul(b.add(kb.i64((i * al + j) * tb), t), kb.i64(nr)),
                                                  kb.i64(v * vw)))
                           for j in range(al)] for i in range(al)]
                    cols = [apply_matrix(kb, spec.at, [mm[i][j] for i in range(al)]) for j in range(al)]
                    col = b.add(col0, kb.i64(v * vw))
                    mask = kb.lane_mask(kb.i64(co % vw)) if edge and v == nvec - 1 else None
                    for dy in range(m):
                        ys = apply_matrix(kb, spec.at, [cols[j][dy] for j in range(al)])
                        for dx in range(m):
                            idx = b.add(base, b.add(col, kb.i64((dy * plan.ow + dx) * co)))

                            def store(idx=idx, y=ys[dx], col=col, mask=mask) -> None:
                                y = apply_epilogue(kb, program, plan.kinds, extras, y, col, idx, mask)
                                kb.store_vector(y, out, idx, mask)

                            if not checked:
                                store()
                                continue
                            inside = b.and_(b.icmp_signed("<", b.add(oy0, kb.i64(dy)), kb.i64(plan.oh)),
                                            b.icmp_signed("<", b.add(ox0, kb.i64(dx)), kb.i64(plan.ow)))
                            with kb.if_then(inside):
                                store()

            if plan.oh % m == 0 and plan.ow % m == 0:  # every tile is whole
                outputs(False)
            else:
                with b.if_else(whole) as (fast, edge_tile):
                    with fast:
                        outputs(False)
                    with edge_tile:
                        outputs(True)

    def each_panel(body) -> None:
        with kb.loop(kb.i64(0), kb.i64(plan.panels), 1, "p") as p:
            for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, co % vw != 0,
                               lambda nvec, edge: body(p, nvec, edge))

    if blk_plan.on_stack:  # panel outer: M of one panel at a time
        def panel(p: ir.Value, nvec: int, edge: bool) -> None:
            with kb.loop(kb.i64(0), kb.i64(npos), 1, "pos") as pos:
                gemms(pos, p, nvec)
            output(p, nvec, edge)

        each_panel(panel)
    else:  # position outer: V[pos] stays in L1 while every panel of U[pos] streams by
        with kb.loop(kb.i64(0), kb.i64(npos), 1, "pos") as pos:
            each_panel(lambda p, nvec, edge: gemms(pos, p, nvec))
        each_panel(output)
    kb.finish()
    return fn


def _transform_fn(ctx: KernelContext, spec: Spec, plan: ConvPlan, source: str) -> ir.Function:
    """transform(w, u, lo, hi): U = G g G^T for the kernel's input channels [lo, hi), every output
    channel, written in the `winograd_panels` layout (the host packer's, computed in float32)."""
    from kcompile.codegen.llvm.kernels.conv import load_kernel_vector

    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_winograd{spec.m}_transform_{source}", [PTR, PTR, I64, I64],
                ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    w, u, lo, hi = fn.args
    vw, nr, ci = plan.vw, plan.nr, plan.ci
    al = spec.alpha

    with kb.loop(lo, hi, 1, "k") as k:
        with kb.loop(kb.i64(0), kb.i64(plan.copad), vw, "n") as n0:  # a loop, not copies: compile time
            p = b.sdiv(n0, kb.i64(nr))
            width = kb.min_i64(kb.i64(nr), b.sub(kb.i64(plan.copad), b.mul(p, kb.i64(nr))))
            count = kb.min_i64(b.sub(kb.i64(plan.co), n0), kb.i64(vw)) if plan.co % vw else None
            g = [[load_kernel_vector(kb, w, plan, source, kb.i64(i * 3 + j), k, n0, count)
                  for j in range(3)] for i in range(3)]
            t = [apply_matrix(kb, spec.g, [g[i][j] for i in range(3)]) for j in range(3)]  # (G g)[a][j]
            # U[pos][panel p][k][n0 - p*nr]
            at0 = b.add(b.add(b.mul(p, kb.i64(ci * nr)), b.mul(k, width)), b.sub(n0, b.mul(p, kb.i64(nr))))
            for a in range(al):
                row = apply_matrix(kb, spec.g, [t[j][a] for j in range(3)])
                for bb in range(al):
                    kb.vstore(row[bb], u, b.add(at0, kb.i64((a * al + bb) * ci * plan.copad)))
    kb.finish()
    return fn
