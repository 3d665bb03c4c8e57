"""Core layers: Dense, Activation, Dropout, Flatten, Reshape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile import activations, initializers, ops, random_state
from kcompile.ir.core import format_shape
from kcompile.ir.ops.movement import resolve_target_shape
from kcompile.layers._args import unsupported
from kcompile.layers.base import InputSpec, Layer
from kcompile.tracing import current_builder


class Dense(Layer):
    """`activation(inputs @ kernel + bias)` on the last axis; kernel shape (input_dim, units)."""

    def __init__(self, units: int, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, lora_rank: int | None = None,
                 quantization_config: Any = None, **kwargs: Any) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(units, int | np.integer) or units <= 0:
            raise ValueError(f"Dense '{self.name}': units must be a positive int, got {units!r}")
        unsupported(f"Dense '{self.name}'", kernel_regularizer=kernel_regularizer,
                    bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                    bias_constraint=bias_constraint, lora_rank=lora_rank,
                    quantization_config=quantization_config)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.input_spec = InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) < 2:
            raise ValueError(f"Input 0 of layer '{self.name}' is incompatible with the layer: "
                             f"expected min_ndim=2, found ndim={len(input_shape)}. Full shape "
                             f"received: {format_shape(input_shape)}")
        if input_shape[-1] is None:
            raise ValueError(f"Dense '{self.name}': the last axis of the input must be known, got "
                             f"input shape {format_shape(input_shape)}")
        in_dim = input_shape[-1]
        self.kernel = self.add_weight((in_dim, self.units), self.kernel_initializer, name="kernel")
        self.bias = (self.add_weight((self.units,), self.bias_initializer, name="bias")
                     if self.use_bias else None)
        self.input_spec = InputSpec(min_ndim=2, axes={-1: in_dim})
        self.built = True

    def call(self, inputs: Any) -> Any:
        x = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            x = ops.bias_add(x, self.bias)
        return self.activation(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize_initializer(self.kernel_initializer),
                "bias_initializer": initializers.serialize_initializer(self.bias_initializer),
                "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
                "bias_constraint": None, "quantization_config": None}


class Activation(Layer):
    def __init__(self, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return self.activation(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Dropout(Layer):
    """Identity at inference; in training, a counter-based mask keyed by the step's rng key."""

    def __init__(self, rate: float, noise_shape: Any = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating) \
                or not 0 <= float(rate) <= 1:
            raise ValueError(f"Dropout '{self.name}': rate must be in [0, 1], got {rate!r}")
        unsupported(f"Dropout '{self.name}'", noise_shape=noise_shape)
        self.rate = float(rate)
        self.seed = seed
        self._salt = int(seed) % 2**32 if seed is not None else random_state.draw_seed()
        self._eager_calls = 0
        self.supports_masking = True

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training or self.rate == 0:
            return inputs
        if self.rate == 1:
            return ops.multiply(inputs, 0.0)
        b = current_builder()
        if b is not None:
            key = b.rng_key()
        else:
            key = np.array([0, self._eager_calls], dtype=np.uint32)
            self._eager_calls += 1
        return ops.dropout(inputs, self.rate, key, salt=self._salt)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "noise_shape": None}


class Flatten(Layer):
    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from kcompile.layers._args import channels_last
        self.data_format = channels_last(data_format, f"Flatten '{self.name}'")

    def call(self, inputs: Any) -> Any:
        rest = inputs.shape[1:]
        if None in rest:
            raise ValueError(f"Flatten '{self.name}': non-batch dims must be known, got "
                             f"{format_shape(inputs.shape)}")
        return ops.reshape(inputs, (-1, math.prod(rest)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format}


class Reshape(Layer):
    """Reshape the non-batch dims to `target_shape` (one entry may be -1)."""

    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)
        if any(d < -1 or d == 0 for d in self.target_shape) or self.target_shape.count(-1) > 1:
            raise ValueError(f"Reshape '{self.name}': invalid target_shape {target_shape!r}")

    def call(self, inputs: Any) -> Any:
        try:
            target = resolve_target_shape(tuple(inputs.shape[1:]), self.target_shape)
        except ValueError:
            target = None
        if target is None or math.prod(target) != math.prod(inputs.shape[1:]):
            raise ValueError(f"Reshape '{self.name}': total size of the input "
                             f"{format_shape(inputs.shape[1:])} does not match target_shape "
                             f"{self.target_shape}")
        return ops.reshape(inputs, (-1, *target))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "target_shape": self.target_shape}
