"""Merge layers: Add, Concatenate."""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile import ops
from kcompile.ir.core import format_shape
from kcompile.layers.base import Layer, float_mask


class _Merge(Layer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """Keras: the union (OR) of the inputs' masks, or no mask when any input has none."""
        if mask is None:
            return None
        if not isinstance(mask, list | tuple) or len(mask) != len(self._inputs(inputs)):
            raise ValueError(f"Layer '{self.name}': `mask` should be a list of one mask per input. "
                             f"Received: mask={mask!r:.80}")
        if any(m is None for m in mask):
            return None
        out = float_mask(mask[0])
        for m in mask[1:]:
            out = ops.maximum(out, float_mask(m))
        return out

    def build(self, input_shape: Any) -> None:
        if not isinstance(input_shape, list | tuple) or not input_shape or \
                not isinstance(input_shape[0], list | tuple):
            raise ValueError(f"A merge layer should be called on a list of inputs. Layer "
                             f"'{self.name}' received input shape {input_shape!r}")
        self.built = True

    def _inputs(self, inputs: Any) -> list[Any]:
        if not isinstance(inputs, list | tuple):
            raise ValueError(f"A merge layer should be called on a list of inputs. Layer "
                             f"'{self.name}' received {type(inputs).__name__}")
        return list(inputs)


class Add(_Merge):
    """Elementwise sum of a list of tensors (broadcasting size-1 dims, as Keras)."""

    def call(self, inputs: Any) -> Any:
        xs = self._inputs(inputs)
        out = xs[0]
        for x in xs[1:]:
            try:
                out = ops.add(out, x)
            except ValueError:
                raise ValueError("Inputs have incompatible shapes. Received shapes "
                                 + " and ".join(format_shape(t.shape) for t in xs)) from None
        return out


class Concatenate(_Merge):
    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, inputs: Any) -> Any:
        xs = self._inputs(inputs)
        try:
            return ops.concatenate(xs, axis=self.axis)
        except ValueError:
            raise ValueError("A `Concatenate` layer requires inputs with matching shapes except "
                             f"for the concatenation axis ({self.axis}). Received: input_shape="
                             + str([format_shape(t.shape) for t in xs])) from None

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """Keras: the masks (all ones for an input without one) broadcast over each input's last
        axis, concatenated like the inputs, then any() over the last axis."""
        if mask is None:
            return None
        xs = self._inputs(inputs)
        if not isinstance(mask, list | tuple) or len(mask) != len(xs):
            raise ValueError(f"Layer '{self.name}': `mask` should be a list of one mask per input. "
                             f"Received: mask={mask!r:.80}")
        if all(m is None for m in mask):
            return None
        full = []
        for x, m in zip(xs, mask, strict=True):
            if m is None:
                m = np.ones((1,) * len(x.shape), "float32")
            else:
                m = float_mask(m)
                if len(m.shape) < len(x.shape):
                    m = ops.reshape(m, tuple(-1 if d is None else d for d in (*m.shape, 1)))
            full.append(ops.apply("broadcast_like", [m, x]))
        return ops.max(ops.concatenate(full, axis=self.axis), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}
