"""What every kernel family shares: the kernel signature, symbolic dims, work splitting, epilogues.

A kernel is an internal LLVM function `(ptr in_0, ..., ptr out, i64 n, i64 tid, i64 nthreads)`:
`n` is the batch size and (tid, nthreads) select this thread's share of the work. Kernels are
registered per op in `LOWERINGS`; the elementwise table in `elementwise.py` covers the ops that
appear as steps of fused programs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.jit import Target
from kcompile.ir.core import Node, Value

PACKERS: dict[str, Callable[..., np.ndarray]] = {}


def packer(kind: str):
    def register(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        PACKERS[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class ParamLayout:
    """A kernel's wish for a static input, run when weights change: `PACKERS[kind](arr, *args)`.
    Plain data, so it is stored next to a cached object file."""

    kind: str
    args: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.kind}{self.args}"

    def pack(self, arr: np.ndarray) -> np.ndarray:
        return PACKERS[self.kind](arr, *self.args)


@dataclass
class KernelContext:
    module: ir.Module
    target: Target
    counter: int = 0
    layouts: dict[tuple[int, int], ParamLayout] = field(default_factory=dict)  # (node#, input#)
    node_index: int = 0
    static: frozenset = frozenset()  # values whose contents are known at bind time (params)
    shared: dict = field(default_factory=dict)  # helper functions by a key that fixes their code

    def shared_function(self, key: tuple, build: Callable[[], ir.Function]) -> ir.Function:
        """One helper function per `key` in the module: the micro-kernels of two nodes with the
        same geometry (the two directions of a Bidirectional, the GEMMs of a training step) are
        built, optimised and compiled once. `key` must hold everything the code depends on."""
        fn = self.shared.get(key)
        if fn is None:
            fn = self.shared[key] = build()
        return fn

    def new_kernel(self, node: Node, name: str) -> tuple[ir.Function, KernelBuilder, list[ir.Value],
                                                           ir.Value, ir.Value, ir.Value, ir.Value]:
        """Declare a kernel for `node`: returns (fn, kb, input ptrs, out ptr, n, tid, nthreads)."""
        self.counter += 1
        nin = len(node.inputs)
        fn = define(self.module, f"k{self.counter}_{name}", [PTR] * (nin + 1) + [I64, I64, I64],
                    self.target)
        for arg in fn.args[:nin + 1]:
            arg.add_attribute("noalias")
        kb = KernelBuilder(fn, self.target)
        args = list(fn.args)
        return fn, kb, args[:nin], args[nin], args[nin + 1], args[nin + 2], args[nin + 3]

    def new_multi_kernel(self, node: Node) -> tuple[ir.Function, KernelBuilder, list[ir.Value],
                                                    list[ir.Value], ir.Value, ir.Value, ir.Value]:
        """Declare a kernel for a node with several outputs: (fn, kb, input ptrs, output ptrs, n,
        tid, nthreads)."""
        self.counter += 1
        nin, nout = len(node.inputs), len(node.outputs)
        fn = define(self.module, f"k{self.counter}_{node.op}", [PTR] * (nin + nout) + [I64, I64, I64],
                    self.target)
        for arg in fn.args[:nin + nout]:
            arg.add_attribute("noalias")
        args = list(fn.args)
        return fn, KernelBuilder(fn, self.target), args[:nin], args[nin:nin + nout], *args[nin + nout:]

    def want_layout(self, input_index: int, layout: ParamLayout) -> None:
        self.layouts[(self.node_index, input_index)] = layout

    def is_static(self, v: Value) -> bool:
        return v in self.static


LOWERINGS: dict[str, Callable[[KernelContext, Node], ir.Function]] = {}


def lowering(*ops: str):
    def register(fn: Callable[[KernelContext, Node], ir.Function]):
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return register


def dim_values(kb: KernelBuilder, shape: Sequence[int | None], n: ir.Value) -> list[ir.Value]:
    return [n if d is None else kb.i64(d) for d in shape]


def product(kb: KernelBuilder, values: Sequence[ir.Value]) -> ir.Value:
    out = kb.i64(1)
    for v in values:
        out = kb.b.mul(out, v, flags=("nsw",))
    return out


def split_range(kb: KernelBuilder, total: ir.Value, tid: ir.Value, nt: ir.Value,
                grain: int = 1) -> tuple[ir.Value, ir.Value]:
    """[lo, hi) of this thread's share of range(total), in multiples of `grain`."""
    b = kb.b
    g = kb.i64(grain)
    chunks = b.sdiv(b.add(total, kb.i64(grain - 1)), g)
    lo = b.mul(b.sdiv(b.mul(chunks, tid), nt), g)
    hi = b.mul(b.sdiv(b.mul(chunks, b.add(tid, kb.i64(1))), nt), g)
    return kb.min_i64(lo, total), kb.min_i64(hi, total)


def attrs_of(step: tuple) -> dict[str, Any]:
    return dict(step[2])


def epilogue_kinds(node: Node) -> dict[int, str]:
    """How a GEMM/conv epilogue reads each extra operand (inputs 2..): "full" (output-shaped),
    "channel" (one value per output channel) or "scalar"."""
    kinds = {}
    out_shape = node.outputs[0].shape
    for i, v in enumerate(node.inputs[2:], start=2):
        size = int(np.prod([d for d in v.shape if d is not None] or [1]))
        kinds[i] = "full" if v.shape == out_shape else "scalar" if size == 1 else "channel"
    return kinds


def apply_epilogue(kb: KernelBuilder, program: tuple, kinds: dict[int, str], extras: list,
                   acc: ir.Value, col: ir.Value, full_index: ir.Value,
                   mask: ir.Value | None) -> ir.Value:
    """Run the fused program's steps after the anchor on one accumulator vector."""
    if len(program) == 1:
        return acc
    from kcompile.codegen.llvm.kernels.elementwise import eval_program

    vector = isinstance(acc.type, ir.VectorType)  # scalar accumulators: the dot-product GEMM

    def operand(i: int) -> ir.Value:
        ptr, kind = extras[i - 2], kinds[i]
        index = col if kind == "channel" else full_index
        if kind == "scalar":
            return kb.splat(kb.load(ptr, 0)) if vector else kb.load(ptr, 0)
        return kb.load_vector(ptr, index, mask) if vector else kb.load(ptr, index)

    return eval_program(kb, program, operand, [acc])


def for_panel_variants(kb: KernelBuilder, p: ir.Value, panels: int, nv: int, last_nv: int,
                       edge: bool, emit: Callable[[int, bool], None]) -> None:
    """Emit `emit(nvec, edge)` for the full panels and, where it differs, for the last one (fewer
    vectors, and masked when the channel count is not a multiple of the vector width)."""
    if panels == 1:
        emit(last_nv, edge)
    elif last_nv == nv and not edge:
        emit(nv, False)
    else:
        b = kb.b
        with b.if_else(b.icmp_signed("==", p, kb.i64(panels - 1))) as (last, other):
            with last:
                emit(last_nv, edge)
            with other:
                emit(nv, False)
