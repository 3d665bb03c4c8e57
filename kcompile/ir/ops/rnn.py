"""Recurrent ops over a whole sequence: `simple_rnn`, `lstm`, `gru`, and their BPTT gradients.

One node runs one recurrent layer over every timestep, so an executor can compute the input
projection of all steps as one GEMM, (N*T, F) x (F, G*U), and then loop over time doing only the
recurrent GEMM (N, U) x (U, G*U) with the gate nonlinearities fused after it.

Inputs: x (N, T, F), kernel (F, G*U), recurrent_kernel (U, G*U), bias, then optionally the initial
states, each (N, U): h (and c for lstm) -- all of them or none (zeros). The weights are Keras's own
(gates lstm i, f, c, o; gru z, r, h; gru bias (2, 3U) with reset_after, else (3U,)), so a layer
passes its variables straight in. T may be None only where shapes alone are traced (a Functional
model built on a variable-length Input); executed graphs have the data's length.

Outputs: the hidden state after every step (N, T, U) in processing order, then the final states
(N, U). With go_backwards the input is read from the last step to the first and the sequence output
stays in processing order -- reversed with respect to the input, as Keras returns it.

The gradient op (`lstm_grad`, ...) takes the forward inputs and one cotangent per forward output and
returns one cotangent per forward input: backpropagation through time that recomputes the forward
steps, so nothing but the outputs lives between the forward and backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.opdef import Attr, defop
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


# --- types -------------------------------------------------------------------------------------------
def _check(cell: Cell, op: str, x: TensorType, kernel: TensorType, recurrent: TensorType,
           bias: TensorType, states: Sequence[TensorType], reset_after: bool) -> tuple:
    """Validate a forward op's inputs; returns (N, T, U, dtype)."""
    require_rank(op, x, 3, "input (batch, time, features)")
    require_rank(op, recurrent, 2, "recurrent kernel (units, gates * units)")
    dtype = same_dtype(op, x, kernel, recurrent, bias, *states)
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
    return n, t, u, dtype


def _forward_infer(cell: Cell):
    def infer(*types, reset_after=False, **_attrs):
        if len(types) not in (4, 4 + cell.states):
            raise ValueError(f"{cell.name}: takes x, kernel, recurrent kernel, bias and optionally "
                             f"{cell.states} initial state(s), got {len(types)} input(s)")
        x, kernel, recurrent, bias, *states = types
        n, t, u, dtype = _check(cell, cell.name, x, kernel, recurrent, bias, states, reset_after)
        return [TensorType((n, t, u), dtype)] + [TensorType((n, u), dtype)] * cell.states

    return infer


def _split_grad(cell: Cell, args: Sequence) -> tuple[list, list]:
    """(forward inputs, output cotangents) of a gradient op's inputs."""
    k = len(args) - 1 - cell.states
    return list(args[:k]), list(args[k:])


def _grad_infer(cell: Cell):
    op = f"{cell.name}_grad"

    def infer(*types, reset_after=False, **_attrs):
        if len(types) not in (5 + cell.states, 5 + 2 * cell.states):
            raise ValueError(f"{op}: takes the {cell.name} inputs and {1 + cell.states} output "
                             f"cotangent(s), got {len(types)} input(s)")
        fwd, cots = _split_grad(cell, types)
        n, t, u, dtype = _check(cell, op, *fwd[:4], fwd[4:], reset_after)
        want = [TensorType((n, t, u), dtype)] + [TensorType((n, u), dtype)] * cell.states
        if list(cots) != want:
            raise ValueError(f"{op}: output cotangents must be {[str(w) for w in want]}, got "
                             f"{[str(c) for c in cots]}")
        return list(fwd)

    return infer


# --- forward steps (with an optional tape for the gradient) ---------------------------------------
def _start(x, recurrent, states, go_backwards, n_states):
    n, t = x.shape[:2]
    u = recurrent.shape[0]
    xs = x[:, ::-1] if go_backwards else x
    init = list(states) if states else [np.zeros((n, u), x.dtype) for _ in range(n_states)]
    return xs, init, np.empty((n, t, u), x.dtype)


def _simple_steps(x, kernel, recurrent, bias, states, activation, go_backwards, tape=None):
    xs, (h,), y = _start(x, recurrent, states, go_backwards, 1)
    xp = np.matmul(xs, kernel) + bias
    for k in range(x.shape[1]):
        h_new = activate(activation, xp[:, k] + h @ recurrent)
        if tape is not None:
            tape.append((h, h_new))
        h = y[:, k] = h_new
    return xs, y, [h]


def _lstm_steps(x, kernel, recurrent, bias, states, activation, recurrent_activation, go_backwards,
                tape=None):
    xs, (h, c), y = _start(x, recurrent, states, go_backwards, 2)
    u = recurrent.shape[0]
    xp = np.matmul(xs, kernel) + bias
    for k in range(x.shape[1]):
        z = xp[:, k] + h @ recurrent
        i = activate(recurrent_activation, z[:, :u])
        f = activate(recurrent_activation, z[:, u:2 * u])
        g = activate(activation, z[:, 2 * u:3 * u])
        o = activate(recurrent_activation, z[:, 3 * u:])
        c_new = f * c + i * g
        tc = activate(activation, c_new)
        if tape is not None:
            tape.append((h, c, i, f, g, o, tc))
        h, c = o * tc, c_new
        y[:, k] = h
    return xs, y, [h, c]


def _gru_steps(x, kernel, recurrent, bias, states, activation, recurrent_activation, go_backwards,
               reset_after, tape=None):
    """Keras's GRU: z and r from x and h; the candidate uses r * (h R_h + b_rh) with reset_after,
    (r * h) R_h without; h' = z * h + (1 - z) * candidate."""
    xs, (h,), y = _start(x, recurrent, states, go_backwards, 1)
    u = recurrent.shape[0]
    xp = np.matmul(xs, kernel) + (bias[0] if reset_after else bias)
    for k in range(x.shape[1]):
        xk = xp[:, k]
        hr = h @ recurrent + bias[1] if reset_after else h @ recurrent[:, :2 * u]
        z = activate(recurrent_activation, xk[:, :u] + hr[:, :u])
        r = activate(recurrent_activation, xk[:, u:2 * u] + hr[:, u:2 * u])
        if reset_after:
            inner = hr[:, 2 * u:]  # h R_h + b_rh
            hh = activate(activation, xk[:, 2 * u:] + r * inner)
        else:
            inner = r * h
            hh = activate(activation, xk[:, 2 * u:] + inner @ recurrent[:, 2 * u:])
        if tape is not None:
            tape.append((h, z, r, hh, inner))
        h = y[:, k] = z * h + (1 - z) * hh
    return xs, y, [h]


def _forward_ref(cell: Cell, steps: Callable):
    def ref(x, kernel, recurrent, bias, *states, **attrs):
        _, y, finals = steps(x, kernel, recurrent, bias, states, **attrs)
        return (y, *finals)

    return ref


# --- backpropagation through time ----------------------------------------------------------------
def _weight_grads(xs, dxp, kernel, go_backwards):
    """dx and dkernel from the pre-activation gradients of the input projection (two GEMMs)."""
    f, g = kernel.shape
    dxs = np.matmul(dxp, kernel.T)
    dx = np.ascontiguousarray(dxs[:, ::-1] if go_backwards else dxs)
    dkernel = xs.reshape(-1, f).T @ dxp.reshape(-1, g)
    return dx, dkernel


def _outer(a, b):
    """sum over batch and time of a^T b: (N, T, P), (N, T, Q) -> (P, Q)."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _simple_grad(x, kernel, recurrent, bias, states, dy, dfinal, activation, go_backwards):
    tape: list = []
    xs, _, _ = _simple_steps(x, kernel, recurrent, bias, states, activation, go_backwards, tape)
    n, t = x.shape[:2]
    u = recurrent.shape[0]
    da = np.empty((n, t, u), x.dtype)
    hprev = np.empty((n, t, u), x.dtype)
    dh = dfinal[0]
    for k in reversed(range(t)):
        h_prev, h = tape[k]
        da[:, k] = (dh + dy[:, k]) * slope(activation, h)
        hprev[:, k] = h_prev
        dh = da[:, k] @ recurrent.T
    dx, dkernel = _weight_grads(xs, da, kernel, go_backwards)
    return [dx, dkernel, _outer(hprev, da), da.sum(axis=(0, 1)), dh]


def _lstm_grad(x, kernel, recurrent, bias, states, dy, dfinal, activation, recurrent_activation,
               go_backwards):
    tape: list = []
    xs, _, _ = _lstm_steps(x, kernel, recurrent, bias, states, activation, recurrent_activation,
                           go_backwards, tape)
    n, t = x.shape[:2]
    u = recurrent.shape[0]
    dz = np.empty((n, t, 4 * u), x.dtype)
    hprev = np.empty((n, t, u), x.dtype)
    dh, dc = dfinal
    for k in reversed(range(t)):
        h_prev, c_prev, i, f, g, o, tc = tape[k]
        dh = dh + dy[:, k]
        dc = dc + dh * o * slope(activation, tc)
        dz[:, k, :u] = dc * g * slope(recurrent_activation, i)
        dz[:, k, u:2 * u] = dc * c_prev * slope(recurrent_activation, f)
        dz[:, k, 2 * u:3 * u] = dc * i * slope(activation, g)
        dz[:, k, 3 * u:] = dh * tc * slope(recurrent_activation, o)
        dc = dc * f
        hprev[:, k] = h_prev
        dh = dz[:, k] @ recurrent.T
    dx, dkernel = _weight_grads(xs, dz, kernel, go_backwards)
    return [dx, dkernel, _outer(hprev, dz), dz.sum(axis=(0, 1)), dh, dc]


def _gru_grad(x, kernel, recurrent, bias, states, dy, dfinal, activation, recurrent_activation,
              go_backwards, reset_after):
    tape: list = []
    xs, _, _ = _gru_steps(x, kernel, recurrent, bias, states, activation, recurrent_activation,
                          go_backwards, reset_after, tape)
    n, t = x.shape[:2]
    u = recurrent.shape[0]
    dxp = np.empty((n, t, 3 * u), x.dtype)  # d(x W + b_in) per step
    drec = np.empty((n, t, 3 * u), x.dtype)  # d(h R + b_rec) per step (reset_after)
    hprev = np.empty((n, t, u), x.dtype)
    inners = np.empty((n, t, u), x.dtype)  # r * h per step (not reset_after)
    dh = dfinal[0]
    for k in reversed(range(t)):
        h_prev, z, r, hh, inner = tape[k]
        dh = dh + dy[:, k]
        da_h = dh * (1 - z) * slope(activation, hh)
        dxp[:, k, :u] = dh * (h_prev - hh) * slope(recurrent_activation, z)
        dxp[:, k, 2 * u:] = da_h
        hprev[:, k] = h_prev
        if reset_after:
            dxp[:, k, u:2 * u] = da_h * inner * slope(recurrent_activation, r)
            drec[:, k, :2 * u] = dxp[:, k, :2 * u]
            drec[:, k, 2 * u:] = da_h * r
            dh = dh * z + drec[:, k] @ recurrent.T
        else:
            d_inner = da_h @ recurrent[:, 2 * u:].T
            dxp[:, k, u:2 * u] = d_inner * h_prev * slope(recurrent_activation, r)
            inners[:, k] = inner
            dh = dh * z + d_inner * r + dxp[:, k, :2 * u] @ recurrent[:, :2 * u].T
    dx, dkernel = _weight_grads(xs, dxp, kernel, go_backwards)
    if reset_after:
        drecurrent = _outer(hprev, drec)
        dbias = np.stack([dxp.sum(axis=(0, 1)), drec.sum(axis=(0, 1))])
    else:
        drecurrent = np.concatenate([_outer(hprev, dxp[..., :2 * u]),
                                     _outer(inners, dxp[..., 2 * u:])], axis=1)
        dbias = dxp.sum(axis=(0, 1))
    return [dx, dkernel, drecurrent, dbias, dh]


def _grad_ref(cell: Cell, backward: Callable):
    def ref(*args, **attrs):
        fwd, cots = _split_grad(cell, args)
        x, kernel, recurrent, bias, *states = fwd
        grads = backward(x, kernel, recurrent, bias, states, cots[0], cots[1:], **attrs)
        if not states:  # no initial-state inputs: no cotangents for them
            grads = grads[:4]
        return tuple(np.asarray(gr, dtype=x.dtype) for gr in grads)

    return ref


def _forward_vjp(cell: Cell):
    def vjp(e, inputs, outs, gs, **attrs):
        cots = [g if g is not None else e.zeros_like(o) for o, g in zip(outs, gs, strict=True)]
        return e.ops(f"{cell.name}_grad", *inputs, *cots, **attrs)

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
             "go_backwards": Attr(bool, False)}
    if cell is not SIMPLE:
        attrs["recurrent_activation"] = Attr(str, "sigmoid", lambda a: a in ACTIVATIONS, _ACT_HELP)
    if cell is GRU:
        attrs["reset_after"] = Attr(bool, True)
    return attrs


_DOCS = {
    "simple_rnn": "Keras SimpleRNN over a whole sequence: h' = act(x W + b + h R).",
    "lstm": "Keras LSTM over a whole sequence (gates i, f, c, o); outputs sequence, h, c.",
    "gru": "Keras GRU over a whole sequence (gates z, r, h; reset_after or before the recurrent "
           "GEMM); outputs sequence, h.",
}

for _cell, _steps, _backward in ((SIMPLE, _simple_steps, _simple_grad), (LSTM, _lstm_steps, _lstm_grad),
                                 (GRU, _gru_steps, _gru_grad)):
    defop(_cell.name, attrs=_attrs(_cell), infer=_forward_infer(_cell),
          ref=_forward_ref(_cell, _steps), vjp=_forward_vjp(_cell), onnx=_forward_onnx(_cell),
          doc=_DOCS[_cell.name] + " Inputs x, kernel, recurrent kernel, bias[, initial states].",
          tags=("rnn",))
    defop(f"{_cell.name}_grad", attrs=_attrs(_cell), infer=_grad_infer(_cell),
          ref=_grad_ref(_cell, _backward), vjp=_no_second_order(f"{_cell.name}_grad"),
          doc=f"Backpropagation through time of {_cell.name}: the forward inputs and the output "
              "cotangents in, one cotangent per forward input out.",
          tags=("rnn",))
