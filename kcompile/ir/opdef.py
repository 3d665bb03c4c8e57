"""`OpDef`: every rule of one IR op in one place, and the registry of all ops.

An op is registered once with, in this order: its attributes (validated), `infer` (input types ->
output types, batch-symbolic), `ref` (the NumPy implementation: the eager executor and the oracle),
`vjp` (the gradient, in IR ops) and `onnx` (its default-domain ONNX form). `vjp` and `onnx` may be
`None` until the issue that needs them fills them in; whoever calls a missing rule gets an error
naming the op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kcompile.ir.core import TensorType

_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute: its Python type(s), a default (or required) and an optional check."""

    kind: type | tuple[type, ...]
    default: Any = _REQUIRED
    check: Callable[[Any], bool] | None = None
    help: str = ""


@dataclass
class OpDef:
    name: str
    attrs: dict[str, Attr]
    infer: Callable[..., Sequence[TensorType]]
    ref: Callable[..., Any]
    vjp: Callable[..., Any] | None = None
    onnx: Callable[..., Any] | None = None
    num_inputs: int | None = None  # None: variadic
    doc: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"op {self.name!r}: unknown attribute(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.attrs)}")
        out = {}
        for key, spec in self.attrs.items():
            if key in attrs:
                value = attrs[key]
            elif spec.default is _REQUIRED:
                raise ValueError(f"op {self.name!r}: missing required attribute {key!r}")
            else:
                value = spec.default
            if isinstance(value, list):
                value = tuple(value)
            if value is not None and (not isinstance(value, spec.kind) or _bool_for_number(value, spec.kind)):
                raise TypeError(f"op {self.name!r}: attribute {key!r} must be "
                                f"{_kind_name(spec.kind)}, got {value!r}")
            if spec.check is not None and value is not None and not spec.check(value):
                raise ValueError(f"op {self.name!r}: invalid attribute {key}={value!r}"
                                 + (f" ({spec.help})" if spec.help else ""))
            out[key] = value
        return out

    def infer_types(self, types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        if self.num_inputs is not None and len(types) != self.num_inputs:
            raise ValueError(f"op {self.name!r} takes {self.num_inputs} input(s), got {len(types)}")
        result = self.infer(*types, **attrs)
        return [result] if isinstance(result, TensorType) else list(result)

    def run_ref(self, arrays: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        result = self.ref(*arrays, **attrs)
        return list(result) if isinstance(result, tuple | list) else [result]


def _bool_for_number(value: Any, kind: type | tuple[type, ...]) -> bool:
    """`True` is an `int` to Python, but never a valid int (or float) attribute such as an axis."""
    return isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


_REGISTRY: dict[str, OpDef] = {}


def defop(name: str, *, attrs: dict[str, Attr] | None = None, infer: Callable[..., Any],
          ref: Callable[..., Any], vjp: Callable[..., Any] | None = None,
          onnx: Callable[..., Any] | None = None, num_inputs: int | None = None,
          doc: str = "", tags: Sequence[str] = ()) -> OpDef:
    """Register an op; its rules are given in the fixed order attrs, infer, ref, vjp, onnx."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is registered twice")
    op = OpDef(name, dict(attrs or {}), infer, ref, vjp, onnx, num_inputs, doc, frozenset(tags))
    _REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown IR op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


def _ensure_loaded() -> None:
    import kcompile.ir.ops  # noqa: F401  (registers every op on import)
