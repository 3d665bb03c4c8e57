"""`Emitter`: a small builder API for writing IR from Python rules (vjps, losses, optimizers).

Rules read like NumPy (`e.mul(a, b)`, `e.sum(x, axes=(0,))`) and append nodes to one graph. Scalars
become `constant` nodes of the right dtype, so the rules stay dtype-generic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile.ir.core import Graph, TensorType, Value


class Emitter:
    def __init__(self, graph: Graph, label: str | None = None) -> None:
        self.graph = graph
        self.label = label
        self._consts: dict[tuple, Value] = {}

    # -- basics --------------------------------------------------------------------------------
    def op(self, name: str, *inputs: Value, **attrs: Any) -> Value:
        return self.graph.add_node(name, list(inputs), attrs, self.label)[0]

    def ops(self, name: str, *inputs: Value, **attrs: Any) -> list[Value]:
        """Every output of an op with several (an RNN's gradient)."""
        return self.graph.add_node(name, list(inputs), attrs, self.label)

    def const(self, value: Any, dtype: str = "float32") -> Value:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.name, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.op("constant", value=arr)
        return self._consts[key]

    def _v(self, x: Value | float, like: Value) -> Value:
        return x if isinstance(x, Value) else self.const(x, like.dtype)

    # -- arithmetic (scalars allowed on either side) -------------------------------------------
    def add(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("add", a, b)

    def sub(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("sub", a, b)

    def mul(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("mul", a, b)

    def div(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("div", a, b)

    def maximum(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("maximum", a, b)

    def minimum(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("minimum", a, b)

    def pow(self, a, b) -> Value:
        a, b = self._pair(a, b)
        return self.op("pow", a, b)

    def compare(self, a, b, predicate: str) -> Value:
        a, b = self._pair(a, b)
        return self.op("compare", a, b, predicate=predicate)

    def _pair(self, a, b) -> tuple[Value, Value]:
        if isinstance(a, Value):
            return a, self._v(b, a)
        if isinstance(b, Value):
            return self._v(a, b), b
        raise TypeError("Emitter: at least one operand must be a Value")

    def neg(self, x: Value) -> Value:
        return self.op("neg", x)

    def square(self, x: Value) -> Value:
        return self.op("mul", x, x)

    def sqrt(self, x: Value) -> Value:
        return self.op("sqrt", x)

    def exp(self, x: Value) -> Value:
        return self.op("exp", x)

    def log(self, x: Value) -> Value:
        return self.op("log", x)

    def abs(self, x: Value) -> Value:
        return self.op("abs", x)

    def cast(self, x: Value, dtype: str) -> Value:
        return x if x.dtype == dtype else self.op("cast", x, dtype=dtype)

    # -- shapes --------------------------------------------------------------------------------
    def sum(self, x: Value, axes: Sequence[int] | None = None, keepdims: bool = False) -> Value:
        return self.op("sum", x, axes=None if axes is None else tuple(axes), keepdims=keepdims)

    def mean(self, x: Value, axes: Sequence[int] | None = None, keepdims: bool = False) -> Value:
        return self.op("mean", x, axes=None if axes is None else tuple(axes), keepdims=keepdims)

    def reshape(self, x: Value, shape: Sequence[int | None]) -> Value:
        shape = tuple(shape)
        return x if shape == x.shape else self.op("reshape", x, shape=shape)

    def transpose(self, x: Value, perm: Sequence[int]) -> Value:
        return self.op("transpose", x, perm=tuple(perm))

    def broadcast_like(self, x: Value, like: Value) -> Value:
        return x if x.shape == like.shape else self.op("broadcast_like", x, like)

    def unbroadcast(self, g: Value, target: TensorType) -> Value:
        """Sum `g` down to `target`'s shape (the adjoint of NumPy broadcasting)."""
        if g.shape == target.shape:
            return g
        lead = g.type.rank - target.rank
        axes = list(range(lead))
        for i, d in enumerate(target.shape):
            if d == 1 and g.shape[lead + i] != 1:
                axes.append(lead + i)
        out = self.sum(g, axes, keepdims=False) if axes else g
        return self.reshape(out, target.shape)

    def zeros_like(self, x: Value) -> Value:
        return self.broadcast_like(self.const(0.0, x.dtype), x)
