"""`fused`: several ops the compiler runs as one kernel, still executable by the eager executor.

The fusion pass groups an anchor (matmul, conv2d, softmax, ... or an elementwise op) with the
elementwise chain that consumes it into one `fused` node whose `program` lists the steps. Because the
node's `infer` and `ref` are the steps' own rules composed, a fused graph verifies and interprets
exactly like the graph it came from -- which is how the passes are tested. Fused nodes only exist
between the compiler's passes; autodiff and ONNX export see the unfused graph.

A step is `(op, args, attrs)`: `args` name external inputs `"i<k>"` or earlier steps `"s<j>"`;
`attrs` is a tuple of (name, value) pairs. The last step is the node's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile.ir.core import TensorType
from kcompile.ir.opdef import Attr, defop, get_op

Step = tuple[str, tuple[str, ...], tuple[tuple[str, Any], ...]]


def _is_program(program: Any) -> bool:
    if not isinstance(program, tuple) or not program:
        return False
    for step in program:
        if not (isinstance(step, tuple) and len(step) == 3 and isinstance(step[0], str)
                and isinstance(step[1], tuple) and isinstance(step[2], tuple)):
            return False
        if step[0] == "fused":
            return False
    return True


def _resolve(arg: str, inputs: Sequence[Any], steps: Sequence[Any]) -> Any:
    kind, index = arg[0], int(arg[1:])
    if kind == "i" and 0 <= index < len(inputs):
        return inputs[index]
    if kind == "s" and 0 <= index < len(steps):
        return steps[index]
    raise ValueError(f"fused: bad step argument {arg!r}")


def _fused_infer(*types: TensorType, program: tuple[Step, ...]) -> TensorType:
    results: list[TensorType] = []
    for op, args, attrs in program:
        opdef = get_op(op)
        checked = opdef.check_attrs(dict(attrs))
        out = opdef.infer_types([_resolve(a, types, results) for a in args], checked)
        if len(out) != 1:
            raise ValueError(f"fused: step {op!r} has {len(out)} outputs; only single-output ops fuse")
        results.append(out[0])
    return results[-1]


def _fused_ref(*arrays: np.ndarray, program: tuple[Step, ...]) -> np.ndarray:
    results: list[np.ndarray] = []
    for op, args, attrs in program:
        opdef = get_op(op)
        results.append(opdef.run_ref([_resolve(a, arrays, results) for a in args], dict(attrs))[0])
    return results[-1]


def _fused_onnx(ctx, inputs, outputs, program: tuple[Step, ...]):
    """Each step through its own op's onnx rule (ONNX runtimes do their own fusion)."""
    names: list[str] = []
    for k, (op, args, attrs) in enumerate(program):
        opdef = get_op(op)
        checked = opdef.check_attrs(dict(attrs))
        arg_names = [_resolve(a, inputs, names) for a in args]
        if opdef.onnx is None:
            raise NotImplementedError(f"op {op!r} (step {k} of a fused node) has no ONNX rule")
        out = outputs[0] if k == len(program) - 1 else ctx.fresh(f"{outputs[0]}/s{k}")
        ctx.set_type(out, opdef.infer_types([ctx.type(n) for n in arg_names], checked)[0])
        opdef.onnx(ctx, arg_names, [out], **checked)
        names.append(out)


defop("fused", attrs={"program": Attr(tuple, check=_is_program, help="a tuple of (op, args, attrs)")},
      infer=_fused_infer, ref=_fused_ref, onnx=_fused_onnx,
      doc="Steps the compiler runs as one kernel (an anchor plus its elementwise epilogue).",
      tags=("internal",))
