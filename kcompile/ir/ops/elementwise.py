"""Elementwise ops: binary arithmetic with broadcasting, unary math and activations, casts, constants."""

from __future__ import annotations

import math

import numpy as np

from kcompile.ir.core import TensorType, canonical_dtype
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import broadcast_shapes, require_float, require_rank, same_dtype


# --- binary arithmetic ----------------------------------------------------------------------------
def _binary(name: str, fn, doc: str) -> None:
    def infer(a: TensorType, b: TensorType) -> TensorType:
        return TensorType(broadcast_shapes(name, a.shape, b.shape), same_dtype(name, a, b))

    def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fn(a, b)

    defop(name, infer=infer, ref=ref, num_inputs=2, doc=doc, tags=("elementwise", "binary"))


_binary("add", np.add, "a + b with NumPy broadcasting.")
_binary("sub", np.subtract, "a - b with NumPy broadcasting.")
_binary("mul", np.multiply, "a * b with NumPy broadcasting.")
_binary("maximum", np.maximum, "Elementwise max; used by clipping and ReLU-like composites.")


def _div_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        raise TypeError("div: integer division is not defined in the IR; cast to float first")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _div_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype("div", a, b)
    require_float("div", a)
    return TensorType(broadcast_shapes("div", a.shape, b.shape), dtype)


defop("div", infer=_div_infer, ref=_div_ref, num_inputs=2, doc="a / b (float only).",
      tags=("elementwise", "binary"))


def _bias_add_infer(x: TensorType, b: TensorType) -> TensorType:
    require_rank("bias_add", b, 1, "bias")
    if x.rank < 1 or x.shape[-1] != b.shape[0]:
        raise ValueError(f"bias_add: bias of length {b.shape[0]} does not match the last axis "
                         f"of input shape {x.shape}")
    same_dtype("bias_add", x, b)
    return x


defop("bias_add", infer=_bias_add_infer, ref=lambda x, b: x + b, num_inputs=2,
      doc="x + b along the last (channel) axis; kept apart from `add` so GEMM/conv can fuse it.",
      tags=("elementwise",))


# --- unary math and activations -------------------------------------------------------------------
def _float_unary_infer(name: str):
    def infer(x: TensorType, **_attrs) -> TensorType:
        require_float(name, x)
        return x

    return infer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        c = math.sqrt(2 / math.pi)
        return (0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)
    erf = _erf(x.astype(np.float64) / math.sqrt(2)).astype(np.float64)
    return (0.5 * x * (1 + erf)).astype(x.dtype, copy=False)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _sqrt(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


_UNARY = {
    "neg": (np.negative, "-x."),
    "relu": (lambda x: np.maximum(x, 0).astype(x.dtype, copy=False), "max(x, 0)."),
    "sigmoid": (_sigmoid, "1 / (1 + exp(-x)), evaluated without overflow."),
    "tanh": (np.tanh, "Hyperbolic tangent."),
    "exp": (np.exp, "e ** x."),
    "log": (_log, "Natural log; log(0) = -inf as in IEEE arithmetic."),
    "sqrt": (_sqrt, "Square root (BatchNorm's variance term)."),
}

for _name, (_fn, _doc) in _UNARY.items():
    defop(_name, infer=_float_unary_infer(_name), ref=_fn, num_inputs=1, doc=_doc,
          tags=("elementwise", "unary"))

defop("gelu", attrs={"approximate": Attr(bool, False)}, infer=_float_unary_infer("gelu"),
      ref=_gelu, num_inputs=1,
      doc="Gaussian error linear unit; exact (erf) by default as in Keras, or the tanh form.",
      tags=("elementwise", "unary"))


# --- casts and constants --------------------------------------------------------------------------
def _cast_infer(x: TensorType, dtype: str) -> TensorType:
    return TensorType(x.shape, canonical_dtype(dtype))


defop("cast", attrs={"dtype": Attr(str)}, infer=_cast_infer,
      ref=lambda x, dtype: x.astype(dtype), num_inputs=1, doc="Convert to another dtype.",
      tags=("elementwise", "unary"))


def _constant_infer(value: np.ndarray) -> TensorType:
    return TensorType(value.shape, value.dtype.name)


defop("constant", attrs={"value": Attr(np.ndarray)}, infer=_constant_infer,
      ref=lambda value: value, num_inputs=0,
      doc="A literal tensor, stored in the graph (folded into kernels by the compiler).")
