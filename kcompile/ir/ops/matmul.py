"""Matrix multiplication."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import defop
from kcompile.ir.ops._util import broadcast_shapes, require_float, same_dtype


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype("matmul", a, b)
    require_float("matmul", a)
    if a.rank < 2 or b.rank < 2:
        raise ValueError(f"matmul: both operands need rank >= 2, got {format_shape(a.shape)} "
                         f"and {format_shape(b.shape)}")
    k_a, k_b = a.shape[-1], b.shape[-2]
    if k_a != k_b or k_a is None:
        raise ValueError(f"matmul: contraction dims differ: {format_shape(a.shape)} @ "
                         f"{format_shape(b.shape)}")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return TensorType((*batch, a.shape[-2], b.shape[-1]), dtype)


def _matmul_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a, b)


defop("matmul", infer=_matmul_infer, ref=_matmul_ref, num_inputs=2,
      doc="NumPy matmul for rank >= 2: (..., M, K) @ (..., K, N); Dense is (N, K) @ (K, units).")
