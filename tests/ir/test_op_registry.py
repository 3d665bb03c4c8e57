"""Every registered IR op, built through the Graph API, verified and run by the eager executor.

`CASES` must hold at least one sample for every op in the registry (a new op without one fails
`test_every_registered_op_has_a_case`). Each case is run at batch sizes 1 and 3 and the reference
output must have exactly the shape and dtype `infer` promised (batch substituted), in float32 and,
where the op takes float tensors, in float64 too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.opdef import all_ops

F32, F64 = "float32", "float64"
N = None  # the symbolic batch dim


@dataclass(frozen=True)
class Arg:
    """One op input: its type, whether it is a graph parameter, and how to draw its values."""

    shape: tuple
    dtype: str = F32
    param: bool = False
    gen: str = "signed"  # signed | positive | labels<k> | key | mask (0/1 values)


@dataclass(frozen=True)
class Case:
    op: str
    args: tuple[Arg, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    float64: bool = True  # also run with every float32 input/attr switched to float64

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


def X(shape, dtype=F32, gen="signed"):
    """A graph input."""
    return Arg(tuple(shape), dtype, False, gen)


def W(shape, dtype=F32, gen="signed"):
    """A graph parameter."""
    return Arg(tuple(shape), dtype, True, gen)


KEY = W((2,), "uint32", gen="key")
_FUSED = (("matmul", ("i0", "i1"), ()), ("bias_add", ("s0", "i2"), ()), ("relu", ("s1",), ()))
_FUSED_SOFTMAX = (("mul", ("i0", "i0"), ()), ("softmax", ("s0",), (("axis", 1),)),
                  ("add", ("s1", "i1"), ()))
_CONV = {"strides": (1, 1), "padding": "valid", "dilation": (1, 1)}

CASES: list[Case] = [
    # binary arithmetic, with broadcasting in every direction the batch dim allows
    Case("add", (X((N, 3)), W((3,)))),
    Case("add", (X((N, 1, 4)), X((N, 3, 1))), name="both-sides"),
    Case("add", (W((2, 1)), X((N, 1, 5))), name="rank-up"),
    Case("sub", (X((N, 3)), X((N, 3)))),
    Case("sub", (W(()), X((N, 2))), name="scalar"),
    Case("mul", (X((N, 1)), X((N, 4)))),
    Case("mul", (X((1, 4)), X((N, 4))), name="one-meets-batch"),
    Case("div", (X((N, 3)), W((), gen="positive"))),
    Case("div", (X((N, 2, 3)), X((N, 1, 3), gen="positive")), name="bcast"),
    Case("maximum", (X((N, 3)), W((3,)))),
    Case("minimum", (X((N, 3)), W((1,)))),
    Case("pow", (X((N, 3), gen="positive"), W((3,)))),
    Case("compare", (X((N, 3)), W((3,))), {"predicate": "ge"}),
    Case("compare", (X((N, 3)), X((N, 3))), {"predicate": "eq"}, name="eq"),
    Case("compare", (X((N, 3), "int32", gen="labels5"), W((3,), "int32", gen="labels5")),
         {"predicate": "lt"}, name="int32", float64=False),
    Case("bias_add", (X((N, 2, 3)), W((3,)))),
    Case("bias_add", (X((N, 5)), W((5,))), name="dense"),
    Case("broadcast_like", (W((1, 3)), X((N, 3)))),
    Case("broadcast_like", (W(()), X((N, 2, 2))), name="scalar"),
    # unary
    Case("neg", (X((N, 3)),)),
    Case("abs", (X((N, 3)),)),
    Case("relu", (X((N, 2, 3)),)),
    Case("sigmoid", (X((N, 3)),)),
    Case("tanh", (X((N, 3)),)),
    Case("exp", (X((N, 3)),)),
    Case("log", (X((N, 3), gen="positive"),)),
    Case("sqrt", (X((N, 3), gen="positive"),)),
    Case("gelu", (X((N, 3)),), {"approximate": True}),
    Case("gelu", (X((N, 3)),), {"approximate": False}, name="exact"),
    Case("gelu_grad", (X((N, 3)),), {"approximate": False}),
    Case("gelu_grad", (X((N, 3)),), {"approximate": True}, name="approx"),
    Case("cast", (X((N, 3)),), {"dtype": "float64"}),
    Case("cast", (X((N, 3)),), {"dtype": "int32"}, name="to-int"),
    Case("cast", (X((N, 3), "int32", gen="labels5"),), {"dtype": "float32"}, name="from-int",
         float64=False),
    Case("constant", (), {"value": np.arange(6, dtype=np.float32).reshape(2, 3)}),
    Case("constant", (), {"value": np.array(2.5, np.float32)}, name="scalar"),
    Case("stop_gradient", (X((N, 3)),)),
    # fused programs compose other ops' rules
    Case("fused", (X((N, 4)), W((4, 3)), W((3,))), {"program": _FUSED}),
    Case("fused", (X((N, 5)), W((5,))), {"program": _FUSED_SOFTMAX}, name="softmax"),
    # matmul
    Case("matmul", (X((N, 4)), W((4, 5)))),
    Case("matmul", (X((N, 4)), W((5, 4))), {"transpose_b": True}, name="tb"),
    Case("matmul", (X((N, 4)), X((N, 3))), {"transpose_a": True}, name="batch-contraction"),
    Case("matmul", (X((N, 2, 4)), W((4, 3))), name="rank3"),
    Case("matmul", (X((N, 2, 4)), X((N, 4, 3))), name="batched"),
    Case("matmul", (X((N, 4, 2)), W((1, 3, 4))), {"transpose_a": True, "transpose_b": True},
         name="ta-tb-bcast"),
    # data movement
    Case("reshape", (X((N, 2, 3)),), {"shape": (N, 6)}),
    Case("reshape", (X((N, 6)),), {"shape": (N, 3, 1, 2)}, name="split"),
    Case("reshape", (X((N, 4)),), {"shape": (2, N, 2)}, name="batch-moves"),
    Case("transpose", (X((N, 2, 3)),), {"perm": (0, 2, 1)}),
    Case("transpose", (X((N, 2, 3)),), {"perm": (2, 0, 1)}, name="batch-moves"),
    Case("concat", (X((N, 2)), X((N, 3))), {"axis": -1}),
    Case("concat", (X((N, 1, 2)), X((N, 3, 2)), X((N, 2, 2))), {"axis": 1}, name="three"),
    Case("concat", (W((2, 3)), W((1, 3))), {"axis": 0}, name="no-batch"),
    Case("slice", (X((N, 5)),), {"axis": 1, "start": 1, "stop": 4}),
    Case("slice", (X((N, 3, 4)),), {"axis": -1, "start": 0, "stop": 0}, name="empty"),
    Case("pad", (X((N, 5, 3)),), {"axis": 1, "before": 2, "after": 1}),
    Case("pad", (X((N, 4)),), {"axis": -1, "after": 3}, name="after-only"),
    # row gathers (Embedding) and their adjoint
    Case("gather", (W((10, 4)), X((N, 5), "int32", gen="labels10"))),
    Case("gather", (W((6, 2, 3)), X((N,), "int64", gen="labels6")), name="int64-rank3-table"),
    Case("scatter_add", (X((N, 5), "int32", gen="labels10"), X((N, 5, 4))), {"rows": 10}),
    Case("scatter_add", (X((N,), "int64", gen="labels3"), X((N, 2, 2))), {"rows": 3},
         name="int64-rank3"),
    # conv and its gradients
    Case("conv2d", (X((N, 7, 6, 3)), W((3, 3, 3, 4))),
         {"strides": (2, 1), "padding": "same", "dilation": (1, 1)}),
    Case("conv2d", (X((N, 8, 8, 2)), W((3, 2, 2, 3))), {**_CONV, "dilation": (2, 2)}, name="dilated"),
    Case("conv2d", (X((N, 5, 5, 1)), W((1, 1, 1, 2))), {}, name="defaults"),
    Case("conv2d_input_grad", (X((N, 4, 3, 4)), W((3, 3, 3, 4))),
         {"input_hw": (7, 6), "strides": (2, 2), "padding": "same", "dilation": (1, 1)}),
    Case("conv2d_input_grad", (X((N, 4, 4, 2)), W((3, 3, 1, 2))),
         {"input_hw": (8, 8), **_CONV, "dilation": (2, 2)}, name="dilated"),
    Case("conv2d_filter_grad", (X((N, 7, 6, 3)), X((N, 4, 3, 4))),
         {"kernel_hw": (3, 3), "strides": (2, 2), "padding": "same", "dilation": (1, 1)}),
    Case("conv2d_filter_grad", (X((N, 6, 6, 2)), X((N, 4, 4, 3))),
         {"kernel_hw": (3, 3), **_CONV}, name="valid"),
    # pooling and its gradients
    Case("max_pool2d", (X((N, 5, 5, 2)),), {"pool_size": (2, 2), "strides": (2, 2), "padding": "same"}),
    Case("max_pool2d", (X((N, 6, 5, 1)),), {"pool_size": (3, 2), "strides": (1, 2)}, name="valid"),
    Case("avg_pool2d", (X((N, 5, 5, 2)),), {"pool_size": (3, 3), "strides": (1, 1), "padding": "valid"}),
    Case("avg_pool2d", (X((N, 5, 4, 2)),), {"pool_size": (2, 3), "strides": (2, 2), "padding": "same"},
         name="same"),
    Case("max_pool2d_grad", (X((N, 5, 5, 2)), X((N, 3, 3, 2))),
         {"pool_size": (2, 2), "strides": (2, 2), "padding": "same"}),
    Case("avg_pool2d_grad", (X((N, 3, 3, 2)),),
         {"input_hw": (5, 5), "pool_size": (3, 3), "strides": (1, 1), "padding": "valid"}),
    Case("avg_pool2d_grad", (X((N, 3, 2, 2)),),
         {"input_hw": (5, 4), "pool_size": (2, 3), "strides": (2, 2), "padding": "same"}, name="same"),
    # normalization and randomness
    Case("batchnorm", (X((N, 4)), W((4,)), W((4,)), W((4,)), W((4,), gen="positive")), {}),
    Case("batchnorm", (X((N, 3, 2, 5)), W((3,)), W((3,)), W((3,)), W((3,), gen="positive")),
         {"axis": 1, "epsilon": 1e-5}, name="axis1"),
    Case("dropout", (X((N, 6)), KEY), {"rate": 0.5, "salt": 7}),
    Case("dropout", (X((N, 2, 3)), KEY), {"rate": 0.0}, name="rate0"),
    # reductions, softmax and friends
    Case("sum", (X((N, 3, 4)),), {"axes": (1,), "keepdims": True}),
    Case("sum", (X((N, 3)),), {}, name="all"),
    Case("sum", (X((N, 3), "int32", gen="labels5"),), {"axes": (0,)}, name="int-batch", float64=False),
    Case("mean", (X((N, 3, 4)),), {"axes": (1, 2)}),
    Case("mean", (X((N, 3)),), {"axes": (0,), "keepdims": True}, name="batch"),
    Case("max", (X((N, 3, 4)),), {"axes": (-1,)}),
    Case("max", (X((N, 3)),), {"axes": None, "keepdims": True}, name="all"),
    Case("softmax", (X((N, 5)),), {"axis": -1}),
    Case("softmax", (X((N, 3, 4)),), {"axis": 1}, name="axis1"),
    Case("log_softmax", (X((N, 5)),), {"axis": -1}),
    Case("log_softmax", (X((N, 3, 4)),), {"axis": 0}, name="batch-axis"),
    Case("argmax", (X((N, 5)),), {"axis": -1}),
    Case("argmax", (X((N, 5)),), {"axis": 0}, name="batch-axis"),
    Case("one_hot", (X((N,), "int32", gen="labels4"),), {"depth": 4}, float64=False),
    Case("one_hot", (X((N, 2), "float32", gen="labels3"),), {"depth": 3, "dtype": "float64"},
         name="float-labels", float64=False),
    # recurrent layers over a whole sequence (x, kernel, recurrent kernel, bias[, states]) and BPTT;
    # other activations than the defaults: float32 only (onnx.reference ignores `activations`)
    Case("simple_rnn", (X((N, 4, 3)), W((3, 2)), W((2, 2)), W((2,)))),
    Case("simple_rnn", (X((N, 4, 3)), W((3, 2)), W((2, 2)), W((2,)), X((N, 2))),
         {"go_backwards": True, "activation": "relu"}, name="state-backwards-relu", float64=False),
    Case("lstm", (X((N, 4, 3)), W((3, 8)), W((2, 8)), W((8,)))),
    Case("lstm", (X((N, 4, 3)), W((3, 8)), W((2, 8)), W((8,)), X((N, 2)), X((N, 2))),
         {"go_backwards": True}, name="states-backwards"),
    Case("lstm", (X((N, 3, 2)), W((2, 4)), W((1, 4)), W((4,))),
         {"activation": "linear", "recurrent_activation": "tanh"}, name="activations", float64=False),
    Case("gru", (X((N, 4, 3)), W((3, 6)), W((2, 6)), W((2, 6)))),
    Case("gru", (X((N, 4, 3)), W((3, 6)), W((2, 6)), W((6,)), X((N, 2))),
         {"reset_after": False, "go_backwards": True}, name="reset-before-state-backwards"),
    # masked: the (batch, time) mask last; masked steps carry the states
    Case("lstm", (X((N, 5, 3)), W((3, 8)), W((2, 8)), W((8,)), X((N, 5), gen="mask")),
         {"masked": True, "go_backwards": True}, name="masked-backwards"),
    Case("gru", (X((N, 4, 3)), W((3, 6)), W((2, 6)), W((2, 6)), X((N, 2)), X((N, 4), gen="mask")),
         {"masked": True}, name="masked-state"),
    Case("simple_rnn", (X((N, 4, 3)), W((3, 2)), W((2, 2)), W((2,)), X((N, 4), gen="mask")),
         {"masked": True}, name="masked"),
    # the tape (a training step's forward): the gates' pre-activations as extra outputs
    Case("lstm", (X((N, 4, 3)), W((3, 8)), W((2, 8)), W((8,)), X((N, 2)), X((N, 2))),
         {"tape": True, "go_backwards": True}, name="tape-states-backwards"),
    Case("lstm", (X((N, 5, 3)), W((3, 8)), W((2, 8)), W((8,)), X((N, 5), gen="mask")),
         {"tape": True, "masked": True}, name="tape-masked"),
    Case("gru", (X((N, 4, 3)), W((3, 6)), W((2, 6)), W((2, 6))), {"tape": True}, name="tape"),
    Case("gru", (X((N, 4, 3)), W((3, 6)), W((2, 6)), W((6,)), X((N, 2)), X((N, 4), gen="mask")),
         {"tape": True, "reset_after": False, "go_backwards": True, "masked": True},
         name="tape-reset-before-masked"),
    # the sequential part of the recurrent gradients (processing order)
    Case("simple_rnn_bptt", (X((N, 4, 2)), W((2, 2)), X((N, 4, 2)), X((N, 2)))),
    Case("simple_rnn_bptt", (X((N, 4, 2)), W((2, 2)), X((N, 4, 2)), X((N, 2)), X((N, 4), gen="mask")),
         {"masked": True, "activation": "sigmoid"}, name="masked-sigmoid", float64=False),
    Case("lstm_bptt", (X((N, 4, 8)), X((N, 2)), W((2, 8)), X((N, 4, 2)), X((N, 2)), X((N, 2)))),
    Case("lstm_bptt", (X((N, 4, 8)), X((N, 2)), W((2, 8)), X((N, 4, 2)), X((N, 2)), X((N, 2)),
                       X((N, 4), gen="mask")), {"masked": True}, name="masked"),
    Case("gru_bptt", (X((N, 4, 6)), X((N, 4, 6)), X((N, 4, 2)), W((2, 6)), X((N, 4, 2)), X((N, 2)))),
    Case("gru_bptt", (X((N, 4, 6)), X((N, 4, 6)), X((N, 4, 2)), W((2, 6)), X((N, 4, 2)), X((N, 2)),
                      X((N, 4), gen="mask")), {"masked": True, "reset_after": False},
         name="masked-reset-before"),
    # movement and GEMM helpers of the recurrent gradients
    Case("reverse", (X((N, 5, 3)),), {"axis": 1}),
    Case("reverse", (X((N, 2, 3, 4)),), {"axis": -1}, name="last"),
    Case("outer_sum", (X((N, 3, 4)), X((N, 3, 5)))),
    Case("outer_sum", (X((N, 6)), X((N, 2))), name="rows"),
]

CASE_IDS = [c.id for c in CASES]


def _to_f64(case: Case) -> Case:
    def conv(a: Arg) -> Arg:
        return Arg(a.shape, F64 if a.dtype == F32 else a.dtype, a.param, a.gen)

    attrs = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
             for k, v in case.attrs.items()}
    return Case(case.op, tuple(conv(a) for a in case.args), attrs, case.name, case.float64)


def _build(case: Case) -> Graph:
    g = Graph(name=case.id)
    values = [(g.add_param if a.param else g.add_input)(TensorType(a.shape, a.dtype), f"x{i}")
              for i, a in enumerate(case.args)]
    g.outputs = g.add_node(case.op, values, case.attrs)
    return g


def _draw(arg: Arg, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(batch if d is None else d for d in arg.shape)
    if arg.gen == "key":
        return np.array([11, 4], np.uint32)
    if arg.gen.startswith("labels"):
        return rng.integers(0, int(arg.gen[6:]), shape).astype(arg.dtype)
    if arg.gen == "mask":
        return (rng.uniform(size=shape) < 0.6).astype(arg.dtype)
    mag = rng.uniform(0.5, 2.0, shape)
    if arg.gen == "signed":
        mag = mag * rng.choice([-1.0, 1.0], shape)
    return np.asarray(mag).astype(arg.dtype)


def _run(case: Case, batch: int, seed: int = 0) -> tuple[Graph, list[np.ndarray]]:
    g = _build(case)
    g.verify()
    rng = np.random.default_rng(seed)
    arrays = [_draw(a, batch, rng) for a in case.args]
    inputs = [x for a, x in zip(case.args, arrays, strict=True) if not a.param]
    params = [x for a, x in zip(case.args, arrays, strict=True) if a.param]
    return g, run(g, inputs, params)


def test_every_registered_op_has_a_case():
    missing = sorted(set(all_ops()) - {c.op for c in CASES})
    assert not missing, f"add a sample case to tests/ir/test_op_registry.py CASES for: {missing}"


def test_cases_name_only_registered_ops_and_are_unique():
    assert not {c.op for c in CASES} - set(all_ops()), "CASES names an op that is not registered"
    assert len(set(CASE_IDS)) == len(CASE_IDS), "duplicate case ids"


def test_cases_use_the_batch_dim_where_meaningful():
    """Every op that takes a tensor input has at least one case with a symbolic batch dim."""
    no_batch = sorted({c.op for c in CASES if c.args} -
                      {c.op for c in CASES if any(None in a.shape for a in c.args)})
    assert not no_batch, f"no symbolic-batch case for {no_batch}"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ref_matches_infer(case, batch):
    g, outs = _run(case, batch)
    assert len(outs) == len(g.outputs) >= 1  # several for the recurrent ops and their gradients
    for value, arr in zip(g.outputs, outs, strict=True):
        want = value.type.with_batch(batch)
        assert isinstance(arr, np.ndarray)
        assert arr.shape == want.shape, f"{case.id}: ref gave {arr.shape}, infer said {want}"
        assert arr.dtype.name == want.dtype, f"{case.id}: ref gave {arr.dtype}, infer said {want}"


F64_CASES = [c for c in CASES if c.float64 and (any(a.dtype == F32 for a in c.args) or c.op == "constant")]


def test_float64_covers_every_float_op():
    """Every op with a float32 case also has a float64 variant (or is explicitly exempt)."""
    float_ops = {c.op for c in CASES if any(a.dtype == F32 for a in c.args)}
    assert float_ops - {"one_hot"} <= {c.op for c in F64_CASES}


@pytest.mark.parametrize("case", F64_CASES, ids=[c.id for c in F64_CASES])
def test_float64_variant(case):
    """Switching float32 to float64 gives float64 outputs (cast/argmax keep their own dtype), and
    the values agree with the float32 run."""
    c64 = _to_f64(case)
    g32, outs32 = _run(case, 3)
    g64, outs64 = _run(c64, 3)
    for v32, v64, out32, out64 in zip(g32.outputs, g64.outputs, outs32, outs64, strict=True):
        want = F64 if v32.dtype == F32 and case.op != "cast" else v32.dtype
        assert v64.dtype == want
        assert out64.dtype.name == want and out64.shape == out32.shape
        if case.op == "cast" and case.attrs["dtype"] == "int32":
            np.testing.assert_array_equal(out64, out32)
        else:
            np.testing.assert_allclose(out64, out32.astype(np.float64), rtol=2e-4, atol=2e-5)


def _malformed(types: list[TensorType]):
    """Plausible mistakes for each input: one rank too few or too many, an integer dtype, a wrong
    last dim."""
    for i, t in enumerate(types):
        def swap(new, i=i):
            return types[:i] + [new] + types[i + 1:]

        yield f"x{i}-rank-down", swap(TensorType(t.shape[1:] if t.rank else (2,), t.dtype))
        yield f"x{i}-rank-up", swap(TensorType((*t.shape, 2), t.dtype))
        yield f"x{i}-int32", swap(TensorType(t.shape, "int32"))
        last = (*t.shape[:-1], (t.shape[-1] or 0) + 1) if t.rank else (1,)
        yield f"x{i}-last-dim", swap(TensorType(last, t.dtype))
    yield "extra-input", [*types, TensorType((1,))]


_MAY_NAME = {  # errors raised by a composed rule may name the op it composes
    "conv2d_input_grad": {"conv2d"}, "conv2d_filter_grad": {"conv2d"},
    "fused": {"matmul", "bias_add", "mul", "softmax", "add", "relu"},
}


@pytest.mark.parametrize("case", [c for c in CASES if c.args], ids=[c.id for c in CASES if c.args])
def test_infer_rejects_malformed_inputs_cleanly(case):
    """Wrong input types are a ValueError or TypeError naming the op -- never an IndexError or an
    unpacking error from deep inside infer."""
    opdef = all_ops()[case.op]
    attrs = opdef.check_attrs(case.attrs)
    types = [TensorType(a.shape, a.dtype) for a in case.args]
    names = {case.op, *_MAY_NAME.get(case.op, ())}
    for what, bad in _malformed(types):
        try:
            opdef.infer_types(bad, attrs)
        except (ValueError, TypeError) as err:
            msg = str(err)
            assert any(re.search(rf"\b{n}\b", msg) for n in names) or "random key" in msg, \
                f"{case.id} / {what}: error does not name the op: {msg}"


def test_add_node_returns_the_outputs_and_appends_one_node():
    g = Graph()
    x = g.add_input(TensorType((None, 3)), "x")
    outs = g.add_node("relu", [x])
    assert len(g.nodes) == 1 and g.nodes[0].outputs == outs and outs[0].producer is g.nodes[0]
    assert g.nodes[0].attrs == {} and g.nodes[0].inputs == [x]


def test_defaults_are_filled_in_by_add_node():
    g = Graph()
    x = g.add_input(TensorType((None, 4, 4, 1)), "x")
    k = g.add_param(TensorType((2, 2, 1, 1)), "k")
    (y,) = g.add_node("conv2d", [x, k], {"strides": [2, 2]})
    assert g.nodes[0].attrs == {"strides": (2, 2), "padding": "valid", "dilation": (1, 1)}
    assert y.type == TensorType((None, 2, 2, 1))
