"""Public tensor ops (Keras `keras.ops` names): record an IR node when tracing, run `ref` otherwise.

Layer `call()` methods use only these, so one implementation serves eager execution, tracing for
compilation, and shape inference in the Functional API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import get_op
from kcompile.ir.ops.movement import resolve_target_shape
from kcompile.tracing import GraphBuilder, Tracer, current_builder
from kcompile.variables import Variable

TensorLike = Any


def _ref_dtype(inputs: Sequence[Any]) -> str | None:
    for x in inputs:
        if isinstance(x, Tracer | Variable):
            return x.dtype
    for x in inputs:
        if isinstance(x, np.ndarray | np.generic):
            return x.dtype.name
    return None


def _literal(x: Any, dtype: str | None) -> np.ndarray:
    """Python scalars and foreign arrays take the dtype of the tensor they meet (weak typing)."""
    arr = np.asarray(x)
    if dtype is not None and arr.dtype.name != dtype:
        if isinstance(x, bool | int | float) or (arr.dtype.kind == "f" and np.dtype(dtype).kind == "f"):
            arr = arr.astype(dtype)
    if arr.dtype.name == "float64" and dtype is None and isinstance(x, float):
        arr = arr.astype("float32")
    return arr


def _to_value(b: GraphBuilder, x: Any, dtype: str | None):
    if isinstance(x, Tracer):
        if x.builder is not b:
            raise ValueError("a symbolic tensor from another trace was used; tensors cannot be "
                             "shared between models being traced")
        return x.value
    if isinstance(x, Variable):
        return b.param(x)
    return b.constant(_literal(x, dtype))


def _to_array(x: Any, dtype: str | None) -> np.ndarray:
    if isinstance(x, Variable):
        return x.value
    if isinstance(x, np.ndarray) and (dtype is None or x.dtype.name == dtype or x.dtype.kind != "f"):
        return x
    return _literal(x, dtype)


def apply(op: str, inputs: Sequence[Any], **attrs: Any) -> Any:
    """Apply IR op `op`: symbolic under a builder, eager (validated like the symbolic path) otherwise.

    Returns one tensor, or a tuple for multi-output ops.
    """
    if any(hasattr(x, "_keras_history") for x in inputs):
        raise TypeError(f"kcompile.ops ({op}) on symbolic Keras inputs is not supported yet; use "
                        "the matching layer (e.g. layers.Add) when building a Functional model")
    dtype = _ref_dtype(inputs)
    b = current_builder()
    if b is not None:
        values = [_to_value(b, x, dtype) for x in inputs]
        outs = [Tracer(v, b) for v in b.graph.add_node(op, values, attrs, label=b.label)]
    else:
        opdef = get_op(op)
        arrays = [_to_array(x, dtype) for x in inputs]
        attrs = opdef.check_attrs(attrs)
        types = opdef.infer_types([TensorType(a.shape, a.dtype.name) for a in arrays], attrs)
        outs = [np.asarray(r).astype(t.dtype, copy=False)
                for r, t in zip(opdef.run_ref(arrays, attrs), types, strict=True)]
    return outs[0] if len(outs) == 1 else tuple(outs)


def convert_to_tensor(x: TensorLike, dtype: str | None = None) -> TensorLike:
    if isinstance(x, Tracer):
        return x if dtype is None or x.dtype == dtype else cast(x, dtype)
    if isinstance(x, Variable):
        return x.numpy() if current_builder() is None else x
    return np.asarray(x, dtype=dtype)


def shape(x: TensorLike) -> tuple:
    return tuple(x.shape)


# --- elementwise ----------------------------------------------------------------------------------
def add(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("add", [x1, x2])


def subtract(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("sub", [x1, x2])


def multiply(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("mul", [x1, x2])


def divide(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("div", [x1, x2])


def maximum(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("maximum", [x1, x2])


def negative(x: TensorLike) -> TensorLike:
    return apply("neg", [x])


def square(x: TensorLike) -> TensorLike:
    return apply("mul", [x, x])


def relu(x: TensorLike) -> TensorLike:
    return apply("relu", [x])


def sigmoid(x: TensorLike) -> TensorLike:
    return apply("sigmoid", [x])


def tanh(x: TensorLike) -> TensorLike:
    return apply("tanh", [x])


def exp(x: TensorLike) -> TensorLike:
    return apply("exp", [x])


def log(x: TensorLike) -> TensorLike:
    return apply("log", [x])


def sqrt(x: TensorLike) -> TensorLike:
    return apply("sqrt", [x])


def gelu(x: TensorLike, approximate: bool = False) -> TensorLike:
    return apply("gelu", [x], approximate=bool(approximate))


def silu(x: TensorLike) -> TensorLike:
    return multiply(x, sigmoid(x))


def softmax(x: TensorLike, axis: int = -1) -> TensorLike:
    return apply("softmax", [x], axis=int(axis))


def cast(x: TensorLike, dtype: str) -> TensorLike:
    return apply("cast", [x], dtype=np.dtype(dtype).name)


def bias_add(x: TensorLike, bias: TensorLike) -> TensorLike:
    return apply("bias_add", [x, bias])


def matmul(x1: TensorLike, x2: TensorLike) -> TensorLike:
    return apply("matmul", [x1, x2])


# --- movement -------------------------------------------------------------------------------------
def reshape(x: TensorLike, newshape: Sequence[int]) -> TensorLike:
    """Keras semantics; when tracing, -1 (or None) must stand for exactly the batch dimension."""
    target = tuple(newshape) if isinstance(newshape, Sequence) else (int(newshape),)
    in_shape = tuple(x.shape)
    if in_shape.count(None) > 1:  # a variable-length trace: size-1 dims may come or go
        unknown = tuple(None if d in (-1, None) else d for d in target)
        if [d for d in unknown if d != 1] != [d for d in in_shape if d != 1]:
            raise ValueError(f"reshape: cannot reshape {format_shape(in_shape)} to {target}: with "
                             "several unknown dims only dims of size 1 may be added or removed")
        return apply("reshape", [x], shape=unknown)
    if None in in_shape:
        fixed = math.prod(d for d in target if d not in (-1, None))
        known = math.prod(d for d in in_shape if d is not None)
        holes = [i for i, d in enumerate(target) if d in (-1, None)]
        if len(holes) != 1 or fixed != known:
            raise ValueError(f"reshape: cannot reshape {format_shape(in_shape)} to {target} without "
                             "knowing the batch size; use -1 for the batch dimension")
        target = tuple(None if i == holes[0] else d for i, d in enumerate(target))
    else:
        target = resolve_target_shape(in_shape, target)
    return apply("reshape", [x], shape=target)


def transpose(x: TensorLike, axes: Sequence[int] | None = None) -> TensorLike:
    perm = tuple(range(len(x.shape) - 1, -1, -1)) if axes is None else tuple(int(a) for a in axes)
    return apply("transpose", [x], perm=perm)


def concatenate(xs: Sequence[TensorLike], axis: int = 0) -> TensorLike:
    return apply("concat", list(xs), axis=int(axis))


def flip(x: TensorLike, axis: int | Sequence[int] | None = None) -> TensorLike:
    """Keras's `flip`: `x` reversed along `axis` (every axis when None; one `reverse` op per axis).
    When tracing, the batch axis cannot be reversed."""
    rank = len(x.shape)
    axes = range(rank) if axis is None else (axis,) if isinstance(axis, int | np.integer) else axis
    for ax in axes:
        if not -rank <= int(ax) < rank:
            raise ValueError(f"flip: axis {ax} is out of range for rank {rank}")
        x = apply("reverse", [x], axis=int(ax) % rank)
    return x


def pad(x: TensorLike, pad_width: Sequence[Sequence[int]], mode: str = "constant",
        constant_values: Any = None) -> TensorLike:
    """Zero padding (Keras's `pad` with mode='constant'); one `pad` op per padded axis."""
    if mode != "constant" or constant_values not in (None, 0, 0.0):
        raise NotImplementedError("pad: only mode='constant' with zeros is supported yet")
    widths = [tuple(int(v) for v in w) for w in pad_width]
    if len(widths) != len(x.shape) or any(len(w) != 2 or min(w) < 0 for w in widths):
        raise ValueError(f"pad: pad_width {pad_width!r} must be one (before, after) pair of "
                         f"non-negative ints per axis of shape {format_shape(tuple(x.shape))}")
    for axis, (before, after) in enumerate(widths):
        if before or after:
            x = apply("pad", [x], axis=axis, before=before, after=after)
    return x


def take(x: TensorLike, indices: TensorLike, axis: int | None = None) -> TensorLike:
    """Rows of `x` (axis=0) by integer index; an index outside [0, len(x)) is an error."""
    if axis is None or axis not in (0, -len(x.shape)):
        raise NotImplementedError(f"take: only axis=0 is supported yet, got axis={axis!r}")
    return apply("gather", [x, indices])


# --- convolution and pooling ----------------------------------------------------------------------
def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int | np.integer) else tuple(int(i) for i in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return t


def _channels_last(data_format: str | None) -> None:
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format={data_format!r} is not supported yet; kcompile uses "
                         "channels_last (NHWC)")


def _single(v: int | Sequence[int], what: str) -> int:
    t = (int(v),) if isinstance(v, int | np.integer) else tuple(int(i) for i in v)
    if len(t) != 1 or t[0] < 1:
        raise ValueError(f"{what} must be a positive int or a tuple of one, got {v!r}")
    return t[0]


def _as_rows(x: TensorLike) -> TensorLike:
    """(N, L, C) -> (N, 1, L, C): 1-D convolution and pooling run as their 2-D ops on one row."""
    if len(x.shape) != 3:
        raise ValueError(f"expected a 3-D (batch, steps, channels) input, got shape "
                         f"{format_shape(tuple(x.shape))}")
    return reshape(x, (-1, 1, *x.shape[1:]))


def _from_rows(y: TensorLike) -> TensorLike:
    return reshape(y, (-1, *y.shape[2:]))


def conv(inputs: TensorLike, kernel: TensorLike, strides: int | Sequence[int] = 1,
         padding: str = "valid", data_format: str | None = None,
         dilation_rate: int | Sequence[int] = 1) -> TensorLike:
    """2-D (NHWC, HWIO kernel) or, for a rank-3 input, 1-D (NLC, kernel (k, in, out))."""
    _channels_last(data_format)
    if len(inputs.shape) == 3:
        y = apply("conv2d", [_as_rows(inputs), reshape(kernel, (1, *kernel.shape))],
                  strides=(1, _single(strides, "strides")), padding=str(padding).lower(),
                  dilation=(1, _single(dilation_rate, "dilation_rate")))
        return _from_rows(y)
    return apply("conv2d", [inputs, kernel], strides=_pair(strides, "strides"),
                 padding=str(padding).lower(), dilation=_pair(dilation_rate, "dilation_rate"))


def _pool(op: str, inputs: TensorLike, pool_size: Any, strides: Any, padding: str) -> TensorLike:
    """2-D pooling, or 1-D for a rank-3 (batch, steps, channels) input."""
    if len(inputs.shape) == 3:
        pool = (1, _single(pool_size, "pool_size"))
        step = pool if strides is None else (1, _single(strides, "strides"))
        return _from_rows(apply(op, [_as_rows(inputs)], pool_size=pool, strides=step,
                                padding=str(padding).lower()))
    pool = _pair(pool_size, "pool_size")
    return apply(op, [inputs], pool_size=pool,
                 strides=pool if strides is None else _pair(strides, "strides"),
                 padding=str(padding).lower())


def max_pool(inputs: TensorLike, pool_size: int | Sequence[int], strides: Any = None,
             padding: str = "valid", data_format: str | None = None) -> TensorLike:
    _channels_last(data_format)
    return _pool("max_pool2d", inputs, pool_size, strides, padding)


def average_pool(inputs: TensorLike, pool_size: int | Sequence[int], strides: Any = None,
                 padding: str = "valid", data_format: str | None = None) -> TensorLike:
    _channels_last(data_format)
    return _pool("avg_pool2d", inputs, pool_size, strides, padding)


# --- reductions and normalization -----------------------------------------------------------------
def _axes(axis: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if axis is None:
        return None
    return (int(axis),) if isinstance(axis, int | np.integer) else tuple(int(a) for a in axis)


def sum(x: TensorLike, axis: Any = None, keepdims: bool = False) -> TensorLike:  # noqa: A001
    return apply("sum", [x], axes=_axes(axis), keepdims=bool(keepdims))


def mean(x: TensorLike, axis: Any = None, keepdims: bool = False) -> TensorLike:
    return apply("mean", [x], axes=_axes(axis), keepdims=bool(keepdims))


def max(x: TensorLike, axis: Any = None, keepdims: bool = False) -> TensorLike:  # noqa: A001
    return apply("max", [x], axes=_axes(axis), keepdims=bool(keepdims))


def rsqrt(x: TensorLike) -> TensorLike:
    return divide(1.0, sqrt(x))


def moments(x: TensorLike, axes: Any, keepdims: bool = False) -> tuple[TensorLike, TensorLike]:
    """Mean and (biased) variance over `axes`."""
    mu = mean(x, axis=axes, keepdims=True)
    var = mean(square(subtract(x, mu)), axis=axes, keepdims=keepdims)
    return (mu if keepdims else mean(x, axis=axes)), var


def layer_normalization(x: TensorLike, gamma: TensorLike = None, beta: TensorLike = None,
                        axis: int | Sequence[int] = -1, epsilon: float = 1e-3,
                        rms_scaling: bool = False) -> TensorLike:
    """(x - mean) / sqrt(var + eps) * gamma + beta over `axis` (gamma/beta shaped like those axes);
    with `rms_scaling` (Keras's deprecated form) x / sqrt(var + eps) * gamma."""
    rank = len(x.shape)
    axes = sorted({a % rank for a in ((axis,) if isinstance(axis, int | np.integer) else axis)})
    shape = tuple(x.shape[i] if i in axes else 1 for i in range(rank))

    def broadcast(v: TensorLike) -> TensorLike:
        return v if tuple(v.shape) == shape[-len(v.shape):] and axes[0] == rank - len(v.shape) \
            else reshape(v, shape)

    mu = mean(x, axis=axes, keepdims=True)
    centered = subtract(x, mu)
    inv = rsqrt(add(mean(square(centered), axis=axes, keepdims=True), float(epsilon)))
    out = multiply(x if rms_scaling else centered, inv)
    if gamma is not None:
        out = multiply(out, broadcast(gamma))
    if beta is not None and not rms_scaling:
        out = add(out, broadcast(beta))
    return out


def batch_normalization(x: TensorLike, mean: TensorLike, variance: TensorLike, axis: int,
                        offset: TensorLike = None, scale: TensorLike = None,
                        epsilon: float = 1e-3) -> TensorLike:
    """Inference-form batch norm with given statistics (Keras argument order)."""
    c = x.shape[axis]
    dtype = x.dtype
    scale = np.ones((c,), dtype) if scale is None else scale
    offset = np.zeros((c,), dtype) if offset is None else offset
    return apply("batchnorm", [x, scale, offset, mean, variance], axis=int(axis),
                 epsilon=float(epsilon))


def dropout(x: TensorLike, rate: float, key: TensorLike, salt: int = 0) -> TensorLike:
    """Training-time dropout with a counter-based mask drawn from `key` = uint32[2] (seed, step)."""
    return apply("dropout", [x, key], rate=float(rate), salt=int(salt))
