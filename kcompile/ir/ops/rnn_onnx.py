"""ONNX rules of the recurrent ops that ONNX's RNN/LSTM/GRU cannot express: the masked forward ops
and the backpropagation-through-time chains `simple_rnn_bptt`, `lstm_bptt`, `gru_bptt`.

Each is a `Scan` over time whose body does one step with Keras's gate maths (the formulas of the
ops' NumPy refs in rnn.py). ONNX's `sequence_lens` only cuts trailing steps off; Keras's mask may
hold any pattern (left padding, holes) and a masked step carries the states, so the forward ops
blend each step with `Where`. The Scans use the attribute defaults only (axis 0, forwards): the
sequences go in time-major, reversed along time (a Slice with step -1, as the `reverse` op's rule)
for the BPTT chains, which run from the last step to the first, and their stacked outputs are
reversed back -- onnx.reference and other runtimes that lack Scan's axes and directions run them
too. Shapes come from the data (Scan's trip count is the length), so one file serves every batch
size and length.

Everything off the recurrence -- the input projection of all steps, the weights' transposes and
gate columns -- is computed once outside the body, which reads those tensors (and its constants)
from the enclosing graph; at inference export the weight layouts fold into initializers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kcompile.ir.core import TensorType

_UNARY = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}
_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
_TAPES = {"simple_rnn": 0, "lstm": 1, "gru": 2}  # the tape outputs of a forward op with tape=True


class _Writer:
    """Elementwise maths written as nodes of one graph (the main graph or a Scan body)."""

    def __init__(self, ctx, dtype: str) -> None:
        self.b = ctx
        self.dtype = dtype
        self.one = ctx.const(np.asarray(1, dtype), hint="one")

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.b.node(op_type, list(inputs), **attrs)

    def add(self, *xs: str | None) -> str:
        """Sum from the left, skipping the Nones (absent terms)."""
        terms = [x for x in xs if x is not None]
        out = terms[0]
        for t in terms[1:]:
            out = self.op("Add", out, t)
        return out

    def mul(self, *xs: str | None) -> str | None:
        """Product from the left, skipping the Nones (factors that are one); None if all are."""
        factors = [x for x in xs if x is not None]
        if not factors:
            return None
        out = factors[0]
        for f in factors[1:]:
            out = self.op("Mul", out, f)
        return out

    def sub1(self, x: str) -> str:
        return self.op("Sub", self.one, x)

    def act(self, name: str, x: str) -> str:
        return x if name == "linear" else self.op(_UNARY[name], x)

    def slope(self, name: str, y: str) -> str | None:
        """d act / dz from the activation's output y, as the refs' `slope`; None for linear (1)."""
        if name == "tanh":
            return self.sub1(self.op("Mul", y, y))
        if name == "sigmoid":
            return self.op("Mul", y, self.sub1(y))
        if name == "relu":
            zero = self.b.const(np.asarray(0, self.dtype), hint="zero")
            return self.b.cast(self.op("Greater", y, zero), self.dtype)
        return None

    def split(self, x: str, u: int, parts: int) -> list[str]:
        """`parts` slices of width u along the last axis."""
        outs = self.b.node("Split", [x, self.b.ints([u] * parts)], parts, axis=-1)
        return list(outs) if parts > 1 else [outs]

    def concat(self, *xs: str) -> str:
        return self.op("Concat", *xs, axis=-1)


class _Step(_Writer):
    """A Scan body being written: one timestep, over a subgraph context."""

    def __init__(self, ctx, dtype: str) -> None:
        super().__init__(ctx.subgraph(), dtype)

    def input(self, hint: str, width: int | None, dtype: str | None = None) -> str:
        return self.b.input(hint, (None, width), dtype or self.dtype)

    def output(self, x: str) -> str:
        """A fresh name for `x` (a body output that must not also be an input or another output)."""
        return self.op("Identity", x)

    def graph(self, outputs: Sequence[tuple[str, int | None]]):
        return self.b.graph([(n, TensorType((None, w), self.dtype)) for n, w in outputs])


def _scan(ctx, body, states: Sequence[str], seqs: Sequence[str], outputs: Sequence[str | None]
          ) -> list[str]:
    """A Scan over axis 0 of the time-major `seqs`. `outputs`: the names of the final states, then
    of the stacked outputs (time-major, in iteration order); None for a fresh name. Returns them."""
    hint = f"{ctx.label}/scan" if ctx.label else "scan"
    names = [ctx.fresh(hint) if o is None else o for o in outputs]
    ctx.node("Scan", [*states, *seqs], names, body=body, num_scan_inputs=len(seqs))
    return names


def _reversed(ctx, v: str, out: str | None = None) -> str:
    """`v` reversed along axis 0 (as the `reverse` op's rule)."""
    return ctx.node("Slice", [v, ctx.ints([-1]), ctx.ints([-2**63]), ctx.ints([0]), ctx.ints([-1])],
                    1 if out is None else [out])


def _time_major(ctx, v: str, backwards: bool = False) -> str:
    """(N, T, ...) -> (T, N, ...), the last step first when `backwards`."""
    rank = ctx.type(v).rank
    t = ctx.transpose(v, (1, 0, *range(2, rank)))
    return _reversed(ctx, t) if backwards else t


def _batch_major(ctx, v: str, out: str, backwards: bool = False) -> None:
    """A Scan output (T, N, W) as `out` (N, T, W); its steps reversed first when `backwards`."""
    ctx.transpose(_reversed(ctx, v) if backwards else v, (1, 0, 2), out=out)


def _cols(ctx, w: str, start: int, stop: int) -> str:
    """Columns start:stop of a weight (a Gather, which inference export folds)."""
    return ctx.node("Gather", [w, ctx.ints(range(start, stop))], axis=1)


def _mask_steps(ctx, mask: str, dtype: str | None, backwards: bool) -> str:
    """The mask (N, T) time-major as (T, N, 1), so each step's slice (N, 1) broadcasts over the
    units; cast to bool (nonzero = a real step) when dtype is None."""
    m = ctx.node("Unsqueeze", [ctx.transpose(mask, (1, 0)), ctx.ints([2])])
    if backwards:
        m = _reversed(ctx, m)
    return ctx.cast(m, np.bool_) if dtype is None else m


# --- masked forward ops ----------------------------------------------------------------------------
def forward(cell: str, unmasked: Callable) -> Callable:
    """The onnx rule of forward op `cell`: `unmasked` (ONNX's RNN/LSTM/GRU) without a mask, a Scan
    that carries the states over masked steps with one. The tape (tape=True) is recomputed from the
    sequence output with MatMuls over all steps (`_tape`): ONNX's LSTM/GRU do not expose the gates."""

    def rule(ctx, inputs, outputs, masked=False, tape=False, **attrs):
        n_tape = _TAPES[cell] if tape else 0
        main = outputs[:len(outputs) - n_tape]
        if not masked:
            unmasked(ctx, inputs, main, **attrs)
        else:
            _masked_forward(cell, ctx, inputs, main, **attrs)
        if tape:
            _tape(cell, ctx, inputs[:len(inputs) - masked], main[0], outputs[len(main):], **attrs)

    return rule


def _tape(cell: str, ctx, inputs, y: str, outputs, activation, go_backwards,
          recurrent_activation="sigmoid", reset_after=False) -> None:
    """The tape outputs from the sequence output y (N, T, U), as the op's vjp recomputes them without
    one: h before each step hp = [h0, y[:, :-1]]; lstm z = xs W + hp R + b; gru zx = xs W + b_in and
    hr = hp R + b_rec (reset_after) or [hp R_zr, (r * hp) R_h]. xs is x in processing order; a
    masked step's y is the carried state, so this is what the step computed there too."""
    x, kernel, recurrent, bias, *states = inputs
    dtype = ctx.type(x).dtype
    u = ctx.type(recurrent).shape[0]
    w = _Writer(ctx, dtype)
    xs = ctx.node("Slice", [x, ctx.ints([-1]), ctx.ints([-2**63]), ctx.ints([1]), ctx.ints([-1])]) \
        if go_backwards else x
    h0 = states[0] if states else _zeros_state(ctx, x, u, dtype)
    before = ctx.node("Slice", [y, ctx.ints([0]), ctx.ints([-1]), ctx.ints([1])])  # y[:, :-1]
    hp = ctx.node("Concat", [ctx.node("Unsqueeze", [h0, ctx.ints([1])]), before], axis=1)
    xw = ctx.node("MatMul", [xs, kernel])
    if cell == "lstm":
        ctx.node("Add", [ctx.node("Add", [xw, ctx.node("MatMul", [hp, recurrent])]), bias], [outputs[0]])
        return
    if reset_after:
        b_in, b_rec = (ctx.node("Gather", [bias, ctx.const(np.asarray(j, np.int64))], axis=0)
                       for j in (0, 1))
        ctx.node("Add", [xw, b_in], [outputs[0]])
        ctx.node("Add", [ctx.node("MatMul", [hp, recurrent]), b_rec], [outputs[1]])
        return
    zx = ctx.node("Add", [xw, bias], [outputs[0]])
    hzr = ctx.node("MatMul", [hp, _cols(ctx, recurrent, 0, 2 * u)])
    r = w.act(recurrent_activation, w.op("Add", w.split(zx, u, 3)[1], w.split(hzr, u, 2)[1]))
    rh = ctx.node("MatMul", [w.op("Mul", r, hp), _cols(ctx, recurrent, 2 * u, 3 * u)])
    ctx.node("Concat", [hzr, rh], [outputs[1]], axis=-1)


def _zeros_state(ctx, x: str, u: int, dtype: str) -> str:
    n = ctx.node("Shape", [x], start=0, end=1)
    shape = ctx.node("Concat", [n, ctx.ints([u])], axis=0)
    return ctx.node("Expand", [ctx.const(np.zeros((), dtype), hint="zero"), shape])


def _masked_forward(cell: str, ctx, inputs, outputs, activation, go_backwards,
                    recurrent_activation="sigmoid", reset_after=False) -> None:
    x, kernel, recurrent, bias, *states, mask = inputs
    dtype = ctx.type(x).dtype
    u = ctx.type(recurrent).shape[0]
    g = _GATES[cell]
    n_states = 2 if cell == "lstm" else 1
    if reset_after:
        b_in = ctx.node("Gather", [bias, ctx.const(np.asarray(0, np.int64))], axis=0)
        b_rec = ctx.node("Gather", [bias, ctx.const(np.asarray(1, np.int64))], axis=0)
    else:
        b_in, b_rec = bias, None
    # every step's x W + b at once, time-major in processing order
    xp = ctx.node("Add", [ctx.node("MatMul", [_time_major(ctx, x, go_backwards), kernel]), b_in])
    if not states:
        states = [_zeros_state(ctx, x, u, dtype)] * n_states
    keep = _mask_steps(ctx, mask, None, go_backwards)
    if cell == "gru" and not reset_after:
        r_zr, r_h = _cols(ctx, recurrent, 0, 2 * u), _cols(ctx, recurrent, 2 * u, 3 * u)

    s = _Step(ctx, dtype)
    old = [s.input("h", u)] + ([s.input("c", u)] if cell == "lstm" else [])
    xk = s.input("xp_t", g * u)
    mk = s.input("mask_t", 1, "bool")
    h = old[0]
    if cell == "simple_rnn":
        new = [s.act(activation, s.add(xk, s.op("MatMul", h, recurrent)))]
    elif cell == "lstm":
        zi, zf, zc, zo = s.split(s.add(xk, s.op("MatMul", h, recurrent)), u, 4)
        i, f, o = (s.act(recurrent_activation, z) for z in (zi, zf, zo))
        c_new = s.add(s.mul(f, old[1]), s.mul(i, s.act(activation, zc)))
        new = [s.mul(o, s.act(activation, c_new)), c_new]
    else:
        xz, xr, xh = s.split(xk, u, 3)
        if reset_after:
            hz, hr, hh_in = s.split(s.add(s.op("MatMul", h, recurrent), b_rec), u, 3)
        else:
            hz, hr = s.split(s.op("MatMul", h, r_zr), u, 2)
        z = s.act(recurrent_activation, s.add(xz, hz))
        r = s.act(recurrent_activation, s.add(xr, hr))
        inner = s.mul(r, hh_in) if reset_after else s.op("MatMul", s.mul(r, h), r_h)
        hh = s.act(activation, s.add(xh, inner))
        new = [s.add(s.mul(z, h), s.mul(s.op("Sub", s.one, z), hh))]
    carried = [s.op("Where", mk, n, o) for n, o in zip(new, old, strict=True)]
    body = s.graph([*((c, u) for c in carried), (s.output(carried[0]), u)])
    *_, y = _scan(ctx, body, states, [xp, keep], [*outputs[1:], None])
    _batch_major(ctx, y, outputs[0])


# --- backpropagation through time ------------------------------------------------------------------
# The chains run from the last step to the first. Everything that does not depend on the carried
# gradients -- the gates and their derivatives, all known from the op's inputs (and, for LSTM, the
# cell states of a forward Scan) -- is computed for all steps at once outside the Scan and folded
# into a few per-step factors, so a body step is a handful of nodes around the one GEMM. The mask
# m folds into those factors too (m is 0 or 1: m * dh * k == dh * (m * k) exactly).
def _hoisted(ctx, seqs: Sequence[str]) -> list[str]:
    """(N, T, W) sequences time-major, last step first."""
    return [_time_major(ctx, v, True) for v in seqs]


def simple_rnn_bptt(ctx, inputs, outputs, activation, masked=False) -> None:
    """dh = carry + dy; dA = dh * (m act'(y)); carry = dA R^T + (1 - m) dh."""
    y, recurrent, dy, dh_t, *mask = inputs
    dtype = ctx.type(y).dtype
    u = ctx.type(recurrent).shape[0]
    w = _Writer(ctx, dtype)
    y_r, dy_r = _hoisted(ctx, [y, dy])
    m_r = _mask_steps(ctx, mask[0], dtype, True) if masked else None
    slope = w.slope(activation, y_r)
    k = w.mul(m_r, slope)  # None: linear and not masked
    seqs = [dy_r] + ([k] if k else []) + ([w.sub1(m_r)] if masked else [])
    r_t = ctx.transpose(recurrent, (1, 0))

    s = _Step(ctx, dtype)
    carry, dyk = s.input("dh", u), s.input("dy_t", u)
    kk = s.input("k_t", u if slope else 1) if k else None
    keep = s.input("keep_t", 1) if masked else None
    dh = s.add(carry, dyk)
    da = s.mul(dh, kk)
    new = s.add(s.op("MatMul", da, r_t), s.mul(keep, dh) if keep else None)
    _, da_seq = _scan(ctx, s.graph([(new, u), (da, u)]), [dh_t], seqs, [outputs[1], None])
    _batch_major(ctx, da_seq, outputs[0], backwards=True)


def lstm_bptt(ctx, inputs, outputs, activation, recurrent_activation, masked=False) -> None:
    z, c0, recurrent, dy, dh_t, dc_t, *mask = inputs
    dtype = ctx.type(z).dtype
    u = ctx.type(recurrent).shape[0]
    w = _Writer(ctx, dtype)
    zi, zf, zc, zo = w.split(_time_major(ctx, z), u, 4)  # (T, N, U) each, in processing order
    i, f, o = (w.act(recurrent_activation, v) for v in (zi, zf, zo))
    g = w.act(activation, zc)
    m = _mask_steps(ctx, mask[0], dtype, False) if masked else None

    # forward: the cell state before every step and the new one it computes (before the mask)
    s = _Step(ctx, dtype)
    c, fk, igk = s.input("c", u), s.input("f_t", u), s.input("ig_t", u)
    c_new = s.add(s.mul(fk, c), igk)
    if masked:
        mk, keep = s.input("mask_t", 1), s.input("keep_t", 1)
        c_next = s.add(s.mul(mk, c_new), s.mul(keep, c))
    else:
        c_next = s.output(c_new)
    body = s.graph([(c_next, u), (s.output(c), u), (s.output(c_new), u)])
    seqs = [f, w.mul(i, g)] + ([m, w.sub1(m)] if masked else [])
    _, c_prev, c_new = _scan(ctx, body, [c0], seqs, [None, None, None])

    # backward: dZ = [dcn, dcn, dcn, dhn] * k with k = [g ract'(i), c_prev ract'(f), i act'(g),
    # tc ract'(o)], dcn = m dc + dhn * p with p = o act'(tc), dhn = m dh
    tc = w.act(activation, c_new)
    k = w.concat(*(w.mul(a, b) for a, b in (
        (g, w.slope(recurrent_activation, i)), (c_prev, w.slope(recurrent_activation, f)),
        (i, w.slope(activation, g)), (tc, w.slope(recurrent_activation, o)))))
    p = w.mul(o, w.slope(activation, tc))
    seqs = [_reversed(ctx, v) for v in (k, p, f)] + _hoisted(ctx, [dy])
    if masked:
        m_r = _reversed(ctx, m)
        seqs += [m_r, w.sub1(m_r)]
    r_t = ctx.transpose(recurrent, (1, 0))

    s = _Step(ctx, dtype)
    dh_carry, dc_carry = s.input("dh", u), s.input("dc", u)
    kk, pk, fk, dyk = s.input("k_t", 4 * u), s.input("p_t", u), s.input("f_t", u), s.input("dy_t", u)
    mk, keep = (s.input("mask_t", 1), s.input("keep_t", 1)) if masked else (None, None)
    dh = s.add(dh_carry, dyk)
    dhn = s.mul(mk, dh)
    dcn = s.add(s.mul(mk, dc_carry), s.mul(dhn, pk))
    dz = s.mul(s.concat(dcn, dcn, dcn, dhn), kk)
    dc_new = s.add(s.mul(dcn, fk), s.mul(keep, dc_carry) if keep else None)
    dh_new = s.add(s.op("MatMul", dz, r_t), s.mul(keep, dh) if keep else None)
    body = s.graph([(dh_new, u), (dc_new, u), (dz, 4 * u)])
    *_, dz_seq = _scan(ctx, body, [dh_t, dc_t], seqs, [outputs[1], outputs[2], None])
    _batch_major(ctx, dz_seq, outputs[0], backwards=True)


def gru_bptt(ctx, inputs, outputs, activation, recurrent_activation, reset_after, masked=False
             ) -> None:
    """With kz = m (hp - hh) ract'(z), kh = m (1 - z) act'(hh) and the carry coefficient
    cz = m z + 1 - m: dz = dh kz, dah = dh kh; reset_after: dr = dah hr_h ract'(r),
    dZx = dh [kz, kh kr, kh], dHr = dh [kz, kh kr, kh r], carry = dh cz + dHr R^T; reset_before:
    d_inner = dah R_h^T, dr = d_inner hp ract'(r), carry = dh cz + d_inner r + [dz, dr] R_zr^T."""
    zx, hr, hp, recurrent, dy, dh_t, *mask = inputs
    dtype = ctx.type(zx).dtype
    u = ctx.type(recurrent).shape[0]
    w = _Writer(ctx, dtype)
    zx_r, hr_r, hp_r, dy_r = _hoisted(ctx, [zx, hr, hp, dy])
    xz, xr, xh = w.split(zx_r, u, 3)
    hz, hrr, hh_in = w.split(hr_r, u, 3)
    z = w.act(recurrent_activation, w.add(xz, hz))
    r = w.act(recurrent_activation, w.add(xr, hrr))
    hh = w.act(activation, w.add(xh, w.mul(r, hh_in) if reset_after else hh_in))
    m = _mask_steps(ctx, mask[0], dtype, True) if masked else None
    kz = w.mul(m, w.op("Sub", hp_r, hh), w.slope(recurrent_activation, z))
    kh = w.mul(m, w.sub1(z), w.slope(activation, hh))
    cz = w.add(w.mul(m, z), w.sub1(m)) if masked else z

    s = _Step(ctx, dtype)
    carry, dyk, czk = s.input("dh", u), s.input("dy_t", u), s.input("cz_t", u)
    dh = s.add(carry, dyk)
    if reset_after:
        kr = w.mul(kh, hh_in, w.slope(recurrent_activation, r))
        kx = w.concat(kz, kr, kh)
        khr = w.concat(kz, kr, w.mul(kh, r))
        kxk, khrk = s.input("kx_t", 3 * u), s.input("khr_t", 3 * u)
        dh3 = s.concat(dh, dh, dh)
        dzx, dhr = s.mul(dh3, kxk), s.mul(dh3, khrk)
        new = s.add(s.mul(dh, czk), s.op("MatMul", dhr, ctx.transpose(recurrent, (1, 0))))
        body = s.graph([(new, u), (dzx, 3 * u), (dhr, 3 * u)])
        seqs = [dy_r, cz, kx, khr]
    else:
        r_zr_t = ctx.transpose(_cols(ctx, recurrent, 0, 2 * u), (1, 0))
        r_h_t = ctx.transpose(_cols(ctx, recurrent, 2 * u, 3 * u), (1, 0))
        kr = w.mul(hp_r, w.slope(recurrent_activation, r))
        kzk, khk, krk, rk = (s.input(n, u) for n in ("kz_t", "kh_t", "kr_t", "r_t"))
        dz, dah = s.mul(dh, kzk), s.mul(dh, khk)
        d_inner = s.op("MatMul", dah, r_h_t)
        dr = s.mul(d_inner, krk)
        dzx = s.concat(dz, dr, dah)
        new = s.add(s.mul(dh, czk), s.mul(d_inner, rk),
                    s.op("MatMul", s.concat(dz, dr), r_zr_t))
        body = s.graph([(new, u), (dzx, 3 * u)])
        seqs = [dy_r, cz, kz, kh, kr, r]
    n_out = 2 if reset_after else 1
    _, *grads = _scan(ctx, body, [dh_t], seqs, [outputs[2], *([None] * n_out)])
    for d, out in zip(grads, outputs[:n_out], strict=True):
        _batch_major(ctx, d, out, backwards=True)
    if not reset_after:  # the gradients of the input and recurrent parts are the same
        ctx.node("Identity", [outputs[0]], [outputs[1]])
