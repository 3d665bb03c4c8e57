"""Functional models: a graph of layer calls between `Input`s and outputs."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from kcompile import layers as layers_module
from kcompile import tree
from kcompile.layers.base import CallNode, KerasTensor, Layer, set_keras_mask
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

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        flat = tree.flatten(inputs)
        if len(flat) != len(self.inputs):
            raise ValueError(f"Model '{self.name}' expects {len(self.inputs)} input(s), "
                             f"got {len(flat)}")
        if mask is not None:  # Keras: the inputs carry the given masks into the graph
            for x, m in zip(flat, tree.flatten(mask), strict=False):
                if m is not None:
                    set_keras_mask(x, m)
        values: dict[int, Any] = {id(t): v for t, v in zip(self.inputs, flat, strict=True)}

        def lookup(x: Any) -> Any:
            return values[id(x)] if isinstance(x, KerasTensor) else x

        for node in self._nodes:
            args, kwargs = tree.map_structure(lookup, (list(node.args), node.kwargs))
            outs = node.layer(*args, **kwargs)
            for t, v in zip(node.output_tensors, tree.flatten(outs), strict=True):
                values[id(t)] = v
        return tree.map_structure(lookup, self._outputs_struct)

    # -- config (Keras 3's format) ---------------------------------------------------------------
    def get_build_config(self) -> dict[str, Any]:
        return {"input_shape": None}  # what Keras writes: the graph itself fixes the shapes

    def get_config(self) -> dict[str, Any]:
        """Keras 3's Functional config: `name`, `trainable`, `layers` (each serialized with its
        `name` and `inbound_nodes`), `input_layers` and `output_layers` in the structure of the
        model's inputs and outputs."""
        own: set[int] = {id(n) for n in self._nodes}
        for t in self.inputs:
            node = _node_of(t)
            if not node.is_input:
                raise ValueError(f"Model '{self.name}': cannot write a config for a model whose "
                                 f"input {t.name!r} is not a keras.Input tensor")
            own.add(id(node))

        def kept_index(t: KerasTensor) -> int:
            layer, index, _ = t._keras_history
            return sum(1 for n in layer._inbound_nodes[:index] if id(n) in own)

        def io_history(t: KerasTensor) -> list[Any]:
            layer, _, tensor_index = t._keras_history
            # Keras numbers a nested Functional's nodes from 1 here (a leftover of Keras 2, where
            # a Functional model owned a node of its own), but from 0 in `inbound_nodes`
            return [layer.name, kept_index(t) + int(isinstance(layer, Functional)), tensor_index]

        layer_configs = []
        for layer in self._operations:
            entry = layers_module.serialize(layer)
            entry["name"] = layer.name
            entry["inbound_nodes"] = [
                _serialize_node(n, kept_index) for n in layer._inbound_nodes
                if id(n) in own and not n.is_input]
            layer_configs.append(entry)
        return {"name": self.name, "trainable": self.trainable, "layers": layer_configs,
                "input_layers": tree.map_structure(io_history, self._inputs_struct),
                "output_layers": tree.map_structure(io_history, self._outputs_struct)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> Functional:
        """Rebuild the model from `get_config()` (kcompile's or real Keras 3's): the layers, then
        every layer call in order, shared layers and nested models included. Every layer is
        checked first; one ValueError lists all the unknown or unsupported ones."""
        return _functional_from_config(cls, config, custom_objects)


def is_functional_config(config: Any) -> bool:
    return isinstance(config, dict) and all(k in config for k in ("layers", "input_layers",
                                                                    "output_layers"))


# -- call arguments Keras records ------------------------------------------------------------------
def _keras_filled_kwargs(layer: Layer) -> dict[str, Any]:
    """Call arguments Keras 3's `Layer.__call__` fills in itself (and so records in a node): a
    `training` argument whose default is not None, and `mask=None` when `call` takes a mask. Listed
    for kcompile's layers, whose `call` signatures differ from Keras's; read from `call` for
    custom layers, as Keras does."""
    from kcompile.layers.core import Dropout
    from kcompile.layers.normalization import BatchNormalization
    from kcompile.models.sequential import Sequential

    if isinstance(layer, Functional | Sequential | BatchNormalization):
        return {"mask": None}
    if isinstance(layer, Dropout):
        return {"training": False}
    if layers_module._registry().get(type(layer).__name__) is type(layer) or \
            type(layer).__module__.startswith("kcompile."):
        return {}
    try:
        params = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return {}
    filled: dict[str, Any] = {}
    training = params.get("training")
    if training is not None and training.default not in (None, inspect.Parameter.empty):
        filled["training"] = training.default
    mask = params.get("mask")
    if mask is not None and mask.default is None:
        filled["mask"] = None
    return filled


def _keras_fills(node: CallNode) -> bool:
    """Whether Keras records its filled-in arguments for this call: always for a Functional model;
    for other layers only on the fast path of one tensor of the layer's dtype and no keywords
    (otherwise Keras records the caller's own keyword arguments)."""
    if isinstance(node.layer, Functional):
        return True
    return not node.kwargs and len(node.args) == 1 and isinstance(node.args[0], KerasTensor) \
        and node.args[0].dtype == node.layer.dtype


def _recorded_kwargs(node: CallNode) -> dict[str, Any]:
    kwargs = dict(node.kwargs)
    if _keras_fills(node):
        for key, value in _keras_filled_kwargs(node.layer).items():
            kwargs.setdefault(key, value)
    return kwargs


def _caller_kwargs(layer: Layer, recorded: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_recorded_kwargs`: what the caller passed, for calling a kcompile layer."""
    filled = _keras_filled_kwargs(layer)
    kwargs = dict(recorded)
    if isinstance(layer, Functional):
        if kwargs.get("mask", 0) is None:
            del kwargs["mask"]
    elif filled and kwargs == filled:
        kwargs = {}
    if "mask" in kwargs and kwargs["mask"] is None and not _accepts(layer, "mask"):
        del kwargs["mask"]  # an explicit mask=None; kcompile's layers take no masks
    return kwargs


def _accepts(layer: Layer, argument: str) -> bool:
    try:
        params = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False
    return argument in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                     for p in params.values())


# -- writing ---------------------------------------------------------------------------------------
def _serialize_node(node: CallNode, kept_index: Any) -> dict[str, Any]:
    layer = node.layer

    def encode(x: Any) -> Any:
        if isinstance(x, KerasTensor):
            _, _, tensor_index = x._keras_history
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": tuple(x.shape), "dtype": x.dtype,
                               "keras_history": [x._keras_history[0].name, kept_index(x),
                                                 tensor_index]}}
        if isinstance(x, dict):
            return {k: encode(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(encode(v) for v in x)
        if x is None or isinstance(x, bool | int | float | str):
            return x
        if isinstance(x, np.generic):
            return x.item()
        raise TypeError(f"Layer '{layer.name}' ({type(layer).__name__}) was called with an "
                        f"argument of type {type(x).__name__} ({x!r:.60}), which a model config "
                        "cannot hold")

    return {"args": encode(tuple(node.args)), "kwargs": encode(_recorded_kwargs(node))}


# -- reading ---------------------------------------------------------------------------------------
def _tensor_refs(x: Any) -> list[str]:
    """Names of the layers whose outputs a serialized call argument refers to."""
    if isinstance(x, dict):
        if x.get("class_name") == "__keras_tensor__":
            history = (x.get("config") or {}).get("keras_history")
            return [history[0]] if isinstance(history, list | tuple) and history and \
                isinstance(history[0], str) else []
        return [r for v in x.values() for r in _tensor_refs(v)]
    if isinstance(x, list | tuple):
        return [r for v in x for r in _tensor_refs(v)]
    return []


def _io_refs(x: Any) -> list[str]:
    if isinstance(x, list | tuple) and len(x) == 3 and isinstance(x[0], str):
        return [x[0]]
    if isinstance(x, dict):
        return [r for v in x.values() for r in _io_refs(v)]
    if isinstance(x, list | tuple):
        return [r for v in x for r in _io_refs(v)]
    return []


def _without_mask_ops(entries: list[Any], outputs: Any,
                      custom_objects: dict[str, Any] | None) -> list[Any]:
    """Keras 3 records the masks it passed to layers as calls of Keras ops (Embedding's
    `not_equal`, Masking's `not_equal`/`any`, the merges' `logical_or`, ...) feeding `mask=`
    arguments. kcompile derives those masks again when the layers are called (a layer gets the mask
    its input carries, as in Keras), so ops used by nothing but masks are left out, and the `mask=`
    arguments that referred to them become None."""
    ops = {layers_module._entry_name(e) for e in entries if isinstance(e, dict)
           and layers_module._is_keras_op(e.get("module"))
           and layers_module._resolve_class(e.get("class_name"), e.get("module"),
                                            e.get("registered_name"), custom_objects) is None}
    if not ops:
        return entries
    uses: dict[str, list[tuple[str | None, bool]]] = {}  # op -> (consumer, through a mask)
    for entry in entries:
        name = layers_module._entry_name(entry)
        for node in (entry.get("inbound_nodes") or []) if isinstance(entry, dict) else []:
            if not isinstance(node, dict):
                for ref in _tensor_refs(node):
                    uses.setdefault(ref, []).append((name, False))
                continue
            for ref in _tensor_refs(node.get("args")):
                uses.setdefault(ref, []).append((name, False))
            for key, value in (node.get("kwargs") or {}).items():
                for ref in _tensor_refs(value):
                    uses.setdefault(ref, []).append((name, key == "mask"))
    for ref in _io_refs(outputs):
        uses.setdefault(ref, []).append((None, False))
    dropped = set(ops)
    changed = True
    while changed:
        changed = False
        for op in list(dropped):
            if any(not masked and consumer not in dropped for consumer, masked in uses.get(op, [])):
                dropped.discard(op)
                changed = True
    if not dropped:
        return entries

    def clear(x: Any) -> Any:
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                return None if set(_tensor_refs(x)) & dropped else x
            return {k: clear(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(clear(v) for v in x)
        return x

    kept = []
    for entry in entries:
        if layers_module._entry_name(entry) in dropped:
            continue
        nodes = entry.get("inbound_nodes") if isinstance(entry, dict) else None
        if isinstance(nodes, list) and any(isinstance(n, dict) and "mask" in (n.get("kwargs") or {})
                                           for n in nodes):
            entry = {**entry, "inbound_nodes": [
                {**n, "kwargs": {**n["kwargs"], "mask": clear(n["kwargs"]["mask"])}}
                if isinstance(n, dict) and "mask" in (n.get("kwargs") or {}) else n
                for n in nodes]}
        kept.append(entry)
    return kept


class _NotYet(Exception):
    """A node refers to a call of a layer that has not been made yet."""


def _functional_from_config(cls: type, config: dict[str, Any],
                            custom_objects: dict[str, Any] | None) -> Functional:
    if not is_functional_config(config):
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"Not a Functional model config: it needs 'layers', 'input_layers' and "
                         f"'output_layers' (got {got})")
    model_name = config.get("name") or "functional"
    entries = config["layers"]
    if not isinstance(entries, list):
        raise ValueError(f"Functional '{model_name}': 'layers' must be a list of layer configs")
    entries = _without_mask_ops(entries, config.get("output_layers"), custom_objects)
    layers_module.check_supported(entries, custom_objects)

    created: dict[str, Layer] = {}
    pending: dict[str, list[Any]] = {}
    for entry in entries:
        name = layers_module._entry_name(entry)
        if name in created:
            raise ValueError(f"Functional '{model_name}': two layers are named '{name}'")
        created[name] = layers_module.deserialize_entry(entry, custom_objects)
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise ValueError(f"Functional '{model_name}': layer '{name}' has malformed "
                             f"inbound_nodes {nodes!r:.80}")
        pending[name] = list(nodes)
    done = {name: 0 for name in created}

    # Calls are made layer by layer in config order; a call whose inputs come from a call not made
    # yet waits for a later sweep (a layer shared at several depths), as Keras does.
    while any(pending.values()):
        progress = False
        for name, nodes in pending.items():
            layer = created[name]
            while nodes:
                try:
                    args, kwargs = _decode_node(nodes[0], created, model_name, name)
                except _NotYet:
                    break
                kwargs = _caller_kwargs(layer, kwargs)
                try:
                    layer(*args, **kwargs)
                except (ValueError, TypeError) as err:
                    raise type(err)(f"Functional '{model_name}': calling layer '{name}' "
                                    f"({type(layer).__name__}), inbound node {done[name]}: "
                                    f"{err}") from err
                nodes.pop(0)
                done[name] += 1
                progress = True
        if not progress:
            stuck = [f"'{n}' (node {done[n]})" for n, nodes in pending.items() if nodes]
            raise ValueError(f"Functional '{model_name}': the graph has a cycle or refers to layer "
                             f"calls that do not exist; cannot make the calls of {', '.join(stuck)}")

    def io_tensor(history: list[Any]) -> KerasTensor:
        lname, node_index, tensor_index = history
        if lname not in created:
            raise ValueError(f"Functional '{model_name}': inputs/outputs refer to unknown layer "
                             f"'{lname}'")
        layer = created[lname]
        node_index = int(node_index) - int(isinstance(layer, Functional))
        return _output_of(layer, node_index, int(tensor_index), model_name)

    def map_io(structure: Any) -> Any:
        if isinstance(structure, list | tuple) and len(structure) == 3 and \
                isinstance(structure[0], str):
            return io_tensor(list(structure))
        if isinstance(structure, dict):
            return {k: map_io(v) for k, v in structure.items()}
        if isinstance(structure, list | tuple):
            return type(structure)(map_io(v) for v in structure)
        raise ValueError(f"Functional '{model_name}': malformed input_layers/output_layers entry "
                         f"{structure!r:.80}")

    inputs = map_io(config["input_layers"])
    outputs = map_io(config["output_layers"])
    trainable = config.get("trainable")
    target = cls if isinstance(cls, type) and issubclass(cls, Functional) else Functional
    return target(inputs=inputs, outputs=outputs, name=config.get("name"),
                  trainable=True if trainable is None else bool(trainable))


def _output_of(layer: Layer, node_index: int, tensor_index: int, model_name: str) -> KerasTensor:
    if not 0 <= node_index < len(layer._inbound_nodes):
        raise ValueError(f"Functional '{model_name}': layer '{layer.name}' has no call number "
                         f"{node_index}")
    outs = layer._inbound_nodes[node_index].output_tensors
    if not 0 <= tensor_index < len(outs):
        raise ValueError(f"Functional '{model_name}': call {node_index} of layer '{layer.name}' has "
                         f"{len(outs)} output(s), not an output {tensor_index}")
    return outs[tensor_index]


def _decode_node(node_data: Any, created: dict[str, Layer], model_name: str, layer_name: str
                 ) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of one recorded call; raises `_NotYet` when an input's call is not made."""
    where = f"Functional '{model_name}': layer '{layer_name}'"

    def tensor(history: Any) -> KerasTensor:
        if not (isinstance(history, list | tuple) and len(history) == 3
                and isinstance(history[0], str)):
            raise ValueError(f"{where}: malformed keras_history {history!r:.80}")
        lname, node_index, tensor_index = history
        if lname not in created:
            raise ValueError(f"{where}: an input comes from unknown layer '{lname}'")
        if int(node_index) >= len(created[lname]._inbound_nodes):
            raise _NotYet
        return _output_of(created[lname], int(node_index), int(tensor_index), model_name)

    if isinstance(node_data, list):  # the legacy form: [[layer, node, tensor, kwargs?], ...]
        tensors, kwargs = [], {}
        for item in node_data:
            if not isinstance(item, list | tuple) or len(item) not in (3, 4):
                raise ValueError(f"{where}: malformed inbound node {node_data!r:.80}")
            tensors.append(tensor(item[:3]))
            if len(item) == 4:
                kwargs = dict(item[3] or {})
        return [tensors[0] if len(tensors) == 1 else tensors], kwargs
    if not isinstance(node_data, dict):
        raise ValueError(f"{where}: malformed inbound node {node_data!r:.80}")

    def decode(x: Any) -> Any:
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                return tensor((x.get("config") or {}).get("keras_history"))
            if "class_name" in x and "config" in x:
                raise ValueError(f"{where}: cannot read the call argument {x['class_name']!r} "
                                 "(only tensors and plain Python values are supported)")
            return {k: decode(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(decode(v) for v in x)
        return x

    args = decode(node_data.get("args", []))
    kwargs = decode(node_data.get("kwargs") or {})
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise ValueError(f"{where}: malformed inbound node {node_data!r:.80}")
    return list(args), kwargs


def _functional_name() -> str:
    from kcompile.layers.base import unique_name
    return unique_name("functional")
