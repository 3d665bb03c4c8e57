"""Row gathers (Embedding lookups) and their adjoint, a scatter-add.

`gather(table, ids)` picks rows of a static table: out[i..., :] = table[ids[i...], :]. Ids outside
[0, rows) are an error on every executor, never a wrapped or out-of-bounds read: the NumPy rule raises
`IndexOutOfRangeError` (which the eager executor tags with the layer), the LLVM kernels check every
id and report through an error flag the runtime reads after the call (see kernels/gather.py), and the
ONNX rule maps negative ids past the end so that Gather rejects them too.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops._util import require_float

INDEX_DTYPES = ("int32", "int64")


class IndexOutOfRangeError(ValueError):
    """An id outside [0, rows) reached a gather or scatter_add (made by `index_out_of_range`; a
    plain message works too, as when a layer re-raises it with its name)."""

    index: int | None = None
    rows: int | None = None
    where: str | None = None


def index_out_of_range(index: int, rows: int, where: str | None = None) -> IndexOutOfRangeError:
    err = IndexOutOfRangeError(index_error_message(int(index), int(rows), where))
    err.index, err.rows, err.where = int(index), int(rows), where
    return err


def index_error_message(index: int, rows: int, where: str | None = None) -> str:
    """One wording for every executor: the layer, the bad id and the valid range."""
    head = f"layer '{where}'" if where else "gather"
    return (f"{head}: id {index} is out of range; valid ids are 0 to {rows - 1} "
            f"(input_dim={rows})")


def check_ids(ids: np.ndarray, rows: int) -> None:
    bad = (ids < 0) | (ids >= rows)
    if bad.any():
        raise index_out_of_range(int(ids[bad].flat[0]), rows)


def _require_ids(op: str, ids: TensorType) -> None:
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: ids must be int32 or int64, got {ids.dtype}")


def _gather_infer(table: TensorType, ids: TensorType) -> TensorType:
    require_float("gather", table)
    _require_ids("gather", ids)
    if table.rank < 1 or None in table.shape:
        raise ValueError(f"gather: the table must have rank >= 1 and a static shape, got "
                         f"{format_shape(table.shape)}")
    return TensorType((*ids.shape, *table.shape[1:]), table.dtype)


def _gather_ref(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    check_ids(ids, table.shape[0])
    return np.take(table, ids, axis=0)


def _gather_vjp(e, inputs, out, g):
    table, ids = inputs
    return [e.op("scatter_add", ids, g, rows=table.shape[0]), None]


def _safe_ids_onnx(ctx, ids: str, rows: int) -> str:
    """ONNX Gather/ScatterND wrap negative ids; moved to `rows`, they fail its range check instead."""
    negative = ctx.node("Less", [ids, ctx.const(np.zeros((), ctx.type(ids).dtype), hint="zero_id")])
    return ctx.node("Where", [negative, ctx.const(np.asarray(rows, ctx.type(ids).dtype),
                                                   hint="rows_id"), ids])


def _gather_onnx(ctx, inputs, outputs):
    table, ids = inputs
    rows = ctx.type(table).shape[0]
    ctx.node("Gather", [table, _safe_ids_onnx(ctx, ids, rows)], outputs, axis=0)


defop("gather", infer=_gather_infer, ref=_gather_ref, vjp=_gather_vjp, onnx=_gather_onnx,
      num_inputs=2,
      doc="Rows of a static table by integer id (Embedding): out shape = ids.shape + "
          "table.shape[1:]; ids outside [0, rows) are an error.")


def _scatter_add_infer(ids: TensorType, updates: TensorType, rows: int) -> TensorType:
    _require_ids("scatter_add", ids)
    require_float("scatter_add", updates)
    k = ids.rank
    if updates.rank < k or updates.shape[:k] != ids.shape or None in updates.shape[k:]:
        raise ValueError(f"scatter_add: updates {format_shape(updates.shape)} must be the ids' "
                         f"shape {format_shape(ids.shape)} followed by static row dims")
    return TensorType((rows, *updates.shape[k:]), updates.dtype)


def _scatter_add_ref(ids: np.ndarray, updates: np.ndarray, rows: int) -> np.ndarray:
    check_ids(ids, rows)
    row_shape = updates.shape[ids.ndim:]
    out = np.zeros((rows, *row_shape), updates.dtype)
    np.add.at(out, ids.reshape(-1), updates.reshape(-1, *row_shape))
    return out


def _scatter_add_vjp(e, inputs, out, g, rows):
    ids, _ = inputs
    return [None, e.op("gather", g, ids)]


def _scatter_add_onnx(ctx, inputs, outputs, rows):
    """ScatterND(reduction='add') of the flattened updates onto zeros (ConstantOfShape: the table's
    size costs nothing in the file)."""
    ids, updates = inputs
    t = ctx.type(updates)
    row_shape = list(t.shape[ctx.type(ids).rank:])
    zero = onnx_zero(t.dtype)
    data = ctx.node("ConstantOfShape", [ctx.ints([rows, *row_shape])], value=zero)
    index = ctx.node("Reshape", [ctx.cast(_safe_ids_onnx(ctx, ids, rows), "int64"),
                                 ctx.ints([-1, 1])])
    flat = ctx.node("Reshape", [updates, ctx.ints([-1, *row_shape])])
    ctx.node("ScatterND", [data, index, flat], outputs, reduction="add")


def onnx_zero(dtype: str):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros((1,), dtype))


defop("scatter_add", attrs={"rows": Attr(int, check=lambda r: r > 0, help="> 0")},
      infer=_scatter_add_infer, ref=_scatter_add_ref, vjp=_scatter_add_vjp, onnx=_scatter_add_onnx,
      num_inputs=2,
      doc="zeros((rows, ...)) with each update row added at its id (gather's adjoint: the "
          "Embedding table's gradient); ids outside [0, rows) are an error.")

