"""The ONNX rules of the training-only ops (conv/pool gradients, gelu_grad, dropout) over a sweep of
attributes: strides, dilations, paddings, input sizes that 'valid' leaves partly uncovered, odd
kernels, overlapping pooling windows with tied maxima, dropout rates, salts and keys.

Each graph is exported once (dynamic batch) and run by onnxruntime at batch sizes 1 and 5, with its
parameters as initializers and as graph inputs (the training-step form), against the ops' NumPy
`ref` through kcompile's interpreter; dropout must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_testing import session

from kcompile.codegen.onnx import DEFAULT_OPSET, MIN_OPSET, graph_to_onnx
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.ops.conv import output_size

BATCHES = (1, 5)
N = None


def _check(g: Graph, draw, params: list[np.ndarray], opset: int = DEFAULT_OPSET,
           exact: bool = False, rtol: float = 1e-5, atol: float = 1e-5) -> list:
    """Export `g` with `params` as initializers and as graph inputs; onnxruntime == interpreter at
    every batch size (`draw(batch)` gives the graph inputs). Returns the two ModelProtos."""
    protos = [graph_to_onnx(g, weights=params, opset_version=opset),
              graph_to_onnx(g, opset_version=opset)]
    for proto, with_params in zip(protos, (False, True), strict=True):
        sess = session(proto.SerializeToString())
        names = [i.name for i in proto.graph.input]
        for batch in BATCHES:
            inputs = draw(batch)
            (want,) = run(g, inputs, params)
            feed = dict(zip(names, [*inputs, *params] if with_params else inputs, strict=True))
            got = sess.run(None, feed)[0]
            what = f"batch {batch}, params as {'inputs' if with_params else 'initializers'}"
            assert got.shape == want.shape and got.dtype == want.dtype, what
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=what)
            else:
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)
    return protos


def _normal(shape, seed: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _attr(proto, op_type: str, name: str):
    for node in proto.graph.node:
        if node.op_type == op_type:
            for a in node.attribute:
                if a.name == name:
                    return helper.get_attribute_value(a)
    return None


# -- conv2d gradients ---------------------------------------------------------------------------------
CONV_SWEEP = [(hw, k, s, d, p) for hw in ((10, 9),) for k in ((1, 1), (3, 3), (5, 2))
              for s in ((1, 1), (2, 2)) for d in ((1, 1), (2, 2)) for p in ("valid", "same")] + \
    [((11, 8), (2, 3), (3, 2), (1, 1), "valid"), ((11, 8), (2, 3), (3, 2), (1, 1), "same"),
     ((7, 7), (3, 3), (3, 3), (1, 2), "valid"), ((6, 5), (1, 1), (3, 2), (1, 1), "same")]
CONV_IDS = [f"{hw[0]}x{hw[1]}-k{k[0]}x{k[1]}-s{s[0]}{s[1]}-d{d[0]}{d[1]}-{p}"
            for hw, k, s, d, p in CONV_SWEEP]
CI, CO = 3, 4
C = 3  # pooling channels


def _conv_out_hw(hw, k, s, d, p):
    return tuple(output_size(hw[i], k[i], s[i], d[i], p) for i in range(2))


@pytest.mark.parametrize(("hw", "k", "s", "d", "p"), CONV_SWEEP, ids=CONV_IDS)
def test_conv2d_input_grad(hw, k, s, d, p):
    out_hw = _conv_out_hw(hw, k, s, d, p)
    g = Graph()
    dy = g.add_input(TensorType((N, *out_hw, CO)), "dy")
    w = g.add_param(TensorType((*k, CI, CO)), "w")
    g.outputs = g.add_node("conv2d_input_grad", [dy, w], {"input_hw": hw, "strides": s,
                                                          "padding": p, "dilation": d})
    _check(g, lambda b: [_normal((b, *out_hw, CO), b)], [_normal((*k, CI, CO), 99)])


@pytest.mark.parametrize(("hw", "k", "s", "d", "p"), CONV_SWEEP, ids=CONV_IDS)
def test_conv2d_filter_grad(hw, k, s, d, p):
    out_hw = _conv_out_hw(hw, k, s, d, p)
    g = Graph()
    x = g.add_input(TensorType((N, *hw, CI)), "x")
    dy = g.add_input(TensorType((N, *out_hw, CO)), "dy")
    g.outputs = g.add_node("conv2d_filter_grad", [x, dy], {"kernel_hw": k, "strides": s,
                                                           "padding": p, "dilation": d})
    _check(g, lambda b: [_normal((b, *hw, CI), b), _normal((b, *out_hw, CO), b + 10)], [])


def test_uncovered_rows_need_output_padding():
    """'valid' with a stride that leaves input rows uncovered: ConvTranspose's output_padding gives
    them back (zero gradient), for conv2d_input_grad and avg_pool2d_grad alike."""
    hw, k, s = (10, 8), (3, 3), (2, 2)  # row 9 and col 7 are never read
    out_hw = _conv_out_hw(hw, k, s, (1, 1), "valid")
    g = Graph()
    dy = g.add_input(TensorType((N, *out_hw, CO)), "dy")
    w = g.add_param(TensorType((*k, CI, CO)), "w")
    g.outputs = g.add_node("conv2d_input_grad", [dy, w], {"input_hw": hw, "strides": s,
                                                          "padding": "valid", "dilation": (1, 1)})
    assert _attr(graph_to_onnx(g), "ConvTranspose", "output_padding") == [1, 1]
    g = Graph()
    dy = g.add_input(TensorType((N, *out_hw, C)), "dy")
    g.outputs = g.add_node("avg_pool2d_grad", [dy], {"input_hw": hw, "pool_size": k, "strides": s,
                                                     "padding": "valid"})
    assert _attr(graph_to_onnx(g), "ConvTranspose", "output_padding") == [1, 1]


def test_conv_grads_on_nchw_twins():
    """Inputs that come out of a conv have NCHW twins: the gradients stay right, and the input
    gradient reads dy's twin (no transpose back to NHWC but its own result's)."""
    g = Graph()
    x = g.add_input(TensorType((N, 9, 8, 2)), "x")
    k1 = g.add_param(TensorType((1, 1, 2, CI)), "k1")
    k2 = g.add_param(TensorType((3, 3, CI, CO)), "k2")
    (h,) = g.add_node("conv2d", [x, k1])
    (y,) = g.add_node("conv2d", [h, k2], {"strides": (2, 2), "padding": "same"})
    (dy,) = g.add_node("relu", [y])  # a stand-in for an upstream gradient, NCHW as well
    attrs = {"strides": (2, 2), "padding": "same", "dilation": (1, 1)}
    (gw,) = g.add_node("conv2d_filter_grad", [h, dy], {"kernel_hw": (3, 3), **attrs})
    (gx,) = g.add_node("conv2d_input_grad", [dy, k2], {"input_hw": (9, 8), **attrs})
    params = [_normal((1, 1, 2, CI), 1), _normal((3, 3, CI, CO), 2)]
    for out in (gw, gx):
        g.outputs = [out]
        proto, _ = _check(g, lambda b: [_normal((b, 9, 8, 2), b)], params, rtol=1e-4)
    perms = [tuple(helper.get_attribute_value(n.attribute[0]))
             for n in proto.graph.node if n.op_type == "Transpose"]
    assert perms == [(0, 3, 1, 2), (0, 2, 3, 1)], perms


def test_forward_and_input_grad_share_the_kernel_transpose():
    """With the kernel a graph input (a training step), its OIHW transpose is written once."""
    g = Graph()
    x = g.add_input(TensorType((N, 6, 6, CI)), "x")
    w = g.add_param(TensorType((3, 3, CI, CO)), "w")
    (y,) = g.add_node("conv2d", [x, w])
    (gx,) = g.add_node("conv2d_input_grad", [y, w], {"input_hw": (6, 6)})
    g.outputs = [gx]
    kernel_transposes = [n for n in graph_to_onnx(g).graph.node if n.op_type == "Transpose"
                         and list(n.input) == ["w"]]
    assert len(kernel_transposes) == 1


# -- pooling gradients -------------------------------------------------------------------------------
POOL_SWEEP = [(hw, ps, s, p) for hw in ((7, 6), (8, 5))
              for ps, s in (((2, 2), (2, 2)), ((3, 3), (1, 1)), ((3, 2), (2, 1)), ((3, 3), (2, 2)),
                            ((2, 3), (3, 3)), ((1, 1), (2, 2)))
              for p in ("valid", "same")]
POOL_IDS = [f"{hw[0]}x{hw[1]}-p{ps[0]}x{ps[1]}-s{s[0]}{s[1]}-{p}" for hw, ps, s, p in POOL_SWEEP]


def _pool_out_hw(hw, ps, s, p):
    return tuple(output_size(hw[i], ps[i], s[i], 1, p) for i in range(2))


def _ties(shape, seed: int) -> np.ndarray:
    """Few distinct values (many tied maxima per window), negative ones too."""
    return np.random.default_rng(seed).integers(-2, 2, shape).astype(np.float32)


@pytest.mark.parametrize("x_kind", ["normal", "ties", "zeros"])
@pytest.mark.parametrize(("hw", "ps", "s", "p"), POOL_SWEEP, ids=POOL_IDS)
def test_max_pool2d_grad(hw, ps, s, p, x_kind):
    """onnxruntime's MaxPool indices pick the first maximum in row-major order, as the ref."""
    out_hw = _pool_out_hw(hw, ps, s, p)
    g = Graph()
    x = g.add_input(TensorType((N, *hw, C)), "x")
    dy = g.add_input(TensorType((N, *out_hw, C)), "dy")
    g.outputs = g.add_node("max_pool2d_grad", [x, dy], {"pool_size": ps, "strides": s, "padding": p})
    make = {"normal": _normal, "ties": _ties,
            "zeros": lambda shape, seed: np.zeros(shape, np.float32)}[x_kind]
    _check(g, lambda b: [make((b, *hw, C), b), _normal((b, *out_hw, C), b + 10)], [])


@pytest.mark.parametrize(("hw", "ps", "s", "p"), POOL_SWEEP, ids=POOL_IDS)
def test_avg_pool2d_grad(hw, ps, s, p):
    out_hw = _pool_out_hw(hw, ps, s, p)
    g = Graph()
    dy = g.add_input(TensorType((N, *out_hw, C)), "dy")
    g.outputs = g.add_node("avg_pool2d_grad", [dy], {"input_hw": hw, "pool_size": ps, "strides": s,
                                                     "padding": p})
    _check(g, lambda b: [_normal((b, *out_hw, C), b)], [])


def test_pool_grads_on_nchw_twins():
    g = Graph()
    x = g.add_input(TensorType((N, 7, 6, 2)), "x")
    k = g.add_param(TensorType((1, 1, 2, C)), "k")
    (h,) = g.add_node("conv2d", [x, k])
    (y,) = g.add_node("max_pool2d", [h], {"pool_size": (3, 3), "strides": (2, 2), "padding": "same"})
    (dy,) = g.add_node("relu", [y])
    pool = {"pool_size": (3, 3), "strides": (2, 2), "padding": "same"}
    (gmax,) = g.add_node("max_pool2d_grad", [h, dy], pool)
    (gavg,) = g.add_node("avg_pool2d_grad", [dy], {"input_hw": (7, 6), **pool})
    for out in (gmax, gavg):
        g.outputs = [out]
        _check(g, lambda b: [_normal((b, 7, 6, 2), b)], [_normal((1, 1, 2, C), 3)], rtol=1e-4)


# -- gelu_grad ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET])
@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "tanh"])
def test_gelu_grad(approximate, opset):
    """Over -8..8, through the derivative's zero near -0.75 and its peak near 1.4."""
    g = Graph()
    x = g.add_input(TensorType((N, 161)), "x")
    g.outputs = g.add_node("gelu_grad", [x], {"approximate": approximate})
    grid = np.linspace(-8, 8, 161, dtype=np.float32)
    _check(g, lambda b: [grid + np.float32(0.01) * _normal((b, 161), b)], [], opset=opset,
           atol=1e-6)


# -- dropout -------------------------------------------------------------------------------------------
KEYS = [(11, 4), (0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345678, 0xFFFFFFFE)]


def _dropout_graph(shape, rate, salt, after_conv=False, dtype="float32"):
    g = Graph()
    if after_conv:  # the NCHW twin of the conv's output is what the rule masks
        x = g.add_input(TensorType((N, 5, 4, 2), dtype), "x")
        k = g.add_param(TensorType((1, 1, 2, shape[-1]), dtype), "k")
        (x,) = g.add_node("conv2d", [x, k])
    else:
        x = g.add_input(TensorType((N, *shape), dtype), "x")
    key = g.add_param(TensorType((2,), "uint32"), "key")
    g.outputs = g.add_node("dropout", [x, key], {"rate": rate, "salt": salt})
    return g


def _small_ints(shape, seed, dtype="float32"):
    """Integer-valued floats: a conv of them with a {-1, 0, 1} kernel is exact in any order."""
    return np.random.default_rng(seed).integers(-4, 5, shape).astype(dtype)


@pytest.mark.parametrize("key", KEYS, ids=[f"key{a:x}-{b:x}" for a, b in KEYS])
@pytest.mark.parametrize("salt", [0, 7, 0xFFFFFFFF])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("shape", ["rank2", "rank4", "after-conv"])
def test_dropout_is_bit_identical(shape, rate, salt, key):
    after_conv = shape == "after-conv"
    dims = {"rank2": (37,), "rank4": (3, 4, 5), "after-conv": (5, 4, 3)}[shape]
    g = _dropout_graph(dims, rate, salt, after_conv)
    params = [_small_ints((1, 1, 2, 3), 5).clip(-1, 1)] if after_conv else []
    params.append(np.array(key, np.uint32))

    def draw(b):
        return [_small_ints((b, 5, 4, 2), b) if after_conv else _normal((b, *dims), b)]

    proto, _ = _check(g, draw, params, exact=True)
    if after_conv:  # masked in NCHW: the conv's output feeds the scaling directly
        conv_out = next(n.output[0] for n in proto.graph.node if n.op_type == "Conv")
        assert any(n.op_type == "Mul" and conv_out in n.input for n in proto.graph.node)
    if rate > 0:  # a real mask: some dropped, some kept
        x = draw(5)[0]
        out = run(g, [x], params)[0]
        assert (out == 0).any() and (out != 0).any()


@pytest.mark.parametrize("opset", [18, 23, DEFAULT_OPSET])
def test_dropout_float64_and_opsets(opset):
    g = _dropout_graph((3, 7), 0.5, 3, dtype="float64")
    _check(g, lambda b: [_normal((b, 3, 7), b, np.float64)], [np.array([5, 9], np.uint32)],
           opset=opset, exact=True)


def test_dropout_needs_opset_18():
    g = _dropout_graph((6,), 0.5, 0)
    with pytest.raises(NotImplementedError, match=r"op 'dropout' \(no layer\): dropout needs "
                                                  r"opset >= 18 \(BitwiseXor\)"):
        graph_to_onnx(g, opset_version=17)
