"""Lowering a model to kcompile IR by tracing, and feeding its inputs to an executor.

A model is traced once per (input signature, training flag) into a `Lowered` graph whose parameters
are the model's variables; executors read the variables' current values at run time, so changing
weights never retraces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kcompile import tree
from kcompile.ir.core import Graph, Shape, Value, format_shape
from kcompile.ir.interpret import run as interpret
from kcompile.tracing import GraphBuilder, Tracer, tracing
from kcompile.variables import Variable

if TYPE_CHECKING:
    from kcompile.models.model import Model


@dataclass(frozen=True)
class InputSig:
    """What one model input must look like: name, shape with `None` batch, dtype."""

    name: str
    shape: Shape
    dtype: str


@dataclass
class Lowered:
    graph: Graph
    variables: list[Variable]  # aligned with graph.params
    state_updates: list[Variable] = field(default_factory=list)  # trailing graph outputs update these
    num_outputs: int = 0
    needs_rng_key: bool = False
    # the Keras mask each model output carries (a value of `graph`, not an output), or None: the
    # training and test steps weight the loss and metrics with it
    masks: list[Value | None] = field(default_factory=list)


def lower(model: Model, sigs: Sequence[InputSig], structure: Any, training: bool) -> Lowered:
    """Trace `model.call` on symbolic inputs into one IR graph."""
    b = GraphBuilder(model.name)
    with tracing(b):
        tracers = [b.input(s.shape, s.dtype, s.name) for s in sigs]
        outputs = model(tree.pack_as(structure, tracers), training=training)
    flat = tree.flatten(outputs)
    for out in flat:
        if not isinstance(out, Tracer):
            raise TypeError(f"Model '{model.name}': call() returned {type(out).__name__}, "
                            "not a tensor computed from its inputs")
    masks = [_mask_value(b, out) for out in flat]
    graph = b.graph
    graph.outputs = [t.value for t in flat] + [t.value for _, t in b.state_updates]
    _order_params(graph, b.variables, model.weights)
    variables = sorted(b.variables, key=_position(model.weights))
    graph.verify()
    return Lowered(graph, variables, [v for v, _ in b.state_updates], len(flat),
                   needs_rng_key=any(v.name == "rng_key" for v in graph.inputs), masks=masks)


def _mask_value(b: GraphBuilder, out: Tracer) -> Value | None:
    """The graph value of the mask `out` carries (a Keras mask is one tensor per output)."""
    from kcompile.layers.base import get_keras_mask

    mask = get_keras_mask(out)
    if isinstance(mask, Tracer) and mask.builder is b:
        return mask.value
    if isinstance(mask, np.ndarray):
        return b.constant(mask)
    return None


def _position(weights: list[Variable]):
    index = {id(w): i for i, w in enumerate(weights)}
    return lambda v: index.get(id(v), len(index))


def _order_params(graph: Graph, variables: list[Variable], weights: list[Variable]) -> None:
    """Parameters in the model's weight order, so every executor sees the same signature."""
    key = _position(weights)
    pairs = sorted(zip(graph.params, variables, strict=True), key=lambda p: key(p[1]))
    graph.params = [p for p, _ in pairs]


def prepare_inputs(model_name: str, sigs: Sequence[InputSig], x: Any) -> list[np.ndarray]:
    """Match user data to the model inputs; check rank, shape and dtype; convert to contiguous."""
    if isinstance(x, dict):
        missing = [s.name for s in sigs if s.name not in x]
        if missing:
            raise ValueError(f"Model '{model_name}': missing input(s) {missing}; the dict has "
                             f"keys {sorted(x)}")
        items = [x[s.name] for s in sigs]
    elif isinstance(x, list | tuple) and len(sigs) > 1:
        items = list(x)
    elif isinstance(x, list | tuple) and len(x) == 1 and isinstance(x[0], np.ndarray):
        items = list(x)
    else:
        items = [x]
    if len(items) != len(sigs):
        raise ValueError(f"Model '{model_name}' expects {len(sigs)} input(s) "
                         f"({[s.name for s in sigs]}), but it received {len(items)}")
    arrays = []
    batch = None
    for i, (sig, item) in enumerate(zip(sigs, items, strict=True)):
        where = f"Input {i} ('{sig.name}') of model '{model_name}'"
        if isinstance(item, Variable):
            item = item.value
        try:
            arr = np.asarray(item)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{where}: cannot convert {type(item).__name__} to an array: {err}") \
                from None
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{where}: expected numeric data ({sig.dtype}), got dtype {arr.dtype}")
        if arr.ndim != len(sig.shape):
            raise ValueError(f"{where} has the wrong rank: expected shape "
                             f"{format_shape(sig.shape)}, got {format_shape(arr.shape)}")
        if any(d is not None and d != s for d, s in zip(sig.shape, arr.shape, strict=True)):
            raise ValueError(f"{where} is incompatible: expected shape {format_shape(sig.shape)}, "
                             f"got {format_shape(arr.shape)}")
        if sig.shape and sig.shape[0] is None:  # other None dims are free (fill_free_dims)
            if batch is not None and arr.shape[0] != batch:
                raise ValueError(f"{where}: batch size {arr.shape[0]} differs from the other "
                                 f"inputs' {batch}")
            batch = arr.shape[0]
        arrays.append(np.ascontiguousarray(arr, dtype=sig.dtype))
    return arrays


def fill_free_dims(sigs: Sequence[InputSig], arrays: Sequence[np.ndarray]) -> list[InputSig]:
    """The signatures with every non-batch dim an Input left as None (a variable sequence length)
    set from the data: the IR's one symbolic dim is the batch, so each length is traced (and
    compiled) once, as one more input signature."""
    return [s if None not in s.shape[1:] else
            InputSig(s.name, (s.shape[0], *(a.shape[k] if d is None else d
                                           for k, d in enumerate(s.shape) if k > 0)), s.dtype)
            for s, a in zip(sigs, arrays, strict=True)]


def execute(lowered: Lowered, inputs: list[np.ndarray], rng_key: np.ndarray | None = None
            ) -> list[np.ndarray]:
    """Run a lowered graph with the NumPy executor; applies state updates (BatchNorm stats)."""
    feeds = list(inputs)
    if lowered.needs_rng_key:
        feeds.append(np.zeros(2, np.uint32) if rng_key is None else rng_key)
    outs = interpret(lowered.graph, feeds, [v.value for v in lowered.variables])
    for var, value in zip(lowered.state_updates, outs[lowered.num_outputs:], strict=True):
        var.assign(value)
    return outs[:lowered.num_outputs]
