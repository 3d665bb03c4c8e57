"""Elementwise kernels: one loop nest for a whole fused chain, vectorised along the innermost dim.

`ELEMENTWISE` is the table of primitive steps (op -> vector builder); `eval_program` runs a fused
program's steps on vectors and is shared with the GEMM/conv epilogues. Broadcasting is handled by
collapsing the output's dims into runs where every operand is either present or broadcast, then
giving broadcast operands stride 0 (a splat when the innermost run is broadcast).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llvmlite import ir

from kcompile.codegen.llvm import mathfn
from kcompile.codegen.llvm.builder import KernelBuilder, define, llvm_type
from kcompile.codegen.llvm.kernels.common import (
    KernelContext,
    dim_values,
    lowering,
    product,
    split_range,
)
from kcompile.ir.core import Node, Shape


def _relu(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    zero = ir.Constant(x.type, None)
    return kb.b.select(kb.b.fcmp_ordered("<", x, zero), zero, x)  # NaN stays NaN, like np.maximum


def _outlined(name: str, emit: Callable[..., ir.Value]) -> Callable[..., ir.Value]:
    """Emit a transcendental once per module and vector type as a `noinline` function: it is
    called once per output vector in epilogues, and inlining it into every GEMM/conv variant
    multiplied compile time for nothing."""

    def call(kb: KernelBuilder, *xs: ir.Value, **attrs) -> ir.Value:
        x = xs[0]
        suffix = "_".join(f"{k}{int(v)}" for k, v in sorted(attrs.items()))
        width = x.type.count if isinstance(x.type, ir.VectorType) else 1
        fname = f"kc_{name}_v{width}{'_' + suffix if suffix else ''}"
        fn = kb.module.globals.get(fname)
        if fn is None:
            fn = define(kb.module, fname, [x.type] * len(xs), kb.target, ret=x.type)
            fn.attributes.add("noinline")
            inner = KernelBuilder(fn, kb.target)
            inner.b.ret(emit(inner, *fn.args, **attrs))
            inner.finish()
        return kb.b.call(fn, list(xs))

    return call


ELEMENTWISE: dict[str, Callable[..., ir.Value]] = {
    "add": lambda kb, a, b: kb.b.fadd(a, b),
    "bias_add": lambda kb, a, b: kb.b.fadd(a, b),
    "sub": lambda kb, a, b: kb.b.fsub(a, b),
    "mul": lambda kb, a, b: kb.b.fmul(a, b),
    "div": lambda kb, a, b: kb.b.fdiv(a, b),
    "maximum": lambda kb, a, b: kb.fmax(a, b),
    "neg": lambda kb, a: kb.b.fneg(a),
    "relu": _relu,
    "sigmoid": _outlined("sigmoid", mathfn.sigmoid),
    "tanh": _outlined("tanh", mathfn.tanh),
    "exp": _outlined("exp", mathfn.exp),
    "log": _outlined("log", mathfn.log),
    "sqrt": lambda kb, a: kb.sqrt(a),
    "gelu": _outlined("gelu", lambda kb, a, approximate=False: mathfn.gelu(kb, a, approximate)),
    "gelu_grad": _outlined("gelu_grad",
                           lambda kb, a, approximate=False: mathfn.gelu_grad(kb, a, approximate)),
    "minimum": lambda kb, a, b: kb.fmin(a, b),
    "pow": _outlined("pow", mathfn.pow_),
    "abs": lambda kb, a: kb.fabs(a),
    "compare": lambda kb, a, b, predicate: _compare(kb, a, b, predicate),
    "broadcast_like": lambda kb, a, like: a,
    "stop_gradient": lambda kb, a: a,
}

_FCMP = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}


def _compare(kb: KernelBuilder, a: ir.Value, b: ir.Value, predicate: str) -> ir.Value:
    cmp = kb.b.fcmp_unordered("!=", a, b) if predicate == "ne" else \
        kb.b.fcmp_ordered(_FCMP[predicate], a, b)
    return kb.b.uitofp(cmp, a.type)


def eval_program(kb: KernelBuilder, steps: Sequence[tuple], operand: Callable[[int], ir.Value],
                 results: list[ir.Value] | None = None) -> ir.Value:
    """Evaluate steps (after any already in `results`); `operand(k)` gives input k's vector."""
    results = list(results or [])
    cache: dict[int, ir.Value] = {}
    for op, args, attrs in steps[len(results):]:
        vals = []
        for a in args:
            index = int(a[1:])
            if a[0] == "s":
                vals.append(results[index])
            else:
                if index not in cache:
                    cache[index] = operand(index)
                vals.append(cache[index])
        results.append(ELEMENTWISE[op](kb, *vals, **dict(attrs)))
    return results[-1]


# --- broadcasting layout ----------------------------------------------------------------------
def collapse(out_shape: Shape, in_shapes: Sequence[Shape]) -> tuple[list[list[Any]], list[list[bool]]]:
    """Runs of output dims (each a list of dims) and, per run, which operands are present."""
    rank = len(out_shape)
    present_per_dim = []
    for d in range(rank):
        flags = []
        for s in in_shapes:
            k = d - (rank - len(s))
            flags.append(k >= 0 and s[k] == out_shape[d] and not (s[k] == 1))
        present_per_dim.append(flags)
    runs: list[list[Any]] = []
    flags_per_run: list[list[bool]] = []
    for d in range(rank):
        if out_shape[d] == 1:
            continue
        if runs and flags_per_run[-1] == present_per_dim[d]:
            runs[-1].append(out_shape[d])
        else:
            runs.append([out_shape[d]])
            flags_per_run.append(present_per_dim[d])
    if not runs:
        runs, flags_per_run = [[1]], [[False] * len(in_shapes)]
    return runs, flags_per_run


def emit_elementwise(ctx: KernelContext, node: Node, steps: Sequence[tuple]) -> ir.Function:
    out_t = node.outputs[0].type
    fn, kb, ins, out, n, tid, nt = ctx.new_kernel(node, "ew")
    b = kb.b
    runs, flags = collapse(out_t.shape, [v.shape for v in node.inputs])
    sizes = [product(kb, dim_values(kb, run, n)) for run in runs]
    nin = len(ins)
    # per-operand strides (in elements) for each run: product of later present runs
    strides: list[list[ir.Value]] = [[kb.i64(0)] * len(runs) for _ in range(nin)]
    for j in range(nin):
        acc = kb.i64(1)
        for r in reversed(range(len(runs))):
            if flags[r][j]:
                strides[j][r] = acc
                acc = b.mul(acc, sizes[r])
    out_strides = [kb.i64(1)] * len(runs)
    acc = kb.i64(1)
    for r in reversed(range(len(runs))):
        out_strides[r] = acc
        acc = b.mul(acc, sizes[r])
    in_types = [llvm_type(v.dtype) for v in node.inputs]
    vw = kb.vw
    last = len(runs) - 1

    def body(offsets: list[ir.Value], out_off: ir.Value, inner_lo: ir.Value, inner_hi: ir.Value):
        with kb.loop(inner_lo, b.sub(inner_hi, kb.i64(vw - 1)), vw, "v") as i:
            _store(kb, steps, ins, in_types, flags[last], offsets, i, out, out_off, None)
        # masked tail: [last full vector end, hi)
        span = b.sub(inner_hi, inner_lo)
        tail_start = b.add(inner_lo, b.mul(b.sdiv(span, kb.i64(vw)), kb.i64(vw)))
        count = b.sub(inner_hi, tail_start)
        with kb.if_then(b.icmp_signed(">", count, kb.i64(0))):
            _store(kb, steps, ins, in_types, flags[last], offsets, tail_start, out, out_off,
                   kb.lane_mask(count))

    if last == 0:
        lo, hi = split_range(kb, sizes[0], tid, nt, grain=vw)
        body([kb.i64(0)] * nin, kb.i64(0), lo, hi)
    else:
        lo, hi = split_range(kb, sizes[0], tid, nt)

        def nest(r: int, offsets: list[ir.Value], out_off: ir.Value, lo_r, hi_r) -> None:
            if r == last:
                body(offsets, out_off, kb.i64(0), sizes[last])
                return
            with kb.loop(lo_r, hi_r, 1, f"d{r}") as i:
                nest(r + 1, [b.add(o, b.mul(i, strides[j][r])) for j, o in enumerate(offsets)],
                     b.add(out_off, b.mul(i, out_strides[r])), kb.i64(0), sizes[r + 1])

        nest(0, [kb.i64(0)] * nin, kb.i64(0), lo, hi)
    kb.finish()
    return fn


def _store(kb: KernelBuilder, steps, ins, in_types, present, offsets, i, out, out_off, mask) -> None:
    b = kb.b

    def operand(k: int) -> ir.Value:
        if present[k]:
            idx = b.add(offsets[k], i)
            if mask is None:
                return kb.vload(ins[k], idx, elem=in_types[k])
            return kb.masked_load(ins[k], idx, mask, elem=in_types[k])
        return kb.splat(kb.load(ins[k], offsets[k], in_types[k]))

    value = eval_program(kb, steps, operand)
    idx = b.add(out_off, i)
    if mask is None:
        kb.vstore(value, out, idx)
    else:
        kb.masked_store(value, out, idx, mask)


@lowering(*ELEMENTWISE)
def lower_elementwise_op(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    args = tuple(f"i{k}" for k in range(len(node.inputs)))
    return emit_elementwise(ctx, node, [(node.op, args, tuple(sorted(node.attrs.items())))])


def lower_fused_elementwise(ctx: KernelContext, node: Node) -> ir.Function:
    _require_f32(node)
    return emit_elementwise(ctx, node, node.attrs["program"])


def _require_f32(node: Node) -> None:
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"the LLVM backend compiles {node.op} for float32 only, got "
                                      f"{v.dtype} (in {node.label or node.op}); use "
                                      "jit_compile=False for other dtypes")


@lowering("cast")
def lower_cast(ctx: KernelContext, node: Node) -> ir.Function:
    src, dst = node.inputs[0].dtype, node.outputs[0].dtype
    fn, kb, (x,), out, n, tid, nt = ctx.new_kernel(node, "cast")
    b = kb.b
    total = product(kb, dim_values(kb, node.outputs[0].shape, n))
    lo, hi = split_range(kb, total, tid, nt, grain=16)
    st, dt = llvm_type(src), llvm_type(dst)
    with kb.loop(lo, hi, 1, "c") as i:
        v = kb.load(x, i, st)
        kb.store(_convert(b, v, src, dst, dt), out, i)
    kb.finish()
    return fn


def _convert(b: ir.IRBuilder, v: ir.Value, src: str, dst: str, dt: ir.Type) -> ir.Value:
    fsrc, fdst = src.startswith("float"), dst.startswith("float")
    if dst == "bool":
        nz = b.fcmp_unordered("!=", v, ir.Constant(v.type, 0)) if fsrc else \
            b.icmp_unsigned("!=", v, ir.Constant(v.type, 0))
        return b.zext(nz, dt)
    if fsrc and fdst:
        return v if v.type == dt else (b.fpext(v, dt) if dst == "float64" else b.fptrunc(v, dt))
    if fsrc:
        return b.fptoui(v, dt) if dst == "uint32" else b.fptosi(v, dt)
    if fdst:
        return b.uitofp(v, dt) if src in ("uint32", "bool") else b.sitofp(v, dt)
    if v.type.width == dt.width:
        return v
    if v.type.width > dt.width:
        return b.trunc(v, dt)
    return b.zext(v, dt) if src in ("uint32", "bool") else b.sext(v, dt)

