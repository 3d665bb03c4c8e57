"""Keras layers (`kcompile.layers`), with Keras 3 names, defaults and weight order."""

import inspect
from collections.abc import Sequence
from typing import Any

from kcompile.layers.base import InputSpec, KerasTensor, Layer
from kcompile.layers.bidirectional import Bidirectional
from kcompile.layers.conv import Conv1D, Conv2D
from kcompile.layers.core import Activation, Dense, Dropout, Flatten, Reshape
from kcompile.layers.embedding import Embedding
from kcompile.layers.input_layer import Input, InputLayer
from kcompile.layers.masking import Masking
from kcompile.layers.merge import Add, Concatenate
from kcompile.layers.normalization import BatchNormalization, LayerNormalization
from kcompile.layers.pooling import (
    AveragePooling1D,
    AveragePooling2D,
    AvgPool1D,
    AvgPool2D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalAvgPool1D,
    GlobalAvgPool2D,
    GlobalMaxPool1D,
    GlobalMaxPool2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    MaxPool1D,
    MaxPool2D,
    MaxPooling1D,
    MaxPooling2D,
)
from kcompile.layers.recurrent import GRU, LSTM, SimpleRNN
from kcompile.layers.wrappers import TimeDistributed

Convolution1D = Conv1D
Convolution2D = Conv2D

__all__ = [
    "Activation", "Add", "AveragePooling2D", "AvgPool2D", "BatchNormalization", "Concatenate",
    "Conv2D", "Convolution2D", "Dense", "Dropout", "Flatten", "GlobalAveragePooling2D",
    "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D", "Input", "InputLayer", "InputSpec",
    "KerasTensor", "Layer", "MaxPool2D", "MaxPooling2D", "Reshape",
]
__all__ += ["GRU", "LSTM", "SimpleRNN"]
__all__ += [
    "AveragePooling1D", "AvgPool1D", "Conv1D", "Convolution1D", "Embedding", "GlobalAveragePooling1D",
    "GlobalAvgPool1D", "GlobalMaxPool1D", "GlobalMaxPooling1D", "LayerNormalization", "MaxPool1D",
    "MaxPooling1D", "TimeDistributed",
]
__all__ += ["Bidirectional"]
__all__ += ["Masking"]


def _registry() -> dict[str, type]:
    """Class name -> class, for `from_config` of serialized layers."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and issubclass(obj, Layer)}


def _builtin_classes() -> dict[str, type]:
    """kcompile's layers and models by the class names Keras 3 writes."""
    from kcompile.models import Functional, Model, Sequential

    return {**_registry(), "Functional": Functional, "Sequential": Sequential, "Model": Model}


def _is_keras_op(module: Any) -> bool:
    """Keras ops called directly on symbolic tensors (`keras.ops.add(x, y)`) are serialized as
    operations of `keras.src.ops.*`; their class names (Add, ...) must not resolve to layers."""
    return isinstance(module, str) and (module.startswith("keras.src.ops")
                                        or module.startswith("keras.ops"))


def _resolve_class(class_name: Any, module: Any = None, registered_name: Any = None,
                   custom_objects: dict[str, Any] | None = None) -> Any:
    """The class a serialized entry names, or None when unknown: `custom_objects`, the active
    `custom_object_scope` and classes registered with `register_keras_serializable` come first,
    then kcompile's own layers and models. The one place where layer class names are looked up."""
    if not isinstance(class_name, str):
        return None
    from kcompile.saving.object_registration import resolve_custom

    registered = registered_name if isinstance(registered_name, str) else None
    cls = resolve_custom(class_name, registered, custom_objects)
    if cls is not None:
        return cls
    if _is_keras_op(module):
        return None
    return _builtin_classes().get(class_name)


def _entry_name(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "?"
    config = entry.get("config")
    name = entry.get("name") or (config.get("name") if isinstance(config, dict) else None)
    return str(name) if name else "?"


def _entry_problems(entry: Any, custom_objects: dict[str, Any] | None, path: str) -> list[str]:
    """Why `entry` (and any model nested in it) cannot be deserialized; empty when it can."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) \
            or not isinstance(entry.get("config", {}), dict):
        text = repr(entry)
        return [f"layer '{path}?' is not a serialized layer ({text[:80]}"
                f"{'...' if len(text) > 80 else ''})"]
    class_name, module = entry["class_name"], entry.get("module")
    config = entry.get("config") or {}
    where = f"layer '{path}{_entry_name(entry)}'"
    cls = _resolve_class(class_name, module, entry.get("registered_name"), custom_objects)
    if cls is None:
        if class_name == "Lambda":
            return [f"Lambda {where}: Lambda layers wrap Python code (stored as bytecode) and "
                    "cannot be loaded; rewrite the function as a Layer subclass and pass it in "
                    "custom_objects"]
        if _is_keras_op(module):
            return [f"Keras op {class_name!r} ({module}) as {where}: ops called directly on "
                    "symbolic tensors are not supported; use layers"]
        return [f"Unknown layer {class_name!r} ({where}): pass the class in custom_objects or "
                "register it with @kcompile.saving.register_keras_serializable"]
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        return [f"{class_name!r} ({where}) resolves to {cls!r}, which is not a Layer subclass"]
    from kcompile.models import Model

    problems: list[str] = []
    if issubclass(cls, Model) and isinstance(config.get("layers"), list):
        from kcompile.models.functional import _without_mask_ops  # Keras's ops for masks

        for sub in _without_mask_ops(config["layers"], config.get("output_layers"), custom_objects):
            problems += _entry_problems(sub, custom_objects, f"{path}{_entry_name(entry)}/")
    for key in ("layer", "backward_layer"):  # a wrapper's layers (TimeDistributed, Bidirectional)
        if isinstance(config.get(key), dict):
            problems += _entry_problems(config[key], custom_objects, f"{path}{_entry_name(entry)}/")
    return problems


def check_supported(entries: Sequence[Any], custom_objects: dict[str, Any] | None = None) -> None:
    """Raise one ValueError naming every unknown or unsupported layer among `entries` (serialized
    layers; nested models are walked too), before anything is built."""
    problems = [p for entry in entries for p in _entry_problems(entry, custom_objects, "")]
    if problems:
        raise ValueError(
            f"Cannot deserialize: {len(problems)} layer(s) are unknown or unsupported (nothing was "
            f"built): {'; '.join(problems)}. kcompile's layers: "
            f"{', '.join(sorted(n for n in _registry() if n != 'Layer'))}")


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Layer:
    """A layer or model from Keras's `{"module", "class_name", "config", ...}` form (as `serialize`
    and real Keras 3 write it). `custom_objects` (class name -> class) takes precedence over the
    built-in layers. Every layer in the config is checked before anything is built."""
    check_supported([config], custom_objects)
    return deserialize_entry(config, custom_objects)


def deserialize_entry(entry: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Layer:
    """`deserialize` without the up-front check (for models that have checked all their layers);
    errors name the layer."""
    from kcompile.models import Model

    class_name = entry["class_name"]
    name = _entry_name(entry)
    cls = _resolve_class(class_name, entry.get("module"), entry.get("registered_name"),
                         custom_objects)
    if cls is None:
        check_supported([entry], custom_objects)
    try:
        config = dict(entry.get("config") or {})
        if "custom_objects" in inspect.signature(cls.from_config).parameters:
            layer = cls.from_config(config, custom_objects=custom_objects)
        else:
            layer = cls.from_config(config)
        build = entry.get("build_config")
        if build and not isinstance(layer, Model):
            layer.build_from_config(build)
    except (ValueError, TypeError, KeyError) as err:
        kind = TypeError if isinstance(err, TypeError) else ValueError
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise kind(f"Layer '{name}' (class {class_name!r}): {detail}") from err
    return layer


# Keras builds these at construction (they have no weights), so its configs give them no build_config
_BUILT_AT_INIT = (Activation, AveragePooling2D, Dropout, GlobalAveragePooling2D, GlobalMaxPooling2D,
                  InputLayer, MaxPooling2D, Reshape, AveragePooling1D, GlobalAveragePooling1D,
                  GlobalMaxPooling1D, MaxPooling1D)


def _module_and_registered_name(cls: type) -> tuple[str | None, str | None]:
    """What Keras 3 writes as "module" and "registered_name" for a class."""
    from kcompile.models import Functional, Sequential

    if cls is Functional:
        return "keras.src.models.functional", "Functional"
    if cls is Sequential:
        return "keras", None
    if _registry().get(cls.__name__) is cls:
        return "keras.layers", None
    from kcompile.saving.object_registration import get_registered_name

    module = cls.__module__
    return (None if module == "__main__" else module), get_registered_name(cls)


def serialize(layer: Layer) -> dict[str, Any]:
    """Keras 3's `serialize_keras_object` form of a layer or model."""
    from kcompile.models import Model

    module, registered = _module_and_registered_name(type(layer))
    out = {"module": module, "class_name": type(layer).__name__,
           "config": layer.get_config(), "registered_name": registered}
    build = layer.get_build_config()
    if build is not None and not isinstance(layer, _BUILT_AT_INIT):
        out["build_config"] = build
    if isinstance(layer, Model):  # Keras writes one for every model, {} when not compiled
        out["compile_config"] = {}
        if getattr(layer, "compiled", False) and getattr(layer, "loss", None) is not None:
            from kcompile.saving.optimizer_state import compile_to_config

            out["compile_config"] = compile_to_config(layer)
    return out
