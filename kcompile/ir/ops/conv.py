"""2-D convolution, NHWC activations and HWIO kernels (Keras's channels_last layout)."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import is_pair, require_float, require_rank, same_dtype

PADDINGS = ("valid", "same")


def output_size(size: int, window: int, stride: int, dilation: int, padding: str) -> int:
    """Output length along one spatial axis (Keras/TF rule)."""
    extent = (window - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    return max(0, (size - extent) // stride + 1)


def same_padding(size: int, window: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) for 'same': the odd pixel goes after (right/bottom), as in Keras."""
    extent = (window - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def spatial_pads(hw: tuple[int, int], window: tuple[int, int], strides: tuple[int, int],
                 dilation: tuple[int, int], padding: str) -> tuple[tuple[int, int], ...]:
    if padding == "valid":
        return ((0, 0), (0, 0))
    return tuple(same_padding(hw[i], window[i], strides[i], dilation[i]) for i in range(2))


def _conv2d_infer(x: TensorType, w: TensorType, strides: tuple, padding: str,
                  dilation: tuple) -> TensorType:
    require_rank("conv2d", x, 4)
    require_rank("conv2d", w, 4, "kernel (HWIO)")
    dtype = same_dtype("conv2d", x, w)
    require_float("conv2d", x)
    n, h, wd, c = x.shape
    kh, kw, ci, co = w.shape
    if h is None or wd is None or c is None:
        raise ValueError(f"conv2d: spatial and channel dims must be known, got {format_shape(x.shape)}")
    if ci != c:
        raise ValueError(f"conv2d: input has {c} channels but the kernel {format_shape(w.shape)} "
                         f"expects {ci}")
    oh = output_size(h, kh, strides[0], dilation[0], padding)
    ow = output_size(wd, kw, strides[1], dilation[1], padding)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"conv2d: kernel {kh}x{kw} (dilation {dilation}) does not fit input "
                         f"{format_shape(x.shape)} with padding '{padding}'")
    return TensorType((n, oh, ow, co), dtype)


def windows(x: np.ndarray, window: tuple[int, int], strides: tuple[int, int],
            dilation: tuple[int, int], pads: tuple[tuple[int, int], ...],
            pad_value: float = 0.0) -> np.ndarray:
    """A strided view (N, OH, OW, C, KH, KW) of the padded NHWC input: im2col without a copy."""
    (pt, pb), (pl, pr) = pads
    if pt or pb or pl or pr:
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    extent = tuple((window[i] - 1) * dilation[i] + 1 for i in range(2))
    v = np.lib.stride_tricks.sliding_window_view(x, extent, axis=(1, 2))
    return v[:, ::strides[0], ::strides[1], :, ::dilation[0], ::dilation[1]]


def _conv2d_ref(x: np.ndarray, w: np.ndarray, strides: tuple, padding: str,
                dilation: tuple) -> np.ndarray:
    kh, kw = w.shape[:2]
    pads = spatial_pads(x.shape[1:3], (kh, kw), strides, dilation, padding)
    v = windows(x, (kh, kw), strides, dilation, pads)
    out = np.tensordot(v, w, axes=([3, 4, 5], [2, 0, 1]))
    return out.astype(x.dtype, copy=False)


_CONV_ATTRS = {"strides": Attr(tuple, (1, 1), is_pair, "two positive ints"),
               "padding": Attr(str, "valid", lambda p: p in PADDINGS, "'valid' or 'same'"),
               "dilation": Attr(tuple, (1, 1), is_pair, "two positive ints")}


def _conv2d_vjp(e, inputs, out, g, strides, padding, dilation):
    """dX is a transposed convolution of g with the kernel, dW a correlation of x with g."""
    x, w = inputs
    attrs = {"strides": strides, "padding": padding, "dilation": dilation}
    gx = e.op("conv2d_input_grad", g, w, input_hw=tuple(x.shape[1:3]), **attrs)
    gw = e.op("conv2d_filter_grad", x, g, kernel_hw=tuple(w.shape[:2]), **attrs)
    return [gx, gw]


def onnx_pads(hw: tuple[int, int], window: tuple[int, int], strides: tuple[int, int],
              dilation: tuple[int, int], padding: str) -> list[int]:
    """ONNX `pads` [top, left, bottom, right]: Keras's 'same' puts the odd pixel bottom/right."""
    (pt, pb), (pl, pr) = spatial_pads(hw, window, strides, dilation, padding)
    return [pt, pl, pb, pr]


def _conv2d_onnx(ctx, inputs, outputs, strides, padding, dilation):
    """Conv in NCHW with an OIHW kernel; the NHWC result is a transpose that the exporter drops
    when the next ops stay in NCHW (a run of convs transposes once at each end)."""
    x, w = inputs
    kh, kw = ctx.type(w).shape[:2]
    kernel = ctx.permuted(w, (3, 2, 0, 1), hint=f"{w}_oihw")
    y = ctx.node("Conv", [ctx.to_nchw(x), kernel], kernel_shape=[kh, kw], strides=list(strides),
                 dilations=list(dilation),
                 pads=onnx_pads(ctx.type(x).shape[1:3], (kh, kw), strides, dilation, padding))
    ctx.from_nchw(y, outputs[0])


defop("conv2d", attrs=_CONV_ATTRS, infer=_conv2d_infer, ref=_conv2d_ref, vjp=_conv2d_vjp,
      onnx=_conv2d_onnx, num_inputs=2,
      doc="Cross-correlation of NHWC x with an HWIO kernel; bias is a separate bias_add.")


def _no_vjp(name: str):
    def vjp(e, inputs, out, g, **attrs):
        raise NotImplementedError(f"op {name!r} has no gradient (second derivatives of conv2d "
                                  "are not supported)")

    return vjp


def _input_grad_infer(dy: TensorType, w: TensorType, input_hw: tuple, strides: tuple, padding: str,
                      dilation: tuple) -> TensorType:
    require_rank("conv2d_input_grad", dy, 4)
    require_rank("conv2d_input_grad", w, 4, "kernel (HWIO)")
    kh, kw, ci, co = w.shape
    if dy.shape[3] != co:
        raise ValueError(f"conv2d_input_grad: dy has {dy.shape[3]} channels, kernel {w.shape} "
                         f"produces {co}")
    expect = _conv2d_infer(TensorType((dy.shape[0], *input_hw, ci), dy.dtype), w, strides, padding,
                           dilation)
    if expect.shape != dy.shape:
        raise ValueError(f"conv2d_input_grad: dy {format_shape(dy.shape)} is not the output shape "
                         f"{format_shape(expect.shape)} of that convolution")
    return TensorType((dy.shape[0], *input_hw, ci), dy.dtype)


def _input_grad_ref(dy: np.ndarray, w: np.ndarray, input_hw: tuple, strides: tuple, padding: str,
                    dilation: tuple) -> np.ndarray:
    kh, kw, ci, _ = w.shape
    (pt, pb), (pl, pr) = spatial_pads(input_hw, (kh, kw), strides, dilation, padding)
    n, oh, ow, _ = dy.shape
    hp, wp = input_hw[0] + pt + pb, input_hw[1] + pl + pr
    dxp = np.zeros((n, hp, wp, ci), np.float64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            contrib = np.tensordot(dy, w[i, j], axes=([3], [1]))  # (n, oh, ow, ci)
            dxp[:, r0:r0 + (oh - 1) * strides[0] + 1:strides[0],
                c0:c0 + (ow - 1) * strides[1] + 1:strides[1], :] += contrib
    return dxp[:, pt:pt + input_hw[0], pl:pl + input_hw[1], :].astype(dy.dtype)


def transposed_conv_output_padding(hw: tuple[int, int], window: tuple[int, int],
                                   strides: tuple[int, int], dilation: tuple[int, int],
                                   pads: list[int], out_hw: tuple[int, int]) -> list[int]:
    """ConvTranspose's `output_padding` that makes the adjoint of a forward conv/pool exactly `hw`
    again: the rows/cols of the padded input that no forward window reached (always < stride)."""
    return [hw[i] + pads[i] + pads[i + 2] - ((out_hw[i] - 1) * strides[i]
                                             + (window[i] - 1) * dilation[i] + 1) for i in range(2)]


def _input_grad_onnx(ctx, inputs, outputs, input_hw, strides, padding, dilation):
    """ConvTranspose (NCHW) with the forward conv's OIHW kernel, strides, dilations and pads: the
    adjoint of Conv. `output_padding` restores the input rows/cols the forward windows left out, so
    the result is exactly `input_hw` (`output_shape` is avoided: it would recompute the pads)."""
    dy, w = inputs
    kh, kw = ctx.type(w).shape[:2]
    pads = onnx_pads(input_hw, (kh, kw), strides, dilation, padding)
    kernel = ctx.permuted(w, (3, 2, 0, 1), hint=f"{w}_oihw")  # (Co, Ci, kh, kw)
    extra = transposed_conv_output_padding(input_hw, (kh, kw), strides, dilation, pads,
                                           ctx.type(dy).shape[1:3])
    dx = ctx.node("ConvTranspose", [ctx.to_nchw(dy), kernel], kernel_shape=[kh, kw],
                  strides=list(strides), dilations=list(dilation), pads=pads,
                  output_padding=extra if any(extra) else None)
    ctx.from_nchw(dx, outputs[0])


defop("conv2d_input_grad", attrs={"input_hw": Attr(tuple, check=is_pair), **_CONV_ATTRS},
      infer=_input_grad_infer, ref=_input_grad_ref, vjp=_no_vjp("conv2d_input_grad"),
      onnx=_input_grad_onnx, num_inputs=2,
      doc="Gradient of conv2d w.r.t. its input: scatter dy through the kernel (a transposed conv).")


def _filter_grad_infer(x: TensorType, dy: TensorType, kernel_hw: tuple, strides: tuple,
                       padding: str, dilation: tuple) -> TensorType:
    require_rank("conv2d_filter_grad", x, 4)
    require_rank("conv2d_filter_grad", dy, 4)
    ci, co = x.shape[3], dy.shape[3]
    expect = _conv2d_infer(x, TensorType((*kernel_hw, ci, co), x.dtype), strides, padding, dilation)
    if expect.shape != dy.shape:
        raise ValueError(f"conv2d_filter_grad: dy {format_shape(dy.shape)} is not the output shape "
                         f"{format_shape(expect.shape)} of that convolution")
    return TensorType((*kernel_hw, ci, co), x.dtype)


def _filter_grad_ref(x: np.ndarray, dy: np.ndarray, kernel_hw: tuple, strides: tuple, padding: str,
                     dilation: tuple) -> np.ndarray:
    pads = spatial_pads(x.shape[1:3], kernel_hw, strides, dilation, padding)
    v = windows(x, kernel_hw, strides, dilation, pads)  # (n, oh, ow, ci, kh, kw)
    dw = np.tensordot(v, dy, axes=([0, 1, 2], [0, 1, 2]))  # (ci, kh, kw, co)
    return np.ascontiguousarray(np.transpose(dw, (1, 2, 0, 3))).astype(x.dtype)


def _filter_grad_onnx(ctx, inputs, outputs, kernel_hw, strides, padding, dilation):
    """dW[i, j] = xpad[:, i*d : ... : s, j*d : ... : s, :]^T dy over batch and pixels: per kernel
    position, a strided Slice of the (zero-padded) NHWC input flattened to (N*OH*OW, Ci) and one
    Gemm(transA) with dy as (N*OH*OW, Co); the (Ci, Co) blocks are concatenated in HWIO order.
    In onnxruntime this costs about one forward conv -- 1.5 to 3.5 times less than a single Conv
    with the batch as channels (x as (Ci, N, H, W), dy as the kernel), whose im2col GEMM is only
    kh*kw wide. Rows/cols that no forward window reached are simply never sliced."""
    x, dy = inputs
    h, wd, ci = ctx.type(x).shape[1:4]
    oh, ow, co = ctx.type(dy).shape[1:4]
    (pt, pb), (pl, pr) = spatial_pads((h, wd), kernel_hw, strides, dilation, padding)
    if pt or pb or pl or pr:
        x = ctx.node("Pad", [x, ctx.ints([0, pt, pl, 0, 0, pb, pr, 0])])
    dy_flat = ctx.node("Reshape", [dy, ctx.ints([-1, co])])
    axes, steps = ctx.ints([1, 2]), ctx.ints(strides)
    blocks = []
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            r, c = i * dilation[0], j * dilation[1]
            stop = [r + (oh - 1) * strides[0] + 1, c + (ow - 1) * strides[1] + 1]
            window = ctx.node("Slice", [x, ctx.ints([r, c]), ctx.ints(stop), axes, steps])
            blocks.append(ctx.node("Gemm", [ctx.node("Reshape", [window, ctx.ints([-1, ci])]),
                                            dy_flat], transA=1))
    dw = ctx.node("Concat", blocks, axis=0) if len(blocks) > 1 else blocks[0]
    ctx.node("Reshape", [dw, ctx.ints([*kernel_hw, ci, co])], outputs)


defop("conv2d_filter_grad", attrs={"kernel_hw": Attr(tuple, check=is_pair), **_CONV_ATTRS},
      infer=_filter_grad_infer, ref=_filter_grad_ref, vjp=_no_vjp("conv2d_filter_grad"),
      onnx=_filter_grad_onnx, num_inputs=2,
      doc="Gradient of conv2d w.r.t. its kernel: sum over batch and pixels of input windows times "
          "dy.")
