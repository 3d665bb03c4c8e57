"""2-D max and average pooling over NHWC tensors."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import is_pair, require_float, require_rank
from kcompile.ir.ops.conv import (
    PADDINGS,
    onnx_pads,
    output_size,
    spatial_pads,
    transposed_conv_output_padding,
    windows,
)


def _pool_infer(name: str):
    def infer(x: TensorType, pool_size: tuple, strides: tuple, padding: str) -> TensorType:
        require_rank(name, x, 4)
        require_float(name, x)
        n, h, w, c = x.shape
        if h is None or w is None:
            raise ValueError(f"{name}: spatial dims must be known, got {format_shape(x.shape)}")
        oh = output_size(h, pool_size[0], strides[0], 1, padding)
        ow = output_size(w, pool_size[1], strides[1], 1, padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"{name}: pool {pool_size} does not fit input {format_shape(x.shape)} "
                             f"with padding '{padding}'")
        return TensorType((n, oh, ow, c), x.dtype)

    return infer


def _max_pool_ref(x: np.ndarray, pool_size: tuple, strides: tuple, padding: str) -> np.ndarray:
    pads = spatial_pads(x.shape[1:3], pool_size, strides, (1, 1), padding)
    return windows(x, pool_size, strides, (1, 1), pads, pad_value=-np.inf).max(axis=(4, 5))


def _avg_pool_ref(x: np.ndarray, pool_size: tuple, strides: tuple, padding: str) -> np.ndarray:
    """Padding does not count towards the average (Keras/TF 'same' semantics)."""
    pads = spatial_pads(x.shape[1:3], pool_size, strides, (1, 1), padding)
    total = windows(x, pool_size, strides, (1, 1), pads).sum(axis=(4, 5))
    ones = np.ones((1, *x.shape[1:3], 1), x.dtype)
    count = windows(ones, pool_size, strides, (1, 1), pads).sum(axis=(4, 5))
    return (total / count).astype(x.dtype, copy=False)


_POOL_ATTRS = {
    "pool_size": Attr(tuple, check=is_pair, help="two positive ints"),
    "strides": Attr(tuple, check=is_pair, help="two positive ints"),
    "padding": Attr(str, "valid", lambda p: p in PADDINGS, "'valid' or 'same'"),
}

def _max_pool_vjp(e, inputs, out, g, pool_size, strides, padding):
    return [e.op("max_pool2d_grad", inputs[0], g, pool_size=pool_size, strides=strides,
                 padding=padding)]


def _avg_pool_vjp(e, inputs, out, g, pool_size, strides, padding):
    return [e.op("avg_pool2d_grad", g, input_hw=tuple(inputs[0].shape[1:3]), pool_size=pool_size,
                 strides=strides, padding=padding)]


def _pool_onnx(op_type: str):
    """MaxPool pads never win; AveragePool with count_include_pad=0 averages in-bounds pixels only,
    as Keras's 'same'."""
    extra = {"count_include_pad": 0} if op_type == "AveragePool" else {}

    def rule(ctx, inputs, outputs, pool_size, strides, padding):
        x = inputs[0]
        y = ctx.node(op_type, [ctx.to_nchw(x)], kernel_shape=list(pool_size), strides=list(strides),
                     pads=onnx_pads(ctx.type(x).shape[1:3], pool_size, strides, (1, 1), padding),
                     **extra)
        ctx.from_nchw(y, outputs[0])

    return rule


defop("max_pool2d", attrs=_POOL_ATTRS, infer=_pool_infer("max_pool2d"), ref=_max_pool_ref,
      vjp=_max_pool_vjp, onnx=_pool_onnx("MaxPool"), num_inputs=1,
      doc="Window max; 'same' pads with -inf so padding never wins.")
defop("avg_pool2d", attrs=_POOL_ATTRS, infer=_pool_infer("avg_pool2d"), ref=_avg_pool_ref,
      vjp=_avg_pool_vjp, onnx=_pool_onnx("AveragePool"), num_inputs=1,
      doc="Window mean over the in-bounds elements only.")


def _max_pool_grad_ref(x: np.ndarray, dy: np.ndarray, pool_size: tuple, strides: tuple,
                       padding: str) -> np.ndarray:
    """Each output's gradient goes to the first maximum of its window (row-major), as TF/JAX."""
    pads = spatial_pads(x.shape[1:3], pool_size, strides, (1, 1), padding)
    v = windows(x, pool_size, strides, (1, 1), pads, pad_value=-np.inf)  # n, oh, ow, c, ph, pw
    n, oh, ow, c, ph, pw = v.shape
    arg = v.reshape(n, oh, ow, c, ph * pw).argmax(axis=-1)
    (pt, _), (pl, _) = pads
    rows = np.arange(oh)[None, :, None, None] * strides[0] + arg // pw - pt
    cols = np.arange(ow)[None, None, :, None] * strides[1] + arg % pw - pl
    dx = np.zeros(x.shape, np.float64)
    nn = np.broadcast_to(np.arange(n)[:, None, None, None], arg.shape)
    cc = np.broadcast_to(np.arange(c)[None, None, None, :], arg.shape)
    np.add.at(dx, (nn, rows, cols, cc), dy)
    return dx.astype(x.dtype)


def _pool_grad_infer(name: str):
    def infer(x: TensorType, dy: TensorType, pool_size, strides, padding) -> TensorType:
        if _pool_infer(name)(x, pool_size, strides, padding).shape != dy.shape:
            raise ValueError(f"{name}: dy {format_shape(dy.shape)} is not the pooled shape of "
                             f"{format_shape(x.shape)}")
        return x

    return infer


def _second_order(name: str):
    def vjp(e, inputs, out, g, **attrs):
        raise NotImplementedError(f"op {name!r} has no gradient (second derivatives of pooling are "
                                  "not supported)")

    return vjp


def _max_pool_grad_onnx(ctx, inputs, outputs, pool_size, strides, padding):
    """MaxPool's second output is, per window, the flat NCHW index (batch and channel offsets
    included, in the unpadded input) of its first maximum in row-major order -- onnxruntime scans
    with a strict `>`, as the ref's argmax; ScatterElements(reduction="add") sums dy there onto zeros
    of x's flat size (overlapping windows may pick the same element)."""
    x, dy = inputs
    x_nchw = ctx.to_nchw(x)
    _, idx = ctx.node("MaxPool", [x_nchw], 2, kernel_shape=list(pool_size), strides=list(strides),
                      pads=onnx_pads(ctx.type(x).shape[1:3], pool_size, strides, (1, 1), padding))
    flat = ctx.ints([-1])
    zeros = ctx.node("Expand", [ctx.scalar(0.0, x), ctx.node("Shape", [ctx.node("Reshape",
                                                                                 [x_nchw, flat])])])
    dx = ctx.node("ScatterElements", [zeros, ctx.node("Reshape", [idx, flat]),
                                      ctx.node("Reshape", [ctx.to_nchw(dy), flat])],
                  axis=0, reduction="add")
    ctx.from_nchw(ctx.node("Reshape", [dx, ctx.node("Shape", [x_nchw])]), outputs[0])


defop("max_pool2d_grad", attrs=_POOL_ATTRS, infer=_pool_grad_infer("max_pool2d_grad"),
      ref=_max_pool_grad_ref, vjp=_second_order("max_pool2d_grad"), onnx=_max_pool_grad_onnx,
      num_inputs=2,
      doc="Gradient of max_pool2d: dy routed to each window's first maximum.")


def _avg_pool_grad_infer(dy: TensorType, input_hw: tuple, pool_size, strides, padding) -> TensorType:
    require_rank("avg_pool2d_grad", dy, 4)
    x = TensorType((dy.shape[0], *input_hw, dy.shape[3]), dy.dtype)
    if _pool_infer("avg_pool2d_grad")(x, pool_size, strides, padding).shape != dy.shape:
        raise ValueError(f"avg_pool2d_grad: dy {format_shape(dy.shape)} is not the pooled shape of "
                         f"{format_shape(x.shape)}")
    return x


def _avg_pool_grad_ref(dy: np.ndarray, input_hw: tuple, pool_size: tuple, strides: tuple,
                       padding: str) -> np.ndarray:
    n, oh, ow, c = dy.shape
    (pt, pb), (pl, pr) = spatial_pads(input_hw, pool_size, strides, (1, 1), padding)
    ones = np.ones((1, *input_hw, 1), np.float64)
    count = windows(ones, pool_size, strides, (1, 1), ((pt, pb), (pl, pr))).sum(axis=(4, 5))
    share = dy / count
    dxp = np.zeros((n, input_hw[0] + pt + pb, input_hw[1] + pl + pr, c), np.float64)
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            dxp[:, i:i + (oh - 1) * strides[0] + 1:strides[0],
                j:j + (ow - 1) * strides[1] + 1:strides[1], :] += share
    return dxp[:, pt:pt + input_hw[0], pl:pl + input_hw[1], :].astype(dy.dtype)


def _avg_pool_grad_onnx(ctx, inputs, outputs, input_hw, pool_size, strides, padding):
    """dy divided by each window's in-bounds count (static: computed here as a constant), then
    spread over the window by a depthwise ConvTranspose with a ones kernel (C, 1, ph, pw); the pads
    and `output_padding` of conv2d_input_grad make the result exactly `input_hw`."""
    (dy,) = inputs
    t = ctx.type(dy)
    c, out_hw = t.shape[3], t.shape[1:3]
    pads = onnx_pads(input_hw, pool_size, strides, (1, 1), padding)
    ones = np.ones((1, *input_hw, 1))
    count = windows(ones, pool_size, strides, (1, 1), spatial_pads(input_hw, pool_size, strides,
                                                                   (1, 1), padding))
    count = count.sum(axis=(4, 5)).reshape(1, 1, *out_hw)  # (1, 1, OH, OW): NCHW broadcast
    share = ctx.node("Div", [ctx.to_nchw(dy), ctx.const(count, t.dtype, hint="pool_count")])
    extra = transposed_conv_output_padding(input_hw, pool_size, strides, (1, 1), pads, out_hw)
    dx = ctx.node("ConvTranspose", [share, ctx.const(np.ones((c, 1, *pool_size)), t.dtype,
                                                     hint="pool_ones")],
                  kernel_shape=list(pool_size), strides=list(strides), pads=pads, group=c,
                  output_padding=extra if any(extra) else None)
    ctx.from_nchw(dx, outputs[0])


defop("avg_pool2d_grad", attrs={"input_hw": Attr(tuple, check=is_pair), **_POOL_ATTRS},
      infer=_avg_pool_grad_infer, ref=_avg_pool_grad_ref, vjp=_second_order("avg_pool2d_grad"),
      onnx=_avg_pool_grad_onnx, num_inputs=1,
      doc="Gradient of avg_pool2d: each output's gradient shared by its in-bounds window elements.")
