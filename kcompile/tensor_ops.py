"""Python operators (`+`, `*`, `@`, ...) for symbolic tensors and variables, routed to `kcompile.ops`."""

from __future__ import annotations

from typing import Any


class TensorOps:
    __array_priority__ = 1000  # make NumPy defer to our reflected operators

    def __add__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.add(self, other)

    def __radd__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.add(other, self)

    def __sub__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.subtract(self, other)

    def __rsub__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.subtract(other, self)

    def __mul__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.multiply(self, other)

    def __rmul__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.multiply(other, self)

    def __truediv__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.divide(self, other)

    def __rtruediv__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.divide(other, self)

    def __matmul__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        from kcompile import ops
        return ops.matmul(other, self)

    def __neg__(self) -> Any:
        from kcompile import ops
        return ops.negative(self)
