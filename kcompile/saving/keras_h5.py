"""Keras 3's HDF5 weights layout (`model.weights.h5` inside `.keras`, and `.weights.h5` files).

The layout, as real Keras 3 writes and reads it:

    vars                                (attrs name=<model name>; the model's own variables: none)
    layers/<key>/vars/0, 1, ...         one group per layer of the model, in `model.layers` order
    layers/<key>/layers/<key>/vars/...  a nested model's layers, recursively
    layers/<key>/layer/vars/...         a wrapper's layer (TimeDistributed: `_saveable_children`)
    optimizer/vars/0, 1, ...            (attrs name=<optimizer name>) iterations, learning rate, slots

`<key>` is NOT the layer's name: it is the snake_case class name, deduplicated within its container
in order ("dense", "dense_1", ...); the layer's own name is the `name` attribute of its `vars` group.
Each layer's variables are its trainable then non-trainable ones, in creation order (BatchNorm:
gamma, beta, moving_mean, moving_variance), stored as datasets "0", "1", ...
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from kcompile.ir.core import format_shape


def snake_case(name: str) -> str:
    """"BatchNormalization" -> "batch_normalization", "Conv2D" -> "conv2d" (Keras's rule)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if s[0] != "_" else "private" + s


def _is_model(layer: Any) -> bool:
    from kcompile.models.model import Model

    return isinstance(layer, Model)


def own_variables(layer: Any) -> list[Any]:
    """The variables a layer stores in its own `vars` group."""
    if _is_model(layer):
        return []
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
    children = [w for _, child in getattr(layer, "_saveable_children", ()) for w in child.weights]
    inner = [w for w in layer.weights if all(w is not v for v in own + children)]
    if inner:
        raise NotImplementedError(f"Layer '{layer.name}' ({type(layer).__name__}) holds weights of "
                                  "nested layers; saving such custom layers is not supported yet")
    return own


def walk_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) for the model's layers and, depth first, those of nested models."""
    used: dict[str, int] = {}
    for layer in model.layers:
        base = snake_case(type(layer).__name__)
        count = used.get(base, 0)
        used[base] = count + 1
        path = f"{prefix}layers/{base if count == 0 else f'{base}_{count}'}"
        yield path, layer
        yield from _children(layer, path)
        if _is_model(layer):
            yield from walk_layers(layer, path + "/")


def _children(layer: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Layers held by a wrapper under an attribute key, as Keras stores them (`.../layer`)."""
    for key, child in getattr(layer, "_saveable_children", ()):
        yield f"{path}/{key}", child
        yield from _children(child, f"{path}/{key}")


def _write_vars(group: Any, name: str, arrays: list[np.ndarray]) -> None:
    g = group.create_group("vars")
    g.attrs["name"] = name
    for i, a in enumerate(arrays):
        g.create_dataset(str(i), data=np.asarray(a))


def write_state(h5: Any, model: Any, optimizer_arrays: list[np.ndarray] | None = None,
                optimizer_name: str | None = None) -> None:
    """The model's weights (and, when given, the optimizer's variables) into an open h5py file."""
    _write_vars(h5, model.name, [])
    h5.require_group("layers")
    for path, layer in walk_layers(model):
        group = h5.require_group(path)
        if _is_model(layer):
            group.require_group("layers")
        _write_vars(group, layer.name, [np.asarray(v.value) for v in own_variables(layer)])
    if optimizer_arrays is not None:
        _write_vars(h5.create_group("optimizer"), optimizer_name or "optimizer", optimizer_arrays)


def read_weights(h5: Any, model: Any, where: str) -> list[tuple[Any, np.ndarray]]:
    """(variable, value) pairs for every weight of the model, every shape checked first; raises a
    ValueError naming the file (`where`), the layer and the path on any mismatch."""
    pairs = []
    for path, layer in walk_layers(model):
        own = own_variables(layer)
        what = f"{where}: layer '{layer.name}' ({type(layer).__name__})"
        group = h5.get(f"{path}/vars")
        if group is None:
            if own:
                raise ValueError(f"{what}: no weights at '{path}/vars' in the file")
            continue
        names = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if names != [str(i) for i in range(len(names))]:
            raise ValueError(f"{what}: unexpected entries {names} at '{path}/vars'")
        if len(names) != len(own):
            raise ValueError(f"{what}: the file has {len(names)} weight(s) at '{path}/vars', the "
                             f"layer has {len(own)} ({[format_shape(v.shape) for v in own]})")
        for i, var in enumerate(own):
            value = np.asarray(group[str(i)][()])
            if value.shape != tuple(var.shape):
                raise ValueError(f"{what}: weight '{var.path}' has shape {format_shape(var.shape)} in "
                                 f"the model but {format_shape(value.shape)} in the file")
            pairs.append((var, value))
    return pairs


def read_optimizer(h5: Any) -> list[np.ndarray] | None:
    group = h5.get("optimizer/vars")
    if group is None:
        return None
    n = len(group.keys())
    return [np.asarray(group[str(i)][()]) for i in range(n)]


__all__ = ["own_variables", "read_optimizer", "read_weights", "snake_case", "walk_layers",
           "write_state"]
