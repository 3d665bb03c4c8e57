"""`InputLayer` and `Input`: where a Functional model's symbolic tensors start."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kcompile.ir.core import canonical_dtype
from kcompile.layers.base import CallNode, KerasTensor, Layer


class InputLayer(Layer):
    def __init__(self, shape: Sequence[int | None] | None = None, batch_size: int | None = None,
                 dtype: Any = None, sparse: bool | None = None, batch_shape: Any = None,
                 input_tensor: Any = None, optional: bool = False, name: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.pop("ragged", None)
        if sparse:
            raise ValueError("InputLayer: sparse inputs are not supported yet")
        if input_tensor is not None:
            raise ValueError("InputLayer: input_tensor is not supported yet")
        if optional:
            raise ValueError("InputLayer: optional inputs are not supported yet")
        super().__init__(name=name, **kwargs)
        if batch_shape is None:
            if shape is None:
                raise ValueError("You must pass a `shape` argument to Input/InputLayer")
            if isinstance(shape, int):
                shape = (shape,)
            batch_shape = (batch_size, *shape)
        batch_shape = tuple(None if d is None else int(d) for d in batch_shape)
        if any(d is not None and d < 0 for d in batch_shape):
            raise ValueError(f"InputLayer '{self.name}': negative dimension in {batch_shape}")
        self.batch_shape = batch_shape
        self.input_dtype = canonical_dtype(dtype_name_or_default(dtype))
        self.built = True
        tensor = KerasTensor(batch_shape, self.input_dtype, name=self.name)
        node = CallNode(self, (), {}, tensor)
        self._inbound_nodes.append(node)
        tensor._keras_history = (self, 0, 0)
        self.output_tensor = tensor

    def call(self, inputs: Any) -> Any:
        return inputs

    def get_config(self) -> dict[str, Any]:
        return {"batch_shape": self.batch_shape, "dtype": self.input_dtype, "sparse": False,
                "ragged": False, "name": self.name, "optional": False}


def dtype_name_or_default(dtype: Any) -> str:
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return "float32" if dtype is None else str(dtype)


def Input(shape: Sequence[int | None] | None = None, batch_size: int | None = None,  # noqa: N802
          dtype: Any = None, sparse: bool | None = None, batch_shape: Any = None,
          name: str | None = None, tensor: Any = None, optional: bool = False) -> KerasTensor:
    """A symbolic input tensor (batch dimension `None` unless `batch_size`/`batch_shape` fix it)."""
    layer = InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, sparse=sparse,
                       batch_shape=batch_shape, name=name, input_tensor=tensor, optional=optional)
    return layer.output_tensor
