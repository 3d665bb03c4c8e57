"""Rebuilding a graph node by node: the one helper every pass uses to replace nodes."""

from __future__ import annotations

from collections.abc import Callable

from kcompile.ir.core import Graph, Node, Value

# visit(node, inputs, new_graph) -> replacement outputs, or None to keep the node (inputs remapped)
Visitor = Callable[[Node, list[Value], Graph], "list[Value] | None"]


def rebuild(graph: Graph, visit: Visitor, origin: dict[Value, Value] | None = None) -> Graph:
    """A new graph with each node offered to `visit`; unchanged nodes are reused as they are.

    `origin`, when given, receives new value -> old value for nodes re-added with remapped inputs,
    so a visitor can look up facts (use counts, staticness) computed on the old graph."""
    new = Graph(inputs=list(graph.inputs), params=list(graph.params), name=graph.name)
    env: dict[Value, Value] = {}
    for node in graph.nodes:
        inputs = [env.get(v, v) for v in node.inputs]
        outputs = visit(node, inputs, new)
        if outputs is None:
            if inputs == node.inputs:
                new.nodes.append(node)
                continue
            outputs = new.add_node(node.op, inputs, node.attrs, node.label)
            if origin is not None:
                origin.update(zip(outputs, node.outputs, strict=True))
        for old, value in zip(node.outputs, outputs, strict=True):
            if old is not value:
                env[old] = value
    new.outputs = [env.get(v, v) for v in graph.outputs]
    return new


def static_values(graph: Graph) -> set[Value]:
    """Values that do not depend on the graph's inputs: params, constants and what is computed
    from them only (evaluated once when weights change, not per call)."""
    static: set[Value] = set(graph.params)
    for node in graph.nodes:
        if node.op in ("dropout",):
            continue
        if all(v in static for v in node.inputs):
            static.update(node.outputs)
    return static
