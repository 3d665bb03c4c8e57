"""Data movement: reshape, transpose, concat."""

from __future__ import annotations

import math

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import norm_axis, same_dtype


def _is_target_shape(shape: tuple) -> bool:
    return all(d is None or (isinstance(d, int) and d >= 0) for d in shape)


def _unit_dims_only(a: tuple, b: tuple) -> bool:
    """Whether a and b differ only by dims of size 1 (an expand_dims/squeeze)."""
    return [d for d in a if d != 1] == [d for d in b if d != 1]


def _reshape_infer(x: TensorType, shape: tuple) -> TensorType:
    """`shape` is fully resolved (no -1); `None` marks where the batch dim goes."""
    if (None in shape) != (None in x.shape):
        raise ValueError(f"reshape: cannot reshape {format_shape(x.shape)} to "
                         f"{format_shape(shape)}: the batch dim must be kept")
    if (x.shape.count(None) > 1 or shape.count(None) > 1) and not _unit_dims_only(x.shape, shape):
        # a shape-only trace with a variable length: only size-1 dims may come or go
        raise ValueError(f"reshape: cannot reshape {format_shape(x.shape)} to {format_shape(shape)} "
                         "with more than one unknown dim")
    known_in = math.prod(d for d in x.shape if d is not None)
    known_out = math.prod(d for d in shape if d is not None)
    if known_in != known_out:
        raise ValueError(f"reshape: cannot reshape {format_shape(x.shape)} to "
                         f"{format_shape(shape)}: sizes differ")
    return TensorType(shape, x.dtype)


def _reshape_ref(x: np.ndarray, shape: tuple) -> np.ndarray:
    return np.reshape(x, tuple(-1 if d is None else d for d in shape))


def _reshape_onnx(ctx, inputs, outputs, shape):
    """The batch dim stays dynamic: 0 (copy the input's dim) where it keeps its position, -1 where
    it moves; with literal zero dims (allowzero=1) it is read from the input's runtime shape."""
    x = inputs[0]
    if None not in shape:
        ctx.node("Reshape", [x, ctx.ints(shape)], outputs, allowzero=1 if 0 in shape else None)
        return
    b_in, b_out = ctx.type(x).shape.index(None), shape.index(None)
    if 0 not in shape:
        ctx.node("Reshape", [x, ctx.ints([(0 if b_in == b_out else -1) if d is None else d
                                          for d in shape])], outputs)
        return
    parts = [ctx.node("Shape", [x], start=b_in, end=b_in + 1)]
    if b_out > 0:
        parts.insert(0, ctx.ints(shape[:b_out]))
    if b_out < len(shape) - 1:
        parts.append(ctx.ints(shape[b_out + 1:]))
    ctx.node("Reshape", [x, ctx.node("Concat", parts, axis=0)], outputs, allowzero=1)


defop("reshape", attrs={"shape": Attr(tuple, check=_is_target_shape,
                                      help="ints >= 0 and None for the batch dim (or, in a "
                                           "variable-length trace, unknown dims kept in place)")},
      infer=_reshape_infer, ref=_reshape_ref, num_inputs=1,
      vjp=lambda e, inputs, out, g, shape: [e.reshape(g, inputs[0].shape)], onnx=_reshape_onnx,
      doc="Row-major reshape; the symbolic batch dim is carried as `None` in the target.")


def resolve_target_shape(in_shape: tuple, target: tuple) -> tuple:
    """Resolve one -1 in a Keras-style target against the known (non-batch) element count."""
    if list(target).count(-1) > 1:
        raise ValueError(f"reshape: at most one -1 allowed in target shape {target}")
    known = math.prod(d for d in in_shape if d is not None)
    fixed = math.prod(d for d in target if d not in (-1, None))
    if -1 in target:
        if fixed == 0 or known % fixed:
            raise ValueError(f"reshape: cannot reshape {format_shape(in_shape)} to {target}")
        target = tuple(known // fixed if d == -1 else d for d in target)
    return tuple(target)


def _transpose_infer(x: TensorType, perm: tuple) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"transpose: perm {perm} is not a permutation of rank {x.rank}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


defop("transpose", attrs={"perm": Attr(tuple)}, infer=_transpose_infer,
      ref=lambda x, perm: np.transpose(x, perm),
      vjp=lambda e, inputs, out, g, perm: [e.transpose(g, tuple(np.argsort(perm)))],
      onnx=lambda ctx, inputs, outputs, perm: ctx.transpose(inputs[0], perm, out=outputs[0]),
      num_inputs=1, doc="Permute axes.")


def _concat_infer(*xs: TensorType, axis: int) -> TensorType:
    if not xs:
        raise ValueError("concat: needs at least one input")
    dtype = same_dtype("concat", *xs)
    rank = xs[0].rank
    if any(x.rank != rank for x in xs):
        raise ValueError("concat: inputs must share one rank, got shapes "
                         + ", ".join(format_shape(x.shape) for x in xs))
    ax = norm_axis("concat", axis, rank)
    out = list(xs[0].shape)
    for x in xs[1:]:
        for i, (a, b) in enumerate(zip(out, x.shape, strict=True)):
            if i != ax and a != b:
                raise ValueError("concat: shapes must match except on the concat axis "
                                 f"({axis}), got " + ", ".join(format_shape(x.shape) for x in xs))
    dims = [x.shape[ax] for x in xs]
    if None in dims:
        raise ValueError("concat: cannot concatenate along the batch axis")
    out[ax] = sum(dims)
    return TensorType(tuple(out), dtype)


def _concat_vjp(e, inputs, out, g, axis):
    ax = axis % out.type.rank
    grads, start = [], 0
    for x in inputs:
        stop = start + x.shape[ax]
        grads.append(e.op("slice", g, axis=ax, start=start, stop=stop))
        start = stop
    return grads


def _concat_onnx(ctx, inputs, outputs, axis):
    """Concat; rank-4 inputs with an NCHW twin (conv branches) are joined in NCHW."""
    if all(ctx.type(x).rank == 4 for x in inputs) and any(ctx.nchw(x) for x in inputs):
        y = ctx.node("Concat", [ctx.to_nchw(x) for x in inputs], axis=ctx.nchw_axis(axis))
        ctx.from_nchw(y, outputs[0])
    else:
        ctx.node("Concat", inputs, outputs, axis=axis)


defop("concat", attrs={"axis": Attr(int)}, infer=_concat_infer,
      ref=lambda *xs, axis: np.concatenate(xs, axis=axis), vjp=_concat_vjp, onnx=_concat_onnx,
      doc="Join along an axis.")


def _slice_infer(x: TensorType, axis: int, start: int, stop: int) -> TensorType:
    ax = norm_axis("slice", axis, x.rank)
    if x.shape[ax] is None:
        raise ValueError("slice: cannot slice the batch axis")
    if not 0 <= start <= stop <= x.shape[ax]:
        raise ValueError(f"slice: [{start}:{stop}] is out of range for axis {axis} of "
                         f"{format_shape(x.shape)}")
    shape = list(x.shape)
    shape[ax] = stop - start
    return TensorType(tuple(shape), x.dtype)


def _slice_ref(x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return np.ascontiguousarray(x[tuple(index)])


def _slice_vjp(e, inputs, out, g, axis, start, stop):
    x = inputs[0]
    ax = axis % x.type.rank
    parts = []
    for lo, hi in ((0, start), (stop, x.shape[ax])):
        if hi > lo:
            shape = list(g.shape)
            shape[ax] = hi - lo
            zero_shape = [1 if d is None else d for d in shape]
            zeros = e.const(np.zeros(zero_shape, g.dtype), g.dtype)
            parts.append(e.broadcast_like(zeros, e.op("slice", x, axis=ax, start=lo, stop=hi))
                         if None in shape else zeros)
    pieces = ([parts[0]] if start > 0 else []) + [g] + ([parts[-1]] if stop < x.shape[ax] else [])
    return [pieces[0] if len(pieces) == 1 else e.op("concat", *pieces, axis=ax)]


def _slice_onnx(ctx, inputs, outputs, axis, start, stop):
    ctx.node("Slice", [inputs[0], ctx.ints([start]), ctx.ints([stop]), ctx.ints([axis])], outputs)


defop("slice", attrs={"axis": Attr(int), "start": Attr(int), "stop": Attr(int)},
      infer=_slice_infer, ref=_slice_ref, vjp=_slice_vjp, onnx=_slice_onnx, num_inputs=1,
      doc="x[..., start:stop, ...] along one non-batch axis (concat's adjoint).")


def _reverse_infer(x: TensorType, axis: int) -> TensorType:
    ax = norm_axis("reverse", axis, x.rank)
    if x.shape[ax] is None and ax == 0:  # (a None time axis: a shape-only trace, variable length)
        raise ValueError("reverse: cannot reverse the batch axis")
    return x


def _reverse_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.flip(x, axis))


def _reverse_onnx(ctx, inputs, outputs, axis):
    ctx.node("Slice", [inputs[0], ctx.ints([-1]), ctx.ints([-2**63]), ctx.ints([axis]), ctx.ints([-1])],
             outputs)


defop("reverse", attrs={"axis": Attr(int)}, infer=_reverse_infer, ref=_reverse_ref,
      vjp=lambda e, inputs, out, g, axis: [e.op("reverse", g, axis=axis)], onnx=_reverse_onnx,
      num_inputs=1,
      doc="x[..., ::-1, ...] along one non-batch axis (go_backwards sequences, Bidirectional).")


def _pad_infer(x: TensorType, axis: int, before: int, after: int) -> TensorType:
    ax = norm_axis("pad", axis, x.rank)
    if x.shape[ax] is None:
        raise ValueError("pad: cannot pad the batch axis")
    shape = list(x.shape)
    shape[ax] += before + after
    return TensorType(tuple(shape), x.dtype)


def _pad_ref(x: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths)


def _pad_vjp(e, inputs, out, g, axis, before, after):
    x = inputs[0]
    ax = axis % x.type.rank
    return [e.op("slice", g, axis=ax, start=before, stop=before + x.shape[ax])]


def _pad_onnx(ctx, inputs, outputs, axis, before, after):
    rank = ctx.type(inputs[0]).rank
    pads = [0] * (2 * rank)
    pads[axis % rank], pads[rank + axis % rank] = before, after
    ctx.node("Pad", [inputs[0], ctx.ints(pads)], outputs)


_NON_NEGATIVE = Attr(int, 0, lambda v: v >= 0, ">= 0")

defop("pad", attrs={"axis": Attr(int), "before": _NON_NEGATIVE, "after": _NON_NEGATIVE},
      infer=_pad_infer, ref=_pad_ref, vjp=_pad_vjp, onnx=_pad_onnx, num_inputs=1,
      doc="Zeros added before/after along one non-batch axis (Conv1D's causal padding; slice's "
          "adjoint).")
