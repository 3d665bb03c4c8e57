"""2-D max and average pooling over NHWC tensors."""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import is_pair, require_float, require_rank
from kcompile.ir.ops.conv import PADDINGS, output_size, spatial_pads, windows


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

defop("max_pool2d", attrs=_POOL_ATTRS, infer=_pool_infer("max_pool2d"), ref=_max_pool_ref,
      num_inputs=1, doc="Window max; 'same' pads with -inf so padding never wins.")
defop("avg_pool2d", attrs=_POOL_ATTRS, infer=_pool_infer("avg_pool2d"), ref=_avg_pool_ref,
      num_inputs=1, doc="Window mean over the in-bounds elements only.")
