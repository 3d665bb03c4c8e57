"""Reverse-mode autodiff on the IR: the backward pass is appended to the same graph as ordinary ops.

Each op's `vjp(e, inputs, output, cotangent, **attrs)` returns one cotangent per input (None where no
gradient flows) written with `Emitter`, so the backward graph runs on every executor -- NumPy, LLVM
and ONNX -- with no special cases. An op with several outputs (an RNN: sequence and final states)
gets lists of outputs and cotangents, None for the outputs nothing reads. Only nodes on a path from
`wrt` to `y` are visited.
"""

from __future__ import annotations

from collections.abc import Sequence

from kcompile.ir.core import Graph, Value, topo_sort
from kcompile.ir.emit import Emitter
from kcompile.ir.opdef import get_op


def grad(graph: Graph, y: Value, wrt: Sequence[Value], seed: Value | None = None
         ) -> list[Value | None]:
    """d y / d wrt for a scalar `y` (or `seed` as the output cotangent); None where y does not
    depend on a value."""
    e = Emitter(graph)
    if seed is None:
        if y.shape != ():
            raise ValueError(f"grad: y must be a scalar, got shape {y.shape}; pass a seed cotangent")
        seed = e.const(1.0, y.dtype)
    order = topo_sort([y])
    depends = set(wrt)
    active = []
    for node in order:
        if any(v in depends for v in node.inputs):
            depends.update(node.outputs)
            active.append(node)
    cotangents: dict[Value, Value] = {y: seed}
    for node in reversed(active):
        outs = [cotangents.get(v) for v in node.outputs]
        if all(gv is None for gv in outs):
            continue
        g = outs[0] if len(outs) == 1 else outs
        opdef = get_op(node.op)
        if opdef.vjp is None:
            raise NotImplementedError(f"op {node.op!r} ({node.label or 'no layer'}) has no gradient")
        e.label = f"{node.label}/grad" if node.label else "grad"
        out = node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)
        grads = opdef.vjp(e, node.inputs, out, g, **node.attrs)
        if len(grads) != len(node.inputs):
            raise AssertionError(f"vjp of {node.op!r} returned {len(grads)} cotangents for "
                                 f"{len(node.inputs)} inputs")
        for v, gv in zip(node.inputs, grads, strict=True):
            if gv is None or v not in depends:
                continue
            if gv.type != v.type:
                raise AssertionError(f"vjp of {node.op!r}: cotangent {gv.type} for input {v.type}")
            previous = cotangents.get(v)
            cotangents[v] = gv if previous is None else e.add(previous, gv)
    return [cotangents.get(w) for w in wrt]
