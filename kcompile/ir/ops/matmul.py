"""Matrix multiplication."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import broadcast_shapes, require_float, same_dtype


def _operand_dims(t: TensorType, transposed: bool) -> tuple:
    """(rows, cols) of the logical operand: the last two dims, swapped when transposed."""
    r, c = t.shape[-2], t.shape[-1]
    return (c, r) if transposed else (r, c)


def _matmul_infer(a: TensorType, b: TensorType, transpose_a: bool = False,
                  transpose_b: bool = False) -> TensorType:
    dtype = same_dtype("matmul", a, b)
    require_float("matmul", a)
    if a.rank < 2 or b.rank < 2:
        raise ValueError(f"matmul: both operands need rank >= 2, got {format_shape(a.shape)} "
                         f"and {format_shape(b.shape)}")
    m, k_a = _operand_dims(a, transpose_a)
    k_b, n = _operand_dims(b, transpose_b)
    if k_a != k_b:  # (both None: a contraction over the batch, as in a weight gradient)
        raise ValueError(f"matmul: contraction dims differ: {format_shape(a.shape)}"
                         f"{'^T' if transpose_a else ''} @ {format_shape(b.shape)}"
                         f"{'^T' if transpose_b else ''}")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return TensorType((*batch, m, n), dtype)


def _matmul_ref(a: np.ndarray, b: np.ndarray, transpose_a: bool = False,
                transpose_b: bool = False) -> np.ndarray:
    if transpose_a:
        a = np.swapaxes(a, -1, -2)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def _matmul_vjp(e, inputs, out, g, transpose_a, transpose_b):
    """With C = A @ B: dA = g @ B^T and dB = A^T @ g (operands' own transposes folded into the
    flags, so no transpose is materialised), summed over broadcast batch dims."""
    a, b = inputs
    if transpose_a:  # A stored as A^T: d(stored) = B @ g^T
        ga = e.op("matmul", b, g, transpose_a=transpose_b, transpose_b=True)
    else:
        ga = e.op("matmul", g, b, transpose_b=not transpose_b)
    if transpose_b:  # B stored as B^T: d(stored) = g^T @ A
        gb = e.op("matmul", g, a, transpose_a=True, transpose_b=transpose_a)
    else:
        gb = e.op("matmul", a, g, transpose_a=not transpose_a)
    return [e.unbroadcast(ga, a.type), e.unbroadcast(gb, b.type)]


def _matmul_onnx(ctx, inputs, outputs, transpose_a, transpose_b):
    """Gemm (transposes as flags) for two matrices; MatMul after explicit transposes otherwise
    (folded into the weights at export when the operand is one)."""
    a, b = inputs
    rank_a, rank_b = ctx.type(a).rank, ctx.type(b).rank
    if rank_a == 2 and rank_b == 2:
        ctx.node("Gemm", [a, b], outputs, transA=int(transpose_a) or None,
                 transB=int(transpose_b) or None)
        return

    def swap_last(x, rank):
        return ctx.transpose(x, (*range(rank - 2), rank - 1, rank - 2), hint=f"{x}_T")

    ctx.node("MatMul", [swap_last(a, rank_a) if transpose_a else a,
                        swap_last(b, rank_b) if transpose_b else b], outputs)


defop("matmul", attrs={"transpose_a": Attr(bool, False), "transpose_b": Attr(bool, False)},
      infer=_matmul_infer, ref=_matmul_ref, vjp=_matmul_vjp, onnx=_matmul_onnx, num_inputs=2,
      doc="NumPy matmul for rank >= 2: (..., M, K) @ (..., K, N), either operand optionally "
          "transposed in its last two axes; Dense is (N, K) @ (K, units).")


def _outer_sum_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype("outer_sum", a, b)
    require_float("outer_sum", a)
    if a.rank < 2 or a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"outer_sum: operands need rank >= 2 and equal leading dims, got "
                         f"{format_shape(a.shape)} and {format_shape(b.shape)}")
    if None in (a.shape[-1], b.shape[-1]):
        raise ValueError("outer_sum: the last dims must be known")
    return TensorType((a.shape[-1], b.shape[-1]), dtype)


def _outer_sum_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _outer_sum_vjp(e, inputs, out, g):
    a, b = inputs
    return [e.op("matmul", b, g, transpose_b=True), e.op("matmul", a, g)]


def _outer_sum_onnx(ctx, inputs, outputs):
    a, b = (ctx.node("Reshape", [v, ctx.ints([-1, ctx.type(v).shape[-1]])]) for v in inputs)
    ctx.node("Gemm", [a, b], outputs, transA=1)


defop("outer_sum", infer=_outer_sum_infer, ref=_outer_sum_ref, vjp=_outer_sum_vjp, onnx=_outer_sum_onnx,
      num_inputs=2,
      doc="a^T b contracting every leading dim: (..., P), (..., Q) -> (P, Q). A weight gradient over "
          "batch and time (recurrent layers): the IR's one symbolic dim cannot flatten (N, T) to rows.")
