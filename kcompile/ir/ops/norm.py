"""Batch normalization, inference form (moving statistics)."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import norm_axis, require_float, same_dtype


def _batchnorm_infer(x: TensorType, gamma: TensorType, beta: TensorType, mean: TensorType,
                     var: TensorType, axis: int, epsilon: float) -> TensorType:
    require_float("batchnorm", x)
    same_dtype("batchnorm", x, gamma, beta, mean, var)
    ax = norm_axis("batchnorm", axis, x.rank)
    c = x.shape[ax]
    for name, t in (("gamma", gamma), ("beta", beta), ("moving_mean", mean),
                    ("moving_variance", var)):
        if t.shape != (c,):
            raise ValueError(f"batchnorm: {name} has shape {format_shape(t.shape)}, expected ({c},)")
    return x


def _batchnorm_ref(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                   var: np.ndarray, axis: int, epsilon: float) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    inv = gamma / np.sqrt(var + np.asarray(epsilon, x.dtype))
    return ((x - mean.reshape(shape)) * inv.reshape(shape) + beta.reshape(shape)).astype(x.dtype)


def _batchnorm_vjp(e, inputs, out, g, axis, epsilon):
    """All five inputs get gradients: in training the mean and variance are batch statistics
    computed in the graph, and the gradient flows through them too."""
    x, gamma, beta, mean, var = inputs
    ax = axis % x.type.rank
    shape = [1] * x.type.rank
    shape[ax] = x.shape[ax]
    others = tuple(i for i in range(x.type.rank) if i != ax)

    def per_channel(v):
        return e.reshape(v, shape)

    inv_std = e.div(1.0, e.sqrt(e.add(var, epsilon)))
    centered = e.sub(x, per_channel(mean))
    gx = e.mul(g, per_channel(e.mul(gamma, inv_std)))
    g_beta = e.sum(g, others)
    g_gamma = e.sum(e.mul(g, e.mul(centered, per_channel(inv_std))), others)
    g_mean = e.neg(e.mul(g_beta, e.mul(gamma, inv_std)))
    g_var = e.mul(e.sum(e.mul(g, centered), others),
                  e.mul(e.mul(gamma, -0.5), e.mul(inv_std, e.square(inv_std))))
    return [gx, g_gamma, g_beta, g_mean, g_var]


def _batchnorm_onnx(ctx, inputs, outputs, axis, epsilon):
    """ONNX BatchNormalization (inference mode) wants channels on axis 1: NHWC rank-4 inputs go
    through their NCHW twin; other layouts are written as (x - mean) * gamma / sqrt(var + eps) + beta."""
    x, gamma, beta, mean, var = inputs
    t = ctx.type(x)
    ax = axis % t.rank
    if t.rank == 4 and ax == 3:
        y = ctx.node("BatchNormalization", [ctx.to_nchw(x), gamma, beta, mean, var], epsilon=epsilon)
        ctx.from_nchw(y, outputs[0])
        return
    if t.rank >= 2 and ax == 1:
        ctx.node("BatchNormalization", [x, gamma, beta, mean, var], outputs, epsilon=epsilon)
        return
    shape = [1] * t.rank
    shape[ax] = t.shape[ax]

    def per_channel(v):
        return ctx.node("Reshape", [v, ctx.ints(shape)])

    inv = ctx.node("Div", [gamma, ctx.node("Sqrt", [ctx.node("Add", [var, ctx.scalar(epsilon, x)])])])
    centered = ctx.node("Sub", [x, per_channel(mean)])
    ctx.node("Add", [ctx.node("Mul", [centered, per_channel(inv)]), per_channel(beta)], outputs)


defop("batchnorm",
      attrs={"axis": Attr(int, -1), "epsilon": Attr(float, 1e-3, lambda e: e >= 0, ">= 0")},
      infer=_batchnorm_infer, ref=_batchnorm_ref, vjp=_batchnorm_vjp, onnx=_batchnorm_onnx,
      num_inputs=5,
      doc="(x - mean) * gamma / sqrt(var + eps) + beta along `axis`; folded into conv/dense later.")
