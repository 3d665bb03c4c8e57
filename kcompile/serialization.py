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


def serialize_known(obj: Any, module: str, builtins: dict[str, type]) -> dict[str, Any]:
    """Keras's form of an optimizer, schedule, ...: `module` for kcompile's own classes; a user
    class is written with its registered name ("package>Name") and no module, as Keras does."""
    from kcompile.saving.object_registration import get_registered_name

    cls = type(obj)
    if builtins.get(cls.__name__) is cls:
        return {"module": module, "class_name": cls.__name__, "config": obj.get_config(),
                "registered_name": None}
    return {"module": None, "class_name": cls.__name__, "config": obj.get_config(),
            "registered_name": get_registered_name(cls)}


def require_float32(owner: str, dtype: Any) -> None:
    """Configs may name a dtype (a string or a DTypePolicy); kcompile computes in float32 only."""
    if dtype is not None and dtype_name(dtype) != "float32":
        raise ValueError(f"{owner}: dtype={dtype_name(dtype)!r} is not supported by kcompile "
                         "(float32 only)")
