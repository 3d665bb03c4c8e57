"""Common-subexpression elimination: one node per distinct (op, inputs, attrs).

The training step repeats work per variable that only depends on the step counter and learning
rate (Adam's bias corrections, the same broadcast constants): computed once, it also saves the
kernel launches and thread barriers each copy would cost. Every op is a pure function of its
inputs and attrs (random ops too: their key is an input), so merging is always sound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile.ir.core import Graph, Node, Value
from kcompile.ir.passes.rewrite import rebuild


def _frozen(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, list | tuple):
        return tuple(_frozen(i) for i in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in x.items()))
    return (type(x).__name__, x)


def cse(graph: Graph) -> Graph:
    seen: dict[tuple, list[Value]] = {}

    def visit(node: Node, inputs: list[Value], g: Graph) -> list[Value] | None:
        key = (node.op, tuple(id(v) for v in inputs), _frozen(node.attrs))
        if key in seen:
            return seen[key]
        outputs = None if inputs == node.inputs else g.add_node(node.op, inputs, node.attrs,
                                                                node.label)
        if outputs is None:
            g.nodes.append(node)
            outputs = list(node.outputs)
        seen[key] = outputs
        return outputs

    return rebuild(graph, visit)
