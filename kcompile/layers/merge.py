"""Merge layers: Add, Concatenate."""

from __future__ import annotations

from typing import Any

from kcompile import ops
from kcompile.ir.core import format_shape
from kcompile.layers.base import Layer


class _Merge(Layer):
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

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}
