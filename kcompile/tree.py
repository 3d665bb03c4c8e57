"""Minimal nested-structure utilities (lists, tuples, dicts) for layer inputs and outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def is_nested(x: Any) -> bool:
    return isinstance(x, list | tuple | dict)


def flatten(x: Any) -> list[Any]:
    """Leaves in order (dicts by insertion order, as Keras's Functional does)."""
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in flatten(v)]
    if isinstance(x, list | tuple):
        return [leaf for v in x for leaf in flatten(v)]
    return [x]


def map_structure(fn: Callable[[Any], Any], x: Any) -> Any:
    if isinstance(x, dict):
        return {k: map_structure(fn, v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(map_structure(fn, v) for v in x)
    return fn(x)


def pack_as(structure: Any, leaves: list[Any]) -> Any:
    """Inverse of `flatten`: rebuild `structure` from `leaves`."""
    it = iter(leaves)
    out = map_structure(lambda _: next(it), structure)
    return out
