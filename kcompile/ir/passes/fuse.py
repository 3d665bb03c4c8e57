"""Fusion: an anchor op and the elementwise chain that consumes it become one `fused` node.

Anchors are matmul and conv2d (their epilogue: bias, activation, BatchNorm scale/shift, residual add
run on the accumulator before it is stored) and elementwise ops (a chain becomes one loop). A value is
absorbed only when this node is its only user and it is not a graph output, so nothing is computed
twice. Epilogue operands of a GEMM/conv must be per-channel vectors or scalars (static) or tensors of
the output's shape, which the kernels can read at the store.
"""

from __future__ import annotations

from kcompile.ir.core import Graph, Node, Value
from kcompile.ir.opdef import get_op

ANCHORS = frozenset({"matmul", "conv2d"})
_NOT_FUSED = frozenset({"constant", "cast", "dropout", "fused"})


def is_fusable_elementwise(node: Node) -> bool:
    return "elementwise" in get_op(node.op).tags and node.op not in _NOT_FUSED and \
        all(v.dtype == "float32" for v in [*node.inputs, *node.outputs])


class _Group:
    def __init__(self, node: Node) -> None:
        self.inputs: list[Value] = []
        self.steps: list[tuple] = []
        self.label = node.label
        self.anchor = node.op
        self._append(node, {})
        self.out = node.outputs[0]

    def _arg(self, v: Value, produced: dict[Value, int]) -> str:
        if v in produced:
            return f"s{produced[v]}"
        # a GEMM/conv epilogue reads its operands from inputs 2.. only: a value that is also the
        # anchor's data or kernel (x + conv(x)) gets its own epilogue slot
        start = 2 if self.anchor in ANCHORS and self.steps else 0
        for i in range(start, len(self.inputs)):
            if self.inputs[i] is v:
                return f"i{i}"
        self.inputs.append(v)
        return f"i{len(self.inputs) - 1}"

    def _append(self, node: Node, produced: dict[Value, int]) -> None:
        args = tuple(self._arg(v, produced) for v in node.inputs)
        self.steps.append((node.op, args, tuple(sorted(node.attrs.items()))))

    def absorb(self, node: Node) -> None:
        self._append(node, {self.out: len(self.steps) - 1})
        self.out = node.outputs[0]


def _epilogue_operand_ok(group: _Group, v: Value, static: set[Value]) -> bool:
    if group.anchor not in ANCHORS:
        return True
    out_shape = group.out.shape
    if v.shape == out_shape:
        return True
    channels = out_shape[-1]
    per_channel = v.type.rank <= len(out_shape) and all(d == 1 for d in v.shape[:-1]) and \
        v.shape and v.shape[-1] in (1, channels)
    return v in static and (v.type.rank == 0 or bool(per_channel))


def fuse(graph: Graph) -> Graph:
    """Group nodes; groups of one elementwise node stay plain nodes."""
    uses: dict[Value, int] = {}
    for node in graph.nodes:
        for v in node.inputs:
            uses[v] = uses.get(v, 0) + 1
    outputs = set(graph.outputs)
    static = set(graph.params)
    groups: dict[Value, _Group] = {}  # a group's current output value -> group
    order: list[_Group | Node] = []
    for node in graph.nodes:
        if node.op == "constant":
            static.update(node.outputs)
        if is_fusable_elementwise(node):
            target = None
            for v in node.inputs:
                g = groups.get(v)
                if g is not None and uses.get(v) == 1 and v not in outputs and \
                        node.outputs[0].type == v.type and \
                        all(_epilogue_operand_ok(g, w, static) for w in node.inputs if w is not v):
                    target = g
                    break
            if target is not None:
                del groups[target.out]
                target.absorb(node)
                groups[target.out] = target
                # the group now runs where its last node was: its new operands are defined by then
                order.remove(target)
                order.append(target)
                continue
        if is_fusable_elementwise(node) or (node.op in ANCHORS and len(node.outputs) == 1):
            g = _Group(node)
            groups[g.out] = g
            order.append(g)
        else:
            order.append(node)
    new = Graph(inputs=list(graph.inputs), params=list(graph.params), name=graph.name)
    mapping: dict[Value, Value] = {}
    for item in order:
        if isinstance(item, Node):
            inputs = [mapping.get(v, v) for v in item.inputs]
            if inputs == item.inputs:
                new.nodes.append(item)
            else:
                mapping.update(zip(item.outputs, new.add_node(item.op, inputs, item.attrs,
                                                              item.label), strict=True))
            continue
        inputs = [mapping.get(v, v) for v in item.inputs]
        if len(item.steps) == 1 and item.anchor not in ANCHORS:
            op, args, attrs = item.steps[0]  # args name inputs by position (x * x -> i0, i0)
            (out,) = new.add_node(op, [inputs[int(a[1:])] for a in args], dict(attrs), item.label)
        else:
            (out,) = new.add_node("fused", inputs, {"program": tuple(item.steps)}, item.label)
        mapping[item.out] = out
    new.outputs = [mapping.get(v, v) for v in graph.outputs]
    return new
