"""A persistent worker pool in native code: no thread creation, no GIL, no Python per call.

Workers are started once (Python threads that call `kc_worker` through ctypes, which releases the
GIL, and never come back). A call publishes (entry, bufs, n) in a shared sync block and bumps a
generation counter; workers spin on it for a while (~0.1 ms) and then sleep in a futex, so an idle
process costs no CPU while back-to-back calls pay well under a microsecond to start. Every thread
runs the same entry with its own `tid` (SPMD); `kc_barrier` separates dependent kernels.

Sync block layout (one cache line per field, bytes): 0 generation (i32, the futex word),
64 barrier count, 128 barrier generation, 192 workers done, 256 entry, 264 bufs, 272 n,
280 the call's thread count, 288 the pool's thread count, 320 stop flag, 384 sleepers. Every worker
takes part in every generation (bumps `workers done`), also when a call uses fewer threads than the
pool has (`run(..., nthreads=k)`): those past k just skip the entry.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm.builder import (
    I32,
    I64,
    PTR,
    VOID,
    KernelBuilder,
    define,
    module_text,
    new_module,
)
from kcompile.codegen.llvm.jit import Target, compile_cached, host_target

GEN, BAR_COUNT, BAR_GEN, DONE = 0, 64, 128, 192
ENTRY_FN, BUFS, N, CALL_NT, POOL_NT, STOP, SLEEPERS = 256, 264, 272, 280, 288, 320, 384
SYNC_BYTES = 448
SPIN_ITERATIONS = 20000
YIELD_EVERY = 4096
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def _field(kb: KernelBuilder, sync: ir.Value, offset: int) -> ir.Value:
    return kb.gep(sync, offset, ir.IntType(8))


def _pause(kb: KernelBuilder) -> None:
    if kb.target.triple.startswith(("x86_64", "i686", "i386")):
        kb.b.call(kb.intrinsic("llvm.x86.sse2.pause", VOID, []), [])


def emit_barrier(module: ir.Module, target: Target) -> ir.Function:
    """`kc_barrier(bufs_sync, nthreads)`: sense-free generation barrier over the sync block."""
    existing = module.globals.get("kc_barrier")
    if existing is not None:
        return existing
    fn = define(module, "kc_barrier", [PTR, I64], target)
    kb = KernelBuilder(fn, target)
    b = kb.b
    sync, nt = fn.args
    with kb.if_then(b.icmp_signed(">", nt, kb.i64(1))):
        count_p, gen_p = _field(kb, sync, BAR_COUNT), _field(kb, sync, BAR_GEN)
        gen = b.load_atomic(gen_p, "acquire", 8, typ=I64)
        arrived = b.atomic_rmw("add", count_p, kb.i64(1), "acq_rel")
        with b.if_else(b.icmp_signed("==", arrived, b.sub(nt, kb.i64(1)))) as (last, wait):
            with last:
                b.atomic_rmw("xchg", count_p, kb.i64(0), "monotonic")
                b.atomic_rmw("add", gen_p, kb.i64(1), "release")
            with wait:
                _spin_while_equal(kb, gen_p, gen, I64)
    kb.finish()
    return fn


def _backoff(kb: KernelBuilder, spins: ir.Value) -> None:
    """pause; every YIELD_EVERY spins give the core away, so an oversubscribed machine (another
    process on our cores) degrades gracefully instead of spinning against a preempted peer."""
    b = kb.b
    _pause(kb)
    count = b.add(kb.get(spins), kb.i64(1))
    kb.set(spins, count)
    with kb.if_then(b.icmp_signed("==", b.srem(count, kb.i64(YIELD_EVERY)), kb.i64(0))):
        fn = kb.module.globals.get("sched_yield") or ir.Function(
            kb.module, ir.FunctionType(I32, []), name="sched_yield")
        b.call(fn, [])


def _spin(kb: KernelBuilder, ptr: ir.Value, typ: ir.Type, keep_waiting) -> None:
    """Spin (with backoff) while `keep_waiting(current value)` holds."""
    b = kb.b
    spins = kb.var(I64, kb.i64(0))
    head = kb.fn.append_basic_block("spin.head")
    body = kb.fn.append_basic_block("spin.body")
    done = kb.fn.append_basic_block("spin.done")
    b.branch(head)
    b.position_at_end(head)
    cur = b.load_atomic(ptr, "acquire", typ.width // 8, typ=typ)
    b.cbranch(keep_waiting(cur), body, done)
    b.position_at_end(body)
    _backoff(kb, spins)
    b.branch(head)
    b.position_at_end(done)


def _spin_while_equal(kb: KernelBuilder, ptr: ir.Value, value: ir.Value, typ: ir.Type) -> None:
    _spin(kb, ptr, typ, lambda cur: kb.b.icmp_unsigned("==", cur, value))


def _futex(kb: KernelBuilder, addr: ir.Value, op: int, val: ir.Value) -> None:
    arch = kb.target.triple.split("-")[0]
    number = _SYS_FUTEX.get(arch)
    if number is None:
        return  # no futex: waiters keep spinning with pause
    syscall = kb.module.globals.get("syscall") or ir.Function(
        kb.module, ir.FunctionType(I64, [I64], var_arg=True), name="syscall")
    kb.b.call(syscall, [kb.i64(number), addr, kb.i64(op), kb.b.zext(val, I64),
                        ir.Constant(PTR, None)])


def _pool_module(target: Target) -> str:
    module = new_module("kc_pool", target)
    entry_t = ir.FunctionType(VOID, [PTR, I64, I64, I64])
    # kc_worker(sync, tid, nthreads): loops until the stop flag is set
    fn = define(module, "kc_worker", [PTR, I64, I64], target, internal=False)
    kb = KernelBuilder(fn, target)
    b = kb.b
    sync, tid, nt = fn.args
    gen_p = _field(kb, sync, GEN)
    # generation 0 is the fresh sync block's: a worker that starts late (after the first call bumped
    # the generation) must still run that call, which cannot finish without it
    seen = kb.var(I32, ir.Constant(I32, 0))
    outer = fn.append_basic_block("wait")
    b.branch(outer)
    b.position_at_end(outer)
    spins = kb.var(I64, kb.i64(0))
    spin_head = fn.append_basic_block("spin")
    got = fn.append_basic_block("got")
    b.branch(spin_head)
    b.position_at_end(spin_head)
    cur = b.load_atomic(gen_p, "acquire", 4, typ=I32)
    changed = b.icmp_unsigned("!=", cur, kb.get(seen))
    keep = fn.append_basic_block("keep")
    b.cbranch(changed, got, keep)
    b.position_at_end(keep)
    _pause(kb)
    count = b.add(kb.get(spins), kb.i64(1))
    kb.set(spins, count)
    with kb.if_then(b.icmp_signed(">", count, kb.i64(SPIN_ITERATIONS))):
        sleepers = _field(kb, sync, SLEEPERS)
        b.atomic_rmw("add", sleepers, kb.i64(1), "seq_cst")
        now = b.load_atomic(gen_p, "seq_cst", 4, typ=I32)
        with kb.if_then(b.icmp_unsigned("==", now, kb.get(seen))):
            _futex(kb, gen_p, _FUTEX_WAIT_PRIVATE, kb.get(seen))
        b.atomic_rmw("sub", sleepers, kb.i64(1), "seq_cst")
        kb.set(spins, kb.i64(0))
    b.branch(spin_head)
    b.position_at_end(got)
    kb.set(seen, cur)
    stop = b.load_atomic(_field(kb, sync, STOP), "acquire", 8, typ=I64)
    run = fn.append_basic_block("run")
    leave = fn.append_basic_block("leave")
    b.cbranch(b.icmp_signed("!=", stop, kb.i64(0)), leave, run)
    b.position_at_end(run)
    entry = b.load(_field(kb, sync, ENTRY_FN), typ=PTR)
    bufs = b.load(_field(kb, sync, BUFS), typ=PTR)
    n = b.load(_field(kb, sync, N), typ=I64)
    call_nt = b.load(_field(kb, sync, CALL_NT), typ=I64)
    with kb.if_then(b.icmp_signed("<", tid, call_nt)):
        b.call(_as_callee(b, entry, entry_t), [bufs, n, tid, call_nt])
    b.atomic_rmw("add", _field(kb, sync, DONE), kb.i64(1), "release")
    b.branch(outer)
    b.position_at_end(leave)
    b.ret_void()
    kb.finish()

    # kc_run(sync, entry, bufs, n, nthreads): the calling thread is thread 0
    fn = define(module, "kc_run", [PTR, PTR, PTR, I64, I64], target, internal=False)
    kb = KernelBuilder(fn, target)
    b = kb.b
    sync, entry, bufs, n, nt = fn.args
    done_p = _field(kb, sync, DONE)
    b.store(entry, _field(kb, sync, ENTRY_FN))
    b.store(bufs, _field(kb, sync, BUFS))
    b.store(n, _field(kb, sync, N))
    b.store(nt, _field(kb, sync, CALL_NT))
    b.atomic_rmw("xchg", done_p, kb.i64(0), "seq_cst")
    gen_p = _field(kb, sync, GEN)
    b.atomic_rmw("add", gen_p, ir.Constant(I32, 1), "seq_cst")
    sleepers = b.load_atomic(_field(kb, sync, SLEEPERS), "seq_cst", 8, typ=I64)
    with kb.if_then(b.icmp_signed(">", sleepers, kb.i64(0))):
        _futex(kb, gen_p, _FUTEX_WAKE_PRIVATE, ir.Constant(I32, 0x7FFFFFFF))
    b.call(_as_callee(b, entry, entry_t), [bufs, n, kb.i64(0), nt])
    pool_nt = b.load(_field(kb, sync, POOL_NT), typ=I64)
    _spin_until(kb, done_p, b.sub(pool_nt, kb.i64(1)))
    kb.finish()
    return module_text(module, target)


def _as_callee(b: ir.IRBuilder, ptr: ir.Value, fn_type: ir.FunctionType) -> ir.Value:
    """An opaque pointer called with an explicit function type."""
    return _TypedCallee(ptr, fn_type)


class _TypedCallee(ir.Value):
    def __init__(self, ptr: ir.Value, fn_type: ir.FunctionType) -> None:
        self._ptr = ptr
        self.function_type = fn_type
        self.type = PTR

    def get_reference(self) -> str:
        return self._ptr.get_reference()


def _spin_until(kb: KernelBuilder, ptr: ir.Value, value: ir.Value) -> None:
    _spin(kb, ptr, I64, lambda cur: kb.b.icmp_signed("<", cur, value))


def default_threads() -> int:
    env = os.environ.get("KCOMPILE_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"KCOMPILE_NUM_THREADS must be a positive int, got {env!r}") from None
        if value < 1:
            raise ValueError(f"KCOMPILE_NUM_THREADS must be a positive int, got {env!r}")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadPool:
    """The process-wide pool: `nthreads - 1` native workers plus the calling thread."""

    def __init__(self, nthreads: int, target: Target) -> None:
        self.nthreads = nthreads
        self.alive = True  # False in a forked child, where the workers do not exist
        self.lock = threading.Lock()  # one model call at a time uses the sync block
        self._sync = np.zeros(SYNC_BYTES // 8 + 8, np.int64)
        base = self._sync.ctypes.data
        self.sync_addr = base + (-base % 64)
        ctypes.c_int64.from_address(self.sync_addr + POOL_NT).value = nthreads
        self._lib = None
        self.run = None
        if nthreads > 1:
            lib, _, _ = compile_cached("kc_pool", lambda: (_pool_module(target), {}), target)
            self._lib = lib
            worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(
                lib.address("kc_worker"))
            self.run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64)(lib.address("kc_run"))
            self._threads = [threading.Thread(target=worker, args=(self.sync_addr, t, nthreads),
                                              name=f"kcompile-worker-{t}", daemon=True)
                             for t in range(1, nthreads)]
            for t in self._threads:
                t.start()


_lock = threading.Lock()
_pools: dict[tuple[int, Target], ThreadPool] = {}


def get_pool(nthreads: int | None = None, target: Target | None = None) -> ThreadPool:
    key = (nthreads or default_threads(), target or host_target())
    with _lock:
        pool = _pools.get(key)
        if pool is None or not pool.alive:
            pool = _pools[key] = ThreadPool(*key)
        return pool


def _after_fork_in_child() -> None:
    """Threads do not survive fork: mark every pool dead so the child starts its own."""
    global _lock
    _lock = threading.Lock()
    for pool in _pools.values():
        pool.alive = False
        pool.lock = threading.Lock()
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
