"""Functional models: a graph of layer calls between `Input`s and outputs."""

from __future__ import annotations

from typing import Any

from kcompile import tree
from kcompile.layers.base import CallNode, KerasTensor, Layer
from kcompile.layers.input_layer import InputLayer
from kcompile.models.lowering import InputSig
from kcompile.models.model import Model


def _node_of(t: KerasTensor) -> CallNode:
    layer, index, _ = t._keras_history
    return layer._inbound_nodes[index]


def map_graph(inputs: list[KerasTensor], outputs: list[KerasTensor]
              ) -> tuple[list[CallNode], list[Layer]]:
    """Nodes in dependency order and layers in Keras's order (by decreasing depth from the outputs,
    ties broken by first DFS visit), which fixes the order of `model.weights`."""
    input_ids = {id(t) for t in inputs}
    finished: set[int] = set()
    in_progress: set[int] = set()
    ordered: list[CallNode] = []
    first_seen: dict[int, int] = {}
    layer_by_id: dict[int, Layer] = {}

    def visit(t: KerasTensor, consumer: str) -> None:
        node = _node_of(t)
        if id(node) in finished:
            return
        if id(t) in input_ids and not node.is_input:
            finished.add(id(node))
            return
        if node.is_input and id(t) not in input_ids:
            raise ValueError(
                f"Graph disconnected: cannot obtain value for tensor {t.name!r} (the output of "
                f"input layer '{node.layer.name}') needed by '{consumer}'. That input is not among "
                f"the model's inputs {[i.name for i in inputs]}.")
        if id(node) in in_progress:
            raise ValueError(f"Tensor {t.name!r} from layer '{node.layer.name}' is part of a cycle")
        layer_by_id[id(node.layer)] = node.layer
        first_seen.setdefault(id(node.layer), len(first_seen))
        in_progress.add(id(node))
        for parent in node.input_tensors:
            visit(parent, node.layer.name)
        in_progress.discard(id(node))
        finished.add(id(node))
        ordered.append(node)

    for out in outputs:
        if not isinstance(out, KerasTensor) or out._keras_history is None:
            raise ValueError(f"Model outputs must be tensors returned by layers called on "
                             f"keras.Input tensors, got {out!r}")
        visit(out, "the model outputs")

    # depth: 0 at the outputs, parents deeper; shared layers take their deepest node's depth
    node_depth: dict[int, int] = {}
    layer_depth: dict[int, int] = {}
    in_graph = {id(n) for n in ordered}
    for node in reversed(ordered):
        depth = max(node_depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
        layer_depth[id(node.layer)] = depth
        node_depth[id(node)] = depth
        for parent in node.parent_nodes:
            if id(parent) in in_graph:
                node_depth[id(parent)] = max(depth + 1, node_depth.get(id(parent), 0))
    for t in inputs:  # unused inputs still belong to the model
        node = _node_of(t)
        if node.is_input and id(node.layer) not in layer_depth:
            layer_depth[id(node.layer)] = 0
            first_seen[id(node.layer)] = -1
            layer_by_id[id(node.layer)] = node.layer
    layers = sorted(layer_by_id.values(),
                    key=lambda lyr: (-layer_depth[id(lyr)], first_seen[id(lyr)]))
    return [n for n in ordered if not n.is_input], layers


class Functional(Model):
    def __init__(self, inputs: Any, outputs: Any, name: str | None = None,
                 trainable: bool = True, **kwargs: Any) -> None:
        Model.__init__(self, name=name or _functional_name(), trainable=trainable, **kwargs)
        flat_in = tree.flatten(inputs)
        for t in flat_in:
            if not isinstance(t, KerasTensor) or t._keras_history is None:
                raise ValueError(f"Model '{self.name}': all inputs must be keras.Input tensors, "
                                 f"got {t!r}")
        if len({id(t) for t in flat_in}) != len(flat_in):
            raise ValueError(f"Model '{self.name}': the same input tensor is passed twice")
        self._inputs_struct = inputs
        self._outputs_struct = outputs
        self._nodes, self._operations = map_graph(flat_in, tree.flatten(outputs))
        self.built = True

    @property
    def _layers(self) -> list[Layer]:
        return [op for op in self._operations if not isinstance(op, InputLayer)]

    @property
    def layers(self) -> list[Layer]:
        return list(self._operations)

    @property
    def inputs(self) -> list[KerasTensor]:
        return tree.flatten(self._inputs_struct)

    @property
    def outputs(self) -> list[KerasTensor]:
        return tree.flatten(self._outputs_struct)

    @property
    def input_names(self) -> list[str]:
        return [t._keras_history[0].name for t in self.inputs]

    def input_signature(self, x: Any = None) -> tuple[list[InputSig], Any]:
        sigs = [InputSig(name, t.shape, t.dtype) for name, t in zip(self.input_names, self.inputs,
                                                                    strict=True)]
        return sigs, tree.map_structure(lambda _: 0, self._inputs_struct)

    def _output_structure(self, lowered: Any) -> Any:
        return tree.map_structure(lambda _: 0, self._outputs_struct)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        flat = tree.flatten(inputs)
        if len(flat) != len(self.inputs):
            raise ValueError(f"Model '{self.name}' expects {len(self.inputs)} input(s), "
                             f"got {len(flat)}")
        values: dict[int, Any] = {id(t): v for t, v in zip(self.inputs, flat, strict=True)}

        def lookup(x: Any) -> Any:
            return values[id(x)] if isinstance(x, KerasTensor) else x

        for node in self._nodes:
            args, kwargs = tree.map_structure(lookup, (list(node.args), node.kwargs))
            outs = node.layer(*args, **kwargs)
            for t, v in zip(node.output_tensors, tree.flatten(outs), strict=True):
                values[id(t)] = v
        return tree.map_structure(lookup, self._outputs_struct)

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError("Functional.get_config (the model graph's config) arrives with "
                                  "`.keras` saving; layer configs work via layer.get_config()")


def _functional_name() -> str:
    from kcompile.layers.base import unique_name
    return unique_name("functional")
