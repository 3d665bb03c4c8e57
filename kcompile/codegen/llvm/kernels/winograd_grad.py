"""Winograd F(m x m, 3 x 3) (m = 2 or 4) for the filter gradient of a 3x3, stride-1, undilated conv.

With the forward transforms y = A^T [(G g) * (B^T d)] (1-D F(m, 3)), the sum over outputs of
dy . y is sum_p (B^T d)_p (G g)_p (A dy)_p, so its gradient in g is dW = G^T [(B^T d) * (A dy)]:
per m x m block of dY and the alpha x alpha input tile under it (alpha = m + 2),
M[pos][c][o] += V[pos][c] * D[pos][o] with V = B^T X B (the forward's input transform) and
D = A DY A^T, and after the sum over every tile of the batch dW = G^T M G. That is alpha^2 GEMMs
(Cin x tiles) @ (tiles x Cout) with 2.25x (m = 2) or 4x (m = 4) fewer products than the direct
reduction. The tile size follows the forward's choice (winograd.choose).

Threads split the alpha rows of tile positions (each thread transforms, for its rows only, blocks
of TB tiles -- loading each tile once for all its rows -- and accumulates its rows' M), meet at a
barrier, then split the input channels for the output transform. The buffers are module globals
(scratch.py), M and V/D laid out by row, so threads write disjoint parts (at most alpha threads
have rows to do).
"""

from __future__ import annotations

from llvmlite import ir

from kcompile.codegen.llvm.builder import F32, I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import KernelContext, split_range
from kcompile.codegen.llvm.kernels.scratch import kernel_barrier, scratch_buffer
from kcompile.codegen.llvm.kernels.winograd import (
    Spec,
    _shape_fits,
    apply_matrix,
    choose,
    gemm_tile,
    input_transform,
    lincomb,
    tile_origin,
)
from kcompile.ir.core import Node

SLOT_BYTES = 192 * 1024  # V and D of one block of tiles for one row of positions (F(2x2))
PANEL_VECTORS = 3  # D panel width in vectors: the register tile is RW channels x 3 vectors


def rows_per_tile(vw: int) -> int:
    """Channels per register tile: 4 (x 3 vectors = 12 accumulators of 16 registers), or 8 with
    AVX-512's 32 registers; a divisor of the vector width, so a channel vector splits evenly."""
    return 8 if vw == 16 else 4


def applies(plan) -> bool:
    """plan: conv_grad.FilterGradPlan."""
    return _shape_fits(plan.kh, plan.kw, plan.sh, plan.sw, plan.dh, plan.dw, plan.ci, plan.co)


class _Layout:
    """Block buffers for the alpha positions q of one row: V[q][t][cpad] (a tile's channels are
    contiguous, so the transform stores whole vectors; a register tile of RW channels broadcasts
    from one line per tile) and D[q][panel][t][width] (output-channel panels of 3 vectors, the last
    one narrower: a sequential stream of vector loads). M[pos][cpad][copad] accumulates over the
    whole batch."""

    def __init__(self, spec: Spec, plan) -> None:
        vw = plan.vw
        al = spec.alpha
        self.rw = rows_per_tile(vw)
        self.cpad = -(-plan.ci // vw) * vw
        self.copad = plan.copad
        self.ctiles = self.cpad // self.rw
        self.pw = PANEL_VECTORS * vw
        self.panels = [(p0, min(self.pw, self.copad - p0)) for p0 in range(0, self.copad, self.pw)]
        self.tb = max(16, min(128, SLOT_BYTES // (4 * al * (self.cpad + self.copad))))
        self.v_size = al * self.cpad * self.tb
        self.slot = self.v_size + al * self.copad * self.tb


def emit_winograd_filter_grad(ctx: KernelContext, node: Node, plan) -> ir.Function:
    spec = choose(plan.oh, plan.ow, True)
    lay = _Layout(spec, plan)
    al = spec.alpha
    fn, kb, (xp, dyp), out, n, tid, nt = ctx.new_kernel(node, f"winograd{spec.m}_dw")
    b = kb.b
    m_size = spec.positions * lay.cpad * lay.copad
    m_buf = scratch_buffer(kb, m_size)
    rows_buf = scratch_buffer(kb, al * lay.slot, offset=m_size)
    lo, hi = split_range(kb, kb.i64(al), tid, nt)
    total = b.mul(n, kb.i64(-(-plan.oh // spec.m) * -(-plan.ow // spec.m)))
    blocks = kb.max_i64(b.sdiv(b.add(total, kb.i64(lay.tb - 1)), kb.i64(lay.tb)), kb.i64(1))
    rows_fn = _rows_fn(ctx, spec, plan, lay)
    with kb.if_then(b.icmp_signed("<", lo, hi)):
        with kb.loop(kb.i64(0), blocks, 1, "blk") as blk:
            t0 = b.mul(blk, kb.i64(lay.tb))
            count = kb.max_i64(kb.min_i64(kb.i64(lay.tb), b.sub(total, t0)), kb.i64(0))
            first = b.zext(b.icmp_signed("==", blk, kb.i64(0)), I64)
            with kb.loop(lo, hi, 1, "a") as a:  # row by row: its V and D stay in L2 for the GEMMs
                b.call(rows_fn, [xp, dyp, m_buf, rows_buf, a, b.add(a, kb.i64(1)), t0, count, first])
    kernel_barrier(kb, nt)
    c_lo, c_hi = split_range(kb, kb.i64(plan.ci), tid, nt)
    b.call(_output_fn(ctx, spec, plan, lay), [m_buf, out, c_lo, c_hi])
    kb.finish()
    return fn


def _rows_fn(ctx: KernelContext, spec: Spec, plan, lay: _Layout) -> ir.Function:
    """rows(x, dy, m, buf, lo, hi, t0, count, first): for the rows a in [lo, hi) of tile
    positions, the transforms of tiles t0 .. t0+count-1 (each tile's pixels are loaded once for all
    those rows) into row a's part of buf, then M[a*alpha + q] (+)= V[a][q]^T D[a][q] (stored fresh
    when `first`)."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_winograd{spec.m}_dw_rows",
                [PTR, PTR, PTR, PTR, I64, I64, I64, I64, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x, dy, m, buf, lo, hi, t0, count, first = fn.args
    vw, rw, tb, al = plan.vw, lay.rw, lay.tb, spec.alpha
    geom = (plan.h, plan.w, plan.ci, plan.oh, plan.ow, plan.pt, plan.pl)

    def row_ok(a: int) -> ir.Value:
        return b.and_(b.icmp_signed("<=", lo, kb.i64(a)), b.icmp_signed("<", kb.i64(a), hi))

    tilebuf = kb.buffer(F32, spec.positions * lay.cpad)
    with kb.loop(kb.i64(0), count, 1, "t") as t:
        def store_v(pos: int, c0: ir.Value, value: ir.Value, t=t) -> None:
            a, q = divmod(pos, al)
            kb.vstore(value, buf, b.add(kb.i64(a * lay.slot), b.add(
                b.mul(b.add(kb.i64(q * tb), t), kb.i64(lay.cpad)), c0)))

        tile = b.add(t0, t)
        input_transform(kb, spec, x, geom, tile, store_v, tilebuf, row_ok)
        _dy_transform(kb, spec, dy, plan, lay, buf, t, tile, row_ok)
    with kb.loop(lo, hi, 1, "a") as a:
        v = kb.gep(buf, b.mul(a, kb.i64(lay.slot)))
        d = kb.gep(v, kb.i64(lay.v_size))
        with kb.loop(kb.i64(0), kb.i64(al), 1, "q") as q:
            pos = b.add(b.mul(a, kb.i64(al)), q)
            a_q = kb.gep(v, b.mul(q, kb.i64(tb * lay.cpad)))
            b_q = kb.gep(d, b.mul(q, kb.i64(tb * lay.copad)))
            m_q = kb.gep(m, b.mul(pos, kb.i64(lay.cpad * lay.copad)))
            for p0, width in lay.panels:  # panel outer: its D slice stays in L1 while channels sweep
                nvec = width // vw
                with kb.loop(kb.i64(0), kb.i64(lay.ctiles), 1, "ct") as ct:
                    args = [kb.gep(a_q, b.mul(ct, kb.i64(rw))), kb.i64(1), kb.i64(lay.cpad),
                            kb.gep(b_q, kb.i64(p0 * tb)), kb.i64(width),
                            kb.gep(m_q, b.add(b.mul(ct, kb.i64(rw * lay.copad)), kb.i64(p0))),
                            kb.i64(lay.copad), count]
                    with b.if_else(b.icmp_signed("!=", first, kb.i64(0))) as (fresh, more):
                        with fresh:
                            b.call(gemm_tile(ctx, rw, nvec, False), args)
                        with more:
                            b.call(gemm_tile(ctx, rw, nvec, True), args)
    kb.finish()
    return fn


def _dy_transform(kb: KernelBuilder, spec: Spec, dy: ir.Value, plan, lay: _Layout, buf: ir.Value,
                  t: ir.Value, tile: ir.Value, row_ok) -> None:
    """D[a][q][panel][t][..] = (A DY A^T)[a][q] for the m x m block of dY of `tile` (zeros past
    its edge), for the rows a where `row_ok(a)` holds."""
    b = kb.b
    vw, co = kb.vw, plan.co
    m, al = spec.m, spec.alpha
    img, th, tw = tile_origin(kb, tile, plan.oh, plan.ow, m)
    oy0, ox0 = b.mul(th, kb.i64(m)), b.mul(tw, kb.i64(m))
    oks, idxs = [], []
    for u in range(m):
        for w_ in range(m):
            oy, ox = b.add(oy0, kb.i64(u)), b.add(ox0, kb.i64(w_))
            ok = b.and_(b.icmp_signed("<", oy, kb.i64(plan.oh)), b.icmp_signed("<", ox, kb.i64(plan.ow)))
            pix = b.select(ok, b.add(b.mul(b.add(b.mul(img, kb.i64(plan.oh)), oy), kb.i64(plan.ow)), ox),
                           kb.i64(0))
            oks.append(ok)
            idxs.append(b.mul(pix, kb.i64(co)))
    inside = b.and_(b.icmp_signed("<=", oy0, kb.i64(plan.oh - m)),
                    b.icmp_signed("<=", ox0, kb.i64(plan.ow - m)))
    oks_row = [row_ok(a) for a in range(al)]

    base = b.mul(b.add(b.mul(b.add(b.mul(img, kb.i64(plan.oh)), oy0), kb.i64(plan.ow)), ox0), kb.i64(co))

    def vectors(checked: bool) -> None:
        with kb.loop(kb.i64(0), kb.i64(lay.copad), vw, "o") as o0:  # a loop, not copies: compile time
            cmask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(co), o0), kb.i64(vw))) if co % vw else None

            def grad(k: int) -> ir.Value:
                if checked:
                    lmask = kb.splat(oks[k]) if cmask is None else b.and_(kb.splat(oks[k]), cmask)
                    return kb.masked_load(dy, b.add(idxs[k], o0), lmask)
                u, w_ = divmod(k, m)
                return kb.load_vector(dy, b.add(base, b.add(o0, kb.i64((u * plan.ow + w_) * co))), cmask)

            p0 = b.mul(b.sdiv(o0, kb.i64(lay.pw)), kb.i64(lay.pw))
            width = kb.min_i64(kb.i64(lay.pw), b.sub(kb.i64(lay.copad), p0))
            # D[a][q][panel p0][t][o0 - p0]
            at0 = b.add(b.add(b.mul(p0, kb.i64(lay.tb)), b.sub(o0, p0)), b.mul(t, width))
            for a in range(al):  # each row loads what it needs: few live values
                with kb.if_then(oks_row[a]):
                    row = [lincomb(kb, spec.a[a], [grad(u * m + w_) if spec.a[a][u] else None
                                                   for u in range(m)]) for w_ in range(m)]
                    for q, value in enumerate(apply_matrix(kb, spec.a, row)):
                        at = b.add(at0, kb.i64(a * lay.slot + lay.v_size + q * lay.tb * lay.copad))
                        kb.vstore(value, buf, at)

    with b.if_else(inside) as (fast, border):
        with fast:
            vectors(False)
        with border:
            vectors(True)


def _output_fn(ctx: KernelContext, spec: Spec, plan, lay: _Layout) -> ir.Function:
    """out(m, dw, lo, hi): dW[i][j][c][o] = (G^T M[.][c][o] G)[i][j] for channels c in [lo, hi)."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_winograd{spec.m}_dw_out", [PTR, PTR, I64, I64], ctx.target)
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    m, dw, lo, hi = fn.args
    vw, ci, co, copad = plan.vw, plan.ci, plan.co, plan.copad
    al = spec.alpha
    with kb.loop(lo, hi, 1, "c") as c:
        with kb.loop(kb.i64(0), kb.i64(copad), vw, "o") as o0:
            mm = [[kb.vload(m, b.add(b.mul(b.add(kb.i64((i * al + j) * lay.cpad), c), kb.i64(copad)), o0))
                   for j in range(al)] for i in range(al)]
            cols = [apply_matrix(kb, spec.gt, [mm[i][j] for i in range(al)]) for j in range(al)]
            mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(co), o0), kb.i64(vw))) if co % vw else None
            for i in range(3):
                row = apply_matrix(kb, spec.gt, [cols[j][i] for j in range(al)])
                for j in range(3):
                    idx = b.add(b.mul(b.add(kb.i64((i * 3 + j) * ci), c), kb.i64(co)), o0)
                    kb.store_vector(row[j], dw, idx, mask)
    kb.finish()
    return fn
