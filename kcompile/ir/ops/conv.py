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


defop("conv2d",
      attrs={"strides": Attr(tuple, (1, 1), is_pair, "two positive ints"),
             "padding": Attr(str, "valid", lambda p: p in PADDINGS, "'valid' or 'same'"),
             "dilation": Attr(tuple, (1, 1), is_pair, "two positive ints")},
      infer=_conv2d_infer, ref=_conv2d_ref, num_inputs=2,
      doc="Cross-correlation of NHWC x with an HWIO kernel; bias is a separate bias_add.")
