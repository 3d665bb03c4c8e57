"""The IR's core: TensorType, the printer, the verifier, attribute and type checks, the interpreter's
input checks, topo_sort and users()."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kcompile.ir.core import Graph, Node, TensorType, Value, canonical_dtype, format_shape, topo_sort
from kcompile.ir.interpret import run
from kcompile.ir.opdef import all_ops, get_op


def _mlp():
    """x -> matmul(w) -> bias_add(b) -> relu -> softmax; returns the graph and its values."""
    g = Graph(name="mlp")
    x = g.add_input(TensorType((None, 4)), "x")
    w = g.add_param(TensorType((4, 3)), "w")
    b = g.add_param(TensorType((3,)), "b")
    h = g.add_node("matmul", [x, w], label="dense")[0]
    h2 = g.add_node("bias_add", [h, b], label="dense")[0]
    r = g.add_node("relu", [h2])[0]
    g.outputs = g.add_node("softmax", [r], {"axis": -1})
    return g, dict(x=x, w=w, b=b, h=h, h2=h2, r=r)


def _params():
    return [np.ones((4, 3), np.float32), np.zeros(3, np.float32)]


# --- TensorType --------------------------------------------------------------------------------
def test_tensor_type_string():
    assert str(TensorType((None, 28, 28, 1))) == "float32[Nx28x28x1]"
    assert str(TensorType((3,), "int32")) == "int32[3]"
    assert str(TensorType((), "float64")) == "float64[]"
    assert str(TensorType((2, None), np.uint32)) == "uint32[2xN]"


def test_tensor_type_canonicalizes_and_compares():
    t = TensorType([None, np.int64(3)], np.float32)
    assert t.shape == (None, 3) and type(t.shape[1]) is int and t.dtype == "float32"
    assert t == TensorType((None, 3), "float32") and hash(t) == hash(TensorType((None, 3)))
    assert t != TensorType((None, 3), "float64") and t != TensorType((1, 3))
    assert t.rank == 2 and TensorType(()).rank == 0
    assert canonical_dtype(np.dtype("bool")) == "bool" and canonical_dtype("f8") == "float64"
    with pytest.raises(TypeError, match="unsupported dtype 'complex64'"):
        TensorType((1,), "complex64")
    with pytest.raises(TypeError, match="unsupported dtype"):
        TensorType((1,), "not-a-dtype")
    with pytest.raises(ValueError, match=r"negative dimension in shape \(2, -1\)"):
        TensorType((2, -1))


def test_tensor_type_matching():
    t = TensorType((None, 28, 28, 1))
    assert t.matches((7, 28, 28, 1)) and t.matches((1, 28, 28, 1), np.float32)
    assert t.matches((0, 28, 28, 1))  # an empty batch is still a batch
    assert not t.matches((7, 28, 28, 2))
    assert not t.matches((7, 28, 28))  # rank
    assert not t.matches((7, 28, 28, 1, 1))
    assert not t.matches((7, 28, 28, 1), np.float64)
    assert not t.matches((7, 28, 28, 1), "int32")
    fixed = TensorType((2, 3), "int32")
    assert fixed.matches((2, 3), np.int32) and not fixed.matches((3, 2), np.int32)
    assert TensorType(()).matches(())


def test_with_batch_substitutes_only_the_symbolic_dim():
    t = TensorType((None, 3, None), "float64")
    assert t.with_batch(5) == TensorType((5, 3, 5), "float64")
    assert TensorType((2, 3)).with_batch(7) == TensorType((2, 3))


def test_format_shape_is_keras_style():
    assert format_shape((None, 3)) == "(None, 3)"
    assert format_shape((4,)) == "(4,)"
    assert format_shape(()) == "()"


# --- printer -----------------------------------------------------------------------------------
def test_printer_shows_one_op_per_line():
    g, _ = _mlp()
    text = str(g)
    assert text == g.__str__() and isinstance(text, str)
    lines = text.splitlines()
    assert lines[0] == "graph mlp("
    assert "    %x: float32[Nx4]," in lines
    assert "    param %w: float32[4x3]," in lines
    assert "    param %b: float32[3]," in lines
    op_lines = [line for line in lines if re.match(r"^  %\d+: .* = \w+", line)]
    assert [re.search(r"= (\w+)", line).group(1) for line in op_lines] == \
        ["matmul", "bias_add", "relu", "softmax"]
    assert op_lines[0] == "  %0: float32[Nx3] = matmul(%x, %w)  # dense"
    assert op_lines[1] == "  %1: float32[Nx3] = bias_add(%0, %b)  # dense"
    assert op_lines[2] == "  %2: float32[Nx3] = relu(%1)"
    assert lines[-2] == "  return %3" and lines[-1] == "}"
    assert len(lines) == 1 + 3 + 1 + 4 + 2


def test_printer_shows_non_default_attrs_and_small_arrays():
    g = Graph(name="conv")
    x = g.add_input(TensorType((None, 8, 8, 3)), "x")
    k = g.add_param(TensorType((3, 3, 3, 2)), "k")
    y = g.add_node("conv2d", [x, k], {"strides": (2, 2), "padding": "same"})[0]
    c = g.add_node("constant", [], {"value": np.array([1.5, 2.0], np.float32)})[0]
    big = g.add_node("constant", [], {"value": np.zeros((3, 5), np.float32)})[0]
    g.outputs = [g.add_node("add", [y, c])[0], big]
    text = str(g)
    conv_line = next(line for line in text.splitlines() if "conv2d" in line)
    assert "strides=(2, 2)" in conv_line and "padding='same'" in conv_line
    assert "float32[Nx4x4x2]" in conv_line and "(%x, %k)" in conv_line
    assert "value=[1.5,2. ]" in text or "value=[1.5,2.]" in text
    assert "value=<float32[3, 5]>" in text
    assert "  return %3, %2" in text


def test_printer_names_unnamed_values():
    g = Graph()
    a = g.add_input(TensorType((2,)), None)
    g.outputs = g.add_node("neg", [a])
    assert "%v0: float32[2]" in str(g) and "neg(%v0)" in str(g)


# --- verifier ----------------------------------------------------------------------------------
def test_verify_accepts_well_formed_graphs():
    g, _ = _mlp()
    g.verify()
    empty = Graph()
    empty.outputs = [empty.add_input(TensorType((1,)), "x")]  # an input returned as is
    empty.verify()


def test_verify_catches_use_before_definition():
    g, _ = _mlp()
    g.nodes[1], g.nodes[2] = g.nodes[2], g.nodes[1]  # relu now reads bias_add's output too early
    with pytest.raises(ValueError, match=r"graph mlp: relu uses Value\(.*\) before it is defined"):
        g.verify()


def test_verify_catches_a_value_from_another_graph():
    g, _ = _mlp()
    other = Graph(name="other")
    stranger = other.add_input(TensorType((None, 3)), "stranger")
    g.outputs = g.add_node("add", [g.outputs[0], stranger])
    with pytest.raises(ValueError, match="add uses .*stranger.* before it is defined"):
        g.verify()


def test_verify_catches_an_undeclared_input():
    g = Graph(name="g")
    x = Value(TensorType((None, 3)), "x")  # never added with add_input
    g.outputs = g.add_node("relu", [x])
    with pytest.raises(ValueError, match="relu uses .*x.* before it is defined"):
        g.verify()


def test_verify_catches_duplicate_outputs():
    g, _ = _mlp()
    g.nodes.append(g.nodes[2])  # the same node (so the same output values) twice
    with pytest.raises(ValueError, match="is defined twice"):
        g.verify()
    g, v = _mlp()
    g.params.append(v["w"])
    with pytest.raises(ValueError, match="declared twice"):
        g.verify()
    g, v = _mlp()
    g.inputs.append(v["w"])  # an input that is also a param
    with pytest.raises(ValueError, match="declared twice"):
        g.verify()


def test_verify_catches_wrong_output_types():
    g, v = _mlp()
    v["h"].type = TensorType((None, 5))
    with pytest.raises(ValueError, match=r"matmul declares output types \['float32\[Nx5\]'\] but "
                                         r"infer gives \['float32\[Nx3\]'\]"):
        g.verify()
    g, v = _mlp()
    v["r"].type = TensorType((None, 3), "float64")
    with pytest.raises(ValueError, match="relu declares output types"):
        g.verify()
    g, v = _mlp()
    g.nodes[3].attrs["axis"] = 5  # now infer itself fails
    with pytest.raises(ValueError, match="softmax: axis 5 is out of range for rank 2"):
        g.verify()


def test_verify_catches_outputs_not_in_the_graph_and_broken_producers():
    g, _ = _mlp()
    g.outputs = [Node("relu", [], {}, [TensorType((1,))]).outputs[0]]
    with pytest.raises(ValueError, match="output .* is not defined in the graph"):
        g.verify()
    g, v = _mlp()
    v["r"].producer = g.nodes[0]
    with pytest.raises(ValueError, match="does not point at its producer"):
        g.verify()


# --- attribute validation ----------------------------------------------------------------------
@pytest.mark.parametrize("op,attrs,exc,pattern", [
    ("conv2d", {"bogus": 1}, ValueError, r"op 'conv2d': unknown attribute\(s\) \['bogus'\]"),
    ("softmax", {"axes": (1,)}, ValueError, r"op 'softmax': unknown attribute\(s\) \['axes'\]"),
    ("conv2d", {"strides": "2"}, TypeError, r"op 'conv2d': attribute 'strides' must be tuple, got '2'"),
    ("conv2d", {"padding": 1}, TypeError, r"op 'conv2d': attribute 'padding' must be str"),
    ("matmul", {"transpose_a": "yes"}, TypeError, "op 'matmul': attribute 'transpose_a' must be bool"),
    ("softmax", {"axis": 1.0}, TypeError, "op 'softmax': attribute 'axis' must be int"),
    ("batchnorm", {"epsilon": 1}, TypeError, "op 'batchnorm': attribute 'epsilon' must be float"),
    ("conv2d", {"padding": "full"}, ValueError, r"op 'conv2d': invalid attribute padding='full' "
                                                r"\('valid' or 'same'\)"),
    ("max_pool2d", {"pool_size": (2, 2), "strides": (2, 2), "padding": "causal"}, ValueError,
     "op 'max_pool2d': invalid attribute padding='causal'"),
    ("conv2d", {"strides": (-1, 1)}, ValueError, r"op 'conv2d': invalid attribute strides=\(-1, 1\)"),
    ("conv2d", {"strides": (0, 1)}, ValueError, r"op 'conv2d': invalid attribute strides=\(0, 1\)"),
    ("conv2d", {"dilation": (1, 1, 1)}, ValueError, "op 'conv2d': invalid attribute dilation="),
    ("max_pool2d", {"pool_size": (2, -2), "strides": (1, 1)}, ValueError,
     "op 'max_pool2d': invalid attribute pool_size="),
    ("avg_pool2d", {"pool_size": (2, 2), "strides": (2.0, 2)}, ValueError,
     "op 'avg_pool2d': invalid attribute strides="),
    ("dropout", {"rate": 1.0}, ValueError, r"op 'dropout': invalid attribute rate=1.0 \(0 <= rate < 1\)"),
    ("dropout", {"rate": -0.1}, ValueError, "op 'dropout': invalid attribute rate=-0.1"),
    ("dropout", {"rate": 0.5, "salt": -1}, ValueError, "op 'dropout': invalid attribute salt=-1"),
    ("batchnorm", {"epsilon": -1e-3}, ValueError, "op 'batchnorm': invalid attribute epsilon="),
    ("one_hot", {"depth": 0}, ValueError, "op 'one_hot': invalid attribute depth=0"),
    ("compare", {"predicate": "gte"}, ValueError, "op 'compare': invalid attribute predicate='gte'"),
    ("reshape", {"shape": (None, -1)}, ValueError, "op 'reshape': invalid attribute shape="),
    ("reshape", {"shape": (-1, 3)}, ValueError, "op 'reshape': invalid attribute shape="),
    ("fused", {"program": ()}, ValueError, "op 'fused': invalid attribute program="),
    ("max_pool2d", {"strides": (1, 1)}, ValueError,
     "op 'max_pool2d': missing required attribute 'pool_size'"),
    ("slice", {"axis": 0, "start": 0}, ValueError, "op 'slice': missing required attribute 'stop'"),
])
def test_bad_attrs_name_the_op_and_the_attr(op, attrs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        get_op(op).check_attrs(attrs)


@pytest.mark.parametrize("op,attrs,pattern", [
    ("softmax", {"axis": True}, "op 'softmax': attribute 'axis' must be int, got True"),
    ("slice", {"axis": 1, "start": False, "stop": 2}, "op 'slice': attribute 'start' must be int"),
    ("batchnorm", {"epsilon": True}, "op 'batchnorm': attribute 'epsilon' must be float"),
    ("conv2d", {"strides": (True, True)}, r"op 'conv2d': invalid attribute strides=\(True, True\)"),
])
def test_bools_are_not_numbers_for_attrs(op, attrs, pattern):
    """`True` is an int to Python; an int attribute given a bool is a mistake, not axis 1."""
    with pytest.raises((TypeError, ValueError), match=pattern):
        get_op(op).check_attrs(attrs)
    assert get_op("matmul").check_attrs({"transpose_a": True})["transpose_a"] is True


@pytest.mark.parametrize("op,attrs", [("cast", {"dtype": "complex64"}), ("cast", {"dtype": "float16"}),
                                      ("one_hot", {"depth": 3, "dtype": "str"})])
def test_dtype_attrs_are_checked_with_the_op_and_attr_named(op, attrs):
    with pytest.raises(ValueError, match=f"op '{op}': invalid attribute dtype="):
        get_op(op).check_attrs(attrs)
    g = Graph()
    x = g.add_input(TensorType((None, 3), "int32"), "x")
    with pytest.raises(ValueError, match=f"op '{op}': invalid attribute dtype="):
        g.add_node(op, [x], attrs)
    assert g.add_node(op, [x], {**attrs, "dtype": "float64"})[0].dtype == "float64"


def test_add_node_validates_attrs_and_leaves_the_graph_unchanged():
    g = Graph()
    x = g.add_input(TensorType((None, 8, 8, 3)), "x")
    k = g.add_param(TensorType((3, 3, 3, 2)), "k")
    with pytest.raises(ValueError, match="op 'conv2d': invalid attribute padding='full'"):
        g.add_node("conv2d", [x, k], {"padding": "full"})
    with pytest.raises(ValueError, match="op 'conv2d': unknown attribute"):
        g.add_node("conv2d", [x, k], {"pading": "same"})
    assert g.nodes == []


def test_lists_are_accepted_as_tuples():
    attrs = get_op("conv2d").check_attrs({"strides": [2, 2]})
    assert attrs["strides"] == (2, 2) and isinstance(attrs["strides"], tuple)


def test_every_attr_default_passes_its_own_check():
    for name, op in all_ops().items():
        for key, spec in op.attrs.items():
            default = spec.default
            if default is None or spec.check is None or not isinstance(default, spec.kind):
                continue
            assert spec.check(default), f"{name}.{key} default {default!r} fails its check"


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown IR op 'conv3d'"):
        get_op("conv3d")
    g = Graph()
    x = g.add_input(TensorType((1,)), "x")
    with pytest.raises(ValueError, match="unknown IR op 'frobnicate'"):
        g.add_node("frobnicate", [x])


# --- infer errors ------------------------------------------------------------------------------
def _g():
    return Graph(name="bad")


def test_matmul_inner_dim_mismatch_names_op_and_shapes():
    g = _g()
    a = g.add_input(TensorType((None, 3)), "a")
    w = g.add_param(TensorType((4, 2)), "w")
    with pytest.raises(ValueError, match=r"^matmul: .*\(None, 3\) @ \(4, 2\)"):
        g.add_node("matmul", [a, w])
    with pytest.raises(ValueError, match=r"^matmul: .*\(None, 3\) @ \(4, 2\)\^T"):
        g.add_node("matmul", [a, w], {"transpose_b": True})
    v = g.add_input(TensorType((None,)), "v")
    with pytest.raises(ValueError, match=r"^matmul: both operands need rank >= 2, got \(None,\)"):
        g.add_node("matmul", [v, w])
    assert g.nodes == []


def test_conv_channel_mismatch_names_op_and_shapes():
    g = _g()
    x = g.add_input(TensorType((None, 5, 5, 3)), "x")
    k = g.add_param(TensorType((3, 3, 2, 4)), "k")
    with pytest.raises(ValueError, match=r"^conv2d: .*3 channels.*\(3, 3, 2, 4\) expects 2"):
        g.add_node("conv2d", [x, k])
    small = g.add_param(TensorType((7, 7, 3, 1)), "small")
    with pytest.raises(ValueError, match=r"^conv2d: kernel 7x7 .*does not fit input \(None, 5, 5, 3\)"):
        g.add_node("conv2d", [x, small])
    flat = g.add_input(TensorType((None, 5, 3)), "flat")
    with pytest.raises(ValueError, match=r"^conv2d: expected input of rank 4, got shape \(None, 5, 3\)"):
        g.add_node("conv2d", [flat, k])


def test_concat_mismatch_names_op_and_shapes():
    g = _g()
    a = g.add_input(TensorType((None, 3, 2)), "a")
    b = g.add_input(TensorType((None, 4, 2)), "b")
    with pytest.raises(ValueError, match=r"^concat: shapes must match except on the concat axis "
                                         r"\(2\), got \(None, 3, 2\), \(None, 4, 2\)"):
        g.add_node("concat", [a, b], {"axis": 2})
    c = g.add_input(TensorType((None, 3)), "c")
    with pytest.raises(ValueError, match=r"^concat: inputs must share one rank, got shapes "
                                         r"\(None, 3, 2\), \(None, 3\)"):
        g.add_node("concat", [a, c], {"axis": -1})
    with pytest.raises(ValueError, match="^concat: cannot concatenate along the batch axis"):
        g.add_node("concat", [a, a], {"axis": 0})
    with pytest.raises(ValueError, match="^concat: axis 3 is out of range for rank 3"):
        g.add_node("concat", [a, a], {"axis": 3})
    assert g.add_node("concat", [a, b], {"axis": 1})[0].shape == (None, 7, 2)


def test_other_infer_errors():
    g = _g()
    a = g.add_input(TensorType((None, 3)), "a")
    b = g.add_input(TensorType((None, 4)), "b")
    with pytest.raises(ValueError, match=r"^add: shapes \(None, 3\) and \(None, 4\) cannot be broadcast"):
        g.add_node("add", [a, b])
    fixed = g.add_input(TensorType((5, 3)), "fixed")
    with pytest.raises(ValueError, match=r"^mul: shapes \(None, 3\) and \(5, 3\) cannot be broadcast"):
        g.add_node("mul", [a, fixed])  # the batch dim only meets itself or 1
    i = g.add_input(TensorType((None, 3), "int32"), "i")
    with pytest.raises(TypeError, match=r"^add: inputs must share one dtype, got \['float32', 'int32'\]"):
        g.add_node("add", [a, i])
    with pytest.raises(TypeError, match="^relu: expected a float tensor, got int32"):
        g.add_node("relu", [i])
    with pytest.raises(ValueError, match=r"^op 'relu' takes 1 input\(s\), got 2"):
        g.add_node("relu", [a, a])
    with pytest.raises(ValueError, match=r"^reshape: cannot reshape \(None, 3\) to \(None, 4\): sizes"):
        g.add_node("reshape", [a], {"shape": (None, 4)})
    with pytest.raises(ValueError, match=r"^reshape: .*the batch dim must be kept"):
        g.add_node("reshape", [a], {"shape": (3,)})
    with pytest.raises(ValueError, match=r"^transpose: perm \(0, 0\) is not a permutation of rank 2"):
        g.add_node("transpose", [a], {"perm": (0, 0)})
    with pytest.raises(ValueError, match=r"^bias_add: bias of length 4 does not match"):
        g.add_node("bias_add", [a, g.add_param(TensorType((4,)), "bias")])
    with pytest.raises(ValueError, match=r"^sum: repeated axis in \(1, -1\)"):
        g.add_node("sum", [a], {"axes": (1, -1)})
    key = g.add_input(TensorType((3,), "uint32"), "key")
    with pytest.raises(ValueError, match=r"random key must be uint32\[2\], got uint32\(3,\)"):
        g.add_node("dropout", [a, key], {"rate": 0.5})
    stats = [g.add_param(TensorType((3,)), f"s{j}") for j in range(3)]
    with pytest.raises(ValueError, match=r"^batchnorm: moving_variance has shape \(4,\), expected \(3,\)"):
        g.add_node("batchnorm", [a, *stats, g.add_param(TensorType((4,)), "var")])
    img = g.add_input(TensorType((None, 4, 4, 2)), "img")
    with pytest.raises(ValueError, match=r"^max_pool2d: pool \(5, 5\) does not fit input"):
        g.add_node("max_pool2d", [img], {"pool_size": (5, 5), "strides": (1, 1)})
    assert g.nodes == []


# --- interpreter input checks ------------------------------------------------------------------
def test_run_rejects_missing_and_extra_inputs():
    g, _ = _mlp()
    with pytest.raises(ValueError, match=r"expected 1 input\(s\), got 0"):
        run(g, [], _params())
    with pytest.raises(ValueError, match=r"expected 1 input\(s\), got 2"):
        run(g, [np.ones((2, 4), np.float32)] * 2, _params())
    with pytest.raises(ValueError, match=r"expected 2 param\(s\), got 1"):
        run(g, [np.ones((2, 4), np.float32)], _params()[:1])


def test_run_rejects_wrong_shapes():
    g, _ = _mlp()
    with pytest.raises(ValueError, match=r"input 'x': expected float32 of shape \(None, 4\), "
                                         r"got float32 of shape \(2, 5\)"):
        run(g, [np.ones((2, 5), np.float32)], _params())
    with pytest.raises(ValueError, match=r"input 'x': .*got float32 of shape \(4,\)"):
        run(g, [np.ones(4, np.float32)], _params())
    with pytest.raises(ValueError, match=r"param 'b': expected float32 of shape \(3,\), .*\(4,\)"):
        run(g, [np.ones((2, 4), np.float32)], [np.ones((4, 3), np.float32), np.ones(4, np.float32)])


def test_run_rejects_wrong_dtypes_and_non_arrays():
    g, _ = _mlp()
    with pytest.raises((ValueError, TypeError), match=r"input 'x': expected float32 .*got float64"):
        run(g, [np.ones((2, 4), np.float64)], _params())
    with pytest.raises((ValueError, TypeError), match="param 'w'.*got int32"):
        run(g, [np.ones((2, 4), np.float32)], [np.ones((4, 3), np.int32), _params()[1]])
    with pytest.raises(TypeError, match="input 'x': expected a NumPy array, got list"):
        run(g, [[[1.0, 2.0, 3.0, 4.0]]], _params())


def test_run_rejects_inconsistent_batch_sizes():
    g = Graph()
    a = g.add_input(TensorType((None, 2)), "a")
    b = g.add_input(TensorType((None, 2)), "b")
    g.outputs = g.add_node("add", [a, b])
    with pytest.raises(ValueError, match="input 'b': batch size 3 differs from 2"):
        run(g, [np.ones((2, 2), np.float32), np.ones((3, 2), np.float32)])
    np.testing.assert_array_equal(run(g, [np.ones((3, 2), np.float32)] * 2)[0], np.full((3, 2), 2.0))


def test_run_computes_and_returns_intermediates_and_inputs():
    g, v = _mlp()
    g.outputs = [g.outputs[0], v["h"], v["x"], v["h"]]  # an intermediate used later, an input
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out, h, x_out, h_again = run(g, [x], _params())
    np.testing.assert_array_equal(h, np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1))
    np.testing.assert_array_equal(x_out, x)
    assert h_again is h
    np.testing.assert_allclose(out, np.full((2, 3), 1 / 3), rtol=1e-6)


def test_run_handles_a_value_used_twice_by_one_node():
    g = Graph()
    x = g.add_input(TensorType((None, 3)), "x")
    e = g.add_node("exp", [x])[0]
    g.outputs = g.add_node("mul", [e, e])
    out = run(g, [np.zeros((2, 3), np.float32)])[0]
    np.testing.assert_array_equal(out, np.ones((2, 3)))


# --- topo_sort and users -----------------------------------------------------------------------
def _diamond():
    g = Graph(name="diamond")
    x = g.add_input(TensorType((None, 3)), "x")
    a = g.add_node("relu", [x])[0]
    b = g.add_node("neg", [a])[0]
    c = g.add_node("exp", [a])[0]
    unused = g.add_node("tanh", [x])[0]
    d = g.add_node("add", [b, c])[0]
    g.outputs = [d]
    return g, x, a, b, c, d, unused


def test_topo_sort_orders_dependencies_and_drops_dead_nodes():
    g, x, a, b, c, d, unused = _diamond()
    order = topo_sort([d])
    assert [n.op for n in order] == ["relu", "neg", "exp", "add"]
    assert unused.producer not in order
    pos = {id(n): i for i, n in enumerate(order)}
    for node in order:
        for v in node.inputs:
            if v.producer is not None:
                assert pos[id(v.producer)] < pos[id(node)]
    assert topo_sort([x]) == []  # an input has no producer
    both = topo_sort([unused, d])
    assert len(both) == 5 and len({id(n) for n in both}) == 5 and both[0].op == "tanh"


def test_topo_sort_visits_shared_nodes_once_and_handles_deep_chains():
    g = Graph()
    x = g.add_input(TensorType((2,)), "x")
    v = x
    for _ in range(5000):  # deeper than Python's recursion limit
        v = g.add_node("neg", [v])[0]
    order = topo_sort([v, v])
    assert order == g.nodes


def test_topo_sort_reorders_a_shuffled_graph():
    g, *_ = _diamond()
    live = topo_sort(g.outputs)
    g.nodes = list(reversed(g.nodes))
    with pytest.raises(ValueError):
        g.verify()
    g.nodes = topo_sort(g.outputs)
    g.verify()
    assert [n.op for n in g.nodes] == [n.op for n in live]


def test_users():
    g, x, a, b, c, d, unused = _diamond()
    uses = g.users()
    assert [n.op for n in uses[x]] == ["relu", "tanh"]
    assert [n.op for n in uses[a]] == ["neg", "exp"]
    assert uses[b] == uses[c] == [d.producer]
    assert d not in uses and unused not in uses  # outputs and dead values have no users
    sq = Graph()
    y = sq.add_input(TensorType((1,)), "y")
    sq.outputs = sq.add_node("mul", [y, y])
    assert sq.users()[y] == [sq.nodes[0], sq.nodes[0]]  # one entry per use
