"""The kcompile IR: a typed SSA graph.

A `Graph` has typed input and parameter `Value`s, a topologically ordered list of `Node`s (each an op
name, attributes, input values and the values it defines) and output values. Every shape dimension is
an `int` or `None`; `None` is the one symbolic dimension, the batch size, shared by the whole graph, so
one graph (and one compile) serves every batch size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | None
Shape = tuple[Dim, ...]

_DTYPES = ("float32", "float64", "int32", "int64", "uint32", "bool")


def canonical_dtype(dtype: Any) -> str:
    """The IR's name for a dtype; raises TypeError for dtypes the IR does not support."""
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise TypeError(f"unsupported dtype {dtype!r}; the IR supports {', '.join(_DTYPES)}") from err
    if name not in _DTYPES:
        raise TypeError(f"unsupported dtype {name!r}; the IR supports {', '.join(_DTYPES)}")
    return name


def format_shape(shape: Sequence[Dim]) -> str:
    """`(None, 28, 28, 1)` style, as Keras prints shapes."""
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


@dataclass(frozen=True)
class TensorType:
    """Shape (int dims, `None` = the symbolic batch dim) and dtype of a value."""

    shape: Shape
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(None if d is None else int(d) for d in self.shape)
        if any(d is not None and d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {format_shape(shape)}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_batch(self, batch: int) -> TensorType:
        """The concrete type for one batch size."""
        return TensorType(tuple(batch if d is None else d for d in self.shape), self.dtype)

    def matches(self, shape: Sequence[int], dtype: Any | None = None) -> bool:
        """Whether a concrete array shape (and dtype) is an instance of this type."""
        if len(shape) != self.rank:
            return False
        if any(d is not None and d != s for d, s in zip(self.shape, shape, strict=True)):
            return False
        return dtype is None or np.dtype(dtype).name == self.dtype

    def __str__(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


_ids = itertools.count()


class Value:
    """An SSA value: defined once, by a node or as a graph input/parameter."""

    __slots__ = ("type", "name", "producer", "index", "id")

    def __init__(self, type: TensorType, name: str | None = None,
                 producer: Node | None = None, index: int = 0) -> None:
        self.type = type
        self.name = name
        self.producer = producer
        self.index = index
        self.id = next(_ids)

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"Value({self.name or self.id}: {self.type})"


class Node:
    """One op application: `outputs = op[attrs](inputs)`."""

    __slots__ = ("op", "attrs", "inputs", "outputs", "label")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                 output_types: Sequence[TensorType], label: str | None = None) -> None:
        self.op = op
        self.attrs = dict(attrs)
        self.inputs = list(inputs)
        self.outputs = [Value(t, producer=self, index=i) for i, t in enumerate(output_types)]
        self.label = label  # e.g. the Keras layer this node was traced from, for error messages

    def __repr__(self) -> str:
        return f"Node({self.op})"


def _format_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 4:
            return np.array2string(value.ravel(), separator=",")
        return f"<{value.dtype}{list(value.shape)}>"
    return repr(value)


def _is_default(op: str, key: str, value: Any) -> bool:
    """Attributes left at their default are not printed (e.g. matmul's transpose flags)."""
    from kcompile.ir.opdef import get_op

    spec = get_op(op).attrs.get(key)
    default = getattr(spec, "default", None)
    return isinstance(default, bool | int | float | str) and type(default) is type(value) and \
        default == value


@dataclass
class Graph:
    """A whole computation: `outputs = f(inputs, params)`.

    Parameters are separate from inputs because executors treat them differently (the LLVM backend
    prepacks them, a training step updates them in place, ONNX writes them as initializers).
    """

    inputs: list[Value] = field(default_factory=list)
    params: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    name: str = "graph"

    def add_input(self, type: TensorType, name: str) -> Value:
        value = Value(type, name)
        self.inputs.append(value)
        return value

    def add_param(self, type: TensorType, name: str) -> Value:
        value = Value(type, name)
        self.params.append(value)
        return value

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
                 label: str | None = None) -> list[Value]:
        """Validate attrs, infer output types and append a node; returns its outputs."""
        from kcompile.ir.opdef import get_op

        opdef = get_op(op)
        attrs = opdef.check_attrs(attrs or {})
        types = opdef.infer_types([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, types, label)
        self.nodes.append(node)
        return node.outputs

    # -- printing ---------------------------------------------------------------------------
    def value_names(self) -> dict[Value, str]:
        names: dict[Value, str] = {}
        for v in itertools.chain(self.inputs, self.params):
            names[v] = f"%{v.name}" if v.name else f"%v{len(names)}"
        counter = 0
        for node in self.nodes:
            for v in node.outputs:
                names[v] = f"%{counter}"
                counter += 1
        return names

    def __str__(self) -> str:
        names = self.value_names()
        lines = [f"graph {self.name}("]
        lines += [f"    {names[v]}: {v.type}," for v in self.inputs]
        lines += [f"    param {names[v]}: {v.type}," for v in self.params]
        lines.append(") {")
        for node in self.nodes:
            outs = ", ".join(f"{names[v]}: {v.type}" for v in node.outputs)
            args = ", ".join(names.get(v, "%?") for v in node.inputs)
            attrs = ", ".join(f"{k}={_format_attr(a)}" for k, a in node.attrs.items()
                              if not _is_default(node.op, k, a))
            attrs = f"[{attrs}]" if attrs else ""
            where = f"  # {node.label}" if node.label else ""
            lines.append(f"  {outs} = {node.op}{attrs}({args}){where}")
        lines.append("  return " + ", ".join(names.get(v, "%?") for v in self.outputs))
        lines.append("}")
        return "\n".join(lines)

    # -- checks -----------------------------------------------------------------------------
    def verify(self) -> None:
        """Check SSA form, topological order and that every node's types match its op's `infer`."""
        from kcompile.ir.opdef import get_op

        defined: set[Value] = set()
        for v in itertools.chain(self.inputs, self.params):
            if v in defined:
                raise ValueError(f"graph {self.name}: value {v!r} is declared twice")
            defined.add(v)
        for node in self.nodes:
            opdef = get_op(node.op)
            for v in node.inputs:
                if v not in defined:
                    raise ValueError(f"graph {self.name}: {node.op} uses {v!r} before it is defined")
            types = opdef.infer_types([v.type for v in node.inputs], node.attrs)
            if types != [v.type for v in node.outputs]:
                raise ValueError(f"graph {self.name}: {node.op} declares output types "
                                 f"{[str(v.type) for v in node.outputs]} but infer gives "
                                 f"{[str(t) for t in types]}")
            for v in node.outputs:
                if v in defined:
                    raise ValueError(f"graph {self.name}: {v!r} is defined twice")
                if v.producer is not node:
                    raise ValueError(f"graph {self.name}: {v!r} does not point at its producer")
                defined.add(v)
        for v in self.outputs:
            if v not in defined:
                raise ValueError(f"graph {self.name}: output {v!r} is not defined in the graph")

    def users(self) -> dict[Value, list[Node]]:
        uses: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                uses.setdefault(v, []).append(node)
        return uses


def topo_sort(outputs: Iterable[Value]) -> list[Node]:
    """Nodes needed for `outputs`, in dependency order (iterative DFS, no recursion limit)."""
    order: list[Node] = []
    seen: set[int] = set()
    for out in outputs:
        stack: list[tuple[Value, bool]] = [(out, False)]
        while stack:
            value, expanded = stack.pop()
            node = value.producer
            if node is None or (id(node) in seen and not expanded):
                continue
            if expanded:
                if id(node) not in seen:
                    seen.add(id(node))
                    order.append(node)
                continue
            stack.append((value, True))
            for v in reversed(node.inputs):
                if v.producer is not None and id(v.producer) not in seen:
                    stack.append((v, False))
    return order
