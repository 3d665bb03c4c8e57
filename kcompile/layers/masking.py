"""Masking: skip the timesteps whose features all equal `mask_value` (Keras 3's layer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile import ops
from kcompile.layers.base import Layer, set_keras_mask


def _keep(inputs: Any, mask_value: Any, keepdims: bool) -> Any:
    """1.0 where any feature (last axis) differs from `mask_value`, else 0.0, in the inputs' dtype."""
    return ops.max(_differs(inputs, mask_value), axis=-1, keepdims=keepdims)


def _differs(inputs: Any, mask_value: Any) -> Any:
    return ops.apply("compare", [inputs, mask_value], predicate="ne")


class Masking(Layer):
    """output = inputs * any(inputs != mask_value, axis=-1), and the output carries the mask
    any(inputs != mask_value, axis=-1) (1.0 = a real step), so downstream layers that support
    masking (recurrent layers, losses, metrics) skip the masked steps."""

    def __init__(self, mask_value: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(mask_value, dict) and mask_value.get("config") is not None:
            raise ValueError(f"Masking '{self.name}': a serialized tensor as mask_value is not "
                             "supported; give a number")
        if isinstance(mask_value, bool) or not isinstance(mask_value, int | float | np.number):
            raise ValueError(f"Masking '{self.name}': mask_value must be a number, got "
                             f"{mask_value!r}")
        self.mask_value = mask_value
        self.supports_masking = True
        self.built = True

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return _keep(inputs, self.mask_value, keepdims=False)

    def call(self, inputs: Any) -> Any:
        differs = _differs(inputs, self.mask_value)  # the (batch, steps) mask reduced directly: a
        # reshape of the kept dims cannot drop the last axis when the length is variable too
        outputs = ops.multiply(inputs, ops.max(differs, axis=-1, keepdims=True))
        set_keras_mask(outputs, ops.max(differs, axis=-1))
        return outputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mask_value": self.mask_value}
