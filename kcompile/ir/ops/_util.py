"""Shape helpers shared by the op definitions."""

from __future__ import annotations

from collections.abc import Sequence

from kcompile.ir.core import _DTYPES, Dim, Shape, TensorType, canonical_dtype, format_shape

FLOAT_DTYPES = ("float32", "float64")
DTYPE_HELP = "one of " + ", ".join(_DTYPES)


def broadcast_shapes(op: str, a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting where `None` is the symbolic batch: it only meets itself or 1."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == db:
            out.append(da)
        elif da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        else:
            raise ValueError(f"{op}: shapes {format_shape(a)} and {format_shape(b)} "
                             "cannot be broadcast together")
    return tuple(reversed(out))


def same_dtype(op: str, *types: TensorType) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise TypeError(f"{op}: inputs must share one dtype, got {sorted(dtypes)}")
    return dtypes.pop()


def require_float(op: str, t: TensorType) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: expected a float tensor, got {t.dtype}")


def require_rank(op: str, t: TensorType, rank: int, what: str = "input") -> None:
    if t.rank != rank:
        raise ValueError(f"{op}: expected {what} of rank {rank}, got shape {format_shape(t.shape)}")


def norm_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def norm_axes(op: str, axes: Sequence[int] | None, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    out = tuple(sorted({norm_axis(op, a, rank) for a in axes}))
    if len(out) != len(tuple(axes)):
        raise ValueError(f"{op}: repeated axis in {tuple(axes)}")
    return out


def is_pair(v: object) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and \
        all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)


def is_dtype(v: object) -> bool:
    """Whether `v` names a dtype the IR supports (a dtype attribute's check)."""
    try:
        canonical_dtype(v)
    except TypeError:
        return False
    return True
