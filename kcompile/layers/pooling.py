"""Pooling layers: Max/AveragePooling1D/2D and the global 1-D/2-D poolings."""

from __future__ import annotations

from typing import Any

from kcompile import ops
from kcompile.layers._args import channels_last, int_tuple, padding_mode
from kcompile.layers.base import InputSpec, Layer, float_mask


class _Pooling2D(Layer):
    _op = staticmethod(ops.max_pool)
    rank = 2

    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        where = f"{type(self).__name__} '{self.name}'"
        self.pool_size = int_tuple(pool_size, self.rank, "pool_size", where)
        self.strides = self.pool_size if strides is None else \
            int_tuple(strides, self.rank, "strides", where)
        self.padding = padding_mode(padding, where)
        self.data_format = channels_last(data_format, where)
        self.input_spec = InputSpec(ndim=self.rank + 2)

    def call(self, inputs: Any) -> Any:
        return type(self)._op(inputs, self.pool_size, self.strides, self.padding)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pool_size": self.pool_size, "padding": self.padding,
                "strides": self.strides, "data_format": self.data_format}


class MaxPooling2D(_Pooling2D):
    _op = staticmethod(ops.max_pool)


class AveragePooling2D(_Pooling2D):
    _op = staticmethod(ops.average_pool)


class _GlobalPooling2D(Layer):
    _op = staticmethod(ops.mean)

    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = channels_last(data_format, f"{type(self).__name__} '{self.name}'")
        self.keepdims = bool(keepdims)
        self.input_spec = InputSpec(ndim=4)

    def call(self, inputs: Any) -> Any:
        return type(self)._op(inputs, axis=(1, 2), keepdims=self.keepdims)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    _op = staticmethod(ops.mean)


class GlobalMaxPooling2D(_GlobalPooling2D):
    _op = staticmethod(ops.max)


class _Pooling1D(_Pooling2D):
    """(batch, steps, channels); run as the 2-D pool on one row."""

    rank = 1

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, name, **kwargs)


class MaxPooling1D(_Pooling1D):
    _op = staticmethod(ops.max_pool)


class AveragePooling1D(_Pooling1D):
    _op = staticmethod(ops.average_pool)


class _GlobalPooling1D(_GlobalPooling2D):
    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.input_spec = InputSpec(ndim=3)

    def call(self, inputs: Any) -> Any:
        return type(self)._op(inputs, axis=1, keepdims=self.keepdims)


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the steps; with a mask (Keras), over the unmasked steps only."""

    _op = staticmethod(ops.mean)

    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return ops.mean(inputs, axis=1, keepdims=self.keepdims)
        m = float_mask(mask, inputs.dtype)
        m = ops.reshape(m, tuple(-1 if d is None else d for d in (*m.shape, 1)))
        total = ops.sum(ops.multiply(inputs, m), axis=1, keepdims=self.keepdims)
        count = ops.sum(m, axis=1, keepdims=self.keepdims)
        return ops.divide(total, count)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None


class GlobalMaxPooling1D(_GlobalPooling1D):
    _op = staticmethod(ops.max)


MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
