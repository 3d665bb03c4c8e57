"""Backpropagation through time: `simple_rnn_bptt`, `lstm_bptt`, `gru_bptt` (ir/ops/rnn.py has the
maths; everything is in processing order).

The batch rows are independent chains, so threads split the rows and each runs the whole backward
time loop for its own: no barrier per step. A step is one GEMM, the carry dZ[:, k+1] @ R^T (K = G*U),
with the gate derivatives fused into its epilogue: a tile of MR rows x NB blocks of vw units keeps
the carry in registers, and the epilogue then writes dZ[:, k] (every gate) of those units -- the
same register tiling as the forward kernel, with the units of the carry in the vector lanes.

R is a run-time weight in a training step, so R^T is packed at kernel start into the module's
shared scratch: the threads split the vw-wide K tiles (a vw x vw register transpose each), meet at
a barrier, then all read [group of NB unit blocks][K][NB][vw], K padded to whole tiles, units past U
zero. One group's panel is read by every row tile of a thread in turn.

Where the carries live (each thread touches only its own rows, each tile only its own units):
- the part of the dh carry outside the GEMM ((1 - m) dh, plus dn z for GRU) in the dh0 output,
  started as dh_T, and the final dh0 = dZ[:, 0] @ R^T + that part, one more GEMM pass;
- LSTM's dc carry in the dc0 output, started as dc_T;
- LSTM's cell states c_k, recomputed by a forward scan over the pre-activations (elementwise, no
  GEMM) into the c-gate slot of dZ[:, k], and the gates i, f, g of step k into its other slots.
  Step k reads c_{k-1} from step k-1's slot before step k-1 overwrites it, and overwrites its own
  slots only after step k+1 (the last reader of c_k) is done and after reading i, f, g.
GRU with reset_after=False needs d_inner = dah @ R_h^T over all units before dr, so its step runs
in two passes: the first (GEMM over [dz, dr] of step k+1 and R_zr) writes dz and dah, the second
(GEMM over dah of step k and R_h) writes dr and adds d_inner * r to the carry.

Memory: the (N, T, G*U) sequences outgrow L2, and one row's steps lie G*U floats apart, rows T*G*U
apart -- strides the hardware prefetcher does not follow -- so the epilogue prefetches the next
(earlier) step's operands of its row, and the LSTM scan runs time-major (each step's rows are
contiguous runs) prefetching the row's next step. On LSTM(128), T=50, batch 32, one thread: the
GEMMs ~1.9 ms (near the FMA peak), the scan and epilogues ~0.7 ms more; each change above took
~0.3 ms off.
"""

from __future__ import annotations

from llvmlite import ir

from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import KernelContext, lowering, split_range
from kcompile.codegen.llvm.kernels.gemm import transpose_tile
from kcompile.codegen.llvm.kernels.rnn import _activate, _copy_rows, check_sequence_node, tile_rows
from kcompile.codegen.llvm.kernels.scratch import kernel_barrier, scratch_buffer
from kcompile.ir.core import Node

GATES = {"simple_rnn_bptt": 1, "lstm_bptt": 4, "gru_bptt": 3}
RECURRENT_INPUT = {"simple_rnn_bptt": 1, "lstm_bptt": 2, "gru_bptt": 3}  # where R is among the inputs


class _Plan:
    def __init__(self, node: Node, vw: int) -> None:
        self.op = node.op
        self.masked = bool(node.attrs.get("masked", False))
        self.act = node.attrs["activation"]
        self.ract = node.attrs.get("recurrent_activation", "sigmoid")
        self.reset_before = node.op == "gru_bptt" and not node.attrs["reset_after"]
        self.u = node.inputs[RECURRENT_INPUT[node.op]].shape[0]
        self.t = node.inputs[0].shape[1]
        self.gates = GATES[node.op]
        self.k = self.gates * self.u  # the carry GEMM's reduction
        self.vw = vw
        self.kp = -(-self.k // vw) * vw  # packed K rows (whole transpose tiles)
        self.blocks = -(-self.u // vw)
        self.nb = min(4 if vw == 16 else 2, self.blocks)  # unit blocks per register tile
        self.groups = -(-self.blocks // self.nb)
        self.mr = max(1, min(8, (24 if vw == 16 else 12) // self.nb))
        self.edge = self.u % vw != 0 or self.blocks % self.nb != 0  # some tile lanes are not units
        self.lane_edge = self.u % vw != 0
        self.mask_index = len(node.inputs) - 1  # the mask is the last input (when masked)

    @property
    def packed_floats(self) -> int:
        return self.groups * self.kp * self.nb * self.vw


def _slope(kb: KernelBuilder, name: str, y: ir.Value) -> ir.Value:
    """act'(z) from y = act(z), as the ref's `slope`."""
    b = kb.b
    one = kb.vconst(1.0)
    if name == "tanh":
        return b.fsub(one, b.fmul(y, y))
    if name == "sigmoid":
        return b.fmul(y, b.fsub(one, y))
    if name == "relu":
        return b.select(b.fcmp_ordered(">", y, kb.vconst(0.0)), one, kb.vconst(0.0))
    return one


def _pack_rt(kb: KernelBuilder, plan: _Plan, r_ptr: ir.Value, buf: ir.Value, tid: ir.Value,
             nt: ir.Value) -> None:
    """buf[q][kk][j][l] = R[(q*NB + j)*vw + l, kk] (zero past U and past K): the threads split the
    vw-wide K tiles; each loads vw rows of R (units) along K and transposes them in registers."""
    b = kb.b
    vw, k, u, nb = plan.vw, plan.k, plan.u, plan.nb
    lo, hi = split_range(kb, kb.i64(plan.kp // vw), tid, nt)
    with kb.loop(lo, hi, 1, "pt") as tile:
        kk0 = b.mul(tile, kb.i64(vw))
        kmask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(k), kk0), kb.i64(vw))) if k % vw else None
        with kb.loop(kb.i64(0), kb.i64(plan.groups * nb), 1, "pb") as p:
            vectors = []
            for jj in range(vw):
                unit = b.add(b.mul(p, kb.i64(vw)), kb.i64(jj))
                valid = b.icmp_signed("<", unit, kb.i64(u))
                mask = b.and_(kmask, kb.splat(valid)) if kmask is not None else kb.splat(valid)
                src = b.add(b.mul(kb.min_i64(unit, kb.i64(u - 1)), kb.i64(k)), kk0)
                vectors.append(kb.masked_load(r_ptr, src, mask))
            q, j = b.sdiv(p, kb.i64(nb)), b.srem(p, kb.i64(nb))
            base = b.add(b.mul(b.add(b.mul(q, kb.i64(plan.kp)), kk0), kb.i64(nb * vw)), b.mul(j, kb.i64(vw)))
            for kk, row in enumerate(transpose_tile(kb, vectors)):
                kb.vstore(row, buf, b.add(base, kb.i64(kk * nb * vw)))


@lowering("simple_rnn_bptt", "lstm_bptt", "gru_bptt")
def lower_bptt(ctx: KernelContext, node: Node) -> ir.Function:
    check_sequence_node(node)
    plan = _Plan(node, ctx.target.vector_width)
    fn, kb, ins, outs, n, tid, nt = ctx.new_multi_kernel(node)
    b = kb.b
    bufs = ins + outs
    t_len, u = plan.t, plan.u
    r_in = bufs[RECURRENT_INPUT[plan.op]]
    packed = scratch_buffer(kb, plan.packed_floats)
    _pack_rt(kb, plan, r_in, packed, tid, nt)
    kernel_barrier(kb, nt)
    lo, hi = split_range(kb, n, tid, nt)
    # the carries start as the final states' cotangents
    if plan.op == "lstm_bptt":
        _copy_rows(kb, outs[1], bufs[4], lo, hi, u)
        _copy_rows(kb, outs[2], bufs[5], lo, hi, u)
        _lstm_scan(kb, plan, bufs, lo, hi)
    else:
        _copy_rows(kb, outs[-1], bufs[{"simple_rnn_bptt": 3, "gru_bptt": 5}[plan.op]], lo, hi, u)

    def kernel(kind: str, rows: int) -> ir.Function:
        return ctx.shared_function(("rnn_bptt", repr(vars(plan)), rows, kind, len(bufs)),
                                   lambda: _micro_kernel(ctx, plan, rows, kind, len(bufs)))

    def sweep(kind: str, a_step: ir.Value, k: ir.Value, k_len: ir.Value) -> None:
        """One pass over this thread's rows: groups of unit blocks outside (a group's packed
        panel stays in cache while the row tiles pass), tiles of MR rows, pairs, one inside."""
        with kb.loop(kb.i64(0), kb.i64(plan.groups), 1, "q") as q:
            def emit(rows: int, m0: ir.Value) -> None:
                b.call(kernel(kind, rows), [*bufs, packed, m0, k, q, a_step, k_len])

            tile_rows(kb, lo, hi, plan.mr, emit)

    k_main = 2 * u if plan.reset_before else plan.k
    with kb.loop(kb.i64(0), kb.i64(t_len), 1, "s") as s:
        k = b.sub(kb.i64(t_len - 1), s)
        last = b.icmp_signed("==", s, kb.i64(0))  # step T-1: the carry is dh_T alone
        a_step = kb.min_i64(b.add(k, kb.i64(1)), kb.i64(t_len - 1))
        sweep("step", a_step, k, b.select(last, kb.i64(0), kb.i64(k_main)))
        if plan.reset_before:
            sweep("inner", k, k, kb.i64(u))
    sweep("final", kb.i64(0), kb.i64(0), kb.i64(k_main))
    kb.finish()
    return fn


def _lstm_scan(kb: KernelBuilder, plan: _Plan, bufs: list, lo: ir.Value, hi: ir.Value) -> None:
    """c_k = m c_new + (1 - m) c_{k-1} for every step into dZ's c-gate slot of step k, and the gates
    i, f, g of step k into its i, f and o slots (the backward step then only evaluates o and
    act(c_new) itself)."""
    b = kb.b
    z, c0 = bufs[0], bufs[1]
    ms = bufs[plan.mask_index] if plan.masked else None
    dz = bufs[-3]
    vw, u, t_len, g4 = plan.vw, plan.u, plan.t, 4 * plan.u
    with kb.loop(kb.i64(0), kb.i64(t_len), 1, "sk") as k:
        first = b.icmp_signed("==", k, kb.i64(0))
        with kb.loop(lo, hi, 1, "sr") as row:
            with kb.loop(kb.i64(0), kb.i64(plan.blocks), 1, "sp") as p:
                u0 = b.mul(p, kb.i64(vw))
                mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(u), u0), kb.i64(vw))) if plan.lane_edge else None
                zrow = b.add(b.mul(b.add(b.mul(row, kb.i64(t_len)), k), kb.i64(g4)), u0)
                i = _activate(kb, plan.ract, kb.load_vector(z, zrow, mask))
                f = _activate(kb, plan.ract, kb.load_vector(z, b.add(zrow, kb.i64(u)), mask))
                g = _activate(kb, plan.act, kb.load_vector(z, b.add(zrow, kb.i64(2 * u)), mask))
                # this row's next step (a stride the hardware prefetcher misses; the last step
                # prefetches itself, so no address leaves the buffers)
                nxt = b.add(zrow, b.select(b.icmp_signed("<", k, kb.i64(t_len - 1)), kb.i64(g4), kb.i64(0)))
                for j in range(3):
                    kb.prefetch(z, b.add(nxt, kb.i64(j * u)))
                for j in range(4):
                    _prefetch_write(kb, dz, b.add(nxt, kb.i64(j * u)))
                # c_{k-1}: c0, or the c slot of the step before
                prev_at = b.select(first, b.add(b.mul(row, kb.i64(u)), u0), b.sub(zrow, kb.i64(2 * u)))
                c_prev = kb.load_vector(b.select(first, c0, dz), prev_at, mask)
                c_new = kb.fma(f, c_prev, b.fmul(i, g))
                if ms is not None:
                    m = kb.splat(kb.load(ms, b.add(b.mul(row, kb.i64(t_len)), k)))
                    c_new = b.fadd(b.fmul(m, c_new), b.fmul(b.fsub(kb.vconst(1.0), m), c_prev))
                for slot, value in ((0, i), (1, f), (2, c_new), (3, g)):
                    kb.store_vector(value, dz, b.add(zrow, kb.i64(slot * u)), mask)


def _prefetch_write(kb: KernelBuilder, ptr: ir.Value, index: ir.Value) -> None:
    """Prefetch the line at ptr[index] for writing (llvm.prefetch rw=1)."""
    fn = kb.intrinsic("llvm.prefetch.p0", ir.VoidType(), [PTR, ir.IntType(32), ir.IntType(32),
                                                          ir.IntType(32)])
    kb.b.call(fn, [kb.gep(ptr, index), kb.i32(1), kb.i32(3), kb.i32(1)])


def _micro_kernel(ctx: KernelContext, plan: _Plan, rows: int, kind: str, nbufs: int) -> ir.Function:
    """`rows` batch rows from m0 and unit group q: acc = A[rows, :k_len] @ packed R^T rows, A the
    gradient sequence at step a_step, then the epilogue of `kind` per (row, unit block) at step k:
    "step" (the gate derivatives; GRU reset_before: dz and dah only), "inner" (GRU reset_before:
    acc = d_inner, dr and the carry's d_inner * r) or "final" (dh0 = acc + the carry's rest)."""
    ctx.counter += 1
    fn = define(ctx.module, f"k{ctx.counter}_{plan.op}_{kind}_{rows}",
                [PTR] * (nbufs + 1) + [I64] * 5, ctx.target)
    # Not inlined, and the K length is an argument: with constant trip counts LLVM unrolls the K
    # loop completely, and the copies of the B vectors then spill the accumulators.
    fn.attributes.add("noinline")
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    bufs = list(fn.args[:nbufs])
    packed = fn.args[nbufs]
    m0, k, q, a_step, k_len = fn.args[nbufs + 1:]
    vw, nb, u, t_len, gates = plan.vw, plan.nb, plan.u, plan.t, plan.gates
    # A: the gradient sequence whose step a_step multiplies R^T
    a_seq, a_col = {"simple_rnn_bptt": (bufs[-2], 0), "lstm_bptt": (bufs[-3], 0),
                    "gru_bptt": (bufs[-2] if not plan.reset_before else bufs[-3], 0)}[plan.op]
    if kind == "inner":
        a_col = 2 * u
    a_rs = t_len * gates * u
    a0 = b.add(b.mul(b.add(b.mul(m0, kb.i64(t_len)), a_step), kb.i64(gates * u)), kb.i64(a_col))
    a_rows = [kb.gep(a_seq, b.add(a0, kb.i64(r * a_rs))) for r in range(rows)]
    kk0 = 2 * u if kind == "inner" else 0
    panel = kb.gep(packed, b.mul(b.add(b.mul(q, kb.i64(plan.kp)), kb.i64(kk0)), kb.i64(nb * vw)))
    accs = [[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(nb)] for _ in range(rows)]
    with kb.loop(kb.i64(0), k_len, 1, "kk") as kk:
        base = b.mul(kk, kb.i64(nb * vw))
        bvals = [kb.vload(panel, b.add(base, kb.i64(j * vw))) for j in range(nb)]
        for r in range(rows):
            a = kb.splat(kb.load(a_rows[r], kk))
            for j in range(nb):
                kb.set(accs[r][j], kb.fma(a, bvals[j], kb.get(accs[r][j])))
    # the epilogue is one loop body over (row, block): the accumulators go through the stack
    tile = kb.buffer(ir.FloatType(), rows * nb * vw)
    for r in range(rows):
        for j in range(nb):
            kb.vstore(kb.get(accs[r][j]), tile, (r * nb + j) * vw)
    with kb.loop(kb.i64(0), kb.i64(rows), 1, "er") as r:
        with kb.loop(kb.i64(0), kb.i64(nb), 1, "ej") as j:
            u0 = b.mul(b.add(b.mul(q, kb.i64(nb)), j), kb.i64(vw))
            acc = kb.vload(tile, b.mul(b.add(b.mul(r, kb.i64(nb)), j), kb.i64(vw)))
            row = b.add(m0, r)

            def body() -> None:
                mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(u), u0), kb.i64(vw))) \
                    if plan.lane_edge else None
                _epilogue(kb, plan, kind, bufs, acc, row, k, u0, mask)

            if plan.edge:  # blocks past U in the last group: nothing to do
                with kb.if_then(b.icmp_signed("<", u0, kb.i64(u))):
                    body()
            else:
                body()
    kb.finish()
    return fn


def _epilogue(kb: KernelBuilder, plan: _Plan, kind: str, bufs: list, acc: ir.Value, row: ir.Value,
              k: ir.Value, u0: ir.Value, mask: ir.Value | None) -> None:
    """The fused elementwise maths of one (row, block of vw units) at step k (ir/ops/rnn.py refs)."""
    b = kb.b
    u, t_len = plan.u, plan.t
    one = kb.vconst(1.0)
    rest_buf = bufs[-1] if plan.op != "lstm_bptt" else bufs[-2]  # dh0: the carry outside the GEMM
    rest_at = b.add(b.mul(row, kb.i64(u)), u0)

    def load(ptr: ir.Value, at: ir.Value) -> ir.Value:
        return kb.load_vector(ptr, at, mask)

    def store(value: ir.Value, ptr: ir.Value, at: ir.Value) -> None:
        kb.store_vector(value, ptr, at, mask)

    def seq_at(width: int, gate: int, step: ir.Value = k) -> ir.Value:
        """Offset of units u0.. of `gate` at `step` of this row in a (N, T, width * U) sequence."""
        return b.add(b.mul(b.add(b.mul(row, kb.i64(t_len)), step), kb.i64(width * u)),
                     b.add(kb.i64(gate * u), u0))

    act = lambda v: _activate(kb, plan.act, v)  # noqa: E731
    ract = lambda v: _activate(kb, plan.ract, v)  # noqa: E731
    rest = load(rest_buf, rest_at)
    if kind == "final":
        store(b.fadd(acc, rest), rest_buf, rest_at)
        return
    if plan.masked:
        m_ptr = bufs[plan.mask_index]
        m = kb.splat(kb.load(m_ptr, b.add(b.mul(row, kb.i64(t_len)), k)))
        keep = b.fsub(one, m)
        times_m = lambda v: b.fmul(m, v)  # noqa: E731
    else:
        keep = None
        times_m = lambda v: v  # noqa: E731

    def carry_rest(dh: ir.Value, extra: ir.Value | None = None) -> ir.Value:
        """extra + (1 - m) dh (zero without a mask)."""
        kept = b.fmul(keep, dh) if keep is not None else None
        if extra is None:
            return kept if kept is not None else kb.vconst(0.0)
        return b.fadd(extra, kept) if kept is not None else extra

    if kind == "step" and plan.op != "lstm_bptt":
        # the next (earlier) step's operands: rows lie T steps apart, a stride the hardware misses
        prev_step = kb.max_i64(b.sub(k, kb.i64(1)), kb.i64(0))
        seqs = [(bufs[0], 1), (bufs[2], 1)] if plan.op == "simple_rnn_bptt" else \
            [(bufs[0], 3), (bufs[1], 3), (bufs[2], 1), (bufs[4], 1)]
        for ptr, width in seqs:
            for gate in range(width):
                kb.prefetch(ptr, seq_at(width, gate, prev_step))
    if plan.op == "simple_rnn_bptt":
        y, dy = bufs[0], bufs[2]
        da_out = bufs[-2]
        at = seq_at(1, 0)
        dh = b.fadd(b.fadd(acc, rest), load(dy, at))
        store(b.fmul(times_m(dh), _slope(kb, plan.act, load(y, at))), da_out, at)
        store(carry_rest(dh), rest_buf, rest_at)
    elif plan.op == "lstm_bptt":
        z, c0, dy = bufs[0], bufs[1], bufs[3]
        dz, dc_buf = bufs[-3], bufs[-1]
        # the scan left i, f and g of this step in the i, f and o slots (c's holds c_k)
        i, f, g = (load(dz, seq_at(4, j)) for j in (0, 1, 3))
        o = ract(load(z, seq_at(4, 3)))
        first = b.icmp_signed("==", k, kb.i64(0))
        c_prev_ptr = b.select(first, c0, dz)
        prev_step = kb.max_i64(b.sub(k, kb.i64(1)), kb.i64(0))
        c_prev = load(c_prev_ptr, b.select(first, rest_at, seq_at(4, 2, prev_step)))
        for ptr, at in ((dz, seq_at(4, 0, prev_step)), (dz, seq_at(4, 1, prev_step)),
                        (dz, seq_at(4, 3, prev_step)), (z, seq_at(4, 3, prev_step)),
                        (dy, seq_at(1, 0, prev_step))):  # the next (earlier) step's operands
            kb.prefetch(ptr, at)
        tc = act(kb.fma(f, c_prev, b.fmul(i, g)))
        dh = b.fadd(b.fadd(acc, rest), load(dy, seq_at(1, 0)))
        dhn = times_m(dh)
        dc_carry = load(dc_buf, rest_at)
        dcn = b.fadd(times_m(dc_carry), b.fmul(b.fmul(dhn, o), _slope(kb, plan.act, tc)))
        store(b.fmul(b.fmul(dcn, g), _slope(kb, plan.ract, i)), dz, seq_at(4, 0))
        store(b.fmul(b.fmul(dcn, c_prev), _slope(kb, plan.ract, f)), dz, seq_at(4, 1))
        store(b.fmul(b.fmul(dcn, i), _slope(kb, plan.act, g)), dz, seq_at(4, 2))
        store(b.fmul(b.fmul(dhn, tc), _slope(kb, plan.ract, o)), dz, seq_at(4, 3))
        dc_new = b.fmul(dcn, f)
        if keep is not None:
            dc_new = b.fadd(dc_new, b.fmul(keep, dc_carry))
        store(dc_new, dc_buf, rest_at)
        store(carry_rest(dh), rest_buf, rest_at)
    else:
        _gru_epilogue(kb, plan, kind, bufs, acc, rest, seq_at, load, store, times_m, carry_rest,
                      rest_buf, rest_at)


def _gru_epilogue(kb, plan, kind, bufs, acc, rest, seq_at, load, store, times_m, carry_rest,
                  rest_buf, rest_at) -> None:
    b = kb.b
    one = kb.vconst(1.0)
    zx, hr, hp, dy = bufs[0], bufs[1], bufs[2], bufs[4]
    dzx, dhr = bufs[-3], bufs[-2]
    act = lambda v: _activate(kb, plan.act, v)  # noqa: E731
    ract = lambda v: _activate(kb, plan.ract, v)  # noqa: E731
    at = [seq_at(3, j) for j in range(3)]
    h = load(hp, seq_at(1, 0))
    if kind == "inner":  # reset_before, second pass: acc = d_inner
        r = ract(b.fadd(load(zx, at[1]), load(hr, at[1])))
        dr = b.fmul(b.fmul(acc, h), _slope(kb, plan.ract, r))
        store(dr, dzx, at[1])
        store(dr, dhr, at[1])
        store(b.fadd(rest, b.fmul(acc, r)), rest_buf, rest_at)
        return
    z = ract(b.fadd(load(zx, at[0]), load(hr, at[0])))
    hr_h = load(hr, at[2])
    if plan.reset_before:
        hh = act(b.fadd(load(zx, at[2]), hr_h))
    else:
        r = ract(b.fadd(load(zx, at[1]), load(hr, at[1])))
        hh = act(b.fadd(load(zx, at[2]), b.fmul(r, hr_h)))
    dh = b.fadd(b.fadd(acc, rest), load(dy, seq_at(1, 0)))
    dn = times_m(dh)
    dz = b.fmul(b.fmul(dn, b.fsub(h, hh)), _slope(kb, plan.ract, z))
    dah = b.fmul(b.fmul(dn, b.fsub(one, z)), _slope(kb, plan.act, hh))
    store(dz, dzx, at[0])
    store(dz, dhr, at[0])
    store(dah, dzx, at[2])
    if plan.reset_before:
        store(dah, dhr, at[2])
    else:
        dr = b.fmul(b.fmul(dah, hr_h), _slope(kb, plan.ract, r))
        store(dr, dzx, at[1])
        store(dr, dhr, at[1])
        store(b.fmul(dah, r), dhr, at[2])
    store(carry_rest(dh, b.fmul(dn, z)), rest_buf, rest_at)
