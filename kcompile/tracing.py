"""Tracing: running Keras-level code on symbolic `Tracer`s records kcompile IR.

While a `GraphBuilder` is active, every `kcompile.ops` call appends a node to its graph instead of
computing; variables become graph parameters on first use and Python/NumPy literals become
constants. The same layer code thus runs eagerly on arrays and symbolically when lowered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from kcompile.ir.core import Graph, Shape, TensorType, Value
from kcompile.tensor_ops import TensorOps
from kcompile.variables import Variable

_state = threading.local()


class Tracer(TensorOps):
    """A symbolic tensor during tracing: an IR `Value` of the active builder's graph."""

    def __init__(self, value: Value, builder: GraphBuilder) -> None:
        self.value = value
        self.builder = builder

    @property
    def shape(self) -> Shape:
        return self.value.shape

    @property
    def dtype(self) -> str:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return len(self.value.shape)

    def __repr__(self) -> str:
        return f"<Tracer {self.value.type}>"


class GraphBuilder:
    """Collects the graph being traced, its parameters and the variables behind them."""

    def __init__(self, name: str = "graph") -> None:
        self.graph = Graph(name=name)
        self.variables: list[Variable] = []
        self._params: dict[int, Value] = {}
        self._labels: list[str] = []
        self._rng_key: Value | None = None
        self.state_updates: list[tuple[Variable, Tracer]] = []  # e.g. BatchNorm moving stats

    def input(self, shape: Shape, dtype: str = "float32", name: str = "input") -> Tracer:
        return Tracer(self.graph.add_input(TensorType(shape, dtype), name), self)

    def param(self, var: Variable) -> Value:
        value = self._params.get(id(var))
        if value is None:
            value = self.graph.add_param(TensorType(var.shape, var.dtype), var.path)
            self._params[id(var)] = value
            self.variables.append(var)
        return value

    def constant(self, array: np.ndarray) -> Value:
        return self.graph.add_node("constant", [], {"value": np.array(array)})[0]

    def rng_key(self) -> Tracer:
        """The graph's uint32[2] (seed, step) input, created on first use."""
        if self._rng_key is None:
            self._rng_key = self.graph.add_input(TensorType((2,), "uint32"), "rng_key")
        return Tracer(self._rng_key, self)

    @property
    def label(self) -> str | None:
        return self._labels[-1] if self._labels else None

    @contextlib.contextmanager
    def scope(self, label: str) -> Iterator[None]:
        self._labels.append(label if not self._labels else f"{self._labels[-1]}/{label}")
        try:
            yield
        finally:
            self._labels.pop()


def current_builder() -> GraphBuilder | None:
    return getattr(_state, "builder", None)


@contextlib.contextmanager
def tracing(builder: GraphBuilder) -> Iterator[GraphBuilder]:
    previous = current_builder()
    _state.builder = builder
    try:
        yield builder
    finally:
        _state.builder = previous


@contextlib.contextmanager
def not_tracing() -> Iterator[None]:
    """Run eagerly inside a trace (e.g. to compute a constant from weights)."""
    previous = current_builder()
    _state.builder = None
    try:
        yield
    finally:
        _state.builder = previous


def is_symbolic(x: Any) -> bool:
    return isinstance(x, Tracer)
