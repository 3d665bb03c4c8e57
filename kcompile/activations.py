"""Activation functions by name and as functions; built from `kcompile.ops`, so they trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kcompile import ops
from kcompile.serialization import lookup


def relu(x: Any) -> Any:
    return ops.relu(x)


def sigmoid(x: Any) -> Any:
    return ops.sigmoid(x)


def tanh(x: Any) -> Any:
    return ops.tanh(x)


def softmax(x: Any, axis: int = -1) -> Any:
    return ops.softmax(x, axis=axis)


def gelu(x: Any, approximate: bool = False) -> Any:
    return ops.gelu(x, approximate=approximate)


def silu(x: Any) -> Any:
    return ops.silu(x)


def exponential(x: Any) -> Any:
    return ops.exp(x)


def linear(x: Any) -> Any:
    return x


swish = silu

_TABLE: dict[str, Callable[..., Any]] = {
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax, "gelu": gelu,
    "silu": silu, "swish": silu, "exponential": exponential, "linear": linear,
}


def get(identifier: Any) -> Callable[..., Any]:
    """Resolve a name (or None -> linear) or pass a callable through; unknown names raise."""
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        return lookup("activation", identifier, _TABLE)
    if isinstance(identifier, dict):  # Keras serializes custom/complex activations as dicts
        return get(identifier.get("config", identifier.get("class_name")))
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret activation identifier: {identifier!r}")


def serialize(fn: Callable[..., Any]) -> str:
    for name, f in _TABLE.items():
        if f is fn and name not in ("swish",):
            return name
    name = getattr(fn, "__name__", None)
    if name in _TABLE:
        return name
    raise ValueError(f"Cannot serialize activation {fn!r}: only built-in activations have names")
