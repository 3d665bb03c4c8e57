"""Recurrent ops over a whole sequence: `simple_rnn`, `lstm`, `gru`, and their BPTT gradients.

One node runs one recurrent layer over every timestep, so an executor can compute the input
projection of all steps as one GEMM, (N*T, F) x (F, G*U), and then loop over time doing only the
recurrent GEMM (N, U) x (U, G*U) with the gate nonlinearities fused after it.

Inputs: x (N, T, F), kernel (F, G*U), recurrent_kernel (U, G*U), bias, then optionally the initial
states, each (N, U): h (and c for lstm) -- all of them or none (zeros) -- and, with masked=True, the
mask (N, T) last (1 = a real step; a masked step carries the states and repeats the output, Keras's
semantics). The weights are Keras's own (gates lstm i, f, c, o; gru z, r, h; gru bias (2, 3U) with
reset_after, else (3U,)), so a layer passes its variables straight in. T may be None only where
shapes alone are traced (a Functional model built on a variable-length Input); executed graphs have
the data's length.

Outputs: the hidden state after every step (N, T, U) in processing order, then the final states
(N, U). With go_backwards the input is read from the last step to the first and the sequence output
stays in processing order -- reversed with respect to the input, as Keras returns it.

The tape (attr tape=True, lstm and gru; a layer asks for it when tracing for training): extra
outputs after those, the gates' pre-activations of every step in processing order as the forward
computed them, which the gradient then reads instead of recomputing them: lstm z (N, T, 4U) =
x_t W + b + h_{t-1} R; gru zx (N, T, 3U) = x_t W + b_in and hr (N, T, 3U) = the recurrent parts
(reset_after: h_{t-1} R + b_rec; else [h_{t-1} R_zr, (r * h_{t-1}) R_h]). A masked step writes what
it computed from the carried state (its gradient is zero anyway). simple_rnn needs none: its BPTT
reads the outputs.

The gradient is a decomposition (`_forward_vjp`): the gates' pre-activations of every step are
the tape, or without one recomputed from the saved outputs with two GEMMs over all steps at once;
only the chain through time is an op (`simple_rnn_bptt`, `lstm_bptt`, `gru_bptt`: one
(N, G*U) x (G*U, U) GEMM per step with the gate derivatives fused), and dx, dW, dR, db are GEMMs and
sums over all steps again. Nothing but the outputs (and the tape) lives between the forward and
backward passes, and the executors' fast GEMMs do most of the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
from kcompile.ir.ops import rnn_onnx
from kcompile.ir.ops._util import require_float, require_rank, same_dtype
from kcompile.ir.ops.elementwise import _sigmoid

ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear")
_ACT_HELP = "one of " + ", ".join(ACTIVATIONS)


def activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return _sigmoid(z)
    if name == "relu":
        return np.maximum(z, 0).astype(z.dtype, copy=False)
    return z


def slope(name: str, y: np.ndarray) -> np.ndarray:
    """d act(z) / dz written with the activation's output y = act(z)."""
    if name == "tanh":
        return 1 - y * y
    if name == "sigmoid":
        return y * (1 - y)
    if name == "relu":
        return (y > 0).astype(y.dtype)
    return np.ones_like(y)


@dataclass(frozen=True)
class Cell:
    """What differs between the recurrent op families."""

    name: str
    gates: int
    states: int  # state tensors: h (and c)
    onnx_op: str
    onnx_gate_order: tuple[int, ...]  # Keras gate k goes to ONNX position onnx_gate_order.index(k)


SIMPLE = Cell("simple_rnn", 1, 1, "RNN", (0,))
LSTM = Cell("lstm", 4, 2, "LSTM", (0, 3, 1, 2))  # Keras i, f, c, o -> ONNX i, o, f, c
GRU = Cell("gru", 3, 1, "GRU", (0, 1, 2))  # z, r, h in both
TAPES = {"lstm": 1, "gru": 2}  # tape outputs with tape=True: lstm z; gru zx, hr (each (N, T, G*U))


# --- types -------------------------------------------------------------------------------------------
def _check(cell: Cell, op: str, x: TensorType, kernel: TensorType, recurrent: TensorType,
           bias: TensorType, states: Sequence[TensorType], reset_after: bool,
           mask: TensorType | None = None) -> tuple:
    """Validate a forward op's inputs; returns (N, T, U, dtype)."""
    require_rank(op, x, 3, "input (batch, time, features)")
    require_rank(op, recurrent, 2, "recurrent kernel (units, gates * units)")
    dtype = same_dtype(op, x, kernel, recurrent, bias, *states, *([mask] if mask else []))
    require_float(op, x)
    n, t, f = x.shape
    if f is None:
        raise ValueError(f"{op}: the feature dim of the input must be known, got "
                         f"{format_shape(x.shape)}")
    if t == 0:
        raise ValueError(f"{op}: the input sequence {format_shape(x.shape)} has no timesteps")
    u = recurrent.shape[0]
    g = cell.gates * (u or 0)
    if u is None or recurrent.shape != (u, g):
        raise ValueError(f"{op}: recurrent kernel must be (units, {cell.gates} * units), got "
                         f"{format_shape(recurrent.shape)}")
    if kernel.shape != (f, g):
        raise ValueError(f"{op}: kernel must be {format_shape((f, g))} for input "
                         f"{format_shape(x.shape)} and {u} units, got {format_shape(kernel.shape)}")
    want_bias = (2, g) if reset_after else (g,)
    if bias.shape != want_bias:
        raise ValueError(f"{op}: bias must be {format_shape(want_bias)}, got "
                         f"{format_shape(bias.shape)}")
    if len(states) not in (0, cell.states):
        raise ValueError(f"{op}: takes {cell.states} initial state(s) or none, got {len(states)}")
    for s in states:
        if s.shape != (n, u):
            raise ValueError(f"{op}: initial state must be {format_shape((n, u))}, got "
                             f"{format_shape(s.shape)}")
    _check_mask(op, mask, n, t)
    return n, t, u, dtype


def _check_mask(op: str, mask: TensorType | None, n, t) -> None:
    """The mask is (batch, time); a constant mask may have a concrete batch where x's is symbolic."""
    if mask is None:
        return
    if mask.rank != 2 or mask.shape[1] != t or None not in (n, mask.shape[0]) and mask.shape[0] != n:
        raise ValueError(f"{op}: the mask must be (batch, time) = {format_shape((n, t))}, got "
                         f"{format_shape(mask.shape)}")


def _forward_infer(cell: Cell):
    def infer(*types, reset_after=False, masked=False, tape=False, **_attrs):
        extra = 1 if masked else 0
        if len(types) not in (4 + extra, 4 + cell.states + extra):
            raise ValueError(f"{cell.name}: takes x, kernel, recurrent kernel, bias, optionally "
                             f"{cell.states} initial state(s){', then the mask' if masked else ''}, "
                             f"got {len(types)} input(s)")
        mask = types[-1] if masked else None
        x, kernel, recurrent, bias, *states = types[:len(types) - extra]
        n, t, u, dtype = _check(cell, cell.name, x, kernel, recurrent, bias, states, reset_after, mask)
        tapes = [TensorType((n, t, cell.gates * u), dtype)] * TAPES[cell.name] if tape else []
        return [TensorType((n, t, u), dtype)] + [TensorType((n, u), dtype)] * cell.states + tapes

    return infer


# --- forward steps -------------------------------------------------------------------------------
def _start(x, recurrent, states, go_backwards, n_states, mask):
    n, t = x.shape[:2]
    u = recurrent.shape[0]
    xs = x[:, ::-1] if go_backwards else x
    ms = None if mask is None else (mask[:, ::-1] if go_backwards else mask)[..., None] != 0
    init = list(states) if states else [np.zeros((n, u), x.dtype) for _ in range(n_states)]
    return xs, ms, init, np.empty((n, t, u), x.dtype)


def _keep(ms, k, new, old):
    """Keras's masking: a masked step carries the state (and so the output) unchanged."""
    return new if ms is None else np.where(ms[:, k], new, old)


def _simple_steps(x, kernel, recurrent, bias, states, mask, activation, go_backwards):
    xs, ms, (h,), y = _start(x, recurrent, states, go_backwards, 1, mask)
    xp = np.matmul(xs, kernel) + bias
    for k in range(x.shape[1]):
        h = y[:, k] = _keep(ms, k, activate(activation, xp[:, k] + h @ recurrent), h)
    return y, [h]


def _lstm_cell(z, c, u, activation, recurrent_activation):
    """Gates and the new cell state from the pre-activations z (i, f, c, o)."""
    i = activate(recurrent_activation, z[:, :u])
    f = activate(recurrent_activation, z[:, u:2 * u])
    g = activate(activation, z[:, 2 * u:3 * u])
    o = activate(recurrent_activation, z[:, 3 * u:])
    return i, f, g, o, f * c + i * g


def _lstm_steps(x, kernel, recurrent, bias, states, mask, activation, recurrent_activation,
                go_backwards, tape=False):
    xs, ms, (h, c), y = _start(x, recurrent, states, go_backwards, 2, mask)
    u = recurrent.shape[0]
    xp = np.matmul(xs, kernel) + bias
    z = np.empty(xp.shape, x.dtype)  # the tape: every step's pre-activations
    for k in range(x.shape[1]):
        z[:, k] = xp[:, k] + h @ recurrent
        _, _, _, o, c_new = _lstm_cell(z[:, k], c, u, activation, recurrent_activation)
        h = y[:, k] = _keep(ms, k, o * activate(activation, c_new), h)
        c = _keep(ms, k, c_new, c)
    return y, [h, c] + ([z] if tape else [])


def _gru_recurrent(h, recurrent, bias, reset_after, u, zx, recurrent_activation):
    """The recurrent contributions hr (N, 3U) of one step: h R + b_rh with reset_after; without,
    [h R_zr, (r * h) R_h], r needing the input part zx."""
    if reset_after:
        return h @ recurrent + bias[1]
    hzr = h @ recurrent[:, :2 * u]
    r = activate(recurrent_activation, zx[:, u:2 * u] + hzr[:, u:])
    return np.concatenate([hzr, (r * h) @ recurrent[:, 2 * u:]], axis=1)


def _gru_cell(zx, hr, h, u, activation, recurrent_activation, reset_after):
    """z, r, the candidate and h' = z h + (1 - z) candidate from the input and recurrent parts."""
    z = activate(recurrent_activation, zx[:, :u] + hr[:, :u])
    r = activate(recurrent_activation, zx[:, u:2 * u] + hr[:, u:2 * u])
    inner = r * hr[:, 2 * u:] if reset_after else hr[:, 2 * u:]
    hh = activate(activation, zx[:, 2 * u:] + inner)
    return z, r, hh, z * h + (1 - z) * hh


def _gru_steps(x, kernel, recurrent, bias, states, mask, activation, recurrent_activation,
               go_backwards, reset_after, tape=False):
    """Keras's GRU: z and r from x and h; the candidate uses r * (h R_h + b_rh) with reset_after,
    (r * h) R_h without; h' = z * h + (1 - z) * candidate."""
    xs, ms, (h,), y = _start(x, recurrent, states, go_backwards, 1, mask)
    u = recurrent.shape[0]
    xp = np.matmul(xs, kernel) + (bias[0] if reset_after else bias)
    hrs = np.empty(xp.shape, x.dtype)  # the tape: zx = xp and every step's recurrent parts
    for k in range(x.shape[1]):
        hr = hrs[:, k] = _gru_recurrent(h, recurrent, bias, reset_after, u, xp[:, k],
                                        recurrent_activation)
        h_new = _gru_cell(xp[:, k], hr, h, u, activation, recurrent_activation, reset_after)[3]
        h = y[:, k] = _keep(ms, k, h_new, h)
    return y, [h] + ([xp, hrs] if tape else [])


def _forward_ref(cell: Cell, steps: Callable):
    def ref(x, kernel, recurrent, bias, *rest, masked=False, **attrs):
        mask = rest[-1] if masked else None
        states = rest[:-1] if masked else rest
        y, finals = steps(x, kernel, recurrent, bias, states, mask, **attrs)
        return (y, *finals)

    return ref


# --- backpropagation through time ----------------------------------------------------------------
# The gradient is a decomposition: every GEMM that does not sit on the recurrence (the gates'
# pre-activations recomputed for all steps from the saved outputs -- unless the forward wrote them to
# its tape outputs, tape=True; dx, dW, dR, db) is an ordinary matmul/sum node, and only the chain
# through time is an op of its own (`*_bptt`), whose step is one (N, G*U) x (G*U, U) GEMM with the
# gate derivatives fused in. Everything is in processing order.
def _bptt_masks(ms, t):
    """Per step (m, 1 - m) as (N, 1) arrays, or (1, 0) without a mask."""
    if ms is None:
        return [(1.0, 0.0)] * t
    return [(ms[:, k, None], 1.0 - ms[:, k, None]) for k in range(t)]


def _simple_bptt_ref(y, recurrent, dy, dh_t, *mask, activation, masked=False):
    t = y.shape[1]
    da = np.empty_like(y)
    dh_carry = dh_t
    for k, (m, keep) in reversed(list(enumerate(_bptt_masks(mask[0] if masked else None, t)))):
        dh = dh_carry + dy[:, k]
        da[:, k] = m * dh * slope(activation, y[:, k])
        dh_carry = da[:, k] @ recurrent.T + keep * dh
    return da, dh_carry


def _lstm_bptt_ref(z, c0, recurrent, dy, dh_t, dc_t, *mask, activation, recurrent_activation,
                   masked=False):
    n, t, g4 = z.shape
    u = g4 // 4
    masks = _bptt_masks(mask[0] if masked else None, t)
    tape, c = [], c0
    for k, (m, keep) in enumerate(masks):
        i, f, g, o, c_new = _lstm_cell(z[:, k], c, u, activation, recurrent_activation)
        tape.append((c, i, f, g, o, activate(activation, c_new)))
        c = m * c_new + keep * c
    dz = np.empty_like(z)
    dh_carry, dc_carry = dh_t, dc_t
    for k in reversed(range(t)):
        m, keep = masks[k]
        c_prev, i, f, g, o, tc = tape[k]
        dh = dh_carry + dy[:, k]
        dhn = m * dh
        dcn = m * dc_carry + dhn * o * slope(activation, tc)
        dz[:, k, :u] = dcn * g * slope(recurrent_activation, i)
        dz[:, k, u:2 * u] = dcn * c_prev * slope(recurrent_activation, f)
        dz[:, k, 2 * u:3 * u] = dcn * i * slope(activation, g)
        dz[:, k, 3 * u:] = dhn * tc * slope(recurrent_activation, o)
        dc_carry = dcn * f + keep * dc_carry
        dh_carry = dz[:, k] @ recurrent.T + keep * dh
    return dz, dh_carry, dc_carry


def _gru_bptt_ref(zx, hr, hp, recurrent, dy, dh_t, *mask, activation, recurrent_activation,
                  reset_after, masked=False):
    t = zx.shape[1]
    u = hp.shape[2]
    dzx, dhr = np.empty_like(zx), np.empty_like(hr)
    dh_carry = dh_t
    for k, (m, keep) in reversed(list(enumerate(_bptt_masks(mask[0] if masked else None, t)))):
        h = hp[:, k]
        z, r, hh, _ = _gru_cell(zx[:, k], hr[:, k], h, u, activation, recurrent_activation,
                                reset_after)
        dh = dh_carry + dy[:, k]
        dn = m * dh
        dz = dn * (h - hh) * slope(recurrent_activation, z)
        dah = dn * (1 - z) * slope(activation, hh)
        if reset_after:
            dr = dah * hr[:, k, 2 * u:] * slope(recurrent_activation, r)
            dzx[:, k] = np.concatenate([dz, dr, dah], axis=1)
            dhr[:, k] = np.concatenate([dz, dr, dah * r], axis=1)
            dh_carry = dn * z + keep * dh + dhr[:, k] @ recurrent.T
        else:
            d_inner = dah @ recurrent[:, 2 * u:].T
            dr = d_inner * h * slope(recurrent_activation, r)
            dzx[:, k] = dhr[:, k] = np.concatenate([dz, dr, dah], axis=1)
            dh_carry = dn * z + keep * dh + d_inner * r + dzx[:, k, :2 * u] @ recurrent[:, :2 * u].T
    return dzx, dhr, dh_carry


def _seq(op: str, what: str, v: TensorType, n, t, width: int) -> None:
    if v.shape != (n, t, width):
        raise ValueError(f"{op}: {what} must be {format_shape((n, t, width))}, got "
                         f"{format_shape(v.shape)}")


def _bptt_check(op: str, gates: int, seqs: Sequence[tuple[str, TensorType, int]], recurrent: TensorType,
                rows: Sequence[tuple[str, TensorType]], mask: TensorType | None) -> tuple:
    """Validate a *_bptt op: sequences (name, type, width in units of U), the recurrent kernel,
    (N, U) rows and the optional mask; returns (N, T, U, dtype)."""
    require_rank(op, recurrent, 2, "recurrent kernel (units, gates * units)")
    u = recurrent.shape[0]
    if recurrent.shape != (u, gates * u):
        raise ValueError(f"{op}: recurrent kernel must be (units, {gates} * units), got "
                         f"{format_shape(recurrent.shape)}")
    first = seqs[0][1]
    require_rank(op, first, 3, "a (batch, time, ...) sequence")
    n, t = first.shape[:2]
    for what, v, width in seqs:
        _seq(op, what, v, n, t, width * u)
    for what, v in rows:
        if v.shape != (n, u):
            raise ValueError(f"{op}: {what} must be {format_shape((n, u))}, got {format_shape(v.shape)}")
    _check_mask(op, mask, n, t)
    dtype = same_dtype(op, recurrent, *(v for _, v, _ in seqs), *(v for _, v in rows),
                       *([mask] if mask else []))
    return n, t, u, dtype


def _split_mask(op: str, types: tuple, count: int, masked: bool) -> tuple[list, TensorType | None]:
    if len(types) != count + masked:
        raise ValueError(f"{op}: takes {count} inputs{' and the mask' if masked else ''}, got "
                         f"{len(types)}")
    return list(types[:count]), (types[-1] if masked else None)


def _simple_bptt_infer(*types, masked=False, **_attrs):
    (y, recurrent, dy, dh_t), mask = _split_mask("simple_rnn_bptt", types, 4, masked)
    n, t, u, dtype = _bptt_check("simple_rnn_bptt", 1, [("y", y, 1), ("dy", dy, 1)], recurrent,
                                 [("dh_T", dh_t)], mask)
    return [TensorType((n, t, u), dtype), TensorType((n, u), dtype)]


def _lstm_bptt_infer(*types, masked=False, **_attrs):
    (z, c0, recurrent, dy, dh_t, dc_t), mask = _split_mask("lstm_bptt", types, 6, masked)
    n, t, u, dtype = _bptt_check("lstm_bptt", 4, [("z", z, 4), ("dy", dy, 1)], recurrent,
                                 [("c0", c0), ("dh_T", dh_t), ("dc_T", dc_t)], mask)
    return [TensorType((n, t, 4 * u), dtype), TensorType((n, u), dtype), TensorType((n, u), dtype)]


def _gru_bptt_infer(*types, masked=False, **_attrs):
    (zx, hr, hp, recurrent, dy, dh_t), mask = _split_mask("gru_bptt", types, 6, masked)
    n, t, u, dtype = _bptt_check("gru_bptt", 3, [("zx", zx, 3), ("hr", hr, 3), ("hp", hp, 1),
                                                 ("dy", dy, 1)], recurrent, [("dh_T", dh_t)], mask)
    return [TensorType((n, t, 3 * u), dtype)] * 2 + [TensorType((n, u), dtype)]


def _act_node(e, name: str, v):
    return v if name == "linear" else e.op(name, v)


class _Projector:
    """The GEMMs of the decomposition on (N, T, K) sequences."""

    def __init__(self, e) -> None:
        self.e = e

    def times(self, a, w, transpose_b=False):
        """a (N, T, K) @ w -> (N, T, cols)."""
        return self.e.op("matmul", a, w, transpose_b=transpose_b)

    def outer(self, a, d):
        """sum over batch and time of a^T d: (N, T, P), (N, T, Q) -> (P, Q)."""
        return self.e.op("outer_sum", a, d)


def _forward_vjp(cell: Cell):
    def vjp(e, inputs, outs, gs, activation, go_backwards, masked=False, recurrent_activation="sigmoid",
            reset_after=False, tape=False):
        x, kernel, recurrent, bias, *rest = inputs
        mask = rest.pop() if masked else None
        states = rest
        n_out = 1 + cell.states
        tapes = outs[n_out:]
        if any(g is not None for g in gs[n_out:]):
            raise NotImplementedError(f"{cell.name}: the tape outputs (the gates' pre-activations) "
                                      "have no gradient; read only the sequence and the states")
        outs, gs = outs[:n_out], gs[:n_out]
        y, *finals = outs
        dy, *dfinals = [g if g is not None else e.zeros_like(o) for o, g in zip(outs, gs, strict=True)]
        n, t, _ = x.shape
        u = recurrent.shape[0]
        xs = e.op("reverse", x, axis=1) if go_backwards else x
        ms = [e.op("reverse", mask, axis=1) if go_backwards else mask] if masked else []
        p = _Projector(e)
        h0 = states[0] if states else e.zeros_like(finals[0])
        h0 = e.reshape(h0, (n, 1, u))
        hp = h0 if t == 1 else e.op("concat", h0, e.op("slice", y, axis=1, start=0, stop=t - 1), axis=1)
        xw = None if tape else p.times(xs, kernel)
        acts = {"activation": activation, "masked": masked}
        if cell is SIMPLE:
            dz, dh0 = e.ops("simple_rnn_bptt", y, recurrent, dy, dfinals[0], *ms, **acts)
            d_init, d_in = [dh0], dz
            drec, dbias = p.outer(hp, dz), e.sum(dz, (0, 1))
        elif cell is LSTM:
            z = tapes[0] if tape else e.add(e.add(xw, p.times(hp, recurrent)), bias)
            c0 = states[1] if states else e.zeros_like(finals[1])
            dz, dh0, dc0 = e.ops("lstm_bptt", z, c0, recurrent, dy, *dfinals, *ms,
                                 recurrent_activation=recurrent_activation, **acts)
            d_init, d_in = [dh0, dc0], dz
            drec, dbias = p.outer(hp, dz), e.sum(dz, (0, 1))
        else:
            def part(v, axis, lo, hi):
                return e.op("slice", v, axis=axis, start=lo * u, stop=hi * u)

            if tape:
                zx, hr = tapes
                if not reset_after:
                    r = _act_node(e, recurrent_activation, e.add(part(zx, 2, 1, 2), part(hr, 2, 1, 2)))
                    rh = e.mul(r, hp)
            elif reset_after:
                row = [e.reshape(e.op("slice", bias, axis=0, start=j, stop=j + 1), (3 * u,)) for j in (0, 1)]
                zx, hr = e.add(xw, row[0]), e.add(p.times(hp, recurrent), row[1])
            else:
                zx = e.add(xw, bias)
                hzr = p.times(hp, part(recurrent, 1, 0, 2))
                r = _act_node(e, recurrent_activation, e.add(part(zx, 2, 1, 2), part(hzr, 2, 1, 2)))
                rh = e.mul(r, hp)
                hr = e.op("concat", hzr, p.times(rh, part(recurrent, 1, 2, 3)), axis=2)
            d_in, dhr, dh0 = e.ops("gru_bptt", zx, hr, hp, recurrent, dy, dfinals[0], *ms,
                                   recurrent_activation=recurrent_activation, reset_after=reset_after,
                                   **acts)
            d_init = [dh0]
            if reset_after:
                drec = p.outer(hp, dhr)
                dbias = e.op("concat", *(e.reshape(e.sum(d, (0, 1)), (1, 3 * u)) for d in (d_in, dhr)),
                             axis=0)
            else:
                drec = e.op("concat", p.outer(hp, part(dhr, 2, 0, 2)), p.outer(rh, part(dhr, 2, 2, 3)),
                            axis=1)
                dbias = e.sum(d_in, (0, 1))
        dx = p.times(d_in, kernel, transpose_b=True)
        if go_backwards:
            dx = e.op("reverse", dx, axis=1)
        grads = [dx, p.outer(xs, d_in), drec, dbias]
        return grads + (d_init if states else []) + [None] * len(ms)

    return vjp


def _no_second_order(op: str):
    def vjp(e, inputs, out, g, **attrs):
        raise NotImplementedError(f"op {op!r} has no gradient (second derivatives of recurrent "
                                  "layers are not supported)")

    return vjp


# --- ONNX --------------------------------------------------------------------------------------------
_ONNX_ACT = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "linear": "Affine"}


def _onnx_weight(ctx, w: str, cell: Cell, u: int) -> str:
    """Keras (rows, G*U) -> ONNX (1, G*U, rows) in ONNX's gate order: layout nodes on a weight, which
    the exporter folds into the initializer."""
    rows = ctx.type(w).shape[0]
    if cell.onnx_gate_order != tuple(range(cell.gates)):
        w = ctx.node("Reshape", [w, ctx.ints([rows, cell.gates, u])])
        w = ctx.node("Gather", [w, ctx.ints(cell.onnx_gate_order)], axis=1)
        w = ctx.node("Reshape", [w, ctx.ints([rows, cell.gates * u])])
    return ctx.node("Unsqueeze", [ctx.transpose(w, (1, 0)), ctx.ints([0])])


def _onnx_bias(ctx, bias: str, cell: Cell, u: int, reset_after: bool, dtype: str) -> str:
    """ONNX's B (1, 2*G*U): the input-side biases, then the recurrent-side ones (zero unless GRU's
    reset_after gives them)."""
    g = cell.gates * u
    if reset_after:  # Keras (2, 3U) = [input bias, recurrent bias]: ONNX's [Wb, Rb] as one row
        return ctx.node("Reshape", [bias, ctx.ints([1, 2 * g])])
    b = bias
    if cell.onnx_gate_order != tuple(range(cell.gates)):
        b = ctx.node("Reshape", [b, ctx.ints([cell.gates, u])])
        b = ctx.node("Gather", [b, ctx.ints(cell.onnx_gate_order)], axis=0)
    b = ctx.node("Reshape", [b, ctx.ints([1, g])])
    return ctx.node("Concat", [b, ctx.const(np.zeros((1, g), dtype), hint="zero_bias")], axis=1)


def _forward_onnx(cell: Cell):
    """ONNX RNN/LSTM/GRU in its (time, batch, features) layout -- onnxruntime supports no other: the
    input is transposed in and the sequence output back, both with the batch and time dims dynamic.
    go_backwards is direction="reverse", whose Y is indexed by input position: reversed along time
    to Keras's processing order (a Slice that is dropped when only the final state is read)."""

    def rule(ctx, inputs, outputs, activation, go_backwards, recurrent_activation=None,
             reset_after=False):
        x, kernel, recurrent, bias, *states = inputs
        u = ctx.type(recurrent).shape[0]
        dtype = ctx.type(x).dtype
        acts = {"simple_rnn": [activation], "gru": [recurrent_activation, activation],
                "lstm": [recurrent_activation, activation, activation]}[cell.name]
        affine = sum(a == "linear" for a in acts)
        b = _onnx_bias(ctx, bias, cell, u, reset_after, dtype)
        onnx_inputs = [ctx.transpose(x, (1, 0, 2)), _onnx_weight(ctx, kernel, cell, u),
                       _onnx_weight(ctx, recurrent, cell, u), b]
        if states:
            onnx_inputs += [""] + [ctx.node("Unsqueeze", [s, ctx.ints([0])]) for s in states]
        outs = ctx.node(cell.onnx_op, onnx_inputs, 1 + cell.states, hidden_size=u,
                        activations=[_ONNX_ACT[a] for a in acts],
                        activation_alpha=[1.0] * affine if affine else None,
                        activation_beta=[0.0] * affine if affine else None,
                        direction="reverse" if go_backwards else "forward",
                        linear_before_reset=1 if reset_after else None)
        seq = ctx.node("Squeeze", [outs[0], ctx.ints([1])])  # (T, N, U)
        if go_backwards:
            seq = ctx.node("Slice", [seq, ctx.ints([-1]), ctx.ints([-2**63]), ctx.ints([0]),
                                     ctx.ints([-1])])
        ctx.transpose(seq, (1, 0, 2), out=outputs[0])
        for state, out in zip(outs[1:], outputs[1:], strict=True):
            ctx.node("Squeeze", [state, ctx.ints([0])], [out])

    return rule


# --- registration ----------------------------------------------------------------------------------
def _attrs(cell: Cell) -> dict[str, Attr]:
    attrs = {"activation": Attr(str, "tanh", lambda a: a in ACTIVATIONS, _ACT_HELP),
             "go_backwards": Attr(bool, False), "masked": Attr(bool, False)}
    if cell is not SIMPLE:
        attrs["recurrent_activation"] = Attr(str, "sigmoid", lambda a: a in ACTIVATIONS, _ACT_HELP)
    if cell is GRU:
        attrs["reset_after"] = Attr(bool, True)
    if cell is not SIMPLE:
        attrs["tape"] = Attr(bool, False)
    return attrs


_DOCS = {
    "simple_rnn": "Keras SimpleRNN over a whole sequence: h' = act(x W + b + h R).",
    "lstm": "Keras LSTM over a whole sequence (gates i, f, c, o); outputs sequence, h, c.",
    "gru": "Keras GRU over a whole sequence (gates z, r, h; reset_after or before the recurrent "
           "GEMM); outputs sequence, h.",
}

_TAPE_DOC = {
    "lstm": " With tape=True a fourth output z (batch, time, 4 units): every step's gate pre-activations "
            "(processing order), which the gradient reads instead of recomputing them.",
    "gru": " With tape=True two more outputs zx and hr (batch, time, 3 units): every step's input and "
           "recurrent parts of the gate pre-activations (processing order), which the gradient reads "
           "instead of recomputing them.",
}

_ACT_ATTRS = {"activation": Attr(str, "tanh", lambda a: a in ACTIVATIONS, _ACT_HELP),
              "recurrent_activation": Attr(str, "sigmoid", lambda a: a in ACTIVATIONS, _ACT_HELP),
              "masked": Attr(bool, False)}

for _cell, _steps in ((SIMPLE, _simple_steps), (LSTM, _lstm_steps), (GRU, _gru_steps)):
    defop(_cell.name, attrs=_attrs(_cell), infer=_forward_infer(_cell),
          ref=_forward_ref(_cell, _steps), vjp=_forward_vjp(_cell),
          onnx=rnn_onnx.forward(_cell.name, _forward_onnx(_cell)),  # masked: a Scan (rnn_onnx.py)
          doc=_DOCS[_cell.name] + " Inputs x, kernel, recurrent kernel, bias[, initial states][, mask "
              "(batch, time) with masked=True: a masked step carries the states]."
              + (_TAPE_DOC[_cell.name] if _cell is not SIMPLE else ""),
          tags=("rnn",))

_BPTT_DOC = (" Backpropagation through time, the sequential part of the recurrent gradient (the rest is "
             "ordinary GEMMs); everything in processing order, with masked=True the last input is "
             "the (batch, time) mask.")
defop("simple_rnn_bptt", attrs={k: _ACT_ATTRS[k] for k in ("activation", "masked")},
      infer=_simple_bptt_infer, ref=_simple_bptt_ref, vjp=_no_second_order("simple_rnn_bptt"),
      onnx=rnn_onnx.simple_rnn_bptt,
      doc="(y, recurrent, dy, dh_T) -> (dA, dh_0): dA the pre-activation gradients." + _BPTT_DOC,
      tags=("rnn",))
defop("lstm_bptt", attrs=dict(_ACT_ATTRS), infer=_lstm_bptt_infer, ref=_lstm_bptt_ref,
      vjp=_no_second_order("lstm_bptt"), onnx=rnn_onnx.lstm_bptt,
      doc="(z, c_0, recurrent, dy, dh_T, dc_T) -> (dz, dh_0, dc_0): z the gates' pre-activations "
          "(i, f, c, o) of every step; c is recomputed." + _BPTT_DOC, tags=("rnn",))
defop("gru_bptt", attrs={**_ACT_ATTRS, "reset_after": Attr(bool, True)}, infer=_gru_bptt_infer,
      ref=_gru_bptt_ref, vjp=_no_second_order("gru_bptt"), onnx=rnn_onnx.gru_bptt,
      doc="(zx, hr, hp, recurrent, dy, dh_T) -> (dzx, dhr, dh_0): the input and recurrent parts of "
          "the gates' pre-activations and the states before each step." + _BPTT_DOC, tags=("rnn",))
