"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated convs with enough channels.

Direct convolution already runs at the FMA peak, so the way to go faster is fewer multiplies:
F(2x2, 3x3) computes each 2x2 output block from a 4x4 input tile with 16 (instead of 36) products per
(input channel, output channel) pair -- 2.25x fewer. The kernel is transformed once per weight
change (U = G g G^T, packed into GEMM panels per tile position); per block of up to MR tiles the
input transform (V = B^T d B, with out-of-bounds pixels read as zeros, which is how padding works)
goes to a stack buffer, 16 small GEMMs (tiles x Cin) @ (Cin x NR) run with the usual register tile,
and the output transform (Y = A^T M A) feeds the fused epilogue and the store. Accuracy: the
transforms only use 0, +-1/2, +-1, so errors stay at a few ulp of the direct result.
"""

from __future__ import annotations

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

MR = 6
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def applies(node, program: tuple, vw: int) -> bool:
    """3x3, stride 1, dilation 1, float32, and enough channels for the transforms to pay off."""
    w = node.inputs[1]
    attrs = dict(program[0][2])
    kh, kw, ci, co = w.shape
    return (kh, kw) == (3, 3) and attrs["strides"] == (1, 1) and attrs["dilation"] == (1, 1) and \
        ci >= 16 and co >= 16


@packer("winograd_panels")
def pack_winograd(w: np.ndarray, nr: int, vw: int) -> np.ndarray:
    """HWIO 3x3 -> U = G g G^T per (ci, co): 16 tile positions, each packed as GEMM panels."""
    u = np.einsum("ai,ijxy,bj->abxy", _G, w.astype(np.float64), _G).astype(np.float32)
    return np.concatenate([pack_panels(u[a, b], nr, vw) for a in range(4) for b in range(4)])


def emit_winograd(ctx: KernelContext, node, program: tuple) -> ir.Function:
    plan = ConvPlan(node, program, ctx.target.vector_width)
    ctx.want_layout(1, ParamLayout("winograd_panels", (plan.nr, plan.vw)))
    th_count = -(-plan.oh // 2)
    tw_count = -(-plan.ow // 2)
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "winograd")
    b = kb.b
    lo, hi = split_range(kb, b.mul(n, kb.i64(th_count)), tid, nt)
    blocks = {}
    with kb.loop(lo, hi, 1, "trow") as row:
        img = b.sdiv(row, kb.i64(th_count))
        th = b.srem(row, kb.i64(th_count))
        full = tw_count - tw_count % MR
        for count, start in ((MR, None), (tw_count % MR, full)):
            if count == 0 or (start is None and full == 0):
                continue
            if count not in blocks:
                blocks[count] = _block(ctx, node, plan, program, count)
            if start is None:
                with kb.loop(kb.i64(0), kb.i64(full), MR, "tw") as tw0:
                    b.call(blocks[count], [ins[0], ins[1], out, img, th, tw0, *ins[2:]])
            else:
                b.call(blocks[count], [ins[0], ins[1], out, img, th, kb.i64(start), *ins[2:]])
    kb.finish()
    return fn


def _block(ctx: KernelContext, node, plan: ConvPlan, program: tuple, tiles: int) -> ir.Function:
    """Tiles (img, th, tw0 .. tw0+tiles-1): input transform, 16 GEMMs per panel, output transform."""
    ctx.counter += 1
    n_extra = len(node.inputs) - 2
    fn = define(ctx.module, f"k{ctx.counter}_winograd_block{tiles}",
                [PTR, PTR, PTR, I64, I64, I64] + [PTR] * n_extra, ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, up, out, img, th, tw0 = fn.args[:6]
    extras = list(fn.args[6:])
    vw, ci, co, nr = plan.vw, plan.ci, plan.co, plan.nr
    cpad = -(-ci // vw) * vw
    # V[pos][tile][c] for 16 positions; M[pos][tile][nr] for one panel
    v_ptr = kb.buffer(F32, 16 * tiles * cpad)
    m_ptr = kb.buffer(F32, 16 * tiles * nr)
    ih0 = b.sub(b.mul(th, kb.i64(2)), kb.i64(plan.pt))
    img_base = b.mul(img, kb.i64(plan.h * plan.w * ci))

    # -- input transform -------------------------------------------------------------------
    with kb.loop(kb.i64(0), kb.i64(cpad), vw, "c") as c0:
        mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(ci), c0), kb.i64(vw))) if ci % vw else None
        with kb.loop(kb.i64(0), kb.i64(tiles), 1, "t") as t:  # loops, not copies: compile time
            iw0 = b.sub(b.mul(b.add(tw0, t), kb.i64(2)), kb.i64(plan.pl))
            d = [[None] * 4 for _ in range(4)]
            for i in range(4):
                ih = b.add(ih0, kb.i64(i))
                ok_h = b.and_(b.icmp_signed(">=", ih, kb.i64(0)), b.icmp_signed("<", ih, kb.i64(plan.h)))
                for j in range(4):
                    iw = b.add(iw0, kb.i64(j))
                    ok = b.and_(ok_h, b.and_(b.icmp_signed(">=", iw, kb.i64(0)),
                                             b.icmp_signed("<", iw, kb.i64(plan.w))))
                    # clamp the address so the (discarded) load of a padding pixel stays in bounds
                    pix = b.select(ok, b.add(b.mul(ih, kb.i64(plan.w)), iw), kb.i64(0))
                    idx = b.add(img_base, b.add(b.mul(pix, kb.i64(ci)), c0))
                    lane_ok = kb.splat(ok)
                    lmask = lane_ok if mask is None else b.and_(lane_ok, mask)
                    d[i][j] = kb.masked_load(x, idx, lmask)
            tmp = [[_dot(kb, _BT[i], [d[k][j] for k in range(4)]) for j in range(4)] for i in range(4)]
            for i in range(4):
                for j in range(4):
                    val = _dot(kb, _BT[j], tmp[i])
                    at = b.add(b.mul(b.add(kb.i64((i * 4 + j) * tiles), t), kb.i64(cpad)), c0)
                    kb.vstore(val, v_ptr, at)

    # -- 16 GEMMs per output-channel panel, then the output transform -------------------------
    panel_size = ci * nr  # floats per packed panel of one position (full panels)
    pos_stride = ci * plan.copad  # floats per position (all panels of that position)
    with kb.loop(kb.i64(0), kb.i64(plan.panels), 1, "p") as p:
        col0 = b.mul(p, kb.i64(nr))

        def panel(nvec: int, edge: bool) -> None:
            stride = nvec * vw
            with kb.loop(kb.i64(0), kb.i64(16), 1, "pos") as pos:  # a loop: 16 copies compile slowly
                bpanel = kb.gep(up, b.add(b.mul(pos, kb.i64(pos_stride)), b.mul(p, kb.i64(panel_size))))
                v_pos = b.mul(pos, kb.i64(tiles * cpad))
                m_pos = b.mul(pos, kb.i64(tiles * nr))
                accs = [[kb.var(kb.vec_type()) for _ in range(nvec)] for _ in range(tiles)]
                for row in accs:
                    for acc in row:
                        kb.set(acc, kb.vconst(0.0))
                with kb.loop(kb.i64(0), kb.i64(ci), 1, "k") as k:
                    brow = b.mul(k, kb.i64(stride))
                    bv = [kb.vload(bpanel, b.add(brow, kb.i64(v * vw))) for v in range(nvec)]
                    for t in range(tiles):
                        a = kb.splat(kb.load(v_ptr, b.add(v_pos, b.add(kb.i64(t * cpad), k))))
                        for v in range(nvec):
                            kb.set(accs[t][v], kb.fma(a, bv[v], kb.get(accs[t][v])))
                for t in range(tiles):
                    for v in range(nvec):
                        kb.vstore(kb.get(accs[t][v]), m_ptr, b.add(m_pos, kb.i64(t * nr + v * vw)))
            with kb.loop(kb.i64(0), kb.i64(tiles), 1, "t") as t:
                ow_base = b.mul(b.add(tw0, t), kb.i64(2))
                for v in range(nvec):
                    m = [[kb.vload(m_ptr, b.add(b.mul(b.add(kb.i64((i * 4 + j) * tiles), t), kb.i64(nr)),
                                                kb.i64(v * vw)))
                          for j in range(4)] for i in range(4)]
                    tmp = [[_dot(kb, _AT[i], [m[k][j] for k in range(4)]) for j in range(4)]
                           for i in range(2)]
                    col = b.add(col0, kb.i64(v * vw))
                    mask = kb.lane_mask(kb.i64(co % vw)) if edge and v == nvec - 1 else None
                    for dy in range(2):
                        for dx in range(2):
                            y = _dot(kb, _AT[dx], tmp[dy])
                            oy = b.add(b.mul(th, kb.i64(2)), kb.i64(dy))
                            ox = b.add(ow_base, kb.i64(dx))
                            inside = b.and_(b.icmp_signed("<", oy, kb.i64(plan.oh)),
                                            b.icmp_signed("<", ox, kb.i64(plan.ow)))
                            with kb.if_then(inside):
                                pixel = b.add(b.mul(b.add(b.mul(img, kb.i64(plan.oh)), oy),
                                                    kb.i64(plan.ow)), ox)
                                idx = b.add(b.mul(pixel, kb.i64(co)), col)
                                y = apply_epilogue(kb, program, plan.kinds, extras, y, col, idx, mask)
                                kb.store_vector(y, out, idx, mask)

        for_panel_variants(kb, p, plan.panels, plan.nv, plan.last_nv, co % vw != 0, panel)
    kb.finish()
    return fn


def _dot(kb: KernelBuilder, coeffs, values) -> ir.Value:
    """sum(c * v) for coefficients in {0, +-1}: adds and subtracts only."""
    acc = None
    for c, v in zip(coeffs, values, strict=True):
        if c == 0:
            continue
        if acc is None:
            acc = v if c == 1 else kb.b.fneg(v)
        else:
            acc = kb.b.fadd(acc, v) if c == 1 else kb.b.fsub(acc, v)
    return acc if acc is not None else kb.vconst(0.0)
