"""Data movement: reshape (a copy only when its result must land in an output buffer), transpose,
concat, batchnorm with run-time statistics and literal constants (both rare after the passes)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import I8, llvm_type
from kcompile.codegen.llvm.kernels.common import KernelContext, dim_values, lowering, product, split_range
from kcompile.ir.core import Node
from kcompile.ir.ops._util import norm_axis


@lowering("reshape")
def lower_reshape(ctx: KernelContext, node: Node) -> ir.Function:
    fn, kb, (x,), out, n, tid, nt = ctx.new_kernel(node, "reshape")
    size = np.dtype(node.outputs[0].dtype).itemsize
    total = kb.b.mul(product(kb, dim_values(kb, node.outputs[0].shape, n)), kb.i64(size))
    lo, hi = split_range(kb, total, tid, nt, grain=64)
    kb.memcpy(out, lo, x, lo, kb.b.sub(hi, lo))
    kb.finish()
    return fn


@lowering("transpose")
def lower_transpose(ctx: KernelContext, node: Node) -> ir.Function:
    x = node.inputs[0]
    perm = node.attrs["perm"]
    elem = llvm_type(x.dtype)
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, "transpose")
    b = kb.b
    in_dims = dim_values(kb, x.shape, n)
    out_dims = [in_dims[p] for p in perm]
    in_strides = [product(kb, in_dims[i + 1:]) for i in range(len(in_dims))]
    lo, hi = split_range(kb, out_dims[0] if out_dims else kb.i64(1), tid, nt)

    def nest(d: int, out_off: ir.Value, in_off: ir.Value, first: bool) -> None:
        if d == len(out_dims):
            kb.store(kb.load(xp, in_off, elem), out, out_off)
            return
        start, stop = (lo, hi) if first else (kb.i64(0), out_dims[d])
        with kb.loop(start, stop, 1, f"t{d}") as i:
            nest(d + 1, b.add(b.mul(out_off, out_dims[d]), i) if not first else i,
                 b.add(in_off, b.mul(i, in_strides[perm[d]])), False)

    if out_dims:
        nest(0, kb.i64(0), kb.i64(0), True)
    else:
        kb.store(kb.load(xp, 0, elem), out, 0)
    kb.finish()
    return fn


@lowering("concat")
def lower_concat(ctx: KernelContext, node: Node) -> ir.Function:
    out_t = node.outputs[0].type
    axis = norm_axis("concat", node.attrs["axis"], out_t.rank)
    size = np.dtype(out_t.dtype).itemsize
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "concat")
    b = kb.b
    outer = product(kb, dim_values(kb, out_t.shape[:axis], n))
    inner = int(np.prod([d for d in out_t.shape[axis + 1:]], dtype=np.int64)) * size
    out_row = out_t.shape[axis] * inner
    lo, hi = split_range(kb, outer, tid, nt)
    with kb.loop(lo, hi, 1, "o") as o:
        offset = 0
        for v, ptr in zip(node.inputs, ins, strict=True):
            chunk = v.shape[axis] * inner
            src = b.mul(o, kb.i64(chunk))
            dst = b.add(b.mul(o, kb.i64(out_row)), kb.i64(offset))
            kb.memcpy(out, dst, ptr, src, chunk)
            offset += chunk
    kb.finish()
    return fn


@lowering("batchnorm")
def lower_batchnorm(ctx: KernelContext, node: Node) -> ir.Function:
    """(x - mean) * gamma / sqrt(var + eps) + beta, one element at a time (after `fold_batchnorm`
    only graphs with run-time statistics get here)."""
    x = node.inputs[0]
    if x.dtype != "float32":
        raise NotImplementedError("the LLVM batchnorm is float32 only; use jit_compile=False")
    axis = norm_axis("batchnorm", node.attrs["axis"], x.type.rank)
    fn, kb, (xp, g, bt, mu, var), out, n, tid, nt = ctx.new_kernel(node, "batchnorm")
    b = kb.b
    dims = dim_values(kb, x.shape, n)
    total = product(kb, dims)
    inner = product(kb, dims[axis + 1:])
    lo, hi = split_range(kb, total, tid, nt)
    eps = kb.f32(node.attrs["epsilon"])
    with kb.loop(lo, hi, 1, "e") as i:
        c = b.srem(b.sdiv(i, inner), dims[axis])
        inv = b.fdiv(kb.load(g, c), kb.sqrt(b.fadd(kb.load(var, c), eps)))
        y = b.fadd(b.fmul(b.fsub(kb.load(xp, i), kb.load(mu, c)), inv), kb.load(bt, c))
        kb.store(y, out, i)
    kb.finish()
    return fn


@lowering("constant")
def lower_constant(ctx: KernelContext, node: Node) -> ir.Function:
    """A literal written into its buffer (the passes normally turn constants into prepared params)."""
    value = np.ascontiguousarray(node.attrs["value"])
    data = ir.Constant(ir.ArrayType(I8, value.nbytes), bytearray(value.tobytes()))
    glob = ir.GlobalVariable(ctx.module, data.type, name=f"const{ctx.counter + 1}")
    glob.global_constant = True
    glob.linkage = "internal"
    glob.initializer = data
    fn, kb, _, out, n, tid, nt = ctx.new_kernel(node, "constant")
    with kb.if_then(kb.b.icmp_signed("==", tid, kb.i64(0))):
        kb.memcpy(out, 0, glob, 0, value.nbytes)
    kb.finish()
    return fn


@lowering("slice")
def lower_slice(ctx: KernelContext, node: Node) -> ir.Function:
    x = node.inputs[0]
    axis = norm_axis("slice", node.attrs["axis"], x.type.rank)
    start, stop = node.attrs["start"], node.attrs["stop"]
    size = np.dtype(x.dtype).itemsize
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, "slice")
    b = kb.b
    outer = product(kb, dim_values(kb, x.shape[:axis], n))
    inner = int(np.prod([d for d in x.shape[axis + 1:]], dtype=np.int64)) * size
    lo, hi = split_range(kb, outer, tid, nt)
    chunk = (stop - start) * inner
    with kb.loop(lo, hi, 1, "o") as o:
        src = b.add(b.mul(o, kb.i64(x.shape[axis] * inner)), kb.i64(start * inner))
        kb.memcpy(out, b.mul(o, kb.i64(chunk)), xp, src, chunk)
    kb.finish()
    return fn


@lowering("reverse")
def lower_reverse(ctx: KernelContext, node: Node) -> ir.Function:
    """Per outer index, the blocks along the axis copied in reverse order (each a contiguous run)."""
    x = node.inputs[0]
    axis = norm_axis("reverse", node.attrs["axis"], x.type.rank)
    size = np.dtype(x.dtype).itemsize
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, "reverse")
    b = kb.b
    outer = product(kb, dim_values(kb, x.shape[:axis], n))
    inner = int(np.prod([d for d in x.shape[axis + 1:]], dtype=np.int64)) * size
    length = x.shape[axis]
    lo, hi = split_range(kb, outer, tid, nt)
    with kb.loop(lo, hi, 1, "o") as o:
        base = b.mul(o, kb.i64(length * inner))
        with kb.loop(kb.i64(0), kb.i64(length), 1, "k") as k:
            src = b.add(base, b.mul(b.sub(kb.i64(length - 1), k), kb.i64(inner)))
            kb.memcpy(out, b.add(base, b.mul(k, kb.i64(inner))), xp, src, inner)
    kb.finish()
    return fn


@lowering("one_hot")
def lower_one_hot(ctx: KernelContext, node: Node) -> ir.Function:
    labels = node.inputs[0]
    depth = node.attrs["depth"]
    if node.outputs[0].dtype != "float32":
        raise NotImplementedError("the LLVM one_hot writes float32 only; use jit_compile=False")
    src_t = llvm_type(labels.dtype)
    fn, kb, (lp,), out, n, tid, nt = ctx.new_kernel(node, "one_hot")
    b = kb.b
    total = product(kb, dim_values(kb, labels.shape, n))
    lo, hi = split_range(kb, total, tid, nt)
    with kb.loop(lo, hi, 1, "l") as i:
        raw = kb.load(lp, i, src_t)
        label = b.fptosi(raw, ir.IntType(64)) if labels.dtype.startswith("float") else \
            b.sext(raw, ir.IntType(64)) if raw.type.width < 64 else raw
        with kb.loop(kb.i64(0), kb.i64(depth), 1, "d") as d:
            hit = b.uitofp(b.icmp_signed("==", d, label), kb.f32(0).type)
            kb.store(hit, out, b.add(b.mul(i, kb.i64(depth)), d))
    kb.finish()
    return fn


@lowering("pad")
def lower_pad(ctx: KernelContext, node: Node) -> ir.Function:
    """Per outer index: zeros, the input block, zeros (row-major, so each is one contiguous run)."""
    x = node.inputs[0]
    axis = norm_axis("pad", node.attrs["axis"], x.type.rank)
    before, after = node.attrs["before"], node.attrs["after"]
    size = np.dtype(x.dtype).itemsize
    fn, kb, (xp,), out, n, tid, nt = ctx.new_kernel(node, "pad")
    b = kb.b
    outer = product(kb, dim_values(kb, x.shape[:axis], n))
    inner = int(np.prod([d for d in x.shape[axis + 1:]], dtype=np.int64)) * size
    chunk = x.shape[axis] * inner
    out_row = chunk + (before + after) * inner
    memset = kb.intrinsic("llvm.memset.p0.i64", ir.VoidType(), [ir.PointerType(), I8, ir.IntType(64),
                                                                   ir.IntType(1)])
    lo, hi = split_range(kb, outer, tid, nt)
    with kb.loop(lo, hi, 1, "o") as o:
        dst = b.mul(o, kb.i64(out_row))
        for start, nbytes in ((0, before * inner), (before * inner + chunk, after * inner)):
            if nbytes:
                b.call(memset, [kb.gep(out, b.add(dst, kb.i64(start)), I8), ir.Constant(I8, 0),
                                kb.i64(nbytes), ir.Constant(ir.IntType(1), 0)])
        if chunk:
            kb.memcpy(out, b.add(dst, kb.i64(before * inner)), xp, b.mul(o, kb.i64(chunk)), chunk)
    kb.finish()
    return fn
