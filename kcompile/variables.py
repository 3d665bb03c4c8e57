"""`Variable`: a named, mutable weight held as a NumPy array."""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile.ir.core import canonical_dtype, format_shape
from kcompile.tensor_ops import TensorOps


class _Epoch:
    """Bumped by every `assign`: compiled models repack their weights when it moved (one int
    comparison per call instead of one per variable)."""

    value = 0


EPOCH = _Epoch()


class Variable(TensorOps):
    """A layer weight. Executors read `.value` at run time; tracing turns it into a graph param."""

    def __init__(self, value: Any, name: str = "variable", trainable: bool = True,
                 dtype: str = "float32", path: str | None = None) -> None:
        self._value = np.array(value, dtype=canonical_dtype(dtype), copy=True, order="C")
        self.name = name
        self.path = path or name
        self.trainable = trainable

    @property
    def value(self) -> np.ndarray:
        return self._value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> str:
        return self._value.dtype.name

    @property
    def ndim(self) -> int:
        return self._value.ndim

    def numpy(self) -> np.ndarray:
        return self._value.copy()

    def assign(self, value: Any) -> None:
        arr = np.asarray(value)
        if arr.shape != self._value.shape:
            raise ValueError(f"Variable '{self.path}': expected shape {format_shape(self.shape)}, "
                             f"got {format_shape(arr.shape)}")
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"Variable '{self.path}': cannot assign values of dtype {arr.dtype}")
        self._value[...] = arr
        EPOCH.value += 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._value if dtype is None else self._value.astype(dtype)

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}>"
