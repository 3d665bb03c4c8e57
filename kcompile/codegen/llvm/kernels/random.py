"""Counter-based Dropout, bit-identical to the NumPy rule in `kcompile.ir.ops.random`.

The same wrapping uint32 hash runs on <vw x i32> vectors of element indices; the mask compares the
24-bit uniform float with the rate exactly as the reference does.
"""

from __future__ import annotations

from llvmlite import ir

from kcompile.codegen.llvm.builder import I32, KernelBuilder
from kcompile.codegen.llvm.kernels.common import KernelContext, dim_values, lowering, product, split_range
from kcompile.ir.core import Node
from kcompile.ir.ops.random import _GOLDEN, _M1, _M2


def hash32(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b

    def c(v: int) -> ir.Value:
        return kb.vconst(v, x.type.count, I32) if isinstance(x.type, ir.VectorType) else kb.i32(v)

    x = b.xor(x, b.lshr(x, c(16)))
    x = b.mul(x, c(int(_M1)))
    x = b.xor(x, b.lshr(x, c(15)))
    x = b.mul(x, c(int(_M2)))
    return b.xor(x, b.lshr(x, c(16)))


@lowering("dropout")
def lower_dropout(ctx: KernelContext, node: Node) -> ir.Function:
    x = node.inputs[0]
    if x.dtype != "float32":
        raise NotImplementedError("the LLVM dropout is float32 only; use jit_compile=False")
    rate, salt = node.attrs["rate"], node.attrs["salt"]
    fn, kb, (xp, key), out, n, tid, nt = ctx.new_kernel(node, "dropout")
    b = kb.b
    vw = kb.vw
    total = product(kb, dim_values(kb, x.shape, n))
    lo, hi = split_range(kb, total, tid, nt, grain=vw)
    k0 = kb.load(key, 0, I32)
    k1 = kb.load(key, 1, I32)
    mixed = b.xor(hash32(kb, k0), kb.i32(salt))
    stream = hash32(kb, b.add(hash32(kb, mixed), b.mul(k1, kb.i32(int(_GOLDEN)))))
    lanes = ir.Constant(ir.VectorType(I32, vw), list(range(vw)))
    scale = kb.vconst(float(1.0 / (1.0 - rate)))  # float32(1 / (1 - rate)), as the reference
    rate_v = kb.vconst(rate)

    def block(i: ir.Value, mask: ir.Value | None) -> None:
        idx = b.add(kb.splat(b.trunc(i, I32)), lanes)
        bits = hash32(kb, b.xor(idx, kb.splat(stream)))
        u = b.fmul(b.uitofp(b.lshr(bits, kb.vconst(8, vw, I32)), kb.vec_type()), kb.vconst(2.0**-24))
        v = kb.vload(xp, i) if mask is None else kb.masked_load(xp, i, mask)
        y = b.select(b.fcmp_ordered(">=", u, rate_v), b.fmul(v, scale), kb.vconst(0.0))
        kb.vstore(y, out, i) if mask is None else kb.masked_store(y, out, i, mask)

    full = b.add(lo, b.mul(b.sdiv(b.sub(hi, lo), kb.i64(vw)), kb.i64(vw)))
    with kb.loop(lo, full, vw, "d") as i:
        block(i, None)
    cnt = b.sub(hi, full)
    with kb.if_then(b.icmp_signed(">", cnt, kb.i64(0))):
        block(full, kb.lane_mask(cnt))
    kb.finish()
    return fn
