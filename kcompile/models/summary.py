"""`model.summary()`: Keras's table of layers, output shapes and parameter counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kcompile import tree
from kcompile.ir.core import format_shape

if TYPE_CHECKING:
    from kcompile.layers.base import Layer
    from kcompile.models.model import Model


def readable_size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.2f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.2f} GB"


def _count(weights: list[Any]) -> tuple[int, int]:
    return (int(sum(int(np.prod(w.shape)) for w in weights)),
            int(sum(w.value.nbytes for w in weights)))


def _output_shape(layer: Layer, model: Model) -> str:
    nodes = [n for n in layer._inbound_nodes if _in_model(n, model)]
    if len(nodes) != 1:
        return "multiple" if nodes else "?"
    shapes = [format_shape(t.shape) for t in tree.flatten(nodes[0].outputs)]
    return shapes[0] if len(shapes) == 1 else "[" + ", ".join(shapes) + "]"


def _in_model(node: Any, model: Model) -> bool:
    nodes = getattr(model, "_nodes", None)
    if nodes is None:  # Sequential: only the nodes of its own chain
        outs = {id(t) for t in getattr(model, "_outputs", [])}
        return any(id(t) in outs for t in tree.flatten(node.outputs))
    return node.is_input or any(node is n for n in nodes)


def _connected_to(layer: Layer, model: Model) -> str:
    parts = []
    for node in layer._inbound_nodes:
        if _in_model(node, model):
            for t in node.input_tensors:
                src, index, i = t._keras_history
                parts.append(f"{src.name}[{index}][{i}]")
    return ", ".join(parts) or "-"


def summary_text(model: Model, line_length: int | None = None, show_trainable: bool = False) -> str:
    from kcompile.models.functional import Functional

    functional = isinstance(model, Functional)
    headers = ["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if functional else [])
    rows = []
    for layer in model.layers:
        params = _count(layer.weights)[0] if layer.built else 0
        row = [f"{layer.name} ({type(layer).__name__})", _output_shape(layer, model), f"{params:,}"]
        if functional:
            row.append(_connected_to(layer, model))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 if rows else len(h) + 2
              for i, h in enumerate(headers)]
    widths = [max(w, m) for w, m in zip(widths, [31, 22, 13, 20], strict=False)]

    def line(cells: list[str], left: str, mid: str, right: str) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            out.append((" " + cell).ljust(w) if i != 2 else (cell + " ").rjust(w))
        return left + mid.join(out) + right

    def rule(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * w for w in widths) + right

    lines = [f'Model: "{model.name}"', rule("┏", "━", "┳", "┓"), line(headers, "┃", "┃", "┃"),
             rule("┡", "━", "╇", "┩")]
    for i, row in enumerate(rows):
        lines.append(line(row, "│", "│", "│"))
        if i + 1 < len(rows):
            lines.append(rule("├", "─", "┼", "┤"))
    lines.append(rule("└", "─", "┴", "┘"))
    total, total_b = _count(model.weights)
    train, train_b = _count(model.trainable_weights)
    frozen, frozen_b = _count(model.non_trainable_weights)
    lines.append(f" Total params: {total:,} ({readable_size(total_b)})")
    lines.append(f" Trainable params: {train:,} ({readable_size(train_b)})")
    lines.append(f" Non-trainable params: {frozen:,} ({readable_size(frozen_b)})")
    return "\n".join(lines)
