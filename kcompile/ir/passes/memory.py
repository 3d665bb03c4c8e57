"""Memory planning: every intermediate gets an offset in one arena, reusing space by liveness.

Sizes of batch-dependent values are linear in the batch size N, so the plan is made in *bytes per
sample*: a value of s bytes per sample at per-sample offset o lives at `fixed_size + N * o`. One plan
serves every batch size; the runtime only grows the arena. Batch-independent intermediates get a
fixed region at the start. Sizes are rounded up to 64 bytes so every buffer is cache-line aligned.
Views (a reshape of contiguous data) share their source's buffer and extend its lifetime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kcompile.ir.core import Graph, Value

ALIGN = 64
VIEW_OPS = frozenset({"reshape"})


@dataclass
class Slot:
    """Where a value lives: kind is input | output | param | arena; views share their root's slot."""

    kind: str
    index: int = 0  # input/output/param position
    fixed_offset: int = 0  # arena: bytes from the arena start ...
    per_sample_offset: int = 0  # ... plus N * this (after the fixed region)
    batched: bool = False


@dataclass
class MemoryPlan:
    slots: dict[Value, Slot] = field(default_factory=dict)
    fixed_bytes: int = 0
    per_sample_bytes: int = 0
    copies: list[tuple[Value, int]] = field(default_factory=list)  # (value, output index) to copy

    def arena_bytes(self, batch: int) -> int:
        return self.fixed_bytes + batch * self.per_sample_bytes


def nbytes_per_sample(value: Value) -> tuple[int, bool]:
    """(bytes, batched): per sample when the shape has the batch dim, else in total."""
    known = math.prod(d for d in value.shape if d is not None)
    return known * np.dtype(value.dtype).itemsize, None in value.shape


def _round(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Pool:
    """First-fit allocator over a growing address range, with coalescing frees."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.top = 0

    def alloc(self, size: int) -> int:
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    del self.free[i]
                else:
                    self.free[i] = (off + size, sz - size)
                return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.top:
            off = self.free.pop()[0]  # extend the free block at the top
        else:
            off = self.top
        self.top = off + size
        return off

    def release(self, off: int, size: int) -> None:
        self.free.append((off, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan_memory(graph: Graph) -> MemoryPlan:
    plan = MemoryPlan()
    for i, v in enumerate(graph.inputs):
        plan.slots[v] = Slot("input", i)
    for i, v in enumerate(graph.params):
        plan.slots[v] = Slot("param", i)
    root: dict[Value, Value] = {}
    outputs = {}
    for i, v in enumerate(graph.outputs):
        outputs.setdefault(v, i)
    for node in graph.nodes:
        if node.op in VIEW_OPS and node.outputs[0] not in outputs:
            src = node.inputs[0]
            root[node.outputs[0]] = root.get(src, src)
    last_use: dict[Value, int] = {}
    for step, node in enumerate(graph.nodes):
        for v in node.inputs:
            r = root.get(v, v)
            last_use[r] = step
    batch_pool, fixed_pool = _Pool(), _Pool()
    placed: dict[Value, tuple[_Pool, int, int]] = {}
    for step, node in enumerate(graph.nodes):
        for v in node.outputs:
            if v in root:
                continue
            if v in outputs:
                plan.slots[v] = Slot("output", outputs[v])
                continue
            size, batched = nbytes_per_sample(v)
            size = _round(max(size, 1))
            pool = batch_pool if batched else fixed_pool
            off = pool.alloc(size)
            placed[v] = (pool, off, size)
            plan.slots[v] = Slot("arena", fixed_offset=0 if batched else off,
                                 per_sample_offset=off if batched else 0, batched=batched)
        for v in {root.get(x, x) for x in node.inputs}:
            if last_use.get(v) == step and v in placed:
                pool, off, size = placed.pop(v)
                pool.release(off, size)
        for v in node.outputs:  # results nobody reads (e.g. dead state) free at once
            if v in placed and v not in last_use:
                pool, off, size = placed.pop(v)
                pool.release(off, size)
    plan.fixed_bytes = _round(fixed_pool.top)
    plan.per_sample_bytes = batch_pool.top
    for v, r in root.items():
        plan.slots[v] = plan.slots[r]
    for v, i in outputs.items():
        if v not in plan.slots or plan.slots[v].kind != "output" or plan.slots[v].index != i:
            plan.copies.append((v, i))
    for i, v in enumerate(graph.outputs):
        if outputs[v] != i:
            plan.copies.append((v, i))
    return plan
