"""Writing a kcompile IR graph as a default-domain ONNX model, and `Model.export`.

`graph_to_onnx` works on any IR graph: every node goes through its op's `onnx` rule (see
`context.EmitContext` for the rules' calling convention). Parameters become initializers when their
values are given (inference export) or graph inputs otherwise (so a whole training-step graph, whose
parameters are inputs, goes through the same path). Then three small passes tidy the node list: a
folding pass applies layout changes of weights (HWIO -> OIHW kernels, per-channel biases) once at
export instead of at every run, a dead-code pass drops what no output reads (the unused halves of
NHWC/NCHW pairs), and Dense's Gemm + bias Add become one Gemm.

`Model.export(path, format="onnx", opset_version=None)` lowers the model's inference graph (where
Dropout is already the identity and BatchNorm uses its moving statistics) and writes it here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kcompile.codegen.onnx.context import EmitContext
from kcompile.ir.core import Graph, TensorType, Value, topo_sort
from kcompile.ir.opdef import get_op

MIN_OPSET = 17
# The newest default-domain opset the exporter is tested with: onnxruntime 1.32 (which bundles the
# opset-28 schemas) loads and runs every rule at each opset 17..28 -- tests/onnx checks each. An older
# `onnx` package that does not know opset 28 yet caps the range (the checker must know the opset).
MAX_OPSET = min(28, onnx.defs.onnx_opset_version())
DEFAULT_OPSET = MAX_OPSET
SUPPORTED_OPSETS = range(MIN_OPSET, MAX_OPSET + 1)
BATCH_DIM = "batch"


def resolve_opset(opset_version: Any) -> int:
    """The opset to write: the default for None; a ValueError listing the range otherwise."""
    if opset_version is None:
        return DEFAULT_OPSET
    if isinstance(opset_version, bool) or not isinstance(opset_version, int | np.integer) or \
            int(opset_version) not in SUPPORTED_OPSETS:
        raise ValueError(f"ONNX export: opset_version={opset_version!r} is not supported; supported "
                         f"opsets are {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    return int(opset_version)


def _value_info(name: str, t: TensorType, batch_dim: str) -> onnx.ValueInfoProto:
    dims = [batch_dim if d is None else d for d in t.shape]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                         dims)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out = f"{name}_{k}"
        k += 1
    taken.add(out)
    return out


def graph_to_onnx(graph: Graph, *, weights: Sequence[np.ndarray] | None = None,
                  opset_version: int | None = None, input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None, name: str | None = None,
                  batch_dim: str = BATCH_DIM, check: bool = True) -> onnx.ModelProto:
    """`graph` as an ONNX model.

    weights: values of `graph.params` (aligned) to store as initializers named after the params;
        None makes the params graph inputs instead (as a training step needs).
    input_names / output_names: ONNX names of graph.inputs / graph.outputs (default: the inputs'
        own names and "output_<k>").
    batch_dim: the symbolic name of the IR's batch dim (`None`) in every declared shape.
    check: run `onnx.checker.check_model(full_check=True)` on the result.
    """
    opset = resolve_opset(opset_version)
    if weights is not None and len(weights) != len(graph.params):
        raise ValueError(f"ONNX export: {len(weights)} weight arrays for {len(graph.params)} params")
    in_names = list(input_names) if input_names is not None else \
        [v.name or f"input_{i}" for i, v in enumerate(graph.inputs)]
    out_names = list(output_names) if output_names is not None else \
        [f"output_{k}" for k in range(len(graph.outputs))]
    if len(in_names) != len(graph.inputs) or len(out_names) != len(graph.outputs):
        raise ValueError("ONNX export: one name per graph input and output is needed")
    if len(set(in_names) | set(out_names)) != len(in_names) + len(out_names):
        raise ValueError(f"ONNX export: input and output names must be distinct, got {in_names} "
                         f"and {out_names}")
    needed = {id(n) for n in topo_sort(graph.outputs)}  # what the outputs depend on, in graph order
    nodes = [n for n in graph.nodes if id(n) in needed]
    names, types, taken = _name_values(graph, nodes, in_names, out_names)
    param_names = [names[p] for p in graph.params]

    ctx = EmitContext(opset, types, reserved=taken)
    for n in in_names:
        ctx.define(n)
    if weights is not None:
        for p, w in zip(graph.params, weights, strict=True):
            arr = np.asarray(w)
            if not p.type.matches(arr.shape, arr.dtype):
                raise ValueError(f"ONNX export: weight for {p.name!r} is {arr.dtype}{arr.shape}, "
                                 f"the graph expects {p.type}")
            ctx.add_initializer(names[p], arr)
    else:
        for n in param_names:
            ctx.define(n)
    for node in nodes:
        emit_node(ctx, node, [names[v] for v in node.inputs], [names[v] for v in node.outputs])
    ctx.label = None
    for v, oname in zip(graph.outputs, out_names, strict=True):
        if names[v] != oname:  # an input, a param, a constant or a value already returned
            ctx.node("Identity", [names[v]], [oname])

    node_protos, inits = _fold_constants(ctx.nodes, ctx.initializers, out_names)
    node_protos, inits = _dead_code(node_protos, inits, out_names)
    node_protos = _gemm_bias(node_protos, inits, types, [*in_names, *param_names], out_names)

    def info(n: str, t: TensorType) -> onnx.ValueInfoProto:
        return _value_info(n, t, batch_dim)

    graph_inputs = [info(n, v.type) for n, v in zip(in_names, graph.inputs, strict=True)]
    if weights is None:
        graph_inputs += [info(n, p.type) for n, p in zip(param_names, graph.params, strict=True)]
    graph_outputs = [info(n, v.type) for n, v in zip(out_names, graph.outputs, strict=True)]
    produced = {o for n in node_protos for o in n.output}
    value_info = [info(n, t) for n, t in types.items() if n in produced and n not in out_names]
    initializers = [numpy_helper.from_array(np.array(a, order="C"), n) for n, a in inits.items()]
    onnx_graph = helper.make_graph(node_protos, name or graph.name, graph_inputs, graph_outputs,
                                   initializers, value_info=value_info)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="kcompile",
                              producer_version=_version())
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest that can hold the opset
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _name_values(graph: Graph, nodes: list[Any], in_names: list[str], out_names: list[str]
                 ) -> tuple[dict[Value, str], dict[str, TensorType], set[str]]:
    """ONNX names for the IR values: inputs and outputs as given, params by their names (variable
    paths), intermediates by their layer and op ("model/dense/matmul"); and each name's IR type."""
    taken = set(in_names) | set(out_names)
    names: dict[Value, str] = dict(zip(graph.inputs, in_names, strict=True))
    for i, p in enumerate(graph.params):
        names[p] = _unique(p.name or f"param_{i}", taken)
    types = {names[v]: v.type for v in (*graph.inputs, *graph.params)}
    # a node output that is a graph output takes the output's name (the first one, if repeated;
    # a constant stays an initializer and is returned through an Identity)
    for v, oname in zip(graph.outputs, out_names, strict=True):
        if v.producer is not None and v.producer.op != "constant" and v not in names:
            names[v] = oname
    for node in nodes:
        for k, v in enumerate(node.outputs):
            if v not in names:
                base = f"{node.label}/{node.op}" if node.label else node.op
                names[v] = _unique(f"{base}:{k}" if len(node.outputs) > 1 else base, taken)
            types[names[v]] = v.type
    return names, types, taken


def emit_node(ctx: EmitContext, node: Any, inputs: list[str], outputs: list[str]) -> None:
    """One IR node through its op's `onnx` rule (also used by `fused` for its steps)."""
    rule = get_op(node.op).onnx
    where = f"layer {node.label!r}" if node.label else "no layer"
    if rule is None:
        raise NotImplementedError(f"ONNX export: op {node.op!r} ({where}) has no ONNX rule; it "
                                  f"cannot be exported yet")
    ctx.label = node.label
    try:
        rule(ctx, inputs, outputs, **node.attrs)
    except NotImplementedError as err:
        raise NotImplementedError(f"ONNX export: op {node.op!r} ({where}): {err}") from err
    missing = [o for o in outputs if not ctx.is_defined(o)]
    if missing:
        raise RuntimeError(f"ONNX export: the onnx rule of op {node.op!r} ({where}) did not define "
                           f"{missing}")


# -- clean-up passes on the ONNX node list -----------------------------------------------------------
def _reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and, for control flow (Loop, Scan), every name its
    bodies read -- outer-scope values included (a superset, which is all the passes need)."""
    names = list(node.input)
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                  a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
            for inner in g.node:
                names += _reads(inner)
    return names


def _fold_reshape(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    target = [x.shape[i] if d == 0 and not allowzero else int(d) for i, d in enumerate(shape)]
    return x.reshape(target)


_FOLD_ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                     "Sqrt": np.sqrt}


def _fold(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    fn = _FOLD_ELEMENTWISE.get(node.op_type)
    if fn is not None:
        if any(a.dtype.kind != "f" or a.dtype != args[0].dtype for a in args):
            return None
        with np.errstate(all="ignore"):
            return np.asarray(fn(*args), dtype=args[0].dtype)
    if node.op_type == "Transpose":
        return np.transpose(args[0], attrs.get("perm"))
    if node.op_type == "Reshape":
        return _fold_reshape(args[0], args[1], attrs.get("allowzero", 0))
    if node.op_type == "Unsqueeze":
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    if node.op_type == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if node.op_type == "Gather":  # gate reordering of recurrent weights
        return np.take(args[0], args[1], axis=attrs.get("axis", 0))
    if node.op_type == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    return None


_FOLDABLE = ("Transpose", "Reshape", "Unsqueeze", "Cast", "Gather", "Concat", *_FOLD_ELEMENTWISE)


def _fold_constants(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: Sequence[str]
                    ) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Evaluate layout nodes (and per-channel arithmetic) whose inputs are all initializers --
    weights -- once, at export, instead of at every run."""
    inits = dict(inits)
    kept = []
    for node in nodes:
        if node.op_type in _FOLDABLE and all(i in inits for i in node.input) and \
                not set(node.output) & set(outputs):
            value = _fold(node, [inits[i] for i in node.input])
            if value is not None:
                inits[node.output[0]] = np.array(value, order="C")
                continue
        kept.append(node)
    return kept, inits


def _dead_code(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: Sequence[str]
               ) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Drop nodes and initializers no output depends on."""
    live = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(i for i in _reads(node) if i)
    kept.reverse()
    return kept, {n: a for n, a in inits.items() if n in live}


def _gemm_bias(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray],
               types: dict[str, TensorType], graph_inputs: Sequence[str], outputs: Sequence[str]
               ) -> list[onnx.NodeProto]:
    """Gemm followed by bias_add's Add of a 1-D bias: the bias becomes Gemm's C input (onnxruntime
    fuses MatMul + Add into Gemm itself, but not Gemm + Add)."""
    uses: dict[str, int] = {}
    for node in nodes:
        for i in _reads(node):
            uses[i] = uses.get(i, 0) + 1
    position = {o: k for k, node in enumerate(nodes) for o in node.output}
    position.update({n: -1 for n in (*inits, *graph_inputs)})
    producer = {o: node for node in nodes for o in node.output}
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != "Add":
            continue
        for y, bias in (tuple(node.input), tuple(reversed(node.input))):
            gemm = producer.get(y)
            if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) != 2 or uses[y] != 1 \
                    or y in outputs or y not in types or position.get(bias, len(nodes)) >= \
                    position[y]:
                continue
            shape = inits[bias].shape if bias in inits else types[bias].shape if bias in types \
                else None
            if shape != (types[y].shape[-1],):
                continue
            gemm.input.append(bias)
            gemm.output[0] = node.output[0]
            dropped.add(id(node))
            break
    return [n for n in nodes if id(n) not in dropped]


def _version() -> str:
    from kcompile import __version__

    return __version__


# -- Model.export -------------------------------------------------------------------------------------
def _signature_from(input_signature: Any) -> tuple[list[Any], Any]:
    """Keras-style input specs (anything with .shape and .dtype: a KerasTensor, an example array),
    one per model input, as InputSigs; the first dim of each is the batch. One spec: the model is
    called on a tensor; several: on a list."""
    from kcompile.models.lowering import InputSig

    specs = input_signature if isinstance(input_signature, list | tuple) else [input_signature]
    sigs = []
    for i, spec in enumerate(specs):
        shape = getattr(spec, "shape", None)
        if shape is None:
            raise ValueError(f"export: input_signature[{i}] has no shape: {spec!r}")
        dtype = getattr(spec, "dtype", None) or "float32"
        dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        name = getattr(spec, "name", None) or f"input_{i}"
        sigs.append(InputSig(str(name), (None, *tuple(shape)[1:]), dtype))
    structure = list(range(len(sigs))) if len(sigs) > 1 else 0
    return sigs, structure


def _inference_signature(model: Any, input_signature: Any = None) -> tuple[list[Any], Any]:
    if input_signature is not None:
        return _signature_from(input_signature)
    try:
        return model.input_signature()
    except ValueError as err:
        raise ValueError(f"export: model '{model.name}' has no known inputs; build it or call "
                         "it on data first, or pass input_signature") from err


def lower_for_inference(model: Any, input_signature: Any = None):
    """The model's inference graph (`Lowered`), traced for its input signature."""
    sigs, structure = _inference_signature(model, input_signature)
    return model._lowered_for(sigs, structure, False)


def _inference_proto(model: Any, lowered: Any, opset: int, check: bool = True) -> onnx.ModelProto:
    graph = lowered.graph
    if lowered.state_updates or lowered.needs_rng_key:  # inference graphs have neither
        raise RuntimeError(f"export: the inference graph of '{model.name}' updates state or draws "
                           "random numbers; it cannot be exported as a pure function")
    weights = [np.asarray(v.value) for v in lowered.variables]
    return graph_to_onnx(graph, weights=weights, opset_version=opset,
                         output_names=[f"output_{k}" for k in range(len(graph.outputs))],
                         name=model.name, check=check)


def export_model(model: Any, filepath: Any, opset_version: int | None = None,
                 input_signature: Any = None) -> onnx.ModelProto:
    """Write `model`'s inference graph to `filepath` as ONNX; returns the ModelProto. Inputs with
    a free non-batch dim (a variable sequence length) keep it dynamic (`dynamic.py`)."""
    from kcompile.codegen.onnx.dynamic import export_free_dims, free_dims

    opset = resolve_opset(opset_version)
    sigs, structure = _inference_signature(model, input_signature)
    if free_dims(sigs):
        proto = export_free_dims(sigs, lambda concrete: _inference_proto(
            model, model._lowered_for(concrete, structure, False), opset, check=False))
    else:
        proto = _inference_proto(model, model._lowered_for(sigs, structure, False), opset)
    save(proto, filepath)
    return proto


def save(proto: onnx.ModelProto, filepath: Any) -> None:
    """Write to a temporary file beside `filepath`, then rename: a failed write leaves no partial
    file and an existing file untouched."""
    path = os.fspath(filepath)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = ["BATCH_DIM", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "SUPPORTED_OPSETS", "emit_node",
           "export_model", "graph_to_onnx", "save", "lower_for_inference", "resolve_opset"]
