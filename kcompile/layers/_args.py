"""Argument normalisation and 'not supported yet' checks shared by layer constructors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def int_tuple(value: int | Sequence[int], n: int, what: str, layer: str) -> tuple[int, ...]:
    items = (value,) * n if isinstance(value, int | np.integer) else value
    try:
        t = tuple(_as_int(v) for v in items)
    except (TypeError, ValueError):
        t = ()
    if len(t) != n or min(t) < 1:
        raise ValueError(f"{layer}: `{what}` must be a positive int or a tuple of {n} positive "
                         f"ints, got {value!r}")
    return t


def _as_int(v: object) -> int:
    """An int, or an integral NumPy int; floats, bools and strings are rejected."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise TypeError(f"not an int: {v!r}")
    return int(v)


def padding_mode(value: str, layer: str) -> str:
    p = str(value).lower()
    if p not in ("valid", "same"):
        raise ValueError(f"{layer}: `padding` must be 'valid' or 'same', got {value!r}")
    return p


def channels_last(value: str | None, layer: str) -> str:
    if value not in (None, "channels_last"):
        raise ValueError(f"{layer}: data_format={value!r} is not supported yet (channels_last only)")
    return "channels_last"


def unsupported(layer: str, **options: Any) -> None:
    """Reject options we do not implement yet instead of silently ignoring them."""
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"{layer}: `{name}` is not supported yet (got {value!r})")
