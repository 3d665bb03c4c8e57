"""Whole-graph compilation: passes -> memory plan -> one LLVM module with one entry point.

The entry `kc_main(ptr bufs, i64 n, i64 tid, i64 nthreads)` receives a table of buffer pointers
(inputs, outputs, prepared params, arena) and the batch size, and runs every kernel in order; with
several threads each runs its share of every kernel between barriers. `compile_graph` returns a
`CompiledGraph` (runtime.py) that owns the loaded code, the prepared weights and the arena.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from llvmlite import ir

from kcompile.codegen.llvm.builder import I8, I64, PTR, KernelBuilder, define, module_text, new_module
from kcompile.codegen.llvm.jit import CompileStats, Target, compile_cached, dump_sink, host_target
from kcompile.codegen.llvm.kernels import load_all
from kcompile.codegen.llvm.kernels.common import LOWERINGS, KernelContext, ParamLayout
from kcompile.codegen.llvm.kernels.gather import CHECKED_OPS, index_error_word
from kcompile.codegen.llvm.threads import _TypedCallee
from kcompile.ir.core import Graph, Node, Value
from kcompile.ir.passes import StaticSplit, optimize
from kcompile.ir.passes.memory import MemoryPlan, Slot, nbytes_per_sample, plan_memory

ENTRY = "kc_main"
PY_ENTRY = "kc_py"
NDARRAY_DATA_OFFSET = 16  # PyArrayObject_fields.data: after ob_refcnt and ob_type (NumPy C ABI)


@dataclass
class BufferTable:
    """Positions in the entry's pointer table."""

    num_inputs: int
    num_outputs: int
    param_slots: list[tuple[int, ParamLayout | None]] = field(default_factory=list)

    @property
    def arena_index(self) -> int:
        return self.num_inputs + self.num_outputs + len(self.param_slots)

    @property
    def sync_index(self) -> int:
        return self.arena_index + 1

    @property
    def size(self) -> int:
        return self.arena_index + 2


@dataclass
class Program:
    """Everything a `CompiledGraph` needs besides the machine code."""

    split: StaticSplit
    plan: MemoryPlan
    table: BufferTable
    target: Target
    key: str
    stats: CompileStats = field(default_factory=CompileStats)
    aliases: dict[int, int] = field(default_factory=dict)  # output index -> input it overwrites
    guard: int | None = None  # output index of a scalar: not finite -> stop before any update
    # node index -> (layer label, rows) of each bounds-checked gather/scatter_add: the code stops
    # after it on a bad id and the runtime raises (kernels/gather.py)
    index_checks: dict[int, tuple[str | None, int]] = field(default_factory=dict)


def lowering_for(node: Node):
    if node.op == "fused":
        from kcompile.codegen.llvm.kernels.fused import lower_fused
        return lower_fused
    fn = LOWERINGS.get(node.op)
    if fn is None:
        raise NotImplementedError(f"op {node.op!r} ({node.label or 'no layer'}) has no LLVM "
                                  "lowering yet; use jit_compile=False")
    return fn


def _emit_module(split: StaticSplit, plan: MemoryPlan, target: Target, guard_node: int | None = None,
                 guard_output: int | None = None) -> tuple[str, BufferTable]:
    graph = split.main
    module = new_module(graph.name, target)
    ctx = KernelContext(module, target, static=frozenset(graph.params) | _constants(graph))
    kernels: list[ir.Function] = []
    for i, node in enumerate(graph.nodes):
        ctx.node_index = i
        if node.op == "reshape" and plan.slots[node.outputs[0]] is plan.slots.get(node.inputs[0]):
            kernels.append(None)  # a view: nothing to run
            continue
        kernels.append(lowering_for(node)(ctx, node))
    table = BufferTable(len(graph.inputs), len(graph.outputs))
    slot_of: dict[tuple[int, str | None], int] = {}
    param_pos = {v: k for k, v in enumerate(graph.params)}

    def param_slot(v: Value, layout: ParamLayout | None) -> int:
        key = (param_pos[v], layout.key if layout else None)
        if key not in slot_of:
            slot_of[key] = table.num_inputs + table.num_outputs + len(table.param_slots)
            table.param_slots.append((param_pos[v], layout))
        return slot_of[key]

    # resolve every node's operand slots first (the table must be complete before emission)
    operand_slots: list[list[tuple[str, int, Slot | None]]] = []
    for i, node in enumerate(graph.nodes):
        ops = []
        for j, v in enumerate([*node.inputs, *node.outputs]):
            slot = plan.slots[v]
            if slot.kind == "param":
                layout = ctx.layouts.get((i, j)) if j < len(node.inputs) else None
                ops.append(("table", param_slot(v, layout), None))
            elif slot.kind == "input":
                ops.append(("table", slot.index, None))
            elif slot.kind == "output":
                ops.append(("table", table.num_inputs + slot.index, None))
            else:
                ops.append(("arena", 0, slot))
        operand_slots.append(ops)
    for v, _ in plan.copies:
        if plan.slots[v].kind == "param":
            param_slot(v, None)

    fn = define(module, ENTRY, [PTR, I64, I64, I64], target, internal=False)
    kb = KernelBuilder(fn, target)
    bufs, n, tid, nt = fn.args
    b = kb.b
    arena = kb.load(bufs, table.arena_index, PTR)
    sync = kb.load(bufs, table.sync_index, PTR)
    barrier = _barrier_fn(module, target)

    def pointer(kind: str, index: int, slot: Slot | None) -> ir.Value:
        if kind == "table":
            return kb.load(bufs, index, PTR)
        offset = kb.i64(slot.fixed_offset)
        if slot.batched:
            offset = b.add(kb.i64(plan.fixed_bytes), b.mul(n, kb.i64(slot.per_sample_offset)))
        return kb.gep(arena, offset, I8)

    first = True
    for i, (kernel, ops) in enumerate(zip(kernels, operand_slots, strict=True)):
        if kernel is not None:
            if not first:
                b.call(barrier, [sync, nt])
            first = False
            b.call(kernel, [pointer(*o) for o in ops] + [n, tid, nt])
        if i == guard_node:  # every thread reads the same value after the barrier: all stop
            b.call(barrier, [sync, nt])
            value = kb.load(kb.load(bufs, table.num_inputs + guard_output, PTR), 0)
            finite = b.fcmp_ordered("<", kb.fabs(value), ir.Constant(value.type, float("inf")))
            with kb.if_then(b.not_(finite)):
                b.ret_void()
        if kernel is not None and graph.nodes[i].op in CHECKED_OPS:  # a bad id: all stop here
            b.call(barrier, [sync, nt])
            with kb.if_then(b.icmp_signed("!=", kb.load(index_error_word(kb), 0, I64), kb.i64(0))):
                b.ret_void()
    copy = _copy_fn(module, target)
    for v, out_index in plan.copies:
        if not first:
            b.call(barrier, [sync, nt])
        first = False
        slot = plan.slots[v]
        if slot.kind == "param":
            src = kb.load(bufs, param_slot(v, None), PTR)
        elif slot.kind in ("input", "output"):
            src = kb.load(bufs, slot.index + (table.num_inputs if slot.kind == "output" else 0), PTR)
        else:
            src = pointer("arena", 0, slot)
        dst = kb.load(bufs, table.num_inputs + out_index, PTR)
        size, batched = nbytes_per_sample(v)
        nbytes = b.mul(kb.i64(size), n) if batched else kb.i64(size)
        b.call(copy, [dst, src, nbytes, tid, nt])
    kb.finish()
    _emit_py_entry(module, target, fn, table)
    return module_text(module, target), table


def _emit_py_entry(module: ir.Module, target: Target, main: ir.Function, table: BufferTable) -> None:
    """`kc_py(table, n, nt, run, sync, arr_0, ..., arr_k)`: the arrays (inputs then outputs) are
    NumPy array objects; their data pointers go into the table without a Python-level lookup (~1 us
    each), then the model runs on one thread or through the pool's `run`."""
    count = table.num_inputs + table.num_outputs
    fn = define(module, PY_ENTRY, [PTR, I64, I64, PTR, PTR] + [PTR] * count, target, internal=False)
    kb = KernelBuilder(fn, target)
    b = kb.b
    tab, n, nt, run, sync = fn.args[:5]
    for i, obj in enumerate(fn.args[5:]):
        data = b.load(kb.gep(obj, NDARRAY_DATA_OFFSET, I8), typ=PTR)
        b.store(data, kb.gep(tab, i, PTR))
    with b.if_else(b.icmp_signed(">", nt, kb.i64(1))) as (threaded, single):
        with threaded:
            run_t = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64, I64])
            b.call(_TypedCallee(run, run_t), [sync, main, tab, n, nt])
        with single:
            b.call(main, [tab, n, kb.i64(0), kb.i64(1)])
    kb.finish()


def _constants(graph: Graph) -> frozenset:
    return frozenset(v for node in graph.nodes if node.op == "constant" for v in node.outputs)


def _barrier_fn(module: ir.Module, target: Target) -> ir.Function:
    """Wait until every thread reaches this point (a no-op when running on one thread)."""
    from kcompile.codegen.llvm.threads import emit_barrier
    return emit_barrier(module, target)


def _copy_fn(module: ir.Module, target: Target) -> ir.Function:
    fn = define(module, "kc_copy", [PTR, PTR, I64, I64, I64], target)
    kb = KernelBuilder(fn, target)
    dst, src, nbytes, tid, nt = fn.args
    with kb.if_then(kb.b.icmp_signed("==", tid, kb.i64(0))):
        kb.memcpy(dst, 0, src, 0, nbytes)
    kb.finish()
    return fn


def compile_graph(graph: Graph, *, target: Target | None = None, dump: str | None = None,
                  aliases: dict[int, int] | None = None, guard: int | None = None):
    """Optimise and compile `graph`; returns a `CompiledGraph` ready for `set_params` + `run`.

    `aliases` {output index: input index} asks that an output may be written over an input's
    buffer (a training step updating weights and slots in place); each is kept only when it is
    provably safe (see `safe_aliases`). `guard`, the index of a scalar output, makes the code stop
    right after computing it when it is not finite, before any aliased output is written."""
    from kcompile.codegen.llvm.runtime import CompiledGraph

    load_all()
    target = target or host_target()
    sink = dump_sink(graph.name, dump)
    t0 = time.perf_counter()
    split = optimize(graph, (lambda name, g: sink.write(f"{name}.ir", str(g))) if sink else None)
    plan = plan_memory(split.main)
    guard_node = _producer_index(split.main, guard, plan) if guard is not None else None
    if guard is not None and guard_node is None:  # no place to stop: nothing may be overwritten
        guard, aliases = None, {}
    index_checks = _index_checks(split.main)
    stop_node = max([guard_node if guard_node is not None else -1, *index_checks], default=-1)
    kept = safe_aliases(split.main, plan, aliases or {}, stop_node if stop_node >= 0 else None)
    key_text = "\n".join([str(split.main), str(split.prepare), repr(_plan_key(plan)),
                          repr(sorted(kept.items())), repr((guard, guard_node))])
    key = hashlib.sha256(key_text.encode()).hexdigest()

    def build() -> tuple[str, dict]:
        text, table = _emit_module(split, plan, target, guard_node, guard)
        return text, {"inputs": table.num_inputs, "outputs": table.num_outputs,
                      "params": [[i, None if lay is None else [lay.kind, list(lay.args)]]
                                 for i, lay in table.param_slots]}

    lib, meta, stats = compile_cached(key, build, target, sink)
    table = BufferTable(meta["inputs"], meta["outputs"],
                        [(i, None if lay is None else ParamLayout(lay[0], tuple(lay[1])))
                         for i, lay in meta["params"]])
    stats.seconds = time.perf_counter() - t0
    program = Program(split, plan, table, target, key, stats, kept, guard, index_checks)
    return CompiledGraph(program, lib)


def _index_checks(graph: Graph) -> dict[int, tuple[str | None, int]]:
    checks = {}
    for i, node in enumerate(graph.nodes):
        if node.op in CHECKED_OPS:
            rows = node.attrs["rows"] if node.op == "scatter_add" else node.inputs[0].shape[0]
            checks[i] = (node.label, rows)
    return checks


def _producer_index(graph: Graph, out_index: int, plan: MemoryPlan) -> int | None:
    """Position of the node that writes graph output `out_index` (None: written by a copy)."""
    value = graph.outputs[out_index]
    if plan.slots[value].kind != "output" or any(v is value for v, _ in plan.copies):
        return None
    for i, node in enumerate(graph.nodes):
        if value in node.outputs:
            return i
    return None


_IN_PLACE_OK = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "neg", "abs", "sqrt",
                          "relu", "exp", "log", "tanh", "sigmoid", "pow"})


def safe_aliases(graph: Graph, plan: MemoryPlan, wanted: dict[int, int], guard_node: int | None
                 ) -> dict[int, int]:
    """The wanted aliases under which overwriting the input cannot change any result: the output's
    producer is the last reader of the input, reads it (if at all) elementwise at the output's own
    index (an elementwise kernel of the same type), and runs after the guard node when there is one
    (the last node after which the code may stop: the loss guard or a bounds-checked gather)."""
    last_reader: dict[Value, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_reader[v] = i
    kept: dict[int, int] = {}
    for out_index, in_index in wanted.items():
        producer = _producer_index(graph, out_index, plan)
        if producer is None or in_index in kept.values():
            continue
        src, node = graph.inputs[in_index], graph.nodes[producer]
        out = graph.outputs[out_index]
        if src in graph.outputs or graph.outputs.count(out) != 1:
            continue
        if guard_node is not None and producer <= guard_node:
            continue
        if last_reader.get(src, -1) > producer:
            continue
        if src in node.inputs:
            elementwise = node.op in _IN_PLACE_OK or (
                node.op == "fused" and all(step[0] in _IN_PLACE_OK or step[0] == "broadcast_like"
                                           for step in node.attrs["program"]))
            if not elementwise or src.type != out.type:
                continue
        kept[out_index] = in_index
    return kept


def _plan_key(plan: MemoryPlan) -> tuple:
    return (plan.fixed_bytes, plan.per_sample_bytes, len(plan.copies))
