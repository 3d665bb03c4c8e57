"""Reductions (sum, mean, max) and softmax.

Global average/max pooling are `mean`/`max` over the spatial axes: one op family, one kernel family.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import norm_axes, norm_axis, require_float


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

defop("sum", attrs=_REDUCE_ATTRS, infer=_reduce_infer("sum"), ref=_reduce_ref(np.sum),
      num_inputs=1, doc="Sum over `axes` (all when None).", tags=("reduce",))
defop("mean", attrs=_REDUCE_ATTRS, infer=_reduce_infer("mean"), ref=_reduce_ref(np.mean),
      num_inputs=1, doc="Mean over `axes` (all when None).", tags=("reduce",))
defop("max", attrs=_REDUCE_ATTRS, infer=_reduce_infer("max"), ref=_reduce_ref(np.max),
      num_inputs=1, doc="Max over `axes` (all when None).", tags=("reduce",))


def _softmax_infer(x: TensorType, axis: int) -> TensorType:
    require_float("softmax", x)
    norm_axis("softmax", axis, x.rank)
    return x


def _softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


defop("softmax", attrs={"axis": Attr(int, -1)}, infer=_softmax_infer, ref=_softmax_ref,
      num_inputs=1, doc="exp(x - max) / sum; one op so backends can fuse the max/sum passes.")
