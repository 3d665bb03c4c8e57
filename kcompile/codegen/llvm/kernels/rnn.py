"""Recurrent layers over a whole sequence (`simple_rnn`, `lstm`, `gru` with reset_after): a time
loop whose step is one register-tiled GEMM with the gate nonlinearities fused after it.

The batch rows are independent recurrences, so threads split the rows and each runs the whole time
loop for its own: no barrier per step. In a step, a tile of MR rows x one block of vw units keeps
every gate of those units in registers -- the weights are packed per block of vw units as
[K][gate][vw] (`rnn_gates`), so the micro-kernel's accumulators for one row are the i, f, c, o (or
z, r, h) pre-activations of the same vw units. It accumulates x_t @ W (K = F) and h_{t-1} @ R
(K = U) into them and then, still in registers, adds the biases, applies the activations and
writes the new states: LSTM c' = f c + i g, h' = o act(c'); GRU h' = z h + (1 - z) act(x_h +
r (h R_h + b_rh)), whose recurrent h-gate part needs a fourth accumulator; SimpleRNN h' =
act(x W + b + h R). The step loop goes over unit blocks outside and row tiles inside, so one block's
packed weights stay in L1 while the rows pass. The gates use `mathfn.fast_tanh`/`fast_sigmoid` (one
rational function each; the exp-based ones cost ~20% of a step at LSTM(128)).

Why x_t @ W stays inside the step rather than running first as one GEMM over all steps (what
ONNX Runtime and cuDNN do): the step is a batch-reduce over two A/B pairs into the same registers,
so the input part costs the same FMAs at the same rate as a separate GEMM would, and no
(N, T, G*U) intermediate is written and read back. Measured on LSTM(128), T=50, F=32, batch 32
(znver4, 2 threads): the in-step input part is 0.28 ms of a 1.44 ms forward, and the same
projection as one GEMM (a Dense(512) over the (32, 50, 32) input) takes 0.28 ms alone, before
the step loop reads its 3.2 MB output back. The first step of a layer without initial states
skips the recurrent part (h_{-1} = 0).

State lives in the outputs: h_{t-1} is the previous step's row of the sequence output (y[:, k-1],
processing order, as Keras returns it with go_backwards), the LSTM cell state is the c_T output
updated in place, and h_T is copied from the last step at the end.

Weights known at bind time (inference) are packed once as above. Run-time weights (a training step
feeds them as graph inputs) are read in their row-major (K, G*U) layout directly: the vw units of
one gate are contiguous there too, only the stride between K rows is G*U instead of G*vw, and the
last block's loads are masked when vw does not divide U (no read past the weight). Measured on
LSTM(128), T=50, F=32, batch 32 this runs as fast as the packed copy (the same cache lines are
touched), while packing at kernel start into scratch behind a barrier cost ~15 us more per call.

Masked (attr masked, last input mask (N, T) by input position): per row the step's new states are
taken where the mask is non-zero and the old ones carried otherwise (a select on the row's scalar),
so y[:, k] is always the state after step k.

GRU with reset_after=False needs r for every unit before the candidate's recurrent GEMM
(r * h) @ R_h, so its step runs in two passes per row tile: the first computes z, r * h and the
candidate's input part for all units into a per-thread scratch, the second the GEMM over r * h
with the blend fused after it.

The tape (attr tape=True, a training step's forward): the gates' pre-activations are written from
the accumulators, before the nonlinearities, into the extra outputs at the step's row (processing
order) -- LSTM z (the sum with the bias, 4 stores per row and block), GRU zx and hr, whose input and
recurrent parts then accumulate apart (6 accumulators instead of 4, so fewer rows per tile). A masked
step writes what it computed from the carried state: the BPTT multiplies that step's gradients by
the mask, so nothing reads them.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from kcompile.codegen.llvm import mathfn
from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define
from kcompile.codegen.llvm.kernels.common import KernelContext, ParamLayout, lowering, packer, split_range
from kcompile.codegen.llvm.kernels.scratch import SLOTS, thread_scratch
from kcompile.ir.core import Node

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
ACCUMULATORS = {"simple_rnn": 1, "lstm": 4, "gru": 4}  # gru: z, r, x_h and the recurrent h_h


@packer("rnn_gates")
def pack_gates(w: np.ndarray, gates: int, units: int, vw: int) -> np.ndarray:
    """(K, gates * units) -> per block of vw units [K][gate][vw], the last block zero-padded."""
    k = w.shape[0]
    blocks = -(-units // vw)
    padded = np.zeros((k, gates, blocks * vw), np.float32)
    padded[:, :, :units] = w.reshape(k, gates, units)
    return np.ascontiguousarray(padded.reshape(k, gates, blocks, vw).transpose(2, 0, 1, 3)).ravel()


def _activate(kb: KernelBuilder, name: str, v: ir.Value) -> ir.Value:
    if name == "tanh":
        return mathfn.fast_tanh(kb, v)
    if name == "sigmoid":
        return mathfn.fast_sigmoid(kb, v)
    if name == "relu":
        return kb.fmax(v, kb.vconst(0.0))
    return v


class _Plan:
    def __init__(self, node: Node, vw: int, static_w: bool, static_r: bool) -> None:
        self.op = node.op
        self.masked = bool(node.attrs.get("masked", False))
        x, _, r, _, *states = node.inputs[:-1] if self.masked else node.inputs
        _, self.t, self.f = x.shape
        self.u = r.shape[0]
        self.has_states = bool(states)
        self.gates = GATES[node.op]
        self.tape = bool(node.attrs.get("tape", False))
        # gru with the tape: the input and recurrent parts of z and r accumulate apart
        self.acc = 6 if self.tape and node.op == "gru" else ACCUMULATORS[node.op]
        self.vw = vw
        self.blocks = -(-self.u // vw)
        self.edge = self.u % vw != 0
        self.mr = max(1, min(8, (24 if vw == 16 else 12) // self.acc))
        self.act = node.attrs["activation"]
        self.ract = node.attrs.get("recurrent_activation", "sigmoid")
        self.reset_before = node.op == "gru" and not node.attrs["reset_after"]
        self.upad = self.blocks * vw  # a scratch row (reset_before: z, x_h + b_h, r * h)
        # weight operands: packed per block of vw units [K][gate][vw], or the row-major (K, G*U)
        # weight itself
        g = self.gates
        self.w_layout = _layout(static_w, self.f, g, self.u, vw)
        self.r_layout = _layout(static_r, self.u, g, self.u, vw)


def _layout(packed: bool, k: int, gates: int, units: int, vw: int) -> tuple[int, int, int, bool]:
    """(k stride, gate stride, block stride) in floats of a weight operand, and whether it is the
    row-major weight (whose last block is read masked)."""
    return (gates * vw, vw, k * gates * vw, False) if packed else (gates * units, units, vw, True)


def check_sequence_node(node: Node) -> None:
    """What the recurrent forward and BPTT kernels need: float32 and a known sequence length."""
    where = f"{node.op} ({node.label or 'no layer'})"
    for v in [*node.inputs, *node.outputs]:
        if v.dtype != "float32":
            raise NotImplementedError(f"{where}: the LLVM recurrent kernel is float32 only, got "
                                      f"{v.dtype}; use jit_compile=False")
    if node.inputs[0].shape[1] is None:
        raise NotImplementedError(f"{where}: the sequence length must be known to compile")


@lowering("simple_rnn", "lstm", "gru")
def lower_rnn(ctx: KernelContext, node: Node) -> ir.Function:
    check_sequence_node(node)
    static_w, static_r = ctx.is_static(node.inputs[1]), ctx.is_static(node.inputs[2])
    plan = _Plan(node, ctx.target.vector_width, static_w, static_r)
    layout = ParamLayout("rnn_gates", (plan.gates, plan.u, plan.vw))
    if static_w:
        ctx.want_layout(1, layout)
    if static_r:
        ctx.want_layout(2, layout)
    fn, kb, ins, outs, n, tid, nt = ctx.new_multi_kernel(node)
    b = kb.b
    x, wp, rp, bias = ins[:4]
    states = ins[4:-1] if plan.masked else ins[4:]
    mask_in = ins[-1] if plan.masked else None
    y, h_out = outs[0], outs[1]
    c_state = outs[2] if node.op == "lstm" else None
    tapes = outs[(3 if node.op == "lstm" else 2):] if plan.tape else []
    t_len, f, u, vw = plan.t, plan.f, plan.u, plan.vw
    # threads split the batch rows (at most SLOTS of them when the step needs a per-thread scratch)
    workers = kb.min_i64(nt, kb.i64(SLOTS)) if plan.reset_before else nt
    lo, hi = split_range(kb, n, kb.min_i64(tid, workers), workers)  # empty for tid >= workers

    if c_state is not None:  # the running cell state starts as c0 (or zeros)
        _copy_rows(kb, c_state, states[1] if states else None, lo, hi, u)

    def kernel(kind: str, rows: int) -> ir.Function:
        # the plan holds what the step's code depends on (not go_backwards: both directions of a
        # Bidirectional share the micro-kernels)
        return ctx.shared_function(("rnn", repr(vars(plan)), rows, kind),
                                   lambda: _micro_kernel(ctx, plan, rows, kind))

    def row_tiles(emit) -> None:
        tile_rows(kb, lo, hi, plan.mr, emit)

    # h_{-1} is the initial state, or a row of zeros read with stride 0
    h_first = states[0] if states else _zero_row(kb, u)
    scratch = thread_scratch(kb, 3 * plan.mr * plan.upad, kb.min_i64(tid, kb.i64(SLOTS - 1))) \
        if plan.reset_before else bias
    with kb.loop(kb.i64(0), kb.i64(t_len), 1, "k") as k:
        t = b.sub(kb.i64(t_len - 1), k) if node.attrs["go_backwards"] else k
        first = b.icmp_signed("==", k, kb.i64(0))
        # h_{k-1}: the previous step's row of the sequence output
        h_base = b.select(first, h_first, kb.gep(y, b.mul(b.sub(k, kb.i64(1)), kb.i64(u))))
        h_rs = b.select(first, kb.i64(u if states else 0), kb.i64(t_len * u))
        # without initial states h_{-1} = 0: the first step skips the recurrent GEMM (K = 0)
        k_rec = kb.i64(u) if states else b.select(first, kb.i64(0), kb.i64(u))

        def block_args(p: ir.Value, m0: ir.Value) -> list[ir.Value]:
            x_row = kb.gep(x, b.mul(b.add(b.mul(m0, kb.i64(t_len)), t), kb.i64(f)))
            y_row = kb.gep(y, b.mul(b.add(b.mul(m0, kb.i64(t_len)), k), kb.i64(u)))
            c_row = kb.gep(c_state, b.mul(m0, kb.i64(u))) if c_state is not None else scratch
            args = [x_row, kb.gep(h_base, b.mul(m0, h_rs)), h_rs,
                    kb.gep(wp, b.mul(p, kb.i64(plan.w_layout[2]))),
                    kb.gep(rp, b.mul(p, kb.i64(plan.r_layout[2]))), bias, y_row, c_row,
                    b.mul(p, kb.i64(vw)), kb.i64(f), k_rec]
            if plan.masked:  # the rows' mask at input position t
                args.append(kb.gep(mask_in, b.add(b.mul(m0, kb.i64(t_len)), t)))
            for tp in tapes:  # the rows' step k of the tape outputs (N, T, G*U)
                args.append(kb.gep(tp, b.mul(b.add(b.mul(m0, kb.i64(t_len)), k), kb.i64(plan.gates * u))))
            return args

        if plan.reset_before:  # per row tile: z, r * h, x_h for every unit, then the candidate
            def two_passes(rows: int, m0: ir.Value) -> None:
                for kind in ("gates", "candidate"):
                    with kb.loop(kb.i64(0), kb.i64(plan.blocks), 1, "p") as p:
                        args = block_args(p, m0)
                        args[7] = scratch
                        b.call(kernel(kind, rows), args)

            row_tiles(two_passes)
        else:  # unit blocks outside: one block's packed weights stay in L1 while the rows pass
            with kb.loop(kb.i64(0), kb.i64(plan.blocks), 1, "p") as p:
                row_tiles(lambda rows, m0, p=p: b.call(kernel("step", rows), block_args(p, m0)))
    last = kb.gep(y, kb.i64((t_len - 1) * u))
    _copy_rows(kb, h_out, last, lo, hi, u, src_stride=t_len * u)
    kb.finish()
    return fn


def tile_rows(kb: KernelBuilder, lo: ir.Value, hi: ir.Value, mr: int, emit) -> None:
    """emit(rows, first row) over [lo, hi): tiles of `mr` rows, then pairs, then one -- three
    micro-kernel variants, for compile time."""
    b = kb.b
    full_hi = b.sub(hi, b.srem(b.sub(hi, lo), kb.i64(mr)))
    with kb.loop(lo, full_hi, mr, "m") as m0:
        emit(mr, m0)
    pairs_hi = b.sub(hi, b.srem(b.sub(hi, full_hi), kb.i64(2)))
    if mr > 2:
        with kb.loop(full_hi, pairs_hi, 2, "m2") as m0:
            emit(2, m0)
    with kb.if_then(b.icmp_signed("<", pairs_hi, hi)):
        emit(1, pairs_hi)


def _copy_rows(kb: KernelBuilder, dst: ir.Value, src: ir.Value | None, lo: ir.Value, hi: ir.Value,
               u: int, src_stride: int | None = None) -> None:
    """dst[row, :u] = src[row * src_stride : + u] (zeros without src) for rows in [lo, hi)."""
    b = kb.b
    vw = kb.vw
    stride = u if src_stride is None else src_stride
    with kb.loop(lo, hi, 1, "cr") as row:
        for u0 in range(0, u, vw):
            mask = kb.lane_mask(kb.i64(u - u0)) if u - u0 < vw else None
            value = kb.vconst(0.0) if src is None else \
                kb.load_vector(src, b.add(b.mul(row, kb.i64(stride)), kb.i64(u0)), mask)
            kb.store_vector(value, dst, b.add(b.mul(row, kb.i64(u)), kb.i64(u0)), mask)


def _zero_row(kb: KernelBuilder, u: int) -> ir.Value:
    """A constant row of `u` zeros in the module (h_{-1} without an initial state)."""
    name = f"kc_rnn_zeros_{u}"
    gv = kb.module.globals.get(name)
    if gv is None:
        typ = ir.ArrayType(ir.FloatType(), u)
        gv = ir.GlobalVariable(kb.module, typ, name)
        gv.linkage = "internal"
        gv.global_constant = True
        gv.align = 64
        gv.type = PTR  # llvmlite types globals; the module uses opaque pointers
        gv.initializer = ir.Constant(typ, None)
    return gv


def _micro_kernel(ctx: KernelContext, plan: _Plan, rows: int, kind: str) -> ir.Function:
    """One step for `rows` batch rows and one block of vw units starting at u0: the gates'
    pre-activations from x_t @ W and h_{t-1} @ R in registers, then the fused state update.
    Rows are x_row + r*T*F, h_row + r*h_rs, y_row + r*T*U, c_row + r*U. In the last block, when
    vw does not divide U, only the first U % vw lanes are real: the state loads and stores are
    masked (by a mask computed from u0, all lanes on elsewhere).

    kind "step" is a whole step; GRU with reset_after=False takes two: "gates" writes z, x_h + b_h
    and r * h_{t-1} for the block into the scratch (c_row), "candidate" reads r * h as its A
    operand against R_h and blends.

    With the tape, the trailing arguments are the rows' step of the tape outputs, written with the
    pre-activations (GRU: the input parts in accumulators 0-2, the recurrent h part in 3 and, for z
    and r, in the two after the input ones)."""
    ctx.counter += 1
    n_tape = (1 if plan.op == "lstm" else 2) if plan.tape else 0
    fn = define(ctx.module, f"k{ctx.counter}_{plan.op}_{kind}_{rows}",
                [PTR, PTR, I64, PTR, PTR, PTR, PTR, PTR, I64, I64, I64] + [PTR] * (plan.masked + n_tape),
                ctx.target)
    # Not inlined, and the reduction lengths are arguments: with constant trip counts LLVM unrolls
    # the K loops completely, and the copies of the B vectors then spill the accumulators.
    fn.attributes.add("noinline")
    kb = KernelBuilder(fn, ctx.target)
    b = kb.b
    x_row, h_row, h_rs, w_panel, r_panel, bias, y_row, c_row, u0, f_len, u_len = fn.args[:11]
    m_row = fn.args[11] if plan.masked else None
    tape_rows = fn.args[11 + plan.masked:]
    t_len, f, u, vw, g = plan.t, plan.f, plan.u, plan.vw, plan.gates
    split = plan.tape and plan.op == "gru"  # the input and recurrent parts of z, r apart
    n_acc = {"step": plan.acc, "gates": 5 if split else 3, "candidate": 1}[kind]
    accs = [[kb.var(kb.vec_type(), kb.vconst(0.0)) for _ in range(n_acc)] for _ in range(rows)]
    xs = [kb.gep(x_row, kb.i64(r * t_len * f)) for r in range(rows)]
    hs = [kb.gep(h_row, b.mul(h_rs, kb.i64(r))) for r in range(rows)]
    mr, upad = plan.mr, plan.upad

    def scratch_row(part: int, r: int) -> ir.Value:  # parts: z, x_h + b_h, r * h
        return kb.gep(c_row, kb.i64((part * mr + r) * upad))

    mask = kb.lane_mask(kb.min_i64(b.sub(kb.i64(u), u0), kb.i64(vw))) if plan.edge else None

    def accumulate(a_rows: list, panel: ir.Value, k_len: ir.Value, pairs: list,
                   layout: tuple) -> None:
        """acc[r][a] += A[r, k] * panel[k, gate] over k, for each (gate, a) in pairs. A row-major
        weight's last block is read with the edge mask: its tail lanes belong to the next gate,
        or lie past the end of the weight."""
        k_stride, g_stride, _, row_major = layout
        b_mask = mask if row_major else None
        with kb.loop(kb.i64(0), k_len, 1, "kk") as kk:
            base = b.mul(kk, kb.i64(k_stride))
            bvals = [kb.load_vector(panel, b.add(base, kb.i64(gate * g_stride)), b_mask)
                     for gate, _ in pairs]
            for r in range(rows):
                a = kb.splat(kb.load(a_rows[r], kk))
                for bv, (_, j) in zip(bvals, pairs, strict=True):
                    kb.set(accs[r][j], kb.fma(a, bv, kb.get(accs[r][j])))

    if kind == "candidate":
        accumulate([scratch_row(2, r) for r in range(rows)], r_panel, u_len, [(2, 0)], plan.r_layout)
    else:
        accumulate(xs, w_panel, f_len, [(j, j) for j in range(g)], plan.w_layout)
        # gru: the recurrent part of the candidate has its own accumulator (reset_after), or none;
        # with the tape those of z and r too (after the input parts)
        hz = (4 if kind == "step" else 3) if split else 0
        recurrent = {"lstm": [(j, j) for j in range(4)], "simple_rnn": [(0, 0)],
                     "gru": [(0, hz), (1, hz + 1 if split else 1)]
                     + ([] if kind == "gates" else [(2, 3)])}[plan.op]
        accumulate(hs, r_panel, u_len, recurrent, plan.r_layout)

    def load(ptr: ir.Value, offset: ir.Value) -> ir.Value:
        return kb.load_vector(ptr, offset, mask)

    def store(value: ir.Value, ptr: ir.Value, offset: ir.Value) -> None:
        kb.store_vector(value, ptr, offset, mask)

    def bias_at(gate: int, row: int = 0) -> ir.Value:
        return load(bias, b.add(kb.i64(row * g * u + gate * u), u0))

    def to_tape(which: int, gate: int, r: int, value: ir.Value) -> None:
        """Row r's units u0.. of `gate` in tape output `which` at this step."""
        store(value, tape_rows[which], b.add(kb.i64(r * t_len * g * u + gate * u), u0))

    act = lambda v: _activate(kb, plan.act, v)  # noqa: E731
    ract = lambda v: _activate(kb, plan.ract, v)  # noqa: E731
    one = kb.vconst(1.0)
    if plan.op == "gru" and not plan.reset_before:
        b_in = [bias_at(j, 0) for j in range(3)]
        b_rec = [bias_at(j, 1) for j in range(3)]
    elif kind != "candidate":
        bs = [bias_at(j) for j in range(g)]
    for r in range(rows):
        pre = [kb.get(slot) for slot in accs[r]]
        y_off = b.add(kb.i64(r * t_len * u), u0)
        # masked: a padded step (mask 0) keeps this row's states
        keep = b.fcmp_unordered("!=", kb.load(m_row, r * t_len), kb.f32(0.0)) if plan.masked else None
        if kind == "gates":  # the scratch rows are padded to whole blocks: plain vector stores
            zx = [b.fadd(pre[j], bs[j]) for j in range(3)]
            z_pre, r_pre = zx[0], zx[1]
            if split:
                for j in range(3):
                    to_tape(0, j, r, zx[j])
                to_tape(1, 0, r, pre[3])
                to_tape(1, 1, r, pre[4])
                z_pre, r_pre = b.fadd(z_pre, pre[3]), b.fadd(r_pre, pre[4])
            z, rg = ract(z_pre), ract(r_pre)
            kb.vstore(z, scratch_row(0, r), u0)
            kb.vstore(zx[2], scratch_row(1, r), u0)
            kb.vstore(b.fmul(rg, load(hs[r], u0)), scratch_row(2, r), u0)
            continue
        if kind == "candidate":
            if plan.tape:
                to_tape(1, 2, r, pre[0])
            z = kb.vload(scratch_row(0, r), u0)
            hh = act(b.fadd(kb.vload(scratch_row(1, r), u0), pre[0]))
            h = kb.fma(z, load(hs[r], u0), b.fmul(b.fsub(one, z), hh))
        elif plan.op == "lstm":
            zs = [b.fadd(pre[j], bs[j]) for j in range(4)]
            if plan.tape:
                for j in range(4):
                    to_tape(0, j, r, zs[j])
            i_g, f_g, g_g, o_g = ract(zs[0]), ract(zs[1]), act(zs[2]), ract(zs[3])
            c_off = b.add(kb.i64(r * u), u0)
            c_prev = load(c_row, c_off)
            c = kb.fma(f_g, c_prev, b.fmul(i_g, g_g))
            h = b.fmul(o_g, act(c))
            if keep is not None:
                c = b.select(keep, c, c_prev)
            store(c, c_row, c_off)
        elif plan.op == "gru" and split:
            zx = [b.fadd(pre[j], b_in[j]) for j in range(3)]
            hr = [b.fadd(pre[4], b_rec[0]), b.fadd(pre[5], b_rec[1]), b.fadd(pre[3], b_rec[2])]
            for j in range(3):
                to_tape(0, j, r, zx[j])
                to_tape(1, j, r, hr[j])
            z, rg = ract(b.fadd(zx[0], hr[0])), ract(b.fadd(zx[1], hr[1]))
            hh = act(kb.fma(rg, hr[2], zx[2]))
            h = kb.fma(z, load(hs[r], u0), b.fmul(b.fsub(one, z), hh))
        elif plan.op == "gru":
            z = ract(b.fadd(pre[0], b.fadd(b_in[0], b_rec[0])))
            rg = ract(b.fadd(pre[1], b.fadd(b_in[1], b_rec[1])))
            hh = act(kb.fma(rg, b.fadd(pre[3], b_rec[2]), b.fadd(pre[2], b_in[2])))
            h = kb.fma(z, load(hs[r], u0), b.fmul(b.fsub(one, z), hh))
        else:
            h = act(b.fadd(pre[0], bs[0]))
        if keep is not None:
            h = b.select(keep, h, load(hs[r], u0))
        store(h, y_row, y_off)
    kb.finish()
    return fn
