"""Exporting models whose Inputs leave a non-batch dim free (a variable sequence length).

The IR has one symbolic dim, the batch: a free dim takes a concrete size in each trace (as it does
when the model runs, `fill_free_dims`). One exported file must serve every size, so the model is
traced and written at three sizes of each free dim. The three files must be identical except for
the sizes in their declared shapes; a rule that bakes a size into a node or a constant (a Reshape
target, a pad that depends on the length) makes them differ, and the export says so instead of
writing a file that only works at one length. In the declared shapes, a dim that follows a free dim
becomes that dim's symbol ("<input>_dim<k>"); any other dim that varies is left unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnx

SIZES = (5, 6, 7)  # per free dim j: SIZES[r] + 4 * j in trace r (3 sizes: mod-2 and mod-3 effects)


def free_dims(sigs: Sequence[Any]) -> list[tuple[int, int]]:
    """(input index, axis) of every None after the batch axis."""
    return [(i, k) for i, s in enumerate(sigs) for k, d in enumerate(s.shape) if k > 0 and d is None]


def _concrete(sigs: Sequence[Any], sizes: dict[tuple[int, int], int]) -> list[Any]:
    from kcompile.models.lowering import InputSig

    return [InputSig(s.name, tuple(sizes.get((i, k), d) for k, d in enumerate(s.shape)), s.dtype)
            for i, s in enumerate(sigs)]


def _declared(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = proto.graph
    return [*g.input, *g.output, *g.value_info]


def _without_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in _declared(out):
        vi.type.tensor_type.ClearField("shape")
    return out


def _first_difference(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    for na, nb in zip(a.graph.node, b.graph.node, strict=False):
        if na.SerializeToString() != nb.SerializeToString():
            return f"node {na.name!r} ({na.op_type})"
    inits_b = {t.name: t for t in b.graph.initializer}
    for t in a.graph.initializer:
        if t.name not in inits_b or t.SerializeToString() != inits_b[t.name].SerializeToString():
            return f"constant {t.name!r}"
    return "the graph's structure"


def export_free_dims(sigs: Sequence[Any], write: Callable[[list[Any]], onnx.ModelProto]
                     ) -> onnx.ModelProto:
    """`write(concrete_sigs)` at three sizes of every free dim, merged into one checked model whose
    declared shapes keep the free dims dynamic."""
    free = free_dims(sigs)
    protos = []
    for r in range(len(SIZES)):
        sizes = {fd: SIZES[r] + 4 * j for j, fd in enumerate(free)}
        try:
            protos.append(write(_concrete(sigs, sizes)))
        except (ValueError, TypeError) as err:
            raise ValueError(f"export: cannot trace the model at length(s) {sorted(sizes.values())} "
                             f"of its variable-length input dim(s) to write a length-independent "
                             f"file: {err}. Give the Input fixed lengths instead.") from err
    stripped = [_without_shapes(p).SerializeToString() for p in protos]
    for r in range(1, len(protos)):
        if stripped[r] != stripped[0]:
            where = _first_difference(protos[0], protos[r])
            raise NotImplementedError(
                f"export: the model has variable-length input dim(s) {_names(sigs, free)}, but its "
                f"ONNX graph depends on the length at {where}; give the Input fixed lengths to "
                "export it")
    symbols = {tuple(size + 4 * j for size in SIZES): f"{sigs[i].name}_dim{k}"
               for j, (i, k) in enumerate(free)}
    base = protos[0]
    for infos in zip(*(_declared(p) for p in protos), strict=True):
        dims = [vi.type.tensor_type.shape.dim for vi in infos]
        for column in zip(*dims, strict=True):
            values = tuple(d.dim_value if d.HasField("dim_value") else None for d in column)
            if len(set(values)) > 1:
                column[0].Clear()
                symbol = symbols.get(values)
                if symbol is not None:
                    column[0].dim_param = symbol
    onnx.checker.check_model(base, full_check=True)
    return base


def _names(sigs: Sequence[Any], free: list[tuple[int, int]]) -> str:
    return ", ".join(f"{sigs[i].name}[{k}]" for i, k in free)
