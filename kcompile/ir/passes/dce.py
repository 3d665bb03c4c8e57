"""Dead-code elimination: drop nodes no output depends on."""

from __future__ import annotations

from kcompile.ir.core import Graph, topo_sort


def dce(graph: Graph) -> Graph:
    live = {id(n) for n in topo_sort(graph.outputs)}
    return Graph(inputs=list(graph.inputs), params=list(graph.params),
                 nodes=[n for n in graph.nodes if id(n) in live], outputs=list(graph.outputs),
                 name=graph.name)
