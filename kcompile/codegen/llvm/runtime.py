"""Running compiled code: prepared weights, the arena, the pointer table and the native call.

Everything that can be done once is done once: the pointer table is a preallocated ctypes array,
prepared (packed) weights are kept until the weights change, the arena only grows. A call validates
its inputs (shape, dtype, contiguity -- nothing reaches native code unchecked), allocates its outputs,
writes a handful of pointers and makes one native call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from kcompile.codegen.llvm.compiler import ENTRY, NDARRAY_DATA_OFFSET, PY_ENTRY, Program
from kcompile.codegen.llvm.jit import Library
from kcompile.codegen.llvm.kernels.gather import INDEX_ERROR
from kcompile.codegen.llvm.threads import ThreadPool, get_pool
from kcompile.ir.core import format_shape
from kcompile.ir.interpret import run as interpret
from kcompile.ir.ops.gather import index_out_of_range

_ENTRY_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


class CompiledGraph:
    """A compiled graph: `set_params(model params)` then `run(inputs) -> outputs`."""

    def __init__(self, program: Program, lib: Library, pool: ThreadPool | None = None) -> None:
        self.program = program
        self.lib = lib
        self.graph = program.split.main
        self.entry_address = lib.address(ENTRY)
        self._entry = _ENTRY_T(self.entry_address)
        self.pool = pool or get_pool(target=program.target)
        table = program.table
        self._table = (ctypes.c_void_p * table.size)()
        self._keep: list[np.ndarray] = []
        self._arena = np.zeros(0, np.uint8)
        self._arena_batch = -1
        self._table[table.sync_index] = self.pool.sync_addr
        self._params_ready = False
        self._out_types = [v.type for v in self.graph.outputs]
        self._in_types = [v.type for v in self.graph.inputs]
        count = table.num_inputs + table.num_outputs
        self._py_entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.c_void_p, ctypes.c_void_p,
                                          *[ctypes.py_object] * count)(lib.address(PY_ENTRY))
        self._run_addr = ctypes.cast(self.pool.run, ctypes.c_void_p).value if self.pool.run else None
        # fast-path facts: (dtype, rank, shape after the batch dim) when the batch dim leads
        self._fast = _FAST_OK and all(t.shape and t.shape[0] is None and None not in t.shape[1:]
                                      for t in [*self._in_types, *self._out_types])
        self._in_facts = [(np.dtype(t.dtype), t.rank, t.shape[1:]) for t in self._in_types]
        self._out_facts = [(np.dtype(t.dtype), t.shape[1:]) for t in self._out_types]
        self._out_shapes: dict[int, list[tuple[tuple[int, ...], np.dtype]]] = {}
        # [node index + 1, id] written by a bounds-checked kernel on a bad id (kernels/gather.py)
        self._index_error = (ctypes.c_int64 * 2).from_address(lib.global_address(INDEX_ERROR)) \
            if program.index_checks else None

    @property
    def stats(self):
        return self.program.stats

    def set_params(self, params: Sequence[np.ndarray]) -> None:
        """Run the prepare graph (BatchNorm folding, constants) and pack weights for the kernels."""
        prepared = interpret(self.program.split.prepare, [], [np.asarray(p) for p in params])
        table = self.program.table
        keep = []
        base = table.num_inputs + table.num_outputs
        for slot, (index, layout) in enumerate(table.param_slots):
            arr = prepared[index]
            if layout is not None:
                arr = layout.pack(arr)
            arr = _aligned_copy(arr)
            keep.append(arr)
            self._table[base + slot] = _address(arr)
        self._keep = keep
        self._params_ready = True

    def _ensure_arena(self, batch: int) -> None:
        if batch <= self._arena_batch:
            return
        nbytes = self.program.plan.arena_bytes(max(batch, 1)) + 64
        self._arena = np.empty(nbytes, np.uint8)
        self._arena_batch = batch
        base = _address(self._arena)
        self._table[self.program.table.arena_index] = base + (-base % 64)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.fast_call(inputs)
        return self.run(inputs) if out is None else out

    def fast_call(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """The hot path: checks that cost ~0.1 us per input, one native call. None when the
        inputs are not exactly what the code takes (the caller converts or reports)."""
        if self._fast and self._params_ready:
            batch = -1
            for arr, (dtype, rank, tail) in zip(inputs, self._in_facts, strict=True):
                if type(arr) is not np.ndarray or arr.dtype is not dtype or arr.ndim != rank or \
                        not arr.flags.c_contiguous or arr.shape[1:] != tail or \
                        (batch >= 0 and arr.shape[0] != batch):
                    return None
                batch = arr.shape[0]
            if batch > 0 and len(inputs) == len(self._in_facts):
                pool = self.pool
                if not pool.alive:
                    return None
                outs = [np.empty((batch, *tail), dtype) for dtype, tail in self._out_facts]
                with pool.lock:  # the arena, the pointer table and the pool are shared state
                    if batch > self._arena_batch:
                        self._ensure_arena(batch)
                    self._py_entry(self._table, batch, pool.nthreads, self._run_addr, pool.sync_addr,
                                   *inputs, *outs)
                    if self._index_error is not None and self._index_error[0]:
                        self._raise_index_error()
                return outs
        return None

    def run(self, inputs: Sequence[np.ndarray], nthreads: int | None = None,
            out: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Run on `inputs`. `out` may give arrays for some outputs (written in place); an output
        may share memory with an input only where the compiler proved it safe (`program.aliases`).
        With a `guard` output that is not finite, the code stops early: the other outputs are
        then not written (and aliased inputs keep their values)."""
        if not self._params_ready:
            raise RuntimeError("CompiledGraph.run before set_params")
        batch = self._check_inputs(inputs)
        if not self.pool.alive:
            self._rebind_pool()
        shapes = self._out_shapes.get(batch)
        if shapes is None:
            shapes = self._out_shapes[batch] = [(t.with_batch(batch).shape, np.dtype(t.dtype))
                                                for t in self._out_types]
        given = list(out or ())
        given += [None] * (len(shapes) - len(given))
        addresses = [_address(a) for a in inputs]
        if any(a is not None for a in given):  # memory ranges of the inputs, for overlap checks
            in_lo = np.array(addresses, np.int64)
            in_hi = in_lo + np.array([a.nbytes for a in inputs], np.int64)
        outs = []
        for i, ((shape, dtype), arr) in enumerate(zip(shapes, given, strict=True)):
            if arr is None:
                outs.append(np.empty(shape, dtype))
                continue
            if type(arr) is not np.ndarray or arr.dtype != dtype or arr.shape != shape or \
                    not arr.flags.c_contiguous or not arr.flags.aligned or not arr.flags.writeable:
                raise ValueError(f"out[{i}] of {self.graph.name!r}: expected a writeable "
                                 f"C-contiguous {dtype.name} array of shape {format_shape(shape)}")
            lo = _address(arr)
            overlaps = (in_lo < lo + arr.nbytes) & (in_hi > lo)
            allowed = self.program.aliases.get(i)
            if allowed is not None:
                overlaps[allowed] = False
            if arr.nbytes and overlaps.any():
                j = int(np.flatnonzero(overlaps)[0])
                raise ValueError(f"out[{i}] of {self.graph.name!r} overlaps input "
                                 f"{self.graph.inputs[j].name!r}, which the compiled code "
                                 "does not allow to be overwritten")
            outs.append(arr)
        with self.pool.lock:
            self._run_locked(inputs, outs, batch, nthreads, addresses)
        return outs

    def _rebind_pool(self) -> None:
        """After fork: this process gets its own workers."""
        self.pool = get_pool(target=self.program.target)
        self._table[self.program.table.sync_index] = self.pool.sync_addr
        self._run_addr = ctypes.cast(self.pool.run, ctypes.c_void_p).value if self.pool.run else None

    def _run_locked(self, inputs, outs, batch: int, nthreads: int | None,
                    addresses: list[int] | None = None) -> None:
        self._ensure_arena(batch)
        table = self._table
        for i, arr in enumerate(inputs):
            table[i] = _address(arr) if addresses is None else addresses[i]
        base = len(inputs)
        for i, arr in enumerate(outs):
            table[base + i] = _address(arr) if arr.size else 0
        if any(o.size for o in outs):
            nt = self.pool.nthreads if nthreads is None else min(nthreads, self.pool.nthreads)
            if nt > 1:
                self.pool.run(self.pool.sync_addr, self.entry_address, ctypes.addressof(table), batch,
                              nt)
            else:
                self._entry(table, batch, 0, 1)
            if self._index_error is not None and self._index_error[0]:
                self._raise_index_error()

    def _raise_index_error(self) -> None:
        """The code stopped after a kernel met an id out of range: reset the word and report."""
        node, index = int(self._index_error[0]) - 1, int(self._index_error[1])
        self._index_error[0] = self._index_error[1] = 0
        label, rows = self.program.index_checks.get(node, (None, 0))
        raise index_out_of_range(index, rows, label)

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> int:
        if len(inputs) != len(self._in_types):
            raise ValueError(f"compiled graph {self.graph.name!r} takes {len(self._in_types)} "
                             f"input(s), got {len(inputs)}")
        batch = None
        for value, t, arr, (dtype, _, _) in zip(self.graph.inputs, self._in_types, inputs,
                                                self._in_facts, strict=True):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"input {value.name!r}: expected a NumPy array, got "
                                f"{type(arr).__name__}")
            shape = arr.shape
            if arr.dtype != dtype or not arr.flags.c_contiguous or len(shape) != len(t.shape) or \
                    not arr.flags.aligned or \
                    any(d is not None and d != s for d, s in zip(t.shape, shape, strict=True)):
                raise ValueError(f"input {value.name!r}: expected a C-contiguous {t.dtype} array of "
                                 f"shape {format_shape(t.shape)}, got {arr.dtype} "
                                 f"{format_shape(shape)}"
                                 + ("" if arr.flags.c_contiguous else " (not contiguous)"))
            for d, s in zip(t.shape, shape, strict=True):
                if d is None:
                    if batch is not None and s != batch:
                        raise ValueError(f"input {value.name!r}: batch size {s} differs from {batch}")
                    batch = s
        return 1 if batch is None else batch


def _check_data_offset() -> bool:
    """The native entry reads an array's data pointer at a fixed offset of the object (NumPy's C
    ABI); confirm it on this interpreter, else use the slower pointer lookups."""
    probe = np.arange(3, dtype=np.float32)
    raw = ctypes.c_void_p.from_address(id(probe) + NDARRAY_DATA_OFFSET).value
    return raw == _address(probe)


_FAST_OK = _check_data_offset()


def _aligned_copy(arr: np.ndarray) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy (kernels assume at least element alignment)."""
    arr = np.asarray(arr)
    nbytes = max(arr.nbytes, 1)
    raw = np.empty(nbytes + 64, np.uint8)
    offset = -_address(raw) % 64
    out = raw[offset:offset + arr.nbytes].view(arr.dtype).reshape(arr.shape) if arr.nbytes else \
        np.zeros(arr.shape, arr.dtype)
    out[...] = arr
    return out
