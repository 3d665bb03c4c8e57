"""Conv1D and Conv2D (channels_last; kernels (k, in, out) and HWIO), one base for both."""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile import activations, initializers, ops
from kcompile.ir.core import format_shape
from kcompile.layers._args import channels_last, int_tuple, padding_mode, unsupported
from kcompile.layers.base import InputSpec, Layer


class _Conv(Layer):
    """Keras's options and checks for a `rank`-D convolution; subclasses set `rank` and defaults."""

    rank = 2

    def __init__(self, filters: int, kernel_size: Any, strides: Any, padding: str,
                 data_format: str | None, dilation_rate: Any, groups: int, activation: Any,
                 use_bias: bool, kernel_initializer: Any, bias_initializer: Any,
                 kernel_regularizer: Any, bias_regularizer: Any, activity_regularizer: Any,
                 kernel_constraint: Any, bias_constraint: Any, **kwargs: Any) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        where = f"{type(self).__name__} '{self.name}'"
        if not isinstance(filters, int | np.integer) or filters <= 0:
            raise ValueError(f"{where}: Invalid value for argument `filters`. Expected a strictly "
                             f"positive value. Received filters={filters}.")
        if groups != 1:
            raise ValueError(f"{where}: groups={groups} is not supported yet (groups=1 only)")
        unsupported(where, kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                    kernel_constraint=kernel_constraint, bias_constraint=bias_constraint)
        self.filters = int(filters)
        self.kernel_size = int_tuple(kernel_size, self.rank, "kernel_size", where)
        self.strides = int_tuple(strides, self.rank, "strides", where)
        causal = self.rank == 1 and str(padding).lower() == "causal"
        self.padding = "causal" if causal else padding_mode(padding, where)
        self.data_format = channels_last(data_format, where)
        self.dilation_rate = int_tuple(dilation_rate, self.rank, "dilation_rate", where)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{where}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.groups = 1
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.input_spec = InputSpec(ndim=self.rank + 2)

    def build(self, input_shape: tuple) -> None:
        ndim = self.rank + 2
        if len(input_shape) != ndim:
            raise ValueError(f"Input 0 of layer '{self.name}' is incompatible with the layer: "
                             f"expected ndim={ndim}, found ndim={len(input_shape)}. Full shape "
                             f"received: {format_shape(input_shape)}")
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': the channel dim of the input "
                             "must be known")
        self.kernel = self.add_weight((*self.kernel_size, channels, self.filters),
                                      self.kernel_initializer, name="kernel")
        self.bias = (self.add_weight((self.filters,), self.bias_initializer, name="bias")
                     if self.use_bias else None)
        self.input_spec = InputSpec(ndim=ndim, axes={-1: channels})
        self.built = True

    def _convolve(self, inputs: Any, padding: str) -> Any:
        x = ops.conv(inputs, self.kernel, strides=self.strides, padding=padding,
                     dilation_rate=self.dilation_rate)
        if self.bias is not None:
            x = ops.bias_add(x, self.bias)
        return self.activation(x)

    def call(self, inputs: Any) -> Any:
        return self._convolve(inputs, self.padding)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize_initializer(self.kernel_initializer),
                "bias_initializer": initializers.serialize_initializer(self.bias_initializer),
                "kernel_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}


class Conv2D(_Conv):
    rank = 2

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1),
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: Any = (1, 1), groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", kernel_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, bias_constraint: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, groups,
                         activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, bias_constraint, **kwargs)


class Conv1D(_Conv):
    """1-D convolution over (batch, steps, channels); kernel (kernel_size, in, filters). 'causal'
    padding left-pads (kernel_size - 1) * dilation_rate zeros so no output sees a later step."""

    rank = 1

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = 1, groups: int = 1,
                 activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, groups,
                         activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, bias_constraint, **kwargs)

    def call(self, inputs: Any) -> Any:
        if inputs.shape[1] is None:
            raise ValueError(f"Conv1D '{self.name}': the steps dim must be known (only the batch "
                             f"dim may be None), got input shape {format_shape(inputs.shape)}")
        if self.padding != "causal":
            return self._convolve(inputs, self.padding)
        left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
        return self._convolve(ops.pad(inputs, ((0, 0), (left, 0), (0, 0))), "valid")
