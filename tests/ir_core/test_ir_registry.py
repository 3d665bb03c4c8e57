"""The op registry: every op has a sample here, and every op's `infer` agrees with its `ref`."""

from __future__ import annotations

import numpy as np
import pytest

from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.opdef import all_ops, get_op

F = "float32"
_STEP = (("matmul", ("i0", "i1"), ()), ("bias_add", ("s0", "i2"), ()), ("relu", ("s1",), ()))

# op -> (input types, attrs); None in a shape is the batch dim
SAMPLES = {
    "add": ([((None, 3), F), ((3,), F)], {}),
    "sub": ([((None, 3), F), ((None, 3), F)], {}),
    "mul": ([((None, 1), F), ((None, 4), F)], {}),
    "div": ([((None, 3), F), ((), F)], {}),
    "maximum": ([((None, 3), F), ((3,), F)], {}),
    "bias_add": ([((None, 2, 3), F), ((3,), F)], {}),
    "neg": ([((None, 3), F)], {}),
    "relu": ([((None, 3), F)], {}),
    "sigmoid": ([((None, 3), F)], {}),
    "tanh": ([((None, 3), F)], {}),
    "exp": ([((None, 3), F)], {}),
    "log": ([((None, 3), F)], {}),
    "sqrt": ([((None, 3), F)], {}),
    "gelu": ([((None, 3), F)], {"approximate": True}),
    "cast": ([((None, 3), F)], {"dtype": "float64"}),
    "constant": ([], {"value": np.arange(6, dtype=np.float32).reshape(2, 3)}),
    "matmul": ([((None, 4), F), ((4, 5), F)], {}),
    "reshape": ([((None, 2, 3), F)], {"shape": (None, 6)}),
    "transpose": ([((None, 2, 3), F)], {"perm": (0, 2, 1)}),
    "concat": ([((None, 2), F), ((None, 3), F)], {"axis": -1}),
    "conv2d": ([((None, 7, 6, 3), F), ((3, 3, 3, 4), F)],
               {"strides": (2, 1), "padding": "same", "dilation": (1, 1)}),
    "max_pool2d": ([((None, 5, 5, 2), F)], {"pool_size": (2, 2), "strides": (2, 2), "padding": "same"}),
    "avg_pool2d": ([((None, 5, 5, 2), F)], {"pool_size": (3, 3), "strides": (1, 1), "padding": "valid"}),
    "sum": ([((None, 3, 4), F)], {"axes": (1,), "keepdims": True}),
    "mean": ([((None, 3, 4), F)], {"axes": (1, 2)}),
    "max": ([((None, 3, 4), F)], {"axes": (2,)}),
    "softmax": ([((None, 5), F)], {"axis": -1}),
    "batchnorm": ([((None, 4), F)] + [((4,), F)] * 4, {"axis": -1, "epsilon": 1e-3}),
    "dropout": ([((None, 6), F), ((2,), "uint32")], {"rate": 0.5, "salt": 7}),
    "fused": ([((None, 4), F), ((4, 3), F), ((3,), F)], {"program": _STEP}),
    "minimum": ([((None, 3), F), ((3,), F)], {}),
    "pow": ([((None, 3), F), ((3,), F)], {}),
    "compare": ([((None, 3), F), ((3,), F)], {"predicate": "ge"}),
    "abs": ([((None, 3), F)], {}),
    "broadcast_like": ([((1, 3), F), ((None, 3), F)], {}),
    "gelu_grad": ([((None, 3), F)], {"approximate": False}),
    "slice": ([((None, 5), F)], {"axis": 1, "start": 1, "stop": 4}),
    "log_softmax": ([((None, 5), F)], {"axis": -1}),
    "argmax": ([((None, 5), F)], {"axis": -1}),
    "one_hot": ([((None,), "int32")], {"depth": 4}),
    "stop_gradient": ([((None, 3), F)], {}),
    "conv2d_input_grad": ([((None, 4, 3, 4), F), ((3, 3, 3, 4), F)],
                          {"input_hw": (7, 6), "strides": (2, 2), "padding": "same",
                           "dilation": (1, 1)}),
    "conv2d_filter_grad": ([((None, 7, 6, 3), F), ((None, 4, 3, 4), F)],
                           {"kernel_hw": (3, 3), "strides": (2, 2), "padding": "same",
                            "dilation": (1, 1)}),
    "max_pool2d_grad": ([((None, 5, 5, 2), F), ((None, 3, 3, 2), F)],
                        {"pool_size": (2, 2), "strides": (2, 2), "padding": "same"}),
    "pad": ([((None, 5, 3), F)], {"axis": 1, "before": 2, "after": 1}),
    "gather": ([((10, 4), F), ((None, 5), "int32")], {}),
    "scatter_add": ([((None, 5), "int32"), ((None, 5, 4), F)], {"rows": 10}),
    "avg_pool2d_grad": ([((None, 3, 3, 2), F)],
                        {"input_hw": (5, 5), "pool_size": (3, 3), "strides": (1, 1),
                         "padding": "valid"}),
    # recurrent ops: x (batch, time, features), kernel, recurrent kernel, bias, initial states
    "simple_rnn": ([((None, 3, 2), F), ((2, 2), F), ((2, 2), F), ((2,), F), ((None, 2), F)],
                   {"go_backwards": True}),
    "lstm": ([((None, 3, 2), F), ((2, 8), F), ((2, 8), F), ((8,), F), ((None, 2), F),
              ((None, 2), F)], {}),
    "gru": ([((None, 3, 2), F), ((2, 6), F), ((2, 6), F), ((2, 6), F), ((None, 2), F)], {}),
    "simple_rnn_bptt": ([((None, 3, 2), F), ((2, 2), F), ((None, 3, 2), F), ((None, 2), F),
                         ((None, 3), F)], {"masked": True}),
    "lstm_bptt": ([((None, 3, 8), F), ((None, 2), F), ((2, 8), F), ((None, 3, 2), F), ((None, 2), F),
                   ((None, 2), F)], {}),
    "gru_bptt": ([((None, 3, 6), F), ((None, 3, 6), F), ((None, 3, 2), F), ((2, 6), F),
                  ((None, 3, 2), F), ((None, 2), F)], {"reset_after": False}),
    "reverse": ([((None, 3, 2), F)], {"axis": 1}),
    "outer_sum": ([((None, 3, 2), F), ((None, 3, 4), F)], {}),
}


def test_every_registered_op_has_a_sample():
    missing = sorted(set(all_ops()) - set(SAMPLES))
    assert not missing, f"add a sample for: {missing}"


def _inputs(types, batch, rng):
    arrays = []
    for shape, dtype in types:
        concrete = tuple(batch if d is None else d for d in shape)
        if dtype == "uint32":
            arrays.append(np.array([3, 9], np.uint32))
        elif dtype == "int32":
            arrays.append(rng.integers(0, 4, concrete).astype(np.int32))
        else:
            arrays.append(rng.uniform(0.5, 2.0, concrete).astype(dtype))
    return arrays


@pytest.mark.parametrize("op", sorted(SAMPLES))
@pytest.mark.parametrize("batch", [1, 3])
def test_infer_agrees_with_ref(op, batch):
    types, attrs = SAMPLES[op]
    g = Graph(name=op)
    values = [g.add_input(TensorType(shape, dtype), f"x{i}") for i, (shape, dtype) in enumerate(types)]
    g.outputs = g.add_node(op, values, attrs)
    g.verify()
    rng = np.random.default_rng(0)
    outs = run(g, _inputs(types, batch, rng))
    for value, arr in zip(g.outputs, outs, strict=True):
        assert arr.shape == value.type.with_batch(batch).shape
        assert arr.dtype.name == value.dtype


def test_float64_runs_where_the_ops_allow_it():
    g = Graph(name="f64")
    x = g.add_input(TensorType((None, 3), "float64"), "x")
    w = g.add_param(TensorType((3, 2), "float64"), "w")
    g.outputs = g.add_node("softmax", [g.add_node("matmul", [x, w])[0]])
    out = run(g, [np.ones((2, 3))], [np.ones((3, 2))])[0]
    assert out.dtype == np.float64 and np.allclose(out, 0.5)


def test_attr_validation_names_op_and_attr():
    conv = get_op("conv2d")
    with pytest.raises(ValueError, match="conv2d.*padding"):
        conv.check_attrs({"padding": "full"})
    with pytest.raises(ValueError, match="conv2d.*unknown attribute"):
        conv.check_attrs({"bogus": 1})
    with pytest.raises(TypeError, match="conv2d.*strides"):
        conv.check_attrs({"strides": "2"})
    with pytest.raises(ValueError, match="dropout.*rate"):
        get_op("dropout").check_attrs({"rate": 1.5})


def test_infer_errors_name_op_and_shapes():
    g = Graph(name="bad")
    a = g.add_input(TensorType((None, 3)), "a")
    w = g.add_param(TensorType((4, 2)), "w")
    with pytest.raises(ValueError, match=r"matmul.*\(None, 3\).*\(4, 2\)"):
        g.add_node("matmul", [a, w])
    x = g.add_input(TensorType((None, 5, 5, 3)), "x")
    k = g.add_param(TensorType((3, 3, 2, 4)), "k")
    with pytest.raises(ValueError, match="conv2d.*3 channels"):
        g.add_node("conv2d", [x, k], {"strides": (1, 1), "padding": "valid", "dilation": (1, 1)})
    b = g.add_input(TensorType((None, 4)), "b")
    with pytest.raises(ValueError):
        g.add_node("concat", [a, g.add_input(TensorType((2, 3)), "c")], {"axis": -1})
    with pytest.raises(ValueError):
        g.add_node("add", [a, b])


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown IR op 'nope'"):
        get_op("nope")
