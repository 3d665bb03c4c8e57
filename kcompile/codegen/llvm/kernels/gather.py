"""Row gathers (Embedding) and their adjoint scatter-add, with every id bounds-checked.

No id is ever used to address memory before it is checked against [0, rows) (one unsigned compare
catches negative ids too). A bad id is replaced by 0, so the kernel still stays in bounds, and is
recorded in the module's error word `kc_index_error` = [node index + 1, id] (the first one wins, by
compare-and-swap); the entry stops right after the kernel (before any later kernel -- in particular
any in-place weight update -- runs) and the runtime raises `IndexOutOfRangeError` naming the node's
layer, the id and the range.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, llvm_type
from kcompile.codegen.llvm.kernels.common import KernelContext, dim_values, lowering, product, split_range
from kcompile.ir.core import Node

INDEX_ERROR = "kc_index_error"
CHECKED_OPS = frozenset({"gather", "scatter_add"})


def index_error_word(kb: KernelBuilder) -> ir.Value:
    """An (opaque) pointer to the module's error word, an external global so that the runtime can
    find and reset it."""
    glob = kb.module.globals.get(INDEX_ERROR)
    if glob is None:
        typ = ir.ArrayType(I64, 2)
        glob = ir.GlobalVariable(kb.module, typ, name=INDEX_ERROR)
        glob.initializer = ir.Constant(typ, [0, 0])
        glob.align = 16
    # llvmlite types globals with typed pointers; the kernels use opaque ones (LLVM folds this)
    return kb.b.inttoptr(kb.b.ptrtoint(glob, I64), PTR)


def _checked_id(kb: KernelBuilder, ctx: KernelContext, ids: ir.Value, i: ir.Value, dtype: str,
                rows: int) -> tuple[ir.Value, ir.Value]:
    """(the id at i, or 0 when out of range; whether it was in range), recording a bad id."""
    b = kb.b
    raw = kb.load(ids, i, llvm_type(dtype))
    idx = b.sext(raw, I64) if raw.type.width < 64 else raw
    ok = b.icmp_unsigned("<", idx, kb.i64(rows))
    with kb.if_then(b.not_(ok)):
        word = index_error_word(kb)
        swap = b.cmpxchg(word, kb.i64(0), kb.i64(ctx.node_index + 1), "monotonic", "monotonic")
        with kb.if_then(b.extract_value(swap, 1)):
            kb.store(idx, word, 1)
    return b.select(ok, idx, kb.i64(0)), ok


@lowering("gather")
def lower_gather(ctx: KernelContext, node: Node) -> ir.Function:
    """One row copy per id; threads split the ids."""
    table, ids = node.inputs
    rows = table.shape[0]
    row_bytes = int(np.prod(table.shape[1:], dtype=np.int64)) * np.dtype(table.dtype).itemsize
    fn, kb, (tp, ip), out, n, tid, nt = ctx.new_kernel(node, "gather")
    b = kb.b
    count = product(kb, dim_values(kb, ids.shape, n))
    lo, hi = split_range(kb, count, tid, nt)
    with kb.loop(lo, hi, 1, "g") as i:
        idx, _ = _checked_id(kb, ctx, ip, i, ids.dtype, rows)
        if row_bytes:
            kb.memcpy(out, b.mul(i, kb.i64(row_bytes)), tp, b.mul(idx, kb.i64(row_bytes)), row_bytes)
    kb.finish()
    return fn


@lowering("scatter_add")
def lower_scatter_add(ctx: KernelContext, node: Node) -> ir.Function:
    """Threads split the row's columns (no two threads ever add into the same element): each zeroes
    its columns of the output, then adds every update row's share; bad ids are skipped."""
    ids, updates = node.inputs
    rows = node.attrs["rows"]
    width = int(np.prod(updates.shape[ids.type.rank:], dtype=np.int64))
    elem = llvm_type(updates.dtype)
    fn, kb, (ip, up), out, n, tid, nt = ctx.new_kernel(node, "scatter_add")
    b = kb.b
    count = product(kb, dim_values(kb, ids.shape, n))
    lo, hi = split_range(kb, kb.i64(width), tid, nt)
    zero = ir.Constant(elem, 0.0)
    with kb.loop(kb.i64(0), kb.i64(rows), 1, "r") as r:
        base = b.mul(r, kb.i64(width))
        with kb.loop(lo, hi, 1, "zc") as c:
            kb.store(zero, out, b.add(base, c))
    with kb.loop(kb.i64(0), count, 1, "u") as i:
        idx, ok = _checked_id(kb, ctx, ip, i, ids.dtype, rows)
        with kb.if_then(ok):
            dst = b.mul(idx, kb.i64(width))
            src = b.mul(i, kb.i64(width))
            with kb.loop(lo, hi, 1, "c") as c:
                at = b.add(dst, c)
                kb.store(b.fadd(kb.load(out, at, elem), kb.load(up, b.add(src, c), elem)), out, at)
    kb.finish()
    return fn
