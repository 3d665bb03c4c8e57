"""Scratch memory and a barrier inside one kernel, for kernels that prepare run-time operands.

A training step's weights are graph inputs, so a convolution cannot have them packed (or
Winograd-transformed) ahead of time. Such a kernel packs them itself: every thread packs its share
into one module-level buffer, all threads meet at a barrier, then all read the packed copy. The
buffer is a zero-initialised internal global of the module (its size is static: it depends on the
weight shape only), so it lives as long as the loaded code and costs nothing per call. Calls of one
compiled graph never overlap (the runtime holds the pool's lock), and kernels of one module run one
after another, so every kernel uses the same global, sized for the largest. Kernels that need
more per-thread room than the stack should give use `thread_scratch`: SLOTS slices of another
module global, by thread id.

The barrier is the runtime's own generation barrier (`kc_barrier`, threads.py) pointed at a sync
block owned by this module: every thread of a call reaches every kernel, so all `nthreads` threads
arrive; with one thread it is a no-op.
"""

from __future__ import annotations

from llvmlite import ir

from kcompile.codegen.llvm.builder import F32, I8, PTR, KernelBuilder
from kcompile.codegen.llvm.threads import SYNC_BYTES, emit_barrier

_SYNC_NAME = "kc_kernel_sync"
_THREAD_NAME = "kc_thread_scratch"
_SHARED_NAME = "kc_shared_scratch"
SLOTS = 8  # threads that can own a slot of the per-thread scratch (kernels using it run on <= 8)


def _grown_global(module: ir.Module, name: str, nfloats: int) -> ir.GlobalVariable:
    """The module's float global `name`, at least `nfloats` long (grown in place: the IR text is
    only written when the whole module is done)."""
    gv = module.globals.get(name)
    typ = ir.ArrayType(F32, max(int(nfloats), 1))
    if gv is None:
        gv = ir.GlobalVariable(module, typ, name)
        gv.linkage = "internal"
        gv.align = 64
        gv.type = PTR  # llvmlite types globals; the module uses opaque pointers
        gv.initializer = ir.Constant(typ, None)
    elif gv.value_type.count < typ.count:
        gv.value_type = typ
        gv.initializer = ir.Constant(typ, None)
    return gv


def scratch_buffer(kb: KernelBuilder, nfloats: int, offset: int = 0) -> ir.Value:
    """Floats [offset, offset + nfloats) of the module's shared scratch: one zero-initialised
    global serves every kernel (they run one after another), sized for the largest request."""
    gv = _grown_global(kb.module, _SHARED_NAME, offset + nfloats)
    return kb.gep(gv, offset)


def kernel_barrier(kb: KernelBuilder, nt: ir.Value) -> None:
    """Wait until all `nt` threads running this kernel get here (release/acquire on the data)."""
    module = kb.module
    sync = module.globals.get(_SYNC_NAME)
    if sync is None:
        typ = ir.ArrayType(I8, SYNC_BYTES)
        sync = ir.GlobalVariable(module, typ, _SYNC_NAME)
        sync.initializer = ir.Constant(typ, None)
        sync.linkage = "internal"
        sync.align = 64
        sync.type = PTR
    kb.b.call(emit_barrier(module, kb.target), [sync, nt])


def thread_scratch(kb: KernelBuilder, nfloats: int, tid: ir.Value) -> ir.Value:
    """This thread's `nfloats` of the module's per-thread scratch (tid must be < SLOTS): SLOTS
    slices of one global, sized for the largest request of any kernel of the module."""
    gv = _grown_global(kb.module, _THREAD_NAME, SLOTS * int(nfloats))
    return kb.gep(gv, kb.b.mul(tid, kb.i64(int(nfloats))))
