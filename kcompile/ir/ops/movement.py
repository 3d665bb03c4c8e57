"""Data movement: reshape, transpose, concat."""

from __future__ import annotations

import math

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import norm_axis, same_dtype


def _is_target_shape(shape: tuple) -> bool:
    return all(d is None or (isinstance(d, int) and d >= 0) for d in shape) and \
        sum(d is None for d in shape) <= 1


def _reshape_infer(x: TensorType, shape: tuple) -> TensorType:
    """`shape` is fully resolved (no -1); `None` marks where the batch dim goes."""
    if (None in shape) != (None in x.shape):
        raise ValueError(f"reshape: cannot reshape {format_shape(x.shape)} to "
                         f"{format_shape(shape)}: the batch dim must be kept")
    if x.shape.count(None) > 1:
        raise ValueError(f"reshape: input {format_shape(x.shape)} has more than one batch dim")
    known_in = math.prod(d for d in x.shape if d is not None)
    known_out = math.prod(d for d in shape if d is not None)
    if known_in != known_out:
        raise ValueError(f"reshape: cannot reshape {format_shape(x.shape)} to "
                         f"{format_shape(shape)}: sizes differ")
    return TensorType(shape, x.dtype)


def _reshape_ref(x: np.ndarray, shape: tuple) -> np.ndarray:
    return np.reshape(x, tuple(-1 if d is None else d for d in shape))


defop("reshape", attrs={"shape": Attr(tuple, check=_is_target_shape,
                                      help="ints >= 0 and at most one None (the batch dim)")},
      infer=_reshape_infer, ref=_reshape_ref, num_inputs=1,
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
      ref=lambda x, perm: np.transpose(x, perm), num_inputs=1, doc="Permute axes.")


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


defop("concat", attrs={"axis": Attr(int)}, infer=_concat_infer,
      ref=lambda *xs, axis: np.concatenate(xs, axis=axis), doc="Join along an axis.")
