"""Reductions (sum, mean, max) and softmax.

Global average/max pooling are `mean`/`max` over the spatial axes: one op family, one kernel family.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import DTYPE_HELP, is_dtype, norm_axes, norm_axis, require_float


def _reduce_infer(name: str):
    def infer(x: TensorType, axes: tuple | None, keepdims: bool) -> TensorType:
        if name != "sum":
            require_float(name, x)
        ax = norm_axes(name, axes, x.rank)
        if keepdims:
            shape = tuple(1 if i in ax else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in ax)
        return TensorType(shape, x.dtype)

    return infer


def _reduce_ref(fn):
    def ref(x: np.ndarray, axes: tuple | None, keepdims: bool) -> np.ndarray:
        out = fn(x, axis=axes, keepdims=keepdims)
        return np.asarray(out, dtype=x.dtype)

    return ref


_REDUCE_ATTRS = {"axes": Attr(tuple, None), "keepdims": Attr(bool, False)}


def _kept_shape(x, axes) -> tuple:
    ax = norm_axes("reduce", axes, x.type.rank)
    return tuple(1 if i in ax else d for i, d in enumerate(x.shape))


def _expand(e, g, x, axes):
    """g (reduced) broadcast back to x's shape."""
    return e.broadcast_like(e.reshape(g, _kept_shape(x, axes)), x)


def _count(e, x, axes):
    """Number of reduced elements (symbolic when the batch axis is reduced)."""
    ax = norm_axes("reduce", axes, x.type.rank)
    known = int(np.prod([x.shape[i] for i in ax if x.shape[i] is not None] or [1]))
    if all(x.shape[i] is not None for i in ax):
        return e.const(float(known), x.dtype)
    ones = e.broadcast_like(e.const(1.0, x.dtype), x)
    return e.sum(ones, axes, keepdims=True)


def _sum_vjp(e, inputs, out, g, axes, keepdims):
    return [_expand(e, g, inputs[0], axes)]


def _mean_vjp(e, inputs, out, g, axes, keepdims):
    x = inputs[0]
    return [e.div(_expand(e, g, x, axes), _count(e, x, axes))]


def _max_vjp(e, inputs, out, g, axes, keepdims):
    """To the maxima; ties share the gradient equally (as JAX does)."""
    x = inputs[0]
    hit = e.compare(x, _expand(e, out, x, axes), "eq")
    ties = _expand(e, e.sum(hit, axes), x, axes)
    return [e.div(e.mul(hit, _expand(e, g, x, axes)), ties)]


def _reduce_onnx(op_type: str):
    """ReduceSum/Mean/Max. On an NCHW twin (global pooling after convs) the axes are mapped and
    the twin is reduced directly when the result's axis order allows."""

    def rule(ctx, inputs, outputs, axes, keepdims):
        x = inputs[0]
        rank = ctx.type(x).rank
        ax = None if axes is None else norm_axes(op_type, axes, rank)
        if ax == ():  # nothing to reduce (an empty ONNX axes list would mean "all")
            ctx.node("Identity", [x], outputs)
            return
        twin = ctx.nchw(x) if rank == 4 and ax is not None else None
        if twin is not None:
            twin_axes = sorted(ctx.nchw_axis(a) for a in ax)
            kept = [a for a in ctx.TO_NCHW if a not in ax]  # surviving NHWC axes, in twin order
            if keepdims:
                ctx.from_nchw(ctx.reduce(op_type, twin, twin_axes, True), outputs[0])
                return
            if kept == sorted(kept):
                ctx.reduce(op_type, twin, twin_axes, False, out=outputs[0])
                return
        ctx.reduce(op_type, x, ax, keepdims, out=outputs[0])

    return rule


defop("sum", attrs=_REDUCE_ATTRS, infer=_reduce_infer("sum"), ref=_reduce_ref(np.sum),
      vjp=_sum_vjp, onnx=_reduce_onnx("ReduceSum"), num_inputs=1,
      doc="Sum over `axes` (all when None).", tags=("reduce",))
defop("mean", attrs=_REDUCE_ATTRS, infer=_reduce_infer("mean"), ref=_reduce_ref(np.mean),
      vjp=_mean_vjp, onnx=_reduce_onnx("ReduceMean"), num_inputs=1,
      doc="Mean over `axes` (all when None).", tags=("reduce",))
defop("max", attrs=_REDUCE_ATTRS, infer=_reduce_infer("max"), ref=_reduce_ref(np.max),
      vjp=_max_vjp, onnx=_reduce_onnx("ReduceMax"), num_inputs=1,
      doc="Max over `axes` (all when None).", tags=("reduce",))


def _along_axis_infer(name: str):
    """softmax / log_softmax: a float tensor in, the same type out, `axis` in range."""

    def infer(x: TensorType, axis: int) -> TensorType:
        require_float(name, x)
        norm_axis(name, axis, x.rank)
        return x

    return infer


_softmax_infer = _along_axis_infer("softmax")


def _softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def _softmax_vjp(e, inputs, out, g, axis):
    gy = e.mul(g, out)
    return [e.sub(gy, e.mul(out, e.broadcast_like(e.sum(gy, (axis,), keepdims=True), out)))]


def _along_axis_onnx(op_type: str):
    def rule(ctx, inputs, outputs, axis):
        ctx.node(op_type, inputs, outputs, axis=axis)

    return rule


defop("softmax", attrs={"axis": Attr(int, -1)}, infer=_softmax_infer, ref=_softmax_ref,
      vjp=_softmax_vjp, onnx=_along_axis_onnx("Softmax"), num_inputs=1,
      doc="exp(x - max) / sum; one op so backends can fuse the max/sum passes.")


_log_softmax_infer = _along_axis_infer("log_softmax")


def _log_softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    return (z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


def _log_softmax_vjp(e, inputs, out, g, axis):
    total = e.broadcast_like(e.sum(g, (axis,), keepdims=True), out)
    return [e.sub(g, e.mul(e.exp(out), total))]


defop("log_softmax", attrs={"axis": Attr(int, -1)}, infer=_log_softmax_infer, ref=_log_softmax_ref,
      vjp=_log_softmax_vjp, onnx=_along_axis_onnx("LogSoftmax"), num_inputs=1,
      doc="x - max - log(sum(exp(x - max))): cross-entropy from logits without overflow.")


def _argmax_infer(x: TensorType, axis: int) -> TensorType:
    ax = norm_axis("argmax", axis, x.rank)
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i != ax), "int32")


def _not_differentiable(name: str):
    def vjp(e, inputs, out, g, **attrs):
        return [None] * len(inputs)

    vjp.__doc__ = f"{name} is piecewise constant: no gradient flows through it."
    return vjp


def _argmax_onnx(ctx, inputs, outputs, axis):
    """ArgMax (first maximum, int64) cast to the IR's int32."""
    ctx.cast(ctx.node("ArgMax", inputs, axis=axis, keepdims=0, select_last_index=0), "int32",
             out=outputs[0])


defop("argmax", attrs={"axis": Attr(int, -1)}, infer=_argmax_infer,
      ref=lambda x, axis: np.argmax(x, axis=axis).astype(np.int32),
      vjp=_not_differentiable("argmax"), onnx=_argmax_onnx, num_inputs=1,
      doc="Index of the first maximum along `axis` (accuracy metrics).")


def _one_hot_infer(labels: TensorType, depth: int, dtype: str) -> TensorType:
    if labels.dtype not in ("int32", "int64", "float32", "float64"):
        raise TypeError(f"one_hot: labels must be integers (or integral floats), got {labels.dtype}")
    return TensorType((*labels.shape, depth), dtype)


def _one_hot_ref(labels: np.ndarray, depth: int, dtype: str) -> np.ndarray:
    idx = labels.astype(np.int64)
    return (idx[..., None] == np.arange(depth)).astype(dtype)


def _one_hot_onnx(ctx, inputs, outputs, depth, dtype):
    """labels[..., None] == arange(depth), as `ref` (not ONNX OneHot, which wraps negative labels)."""
    labels = ctx.node("Unsqueeze", [ctx.cast(inputs[0], "int64"), ctx.ints([-1])])
    hit = ctx.node("Equal", [labels, ctx.const(np.arange(depth, dtype=np.int64), hint="one_hot_range")])
    ctx.cast(hit, dtype, out=outputs[0])


defop("one_hot", attrs={"depth": Attr(int, check=lambda d: d > 0, help="> 0"),
                        "dtype": Attr(str, "float32", is_dtype, DTYPE_HELP)},
      infer=_one_hot_infer, ref=_one_hot_ref, vjp=_not_differentiable("one_hot"),
      onnx=_one_hot_onnx, num_inputs=1,
      doc="1.0 at each label's index (labels outside [0, depth) give a zero row; the trainer "
          "rejects them before they get here).")


defop("stop_gradient", infer=lambda x: x, ref=lambda x: x,
      vjp=lambda e, inputs, out, g: [None],
      onnx=lambda ctx, inputs, outputs: ctx.node("Identity", inputs, outputs), num_inputs=1,
      doc="Identity whose gradient is zero (the max shift of a stable softmax).", tags=("elementwise",))
