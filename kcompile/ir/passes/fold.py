"""Constant folding, identity removal and BatchNorm folding (inference graphs).

BatchNorm at inference is an affine map per channel, y = x * s + t with s = gamma / sqrt(var + eps)
and t = beta - mean * s. When it follows a conv/dense whose kernel is static, s is multiplied into the
kernel and t into the bias, so the BN costs nothing at run time; otherwise it becomes mul + bias_add,
which the fusion pass puts into the producing kernel's epilogue. The s/t/W' computations are ordinary
IR nodes on parameters: `split_static` moves them to the prepare graph that runs when weights change.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import Graph, Node, Value
from kcompile.ir.opdef import get_op
from kcompile.ir.passes.rewrite import rebuild, static_values

_NEVER_FOLD = frozenset({"dropout"})


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all literal constants."""
    consts: dict[Value, np.ndarray] = {}

    def visit(node: Node, inputs: list[Value], g: Graph) -> list[Value] | None:
        if node.op == "constant":
            consts[node.outputs[0]] = node.attrs["value"]
            return None
        if node.op in _NEVER_FOLD or not inputs or not all(v in consts for v in inputs):
            return None
        results = get_op(node.op).run_ref([consts[v] for v in inputs], node.attrs)
        outs = []
        for r in results:
            (v,) = g.add_node("constant", [], {"value": np.asarray(r)}, node.label)
            consts[v] = np.asarray(r)
            outs.append(v)
        return outs

    return rebuild(graph, visit)


def remove_identities(graph: Graph) -> Graph:
    """reshape to the same shape, cast to the same dtype, identity transposes."""

    def visit(node: Node, inputs: list[Value], g: Graph) -> list[Value] | None:
        x = inputs[0] if inputs else None
        if node.op == "reshape" and x.shape == node.outputs[0].shape:
            return [x]
        if node.op == "cast" and x.dtype == node.outputs[0].dtype:
            return [x]
        if node.op == "transpose" and tuple(node.attrs["perm"]) == tuple(range(x.type.rank)):
            return [x]
        return None

    return rebuild(graph, visit)


def _single_user(graph: Graph) -> set[Value]:
    count: dict[Value, int] = {}
    for node in graph.nodes:
        for v in node.inputs:
            count[v] = count.get(v, 0) + 1
    outs = set(graph.outputs)
    return {v for v, c in count.items() if c == 1 and v not in outs}


def fold_batchnorm(graph: Graph) -> Graph:
    origin: dict[Value, Value] = {}
    old_static = static_values(graph)
    old_single = _single_user(graph)
    static = _Lookup(old_static, origin)
    single = _Lookup(old_single, origin)

    def visit(node: Node, inputs: list[Value], g: Graph) -> list[Value] | None:
        if node.op != "batchnorm" or not all(v in static for v in inputs[1:]):
            return None
        x, gamma, beta, mean, var = inputs
        axis = node.attrs["axis"] % x.type.rank
        label = node.label
        eps = g.add_node("constant", [], {"value": np.asarray(node.attrs["epsilon"], x.dtype)},
                         label)[0]
        s = g.add_node("div", [gamma, g.add_node("sqrt", [g.add_node("add", [var, eps])[0]])[0]],
                       label=label)[0]
        t = g.add_node("sub", [beta, g.add_node("mul", [mean, s], label=label)[0]], label=label)[0]
        if axis == x.type.rank - 1:
            folded = _fold_into_producer(g, x, s, t, static, single, label)
            if folded is not None:
                return [folded]
            y = g.add_node("mul", [x, s], label=label)[0]
            return g.add_node("bias_add", [y, t], label=label)
        shape = [1] * x.type.rank
        shape[axis] = x.shape[axis]
        s = g.add_node("reshape", [s], {"shape": tuple(shape)}, label)[0]
        t = g.add_node("reshape", [t], {"shape": tuple(shape)}, label)[0]
        return g.add_node("add", [g.add_node("mul", [x, s], label=label)[0], t], label=label)

    return rebuild(graph, visit, origin)


class _Lookup:
    """Set membership through `origin`, for values re-created while the graph is rebuilt."""

    def __init__(self, values: set[Value], origin: dict[Value, Value]) -> None:
        self.values, self.origin = values, origin

    def __contains__(self, v: Value) -> bool:
        return v in self.values or self.origin.get(v) in self.values


def _fold_into_producer(g: Graph, x: Value, s: Value, t: Value, static: _Lookup,
                        single: _Lookup, label: str | None) -> Value | None:
    """Rewrite conv/matmul(+bias_add) -> BN into conv/matmul with a scaled kernel and new bias."""
    node = x.producer
    bias = None
    if node is not None and node.op == "bias_add" and node.inputs[1] in static and x in single:
        bias = node.inputs[1]
        x = node.inputs[0]
        node = x.producer
    if node is None or node.op not in ("conv2d", "matmul") or x not in single:
        return None
    data, kernel = node.inputs
    if kernel not in static or kernel.type.rank not in (2, 4):
        return None
    # The old producer nodes stay in `g` (already emitted); dce removes them.
    new_kernel = g.add_node("mul", [kernel, s], label=label)[0]
    y = g.add_node(node.op, [data, new_kernel], node.attrs, node.label)[0]
    new_bias = t if bias is None else g.add_node("add", [g.add_node("mul", [bias, s], label=label)[0],
                                                          t], label=label)[0]
    return g.add_node("bias_add", [y, new_bias], label=label)[0]
