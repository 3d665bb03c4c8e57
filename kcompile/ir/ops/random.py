"""Counter-based randomness and Dropout.

Random numbers are a pure function of (key, salt, element index), built from 32-bit integer hashing
(multiply, xor, shift; all wrapping uint32), so every executor (NumPy, LLVM, ONNX with uint32
Mul/BitShift/BitwiseXor) can compute bit-identical values and eager, compiled and exported training
draw the same Dropout masks. `key` is a uint32[2] tensor (seed, step) fed to the graph.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import require_float

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)


def hash32(x: np.ndarray) -> np.ndarray:
    """A well-mixed 32-bit integer hash (two multiply-xorshift rounds), wrapping arithmetic."""
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):  # wrapping multiplication is the point
        x = x ^ (x >> np.uint32(16))
        x = x * _M1
        x = x ^ (x >> np.uint32(15))
        x = x * _M2
        return x ^ (x >> np.uint32(16))


def uniform_bits(key: np.ndarray, salt: int, count: int) -> np.ndarray:
    """uint32 random bits for elements 0..count-1."""
    key = np.asarray(key, dtype=np.uint32).reshape(2)
    with np.errstate(over="ignore"):
        # the seed is hashed before the salt joins it: (seed ^ salt) would make seed 1 / salt 0
        # and seed 0 / salt 1 the same stream
        stream = hash32(hash32(hash32(key[0]) ^ np.uint32(salt)) + key[1] * _GOLDEN)
    idx = np.arange(count, dtype=np.uint32)
    return hash32(idx ^ stream)


def uniform(key: np.ndarray, salt: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform float32 in [0, 1) with 24 random bits, so float32 represents each value exactly."""
    bits = uniform_bits(key, salt, int(np.prod(shape, dtype=np.int64)))
    return ((bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)


def _key_check(key: TensorType) -> None:
    if key.shape != (2,) or key.dtype != "uint32":
        raise ValueError(f"random key must be uint32[2], got {key.dtype}{format_shape(key.shape)}")


def _dropout_infer(x: TensorType, key: TensorType, rate: float, salt: int) -> TensorType:
    require_float("dropout", x)
    _key_check(key)
    return x


def _dropout_ref(x: np.ndarray, key: np.ndarray, rate: float, salt: int) -> np.ndarray:
    keep = uniform(key, salt, x.shape) >= np.float32(rate)
    scale = np.asarray(1.0 / (1.0 - rate), dtype=x.dtype)
    return np.where(keep, x * scale, np.zeros((), x.dtype)).astype(x.dtype, copy=False)


def _hash32_onnx(ctx, x: str) -> str:
    """`hash32` on a uint32 tensor in ONNX ops: Mul wraps modulo 2^32 as NumPy's does."""

    def xorshift(v: str, k: int) -> str:
        shifted = ctx.node("BitShift", [v, ctx.const(np.uint32(k), hint="u32")], direction="RIGHT")
        return ctx.node("BitwiseXor", [v, shifted])

    x = ctx.node("Mul", [xorshift(x, 16), ctx.const(_M1, hint="hash_m1")])
    x = ctx.node("Mul", [xorshift(x, 15), ctx.const(_M2, hint="hash_m2")])
    return xorshift(x, 16)


def _dropout_onnx(ctx, inputs, outputs, rate, salt):
    """The ref's mask, bit for bit: the stream from the key (a few scalar ops), then hash32 of each
    element's flat row-major index in the IR's layout xor the stream. `u >= rate` is tested as
    `bits >> 8 >= float32(rate) * 2^24` (both sides exact in float32, so the same comparison). On an
    NCHW twin the index tensor is built in NHWC order and transposed, so the twin is masked like the
    NHWC tensor and the result stays NCHW for the next conv."""
    if ctx.opset < 18:
        raise NotImplementedError(f"dropout needs opset >= 18 (BitwiseXor) for its random mask; "
                                  f"export with opset_version >= 18 (got {ctx.opset})")
    x, key = inputs

    def u32(value: int) -> str:
        return ctx.const(np.uint32(value), hint="u32")

    def gather(name: str, index: int) -> str:
        return ctx.node("Gather", [name, ctx.const(np.int64(index), hint="index")], axis=0)

    hashed_seed = ctx.node("BitwiseXor", [_hash32_onnx(ctx, gather(key, 0)), u32(salt)])
    step = ctx.node("Mul", [gather(key, 1), ctx.const(_GOLDEN, hint="golden")])
    stream = _hash32_onnx(ctx, ctx.node("Add", [_hash32_onnx(ctx, hashed_seed), step]))

    twin = ctx.nchw(x) if ctx.type(x).rank == 4 else None
    src = twin or x
    count = ctx.node("Size", [src])
    idx = ctx.cast(ctx.node("Range", [ctx.const(np.int64(0), hint="zero"), count,
                                      ctx.const(np.int64(1), hint="one")]), np.uint32)
    if twin is not None:
        nhwc_shape = ctx.node("Gather", [ctx.node("Shape", [twin]), ctx.ints(ctx.TO_NHWC)], axis=0)
        idx = ctx.transpose(ctx.node("Reshape", [idx, nhwc_shape]), ctx.TO_NCHW)
    else:
        idx = ctx.node("Reshape", [idx, ctx.node("Shape", [x])])
    bits = _hash32_onnx(ctx, ctx.node("BitwiseXor", [idx, stream]))
    top24 = ctx.cast(ctx.node("BitShift", [bits, u32(8)], direction="RIGHT"), np.float32)
    threshold = ctx.const(np.float32(rate) * np.float32(2.0**24), hint="keep_threshold")
    keep = ctx.node("GreaterOrEqual", [top24, threshold])
    scaled = ctx.node("Mul", [src, ctx.scalar(1.0 / (1.0 - rate), x)])
    if twin is None:
        ctx.node("Where", [keep, scaled, ctx.scalar(0.0, x)], outputs)
    else:
        ctx.from_nchw(ctx.node("Where", [keep, scaled, ctx.scalar(0.0, x)]), outputs[0])


defop("dropout",
      attrs={"rate": Attr(float, check=lambda r: 0.0 <= r < 1.0, help="0 <= rate < 1"),
             "salt": Attr(int, 0, lambda s: 0 <= s < 2**32, help="uint32")},
      infer=_dropout_infer, ref=_dropout_ref, onnx=_dropout_onnx, num_inputs=2,
      vjp=lambda e, inputs, out, g, rate, salt: [e.op("dropout", g, inputs[1], rate=rate, salt=salt),
                                                 None],
      doc="Training-time dropout: zero where uniform(key, salt, i) < rate, scale the rest by "
          "1/(1-rate). Inference graphs never contain it (the layer is the identity there).")
