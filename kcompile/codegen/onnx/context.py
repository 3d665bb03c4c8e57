"""`EmitContext`: what an op's `onnx` rule sees while a graph is written as ONNX.

The calling convention of an `onnx` rule (the `onnx=` slot of `defop`) is

    rule(ctx, inputs, outputs, **attrs)

`inputs` and `outputs` are ONNX tensor names, one per IR input and output of the node; the rule must
define every name in `outputs` (with `ctx.node(..., outputs=[name])`). `ctx.type(name)` gives the IR
type (shape with `None` for the batch, dtype) of any input or output name, so rules can be written for
any graph -- inference or a whole training step -- and never look at layers. `ctx.opset` is the
target default-domain opset; helpers such as `ctx.reduce` hide what changed between opsets. Rules
import nothing from `onnx` (importing the IR never imports it); a rule may raise NotImplementedError
for a case it cannot write, and the exporter adds the op and layer to the message.

Layout: the IR is NHWC, ONNX's Conv and pooling are NCHW. A rule that computes in NCHW registers the
NCHW twin of its output (`ctx.from_nchw`); later layout-agnostic rules (elementwise ops, bias_add,
pooling, batchnorm, reductions) reuse the twin, so a run of conv/bias/relu/pool stays NCHW and the
transposes back to NHWC that nobody reads are removed by the exporter's dead-code pass.

Control flow: a rule that needs a Loop/Scan body writes it in `body = ctx.subgraph()` (`body.input`
declares its inputs; `body.node`, `body.const`... as usual) and passes `body.graph(outputs)` as the
node's graph attribute. Body constants are initializers of the main graph, and a body may read any
tensor of the enclosing graph by name (the exporter's passes see those reads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import GraphProto, NodeProto, helper

from kcompile.ir.core import TensorType

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


def _permuted(t: TensorType, perm: Sequence[int]) -> TensorType:
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


class EmitContext:
    """Collects ONNX nodes and initializers for one graph; knows the opset and the IR types."""

    TO_NCHW = TO_NCHW
    TO_NHWC = TO_NHWC

    def __init__(self, opset: int, types: dict[str, TensorType] | None = None,
                 reserved: Sequence[str] = ()) -> None:
        self.opset = opset
        self.label: str | None = None  # the IR node being emitted (its layer), for names and errors
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._types: dict[str, TensorType] = dict(types or {})
        self._taken: set[str] = set(reserved)
        self._defined: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._nchw: dict[str, str] = {}
        self._permuted: dict[tuple[str, tuple[int, ...]], str] = {}
        self._node_count = 0
        self._parent: EmitContext | None = None
        self._graph_inputs: list[str] = []

    # -- names and types -----------------------------------------------------------------------
    def type(self, name: str) -> TensorType:
        try:
            return self._types[name]
        except KeyError:
            raise KeyError(f"ONNX export: no IR type known for tensor {name!r}") from None

    def set_type(self, name: str, t: TensorType) -> None:
        self._types[name] = t

    def fresh(self, hint: str) -> str:
        """A tensor name not used yet, derived from `hint`."""
        name, k = hint, 1
        while name in self._taken:
            name = f"{hint}_{k}"
            k += 1
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    def define(self, name: str) -> None:
        """Mark a name as defined outside any node (a graph input)."""
        self._defined.add(name)
        self._taken.add(name)

    def is_defined(self, name: str) -> bool:
        return name in self._defined

    def _hint(self, what: str) -> str:
        return f"{self.label}/{what}" if self.label else what

    # -- nodes and constants -------------------------------------------------------------------
    def node(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
             **attrs: Any) -> Any:
        """Append one default-domain node; returns its output name (or names, when several).

        `outputs` is a count of fresh names or the exact names to define. Attributes that are None
        are left out (the ONNX default)."""
        if isinstance(outputs, int):
            outs = [self.fresh(self._hint(f"{op_type}_out")) for _ in range(outputs)]
        else:
            outs = list(outputs)
            for o in outs:
                self._taken.add(o)
        for o in outs:
            if o in self._defined:
                raise ValueError(f"ONNX export: tensor {o!r} is defined twice")
            self._defined.add(o)
        self._node_count += 1
        node = helper.make_node(op_type, list(inputs), outs,
                                name=self.fresh(self._hint(f"{op_type}_{self._node_count}")),
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return outs[0] if len(outs) == 1 else outs

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        """A constant as an initializer (shared between uses of the same value); in a subgraph, an
        initializer of the main graph."""
        if self._parent is not None:
            return self._parent.const(value, dtype, hint)
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = self.fresh(hint)
            self.add_initializer(name, arr)
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (axes, shapes, slice bounds)."""
        return self.const(np.asarray(list(values), np.int64), hint="ints")

    def scalar(self, value: float, like: str) -> str:
        """A rank-0 constant with the dtype of tensor `like`."""
        return self.const(np.asarray(value, dtype=self.type(like).dtype), hint="scalar")

    def add_initializer(self, name: str, array: np.ndarray) -> None:
        if name in self._defined:
            raise ValueError(f"ONNX export: tensor {name!r} is defined twice")
        self._taken.add(name)
        self._defined.add(name)
        self.initializers[name] = np.asarray(array)

    # -- control flow --------------------------------------------------------------------------
    def subgraph(self) -> EmitContext:
        """A context for the body graph of a control-flow node (Loop, Scan, If) of this graph:
        names stay unique across the whole model (ONNX wants them so), the IR types are shared,
        constants go to the main graph."""
        child = EmitContext(self.opset)
        child._types = self._types
        child._taken = self._taken
        child._parent = self
        child.label = self.label
        return child

    def input(self, hint: str, shape: Sequence[int | None], dtype: Any) -> str:
        """Declare an input of this subgraph (in order); `None` dims are left unknown."""
        name = self.fresh(self._hint(hint))
        self.define(name)
        self._types[name] = TensorType(tuple(shape), np.dtype(dtype).name)
        self._graph_inputs.append(name)
        return name

    def graph(self, outputs: Sequence[tuple[str, TensorType]], hint: str = "body") -> GraphProto:
        """This subgraph as a GraphProto: its declared inputs, `outputs` as (name, type)."""

        def info(n: str, t: TensorType) -> Any:
            return helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                                 list(t.shape))

        return helper.make_graph(self.nodes, self.fresh(self._hint(hint)),
                                 [info(n, self._types[n]) for n in self._graph_inputs],
                                 [info(n, t) for n, t in outputs])

    # -- opset-dependent helpers ---------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool,
               out: str | None = None) -> str:
        """ReduceSum/Mean/Max over `axes` (all when None): axes are an input for ReduceSum since
        opset 13 and for the others since opset 18, an attribute before."""
        outs: int | list[str] = 1 if out is None else [out]
        axes_as_input = op_type == "ReduceSum" or self.opset >= 18
        if axes is None:  # no axes: every axis (noop_with_empty_axes defaults to 0)
            return self.node(op_type, [x], outs, keepdims=int(keepdims))
        if axes_as_input:
            return self.node(op_type, [x, self.ints(axes)], outs, keepdims=int(keepdims))
        return self.node(op_type, [x], outs, axes=list(axes), keepdims=int(keepdims))

    def transpose(self, x: str, perm: Sequence[int], out: str | None = None,
                  hint: str | None = None) -> str:
        outs: int | list[str] = [out] if out else [self.fresh(hint)] if hint else 1
        return self.node("Transpose", [x], outs, perm=list(perm))

    def permuted(self, x: str, perm: Sequence[int], hint: str | None = None) -> str:
        """`x` transposed by `perm`, written once however many rules ask (a conv kernel in OIHW for
        the forward conv and for its input gradient)."""
        key = (x, tuple(perm))
        name = self._permuted.get(key)
        if name is None:
            name = self._permuted[key] = self.transpose(x, perm, hint=hint)
        return name

    def cast(self, x: str, dtype: Any, out: str | None = None) -> str:
        to = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return self.node("Cast", [x], 1 if out is None else [out], to=int(to))

    # -- NHWC <-> NCHW ---------------------------------------------------------------------------
    def nchw(self, name: str) -> str | None:
        """The NCHW twin of a rank-4 NHWC tensor, if one was computed."""
        return self._nchw.get(name)

    def to_nchw(self, name: str) -> str:
        """An NCHW version of NHWC tensor `name` (its twin, or a new transpose)."""
        twin = self._nchw.get(name)
        if twin is None:
            twin = self.transpose(name, TO_NCHW, hint=f"{name}_nchw")
            self._nchw[name] = twin
            if name in self._types:
                self._types[twin] = _permuted(self._types[name], TO_NCHW)
        return twin

    def from_nchw(self, y_nchw: str, out: str) -> None:
        """Define NHWC `out` as the transpose of `y_nchw` and remember the twin. If nothing reads the
        NHWC tensor, the exporter's dead-code pass drops that transpose."""
        self.transpose(y_nchw, TO_NHWC, out=out)
        self._nchw[out] = y_nchw
        if out in self._types and y_nchw not in self._types:
            self._types[y_nchw] = _permuted(self._types[out], TO_NCHW)

    @staticmethod
    def nchw_axis(axis: int) -> int:
        """Where NHWC axis `axis` of a rank-4 tensor sits in its NCHW twin."""
        return TO_NCHW.index(axis % 4)

    def pointwise(self, emit: Callable[[list[str], str], Any], inputs: Sequence[str],
                  out: str) -> None:
        """Emit an elementwise computation `emit(input_names, out_name)` in NCHW when an input has
        an NCHW twin and every input is rank 4 (same broadcasting after the same permutation) or a
        scalar; otherwise in the IR's layout."""
        ranks = [self.type(i).rank for i in inputs]
        if any(self.nchw(i) for i in inputs) and all(r in (0, 4) for r in ranks):
            names = [self.to_nchw(i) if r == 4 else i for i, r in zip(inputs, ranks, strict=True)]
            tmp = self.fresh(f"{out}_nchw")
            if out in self._types:
                self._types[tmp] = _permuted(self._types[out], TO_NCHW)
            emit(names, tmp)
            self.from_nchw(tmp, out)
        else:
            emit(list(inputs), out)

