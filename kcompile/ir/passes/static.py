"""Splitting off the static part of a graph: what depends only on parameters and constants.

The result is a *prepare* graph (params -> derived params: folded BatchNorm kernels, constants) run
by the eager executor whenever the weights change, and a *main* graph whose params are those derived
values. The compiled kernels then never recompute weight transformations per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcompile.ir.core import Graph, Value
from kcompile.ir.passes.rewrite import static_values


@dataclass
class StaticSplit:
    prepare: Graph  # inputs: none; params: the original params; outputs: main's params
    main: Graph


def split_static(graph: Graph) -> StaticSplit:
    static = static_values(graph)
    prepare = Graph(inputs=[], params=list(graph.params), name=f"{graph.name}.prepare")
    main = Graph(inputs=list(graph.inputs), name=graph.name)
    mapping: dict[Value, Value] = {}

    def param_for(v: Value) -> Value:
        if v not in mapping:
            name = v.name if v in graph.params else f"static{len(mapping)}"
            mapping[v] = main.add_param(v.type, name)
            prepare.outputs.append(v)
        return mapping[v]

    for node in graph.nodes:
        if all(v in static for v in node.outputs) and node.op != "dropout":
            prepare.nodes.append(node)
            continue
        inputs = [param_for(v) if v in static else mapping.get(v, v) for v in node.inputs]
        if inputs == node.inputs:
            main.nodes.append(node)
        else:
            outs = main.add_node(node.op, inputs, node.attrs, node.label)
            mapping.update(zip(node.outputs, outs, strict=True))
    main.outputs = [param_for(v) if v in static else mapping.get(v, v) for v in graph.outputs]
    return StaticSplit(prepare, main)
