"""The eager executor: runs any graph with NumPy, one op's `ref` per node.

It is the reference every compiled result is compared against, so it is deliberately simple: a loop
over the nodes in order, freeing each intermediate after its last use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kcompile.ir.core import Graph, Value, format_shape
from kcompile.ir.opdef import get_op
from kcompile.ir.ops.gather import IndexOutOfRangeError, index_out_of_range


def check_arrays(values: Sequence[Value], arrays: Sequence[np.ndarray], what: str) -> int | None:
    """Check arrays against their values' types; returns the batch size they agree on."""
    if len(arrays) != len(values):
        raise ValueError(f"expected {len(values)} {what}(s), got {len(arrays)}")
    batch: int | None = None
    for value, arr in zip(values, arrays, strict=True):
        t = value.type
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{what} {value.name!r}: expected a NumPy array, got {type(arr).__name__}")
        if not t.matches(arr.shape, arr.dtype):
            raise ValueError(f"{what} {value.name!r}: expected {t.dtype} of shape "
                             f"{format_shape(t.shape)}, got {arr.dtype} of shape "
                             f"{format_shape(arr.shape)}")
        for d, s in zip(t.shape, arr.shape, strict=True):
            if d is None:
                if batch is not None and batch != s:
                    raise ValueError(f"{what} {value.name!r}: batch size {s} differs from {batch} "
                                     "of an earlier input")
                batch = s
    return batch


def run(graph: Graph, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray] = ()
        ) -> list[np.ndarray]:
    """Evaluate `graph` on concrete inputs and parameters; returns its outputs."""
    check_arrays(graph.inputs, inputs, "input")
    check_arrays(graph.params, params, "param")
    env: dict[Value, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
    env.update(zip(graph.params, params, strict=True))
    last_use: dict[Value, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[v] = i
    keep = set(graph.outputs) | set(graph.inputs) | set(graph.params)
    for i, node in enumerate(graph.nodes):
        opdef = get_op(node.op)
        try:
            results = opdef.run_ref([env[v] for v in node.inputs], node.attrs)
        except IndexOutOfRangeError as err:  # name the layer, as the compiled code does
            if node.label is None or err.index is None or err.where is not None:
                raise
            raise index_out_of_range(err.index, err.rows, node.label) from None
        for value, arr in zip(node.outputs, results, strict=True):
            arr = np.asarray(arr)
            if arr.dtype.name != value.dtype:
                raise AssertionError(f"{node.op}: ref returned {arr.dtype}, infer said {value.dtype}")
            env[value] = arr
        for v in set(node.inputs):  # a node may use one value twice (x * x)
            if last_use.get(v) == i and v not in keep:
                del env[v]
    return [env[v] for v in graph.outputs]
