"""Elementwise ops: binary arithmetic with broadcasting, unary math and activations, comparisons,
casts, constants. Each with attrs, infer, ref and vjp (in IR ops, through `Emitter`)."""

from __future__ import annotations

import math

import numpy as np

from kcompile.ir.core import TensorType, canonical_dtype
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import (
    DTYPE_HELP,
    broadcast_shapes,
    is_dtype,
    require_float,
    require_rank,
    same_dtype,
)


def _onnx_pointwise(op_type: str):
    """The `onnx` rule of an op that is one ONNX elementwise node (NCHW when its input is)."""

    def rule(ctx, inputs, outputs, **_attrs):
        ctx.pointwise(lambda ins, out: ctx.node(op_type, ins, [out]), inputs, outputs[0])

    return rule


# --- binary arithmetic ----------------------------------------------------------------------------
def _binary_infer(name: str):
    def infer(a: TensorType, b: TensorType) -> TensorType:
        return TensorType(broadcast_shapes(name, a.shape, b.shape), same_dtype(name, a, b))

    return infer


def _add_vjp(e, inputs, out, g):
    a, b = inputs
    return [e.unbroadcast(g, a.type), e.unbroadcast(g, b.type)]


def _sub_vjp(e, inputs, out, g):
    a, b = inputs
    return [e.unbroadcast(g, a.type), e.unbroadcast(e.neg(g), b.type)]


def _mul_vjp(e, inputs, out, g):
    a, b = inputs
    return [e.unbroadcast(e.mul(g, b), a.type), e.unbroadcast(e.mul(g, a), b.type)]


def _div_vjp(e, inputs, out, g):
    a, b = inputs
    ga = e.div(g, b)
    return [e.unbroadcast(ga, a.type), e.unbroadcast(e.neg(e.mul(ga, out)), b.type)]


def _extremum_vjp(first_wins: str):
    """max/min: the gradient goes to the winner; ties split it in half (as JAX does)."""

    def vjp(e, inputs, out, g):
        a, b = inputs
        wa = e.add(e.compare(a, b, first_wins), e.mul(e.compare(a, b, "eq"), 0.5))
        wb = e.sub(1.0, wa)
        return [e.unbroadcast(e.mul(g, wa), a.type), e.unbroadcast(e.mul(g, wb), b.type)]

    return vjp


def _pow_vjp(e, inputs, out, g):
    a, b = inputs
    ga = e.mul(g, e.mul(b, e.pow(a, e.sub(b, 1.0))))
    safe_log = e.log(e.maximum(a, 1e-30))
    gb = e.mul(g, e.mul(out, safe_log))
    return [e.unbroadcast(ga, a.type), e.unbroadcast(gb, b.type)]


def _pow_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.power(a, b)


def _div_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        raise TypeError("div: integer division is not defined in the IR; cast to float first")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _float_binary_infer(name: str):
    def infer(a: TensorType, b: TensorType) -> TensorType:
        dtype = same_dtype(name, a, b)
        require_float(name, a)
        return TensorType(broadcast_shapes(name, a.shape, b.shape), dtype)

    return infer


_BINARY = {
    "add": (np.add, _binary_infer("add"), _add_vjp, "a + b with NumPy broadcasting."),
    "sub": (np.subtract, _binary_infer("sub"), _sub_vjp, "a - b with NumPy broadcasting."),
    "mul": (np.multiply, _binary_infer("mul"), _mul_vjp, "a * b with NumPy broadcasting."),
    "div": (_div_ref, _float_binary_infer("div"), _div_vjp, "a / b (float only)."),
    "maximum": (np.maximum, _binary_infer("maximum"), _extremum_vjp("gt"),
                "Elementwise max (NaN propagates); ReLU-like composites and clipping."),
    "minimum": (np.minimum, _binary_infer("minimum"), _extremum_vjp("lt"),
                "Elementwise min (NaN propagates); clipping."),
    "pow": (_pow_ref, _float_binary_infer("pow"), _pow_vjp,
            "a ** b (float); Adam's bias corrections beta ** step."),
}

_BINARY_ONNX = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "maximum": "Max",
                "minimum": "Min", "pow": "Pow"}

for _name, (_fn, _infer, _vjp, _doc) in _BINARY.items():
    defop(_name, infer=_infer, ref=_fn, vjp=_vjp, onnx=_onnx_pointwise(_BINARY_ONNX[_name]),
          num_inputs=2, doc=_doc, tags=("elementwise", "binary"))


_PREDICATES = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal,
               "eq": np.equal, "ne": np.not_equal}


def _compare_ref(a: np.ndarray, b: np.ndarray, predicate: str) -> np.ndarray:
    return _PREDICATES[predicate](a, b).astype(np.result_type(a, b) if a.dtype.kind == "f"
                                               else np.float32)


def _compare_infer(a: TensorType, b: TensorType, predicate: str) -> TensorType:
    dtype = same_dtype("compare", a, b)
    out = dtype if dtype.startswith("float") else "float32"
    return TensorType(broadcast_shapes("compare", a.shape, b.shape), out)


_ONNX_PREDICATES = {"gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual",
                    "eq": "Equal", "ne": "Equal"}


def _compare_onnx(ctx, inputs, outputs, predicate):
    dtype = ctx.type(outputs[0]).dtype

    def emit(ins, out):
        mask = ctx.node(_ONNX_PREDICATES[predicate], ins)
        ctx.cast(ctx.node("Not", [mask]) if predicate == "ne" else mask, dtype, out=out)

    ctx.pointwise(emit, inputs, outputs[0])


defop("compare", attrs={"predicate": Attr(str, check=lambda p: p in _PREDICATES,
                                          help="/".join(_PREDICATES))},
      infer=_compare_infer, ref=_compare_ref, vjp=lambda e, inputs, out, g, predicate: [None, None],
      onnx=_compare_onnx, num_inputs=2,
      doc="1.0 where `a <predicate> b` else 0.0 (float masks for gradients and metrics).",
      tags=("elementwise", "binary"))


def _bias_add_infer(x: TensorType, b: TensorType) -> TensorType:
    require_rank("bias_add", b, 1, "bias")
    if x.rank < 1 or x.shape[-1] != b.shape[0]:
        raise ValueError(f"bias_add: bias of length {b.shape[0]} does not match the last axis "
                         f"of input shape {x.shape}")
    same_dtype("bias_add", x, b)
    return x


def _bias_add_onnx(ctx, inputs, outputs):
    """Add; on an NCHW twin the bias is reshaped to (C, 1, 1) (folded at export for weights)."""
    x, b = inputs
    t = ctx.type(x)
    if t.rank == 4 and ctx.nchw(x):
        b_c11 = ctx.node("Reshape", [b, ctx.ints([t.shape[3], 1, 1])], [ctx.fresh(f"{b}_c11")])
        ctx.from_nchw(ctx.node("Add", [ctx.nchw(x), b_c11]), outputs[0])
    else:
        ctx.node("Add", [x, b], outputs)


defop("bias_add", infer=_bias_add_infer, ref=lambda x, b: x + b, vjp=_add_vjp, onnx=_bias_add_onnx,
      num_inputs=2,
      doc="x + b along the last (channel) axis; kept apart from `add` so GEMM/conv can fuse it.",
      tags=("elementwise",))


def _broadcast_like_infer(x: TensorType, like: TensorType) -> TensorType:
    shape = broadcast_shapes("broadcast_like", x.shape, like.shape)
    if shape != like.shape:
        raise ValueError(f"broadcast_like: {x.shape} does not broadcast to {like.shape}")
    return TensorType(like.shape, x.dtype)


def _broadcast_like_onnx(ctx, inputs, outputs):
    """Expand to the runtime shape of `like`, so the batch dim stays dynamic."""
    ctx.node("Expand", [inputs[0], ctx.node("Shape", [inputs[1]])], outputs)


defop("broadcast_like", infer=_broadcast_like_infer,
      ref=lambda x, like: np.ascontiguousarray(np.broadcast_to(x, like.shape)),
      vjp=lambda e, inputs, out, g: [e.unbroadcast(g, inputs[0].type), None],
      onnx=_broadcast_like_onnx, num_inputs=2,
      doc="x broadcast to the shape of `like` (whose values are not read): the adjoint of sum, "
          "with the symbolic batch dim taken from `like`.", tags=("elementwise", "binary"))


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


def _phi_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + _erf(x.astype(np.float64) / math.sqrt(2)).astype(np.float64))


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        c = math.sqrt(2 / math.pi)
        return (0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)
    return (x * _phi_cdf(x)).astype(x.dtype, copy=False)


def _gelu_grad(x: np.ndarray, approximate: bool) -> np.ndarray:
    """d gelu / dx."""
    x64 = x.astype(np.float64)
    if approximate:
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (x64 + 0.044715 * x64**3))
        d = 0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * c * (1 + 3 * 0.044715 * x64**2)
    else:
        d = _phi_cdf(x64) + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    return d.astype(x.dtype)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _sqrt(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


_UNARY = {
    "neg": (np.negative, lambda e, i, o, g: [e.neg(g)], "-x."),
    "abs": (np.abs, lambda e, i, o, g: [e.mul(g, e.sub(e.compare(i[0], 0.0, "gt"),
                                                       e.compare(i[0], 0.0, "lt")))], "|x|."),
    "relu": (lambda x: np.maximum(x, 0).astype(x.dtype, copy=False),
             lambda e, i, o, g: [e.mul(g, e.compare(i[0], 0.0, "gt"))], "max(x, 0)."),
    "sigmoid": (_sigmoid, lambda e, i, o, g: [e.mul(g, e.mul(o, e.sub(1.0, o)))],
                "1 / (1 + exp(-x)), evaluated without overflow."),
    "tanh": (np.tanh, lambda e, i, o, g: [e.mul(g, e.sub(1.0, e.square(o)))], "Hyperbolic tangent."),
    "exp": (_exp, lambda e, i, o, g: [e.mul(g, o)], "e ** x."),
    "log": (_log, lambda e, i, o, g: [e.div(g, i[0])],
            "Natural log; log(0) = -inf as in IEEE arithmetic."),
    "sqrt": (_sqrt, lambda e, i, o, g: [e.div(g, e.mul(o, 2.0))],
             "Square root (BatchNorm's variance term)."),
}

_UNARY_ONNX = {"neg": "Neg", "abs": "Abs", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
               "exp": "Exp", "log": "Log", "sqrt": "Sqrt"}

for _name, (_fn, _vjp, _doc) in _UNARY.items():
    defop(_name, infer=_float_unary_infer(_name), ref=_fn, vjp=_vjp,
          onnx=_onnx_pointwise(_UNARY_ONNX[_name]), num_inputs=1, doc=_doc,
          tags=("elementwise", "unary"))


def _gelu_vjp(e, inputs, out, g, approximate):
    return [e.mul(g, e.op("gelu_grad", inputs[0], approximate=approximate))]


def _gelu_onnx(ctx, inputs, outputs, approximate):
    """ONNX Gelu from opset 20; before, its exact (erf) or tanh formula in plain ops."""

    def emit(ins, out):
        (x,) = ins
        if ctx.opset >= 20:
            ctx.node("Gelu", [x], [out], approximate="tanh" if approximate else "none")
            return
        if approximate:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = ctx.node("Mul", [ctx.node("Mul", [x, x]), x])
            inner = ctx.node("Add", [x, ctx.node("Mul", [cube, ctx.scalar(0.044715, x)])])
            phi = ctx.node("Tanh", [ctx.node("Mul", [inner, ctx.scalar(math.sqrt(2 / math.pi), x)])])
        else:  # 0.5 x (1 + erf(x / sqrt(2)))
            phi = ctx.node("Erf", [ctx.node("Mul", [x, ctx.scalar(1 / math.sqrt(2), x)])])
        half_x = ctx.node("Mul", [x, ctx.scalar(0.5, x)])
        ctx.node("Mul", [half_x, ctx.node("Add", [phi, ctx.scalar(1.0, x)])], [out])

    ctx.pointwise(emit, inputs, outputs[0])


defop("gelu", attrs={"approximate": Attr(bool, False)}, infer=_float_unary_infer("gelu"),
      ref=_gelu, vjp=_gelu_vjp, onnx=_gelu_onnx, num_inputs=1,
      doc="Gaussian error linear unit; exact (erf) by default as in Keras, or the tanh form.",
      tags=("elementwise", "unary"))


def _no_second_order(name: str):
    def vjp(e, inputs, out, g, **attrs):
        raise NotImplementedError(f"op {name!r} has no gradient (second derivatives of gelu are "
                                  "not supported)")

    return vjp


def _gelu_grad_onnx(ctx, inputs, outputs, approximate):
    """The derivative in plain ops (the default domain has no Gelu gradient). Exact:
    Phi(x) + x phi(x). Tanh form, with 0.5 (1 + tanh(z)) = sigmoid(2 z) = s and 1 - tanh(z)^2 =
    4 s (1 - s): s + s (1 - s) x (2c + 6ac x^2), z = c (x + a x^3). The textbook 0.5 (1 + t) + ...
    loses every digit of 1 + t in float32 where t is near -1 (x < -4), and onnxruntime's Sigmoid is
    only accurate to ~1e-7 absolute, so s = 1 / (1 + exp(-2z)), accurate relative to its size."""

    def emit(ins, out):
        (x,) = ins
        sq = ctx.node("Mul", [x, x])

        def affine(v: str, scale: float, offset: float) -> str:  # scale v + offset
            return ctx.node("Add", [ctx.node("Mul", [v, ctx.scalar(scale, x)]), ctx.scalar(offset, x)])

        if approximate:
            c, a = math.sqrt(2 / math.pi), 0.044715
            neg_2z = ctx.node("Mul", [x, affine(sq, -2 * c * a, -2 * c)])
            s = ctx.node("Reciprocal", [ctx.node("Add", [ctx.node("Exp", [neg_2z]), ctx.scalar(1.0, x)])])
            ds = ctx.node("Mul", [s, ctx.node("Sub", [ctx.scalar(1.0, x), s])])
            slope = ctx.node("Mul", [x, affine(sq, 6 * a * c, 2 * c)])
            ctx.node("Add", [s, ctx.node("Mul", [ds, slope])], [out])
            return
        cdf = affine(ctx.node("Erf", [ctx.node("Mul", [x, ctx.scalar(1 / math.sqrt(2), x)])]), 0.5, 0.5)
        pdf = ctx.node("Exp", [ctx.node("Mul", [sq, ctx.scalar(-0.5, x)])])
        x_pdf = ctx.node("Mul", [x, ctx.node("Mul", [pdf, ctx.scalar(1 / math.sqrt(2 * math.pi), x)])])
        ctx.node("Add", [cdf, x_pdf], [out])

    ctx.pointwise(emit, inputs, outputs[0])


defop("gelu_grad", attrs={"approximate": Attr(bool, False)}, infer=_float_unary_infer("gelu_grad"),
      ref=_gelu_grad, vjp=_no_second_order("gelu_grad"), onnx=_gelu_grad_onnx, num_inputs=1,
      doc="The derivative of gelu, for its vjp.", tags=("elementwise", "unary"))


# --- casts and constants --------------------------------------------------------------------------
def _cast_infer(x: TensorType, dtype: str) -> TensorType:
    return TensorType(x.shape, canonical_dtype(dtype))


def _cast_vjp(e, inputs, out, g, dtype):
    x = inputs[0]
    if not x.dtype.startswith("float"):
        return [None]
    return [e.cast(g, x.dtype)]


def _cast_onnx(ctx, inputs, outputs, dtype):
    ctx.pointwise(lambda ins, out: ctx.cast(ins[0], dtype, out=out), inputs, outputs[0])


defop("cast", attrs={"dtype": Attr(str, check=is_dtype, help=DTYPE_HELP)}, infer=_cast_infer,
      ref=lambda x, dtype: x.astype(dtype), vjp=_cast_vjp, onnx=_cast_onnx, num_inputs=1,
      doc="Convert to another dtype.", tags=("elementwise", "unary"))


def _constant_infer(value: np.ndarray) -> TensorType:
    return TensorType(value.shape, value.dtype.name)


defop("constant", attrs={"value": Attr(np.ndarray)}, infer=_constant_infer,
      ref=lambda value: value, vjp=lambda e, inputs, out, g, value: [],
      onnx=lambda ctx, inputs, outputs, value: ctx.add_initializer(outputs[0], value), num_inputs=0,
      doc="A literal tensor, stored in the graph (folded into kernels by the compiler).")
