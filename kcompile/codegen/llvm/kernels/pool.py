"""Max/average pooling over NHWC, vectorised along channels; threads split the N*OH output rows.

Out-of-bounds taps (padding='same') are skipped; the average divides by the number of in-bounds
taps, as Keras does.
"""

from __future__ import annotations

import math

from llvmlite import ir

from kcompile.codegen.llvm.kernels.common import KernelContext, lowering, split_range
from kcompile.ir.core import Node
from kcompile.ir.ops.conv import spatial_pads


@lowering("max_pool2d", "avg_pool2d")
def lower_pool(ctx: KernelContext, node: Node) -> ir.Function:
    x = node.inputs[0]
    if x.dtype != "float32":
        raise NotImplementedError(f"the LLVM {node.op} is float32 only; use jit_compile=False")
    _, h, w, c = x.shape
    _, oh, ow, _ = node.outputs[0].shape
    ph, pw = node.attrs["pool_size"]
    sh, sw = node.attrs["strides"]
    (pt, _), (pl, _) = spatial_pads((h, w), (ph, pw), (sh, sw), (1, 1), node.attrs["padding"])
    is_max = node.op == "max_pool2d"
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, node.op)
    b = kb.b
    vw = kb.vw
    rows = b.mul(n, kb.i64(oh))
    lo, hi = split_range(kb, rows, tid, nt)
    init = -math.inf if is_max else 0.0
    with kb.loop(lo, hi, 1, "row") as row:
        img = b.sdiv(row, kb.i64(oh))
        y = b.srem(row, kb.i64(oh))
        ih0 = b.sub(b.mul(y, kb.i64(sh)), kb.i64(pt))
        with kb.loop(kb.i64(0), kb.i64(ow), 1, "x") as xo:
            iw0 = b.sub(b.mul(xo, kb.i64(sw)), kb.i64(pl))
            out_base = b.mul(b.add(b.mul(row, kb.i64(ow)), xo), kb.i64(c))
            for c0 in range(0, c, vw):
                cnt = min(vw, c - c0)
                mask = kb.lane_mask(kb.i64(cnt)) if cnt < vw else None
                acc = kb.var(kb.vec_type(), kb.vconst(init))
                count = kb.var(kb.i64(0).type, kb.i64(0))
                for dy in range(ph):
                    ih = b.add(ih0, kb.i64(dy))
                    ok_h = b.and_(b.icmp_signed(">=", ih, kb.i64(0)), b.icmp_signed("<", ih, kb.i64(h)))
                    for dx in range(pw):
                        iw = b.add(iw0, kb.i64(dx))
                        ok = b.and_(ok_h, b.and_(b.icmp_signed(">=", iw, kb.i64(0)),
                                                 b.icmp_signed("<", iw, kb.i64(w))))
                        with kb.if_then(ok):
                            pix = b.add(b.mul(img, kb.i64(h)), ih)
                            idx = b.add(b.mul(b.add(b.mul(pix, kb.i64(w)), iw), kb.i64(c)), kb.i64(c0))
                            v = kb.load_vector(xp, idx, mask)
                            kb.set(acc, kb.fmax(kb.get(acc), v) if is_max else b.fadd(kb.get(acc), v))
                            kb.set(count, b.add(kb.get(count), kb.i64(1)))
                value = kb.get(acc)
                if not is_max:
                    value = b.fdiv(value, kb.splat(b.sitofp(kb.get(count), kb.f32(0).type)))
                kb.store_vector(value, out, b.add(out_base, kb.i64(c0)), mask)
    kb.finish()
    return fn
