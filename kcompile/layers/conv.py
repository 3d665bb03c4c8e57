"""Conv2D (channels_last, HWIO kernel)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile import activations, initializers, ops
from kcompile.ir.core import format_shape
from kcompile.layers._args import channels_last, int_tuple, padding_mode, unsupported
from kcompile.layers.base import InputSpec, Layer


class Conv2D(Layer):
    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1),
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: Any = (1, 1), groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", kernel_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, bias_constraint: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        where = f"Conv2D '{self.name}'"
        if not isinstance(filters, int | np.integer) or filters <= 0:
            raise ValueError(f"{where}: Invalid value for argument `filters`. Expected a strictly "
                             f"positive value. Received filters={filters}.")
        if groups != 1:
            raise ValueError(f"{where}: groups={groups} is not supported yet (groups=1 only)")
        unsupported(where, kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                    kernel_constraint=kernel_constraint, bias_constraint=bias_constraint)
        self.filters = int(filters)
        self.kernel_size = int_tuple(kernel_size, 2, "kernel_size", where)
        self.strides = int_tuple(strides, 2, "strides", where)
        self.padding = padding_mode(padding, where)
        self.data_format = channels_last(data_format, where)
        self.dilation_rate = int_tuple(dilation_rate, 2, "dilation_rate", where)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{where}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.groups = 1
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.input_spec = InputSpec(ndim=4)

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"Input 0 of layer '{self.name}' is incompatible with the layer: "
                             f"expected ndim=4, found ndim={len(input_shape)}. Full shape "
                             f"received: {format_shape(input_shape)}")
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"Conv2D '{self.name}': the channel dim of the input must be known")
        self.kernel = self.add_weight((*self.kernel_size, channels, self.filters),
                                      self.kernel_initializer, name="kernel")
        self.bias = (self.add_weight((self.filters,), self.bias_initializer, name="bias")
                     if self.use_bias else None)
        self.input_spec = InputSpec(ndim=4, axes={-1: channels})
        self.built = True

    def call(self, inputs: Any) -> Any:
        x = ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding,
                     dilation_rate=self.dilation_rate)
        if self.bias is not None:
            x = ops.bias_add(x, self.bias)
        return self.activation(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize_initializer(self.kernel_initializer),
                "bias_initializer": initializers.serialize_initializer(self.bias_initializer),
                "kernel_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}


