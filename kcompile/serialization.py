"""Keras-style `{"module", "class_name", "config", "registered_name"}` objects and name lookup."""

from __future__ import annotations

from typing import Any


def serialize(obj: Any, module: str) -> dict[str, Any]:
    return {"module": module, "class_name": type(obj).__name__, "config": obj.get_config(),
            "registered_name": None}


def lookup(kind: str, name: str, table: dict[str, Any]) -> Any:
    key = name if name in table else name.lower()
    if key not in table:
        raise ValueError(f"Unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
    return table[key]


def dtype_policy(dtype: str) -> dict[str, Any]:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype},
            "registered_name": None}


def dtype_name(dtype: Any) -> str:
    """Accept 'float32' or a serialized DTypePolicy dict."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return str(dtype)
