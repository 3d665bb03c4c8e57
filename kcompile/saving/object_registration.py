"""Custom classes known by name when configs are read: `register_keras_serializable`,
`custom_objects=` and `custom_object_scope`, with Keras 3's names and precedence.

A registered class is stored under "package>name" (Keras's `registered_name`), which is what a
saved config records for it; `custom_objects` maps plain class names (or registered names).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_GLOBAL_CUSTOM_OBJECTS: dict[str, Any] = {}
_GLOBAL_CUSTOM_NAMES: dict[Any, str] = {}
_SCOPE = threading.local()


def register_keras_serializable(package: str = "Custom", name: str | None = None
                                ) -> Callable[[Any], Any]:
    """Class decorator: make `cls` loadable by name from saved configs, as "package>name"."""
    if ">" in package:
        raise ValueError(f"register_keras_serializable: package must not contain '>', got {package!r}")

    def decorator(obj: Any) -> Any:
        serializable_name = name if name is not None else getattr(obj, "__name__", None)
        if not serializable_name:
            raise ValueError(f"register_keras_serializable: cannot name {obj!r}; pass name=")
        registered = f"{package}>{serializable_name}"
        if isinstance(obj, type) and not hasattr(obj, "get_config"):
            raise ValueError(f"register_keras_serializable: {obj.__name__} must define get_config() "
                             "to be serializable")
        _GLOBAL_CUSTOM_OBJECTS[registered] = obj
        _GLOBAL_CUSTOM_NAMES[obj] = registered
        return obj

    return decorator


def get_registered_name(obj: Any) -> str:
    """"package>name" for a registered object, else its plain name (as Keras)."""
    return _GLOBAL_CUSTOM_NAMES.get(obj, getattr(obj, "__name__", type(obj).__name__))


def get_custom_objects() -> dict[str, Any]:
    """The global registry itself (mutable, as in Keras)."""
    return _GLOBAL_CUSTOM_OBJECTS


class CustomObjectScope:
    """`with custom_object_scope({"MyLayer": MyLayer}): load_model(...)`."""

    def __init__(self, custom_objects: dict[str, Any] | None = None) -> None:
        self.custom_objects = dict(custom_objects or {})
        self._previous: dict[str, Any] | None = None

    def __enter__(self) -> CustomObjectScope:
        self._previous = getattr(_SCOPE, "objects", None)
        _SCOPE.objects = {**(self._previous or {}), **self.custom_objects}
        return self

    def __exit__(self, *exc: Any) -> None:
        _SCOPE.objects = self._previous


custom_object_scope = CustomObjectScope


def get_registered_object(name: str, custom_objects: dict[str, Any] | None = None,
                          module_objects: dict[str, Any] | None = None) -> Any:
    """Resolve a name: `custom_objects`, then the active scope, then the global registry, then
    `module_objects` (the built-ins); None when nobody knows it."""
    for table in (custom_objects, getattr(_SCOPE, "objects", None), _GLOBAL_CUSTOM_OBJECTS,
                  module_objects):
        if table and name in table:
            return table[name]
    return None


def resolve_custom(class_name: str, registered_name: str | None,
                   custom_objects: dict[str, Any] | None) -> Any:
    """A user-supplied class for a serialized entry, or None: the registered name ("pkg>Name") is
    tried first, then the plain class name."""
    for key in (registered_name, class_name):
        if key:
            obj = get_registered_object(key, custom_objects)
            if obj is not None:
                return obj
    return None


__all__ = ["CustomObjectScope", "custom_object_scope", "get_custom_objects", "get_registered_name",
           "get_registered_object", "register_keras_serializable", "resolve_custom"]
