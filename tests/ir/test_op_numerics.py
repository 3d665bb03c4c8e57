"""Each op's reference numerics against keras.ops (JAX backend), JAX itself, or a plain NumPy formula.

Every op is run through a one-node graph on the eager executor, with the leading dim of the first
input symbolic (`None`) unless broadcasting forbids it, so `infer` and `ref` are both exercised.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close, keras_module

from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.ops.random import uniform, uniform_bits

keras = keras_module()
kops = keras.ops


def apply(op: str, *arrays: np.ndarray, batch: tuple[int, ...] = (0,), **attrs) -> np.ndarray:
    """Run one `op` node on `arrays`; inputs listed in `batch` get a symbolic leading dim."""
    g = Graph(name=op)
    xs = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        shape = tuple(None if (i in batch and j == 0) else d for j, d in enumerate(a.shape))
        xs.append(g.add_input(TensorType(shape, a.dtype.name), f"x{i}"))
    g.outputs = g.add_node(op, xs, attrs)
    g.verify()
    (out,) = run(g, [np.asarray(a) for a in arrays])
    sizes = [np.shape(a)[0] for i, a in enumerate(arrays) if i in batch and np.ndim(a)]
    assert out.shape == g.outputs[0].type.with_batch(sizes[0] if sizes else 1).shape
    assert out.dtype.name == g.outputs[0].dtype
    return out


def np_(x) -> np.ndarray:
    return np.asarray(x)


def randn(rng, *shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


# --- matmul -----------------------------------------------------------------------------------
@pytest.mark.parametrize("a_shape,b_shape,ta,tb,batch", [
    ((5, 4), (4, 3), False, False, (0,)),
    ((4, 5), (4, 3), True, False, (0, 1)),  # contraction over the batch dim (a weight gradient)
    ((5, 4), (3, 4), False, True, (0,)),
    ((4, 5), (3, 4), True, True, ()),
    ((2, 5, 4), (4, 3), False, False, (0,)),
    ((2, 5, 4), (2, 4, 3), False, False, (0, 1)),
    ((2, 1, 5, 4), (3, 2, 4), False, True, (0,)),
])
def test_matmul(rng, a_shape, b_shape, ta, tb, batch):
    a, b = randn(rng, *a_shape), randn(rng, *b_shape)
    out = apply("matmul", a, b, batch=batch, transpose_a=ta, transpose_b=tb)
    la = np.swapaxes(a, -1, -2) if ta else a
    lb = np.swapaxes(b, -1, -2) if tb else b
    assert_close(out, np_(kops.matmul(la, lb)))
    assert_close(out, np.matmul(la.astype(np.float64), lb))


def test_matmul_float64_is_exact_enough(rng):
    a, b = randn(rng, 6, 7, dtype="float64"), randn(rng, 7, 2, dtype="float64")
    np.testing.assert_allclose(apply("matmul", a, b), a @ b, rtol=1e-12, atol=1e-12)


# --- binary arithmetic with broadcasting -------------------------------------------------------
BROADCAST_SHAPES = [  # (a, b, which inputs carry the symbolic batch)
    ((4, 3), (4, 3), (0, 1)),
    ((4, 3), (3,), (0,)),
    ((3,), (4, 3), (1,)),
    ((4, 1, 3), (2, 3), (0,)),
    ((4, 3), (), (0,)),
    ((1, 3), (4, 1), ()),
    ((4, 2, 1), (4, 1, 5), (0, 1)),
]
BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
          "maximum": "maximum", "minimum": "minimum"}


@pytest.mark.parametrize("a_shape,b_shape,batch", BROADCAST_SHAPES)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_broadcasting(rng, op, a_shape, b_shape, batch):
    a = randn(rng, *a_shape)
    b = randn(rng, *b_shape)
    if op == "div":
        b = np.where(np.abs(b) < 0.3, 0.3, b).astype(np.float32)
    out = apply(op, a, b, batch=batch)
    want = np_(getattr(kops, BINARY[op])(a, b))
    assert out.shape == want.shape == np.broadcast_shapes(a_shape, b_shape)
    assert_close(out, want)


def test_pow_matches_keras(rng):
    a = rng.uniform(0.1, 3.0, (4, 3)).astype(np.float32)
    b = rng.uniform(-2.0, 2.0, (3,)).astype(np.float32)
    assert_close(apply("pow", a, b), np_(kops.power(a, b)))


def test_integer_arithmetic_stays_integer():
    a = np.array([[1, -2, 3]], np.int32)
    b = np.array([4, 5, -6], np.int32)
    out = apply("mul", a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[4, -10, -18]])
    np.testing.assert_array_equal(apply("sub", a, b), [[-3, -7, 9]])


@pytest.mark.parametrize("predicate,fn", [("gt", np.greater), ("ge", np.greater_equal),
                                          ("lt", np.less), ("le", np.less_equal),
                                          ("eq", np.equal), ("ne", np.not_equal)])
def test_compare(predicate, fn):
    a = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 2.0]], np.float32)
    b = np.array([1.0, 1.0, 1.0], np.float32)
    out = apply("compare", a, b, predicate=predicate)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, fn(a, b).astype(np.float32))


def test_bias_add(rng):
    x, b = randn(rng, 3, 4, 5), randn(rng, 5)
    out = apply("bias_add", x, b)
    np.testing.assert_array_equal(out, x + b[None, None, :])
    assert_close(out, np_(kops.add(x, b)))


def test_broadcast_like(rng):
    x, like = randn(rng, 1, 3), randn(rng, 4, 3)
    out = apply("broadcast_like", x, like, batch=(1,))
    np.testing.assert_array_equal(out, np.broadcast_to(x, (4, 3)))
    assert out.flags.c_contiguous


# --- unary math and activations ----------------------------------------------------------------
UNARY = {"neg": "negative", "abs": "absolute", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
         "exp": "exp", "log": "log", "sqrt": "sqrt"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_matches_keras(rng, op, dtype):
    x = rng.uniform(-4, 4, (5, 7)).astype(dtype)
    if op in ("log", "sqrt"):
        x = np.abs(x) + 0.05
    out = apply(op, x)
    assert out.dtype == x.dtype
    want = np_(getattr(kops, UNARY[op])(x.astype(np.float32)))
    assert_close(out, want)
    if dtype == "float64":  # the float64 path is computed in float64, not via float32
        exact = {"neg": np.negative, "abs": np.abs, "relu": lambda v: np.maximum(v, 0),
                 "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "exp": np.exp,
                 "log": np.log, "sqrt": np.sqrt}[op]
        np.testing.assert_allclose(out, exact(x), rtol=1e-13, atol=1e-15)


def test_sigmoid_saturates_without_overflow():
    x = np.array([[-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        out = apply("sigmoid", x)
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert out[0, 3] == 0.5 and out[0, -1] == 1.0 and out[0, 0] == 0.0
    assert_close(out, np_(kops.sigmoid(x)))


def test_exp_log_sqrt_ieee_edges():
    out = apply("log", np.array([[0.0, 1.0, -1.0]], np.float32))
    assert out[0, 0] == -np.inf and out[0, 1] == 0.0 and np.isnan(out[0, 2])
    out = apply("sqrt", np.array([[0.0, 4.0, -1.0]], np.float32))
    assert out[0, 0] == 0.0 and out[0, 1] == 2.0 and np.isnan(out[0, 2])
    out = apply("exp", np.array([[1000.0, -1000.0, 0.0]], np.float32))
    np.testing.assert_array_equal(out, [[np.inf, 0.0, 1.0]])


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_matches_keras(approximate):
    x = np.linspace(-6, 6, 241, dtype=np.float32).reshape(1, -1)
    out = apply("gelu", x, approximate=approximate)
    assert_close(out, np_(kops.gelu(x, approximate=approximate)))


def test_gelu_exact_and_approximate_differ():
    x = np.array([[-2.0, -1.0, 1.0, 2.0]], np.float32)
    exact = apply("gelu", x, approximate=False)
    approx = apply("gelu", x, approximate=True)
    assert np.max(np.abs(exact - approx)) > 1e-5
    np.testing.assert_allclose(exact, x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
                               rtol=1e-6)


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_grad_matches_jax(approximate):
    import jax

    x = np.linspace(-5, 5, 101).reshape(1, -1)
    want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=approximate)))(x.ravel())
    out = apply("gelu_grad", x, approximate=approximate)
    assert out.dtype == np.float64
    assert_close(out.ravel(), np_(want))  # JAX computes in float32 here


def test_cast_truncates_and_converts():
    x = np.array([[-1.7, -0.2, 0.5, 2.9]], np.float32)
    out = apply("cast", x, dtype="int32")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np_(kops.cast(x, "int32")))
    np.testing.assert_array_equal(out, [[-1, 0, 0, 2]])
    back = apply("cast", out, dtype="float64")
    assert back.dtype == np.float64 and back.tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_constant_and_stop_gradient(rng):
    value = randn(rng, 2, 3)
    g = Graph()
    g.outputs = g.add_node("constant", [], {"value": value})
    np.testing.assert_array_equal(run(g, [])[0], value)
    x = randn(rng, 4, 3)
    np.testing.assert_array_equal(apply("stop_gradient", x), x)


# --- softmax family ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_axis(rng, axis):
    x = randn(rng, 3, 4, 5) * 3
    out = apply("softmax", x, axis=axis)
    assert_close(out, np_(kops.softmax(x, axis=axis)))
    assert_close(out.sum(axis=axis), np.ones_like(out.sum(axis=axis)))
    assert_close(apply("log_softmax", x, axis=axis), np_(kops.log_softmax(x, axis=axis)))


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        out = apply("softmax", x, axis=-1)
        log_out = apply("log_softmax", x, axis=-1)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(log_out))
    assert_close(out, np_(kops.softmax(x)))
    assert_close(out[1], np.full(3, 1 / 3))
    assert_close(log_out, np_(kops.log_softmax(x)))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_argmax_picks_the_first_maximum(axis):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], np.float32)
    out = apply("argmax", x, axis=axis)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.argmax(x, axis=axis))
    np.testing.assert_array_equal(out, np_(kops.argmax(x, axis=axis)))


def test_one_hot():
    labels = np.array([0, 3, 1, 1], np.int32)
    out = apply("one_hot", labels, depth=4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np_(kops.one_hot(labels, 4)))
    out = apply("one_hot", np.array([[2.0], [7.0]], np.float64), depth=3, dtype="float64")
    np.testing.assert_array_equal(out, [[[0, 0, 1]], [[0, 0, 0]]])  # out of range: zero row


# --- data movement -----------------------------------------------------------------------------
@pytest.mark.parametrize("in_shape,target,concrete", [
    ((3, 2, 3, 4), (None, 6, 4), (3, 6, 4)),
    ((3, 24), (None, 2, 3, 4), (3, 2, 3, 4)),
    ((3, 4), (2, None, 2), (2, 3, 2)),
])
def test_reshape_is_row_major(rng, in_shape, target, concrete):
    x = randn(rng, *in_shape)
    out = apply("reshape", x, shape=target)
    np.testing.assert_array_equal(out, np.reshape(x, concrete))
    np.testing.assert_array_equal(out, np_(kops.reshape(x, concrete)))


@pytest.mark.parametrize("perm", [(0, 1, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0)])
def test_transpose(rng, perm):
    x = randn(rng, 2, 3, 4)
    np.testing.assert_array_equal(apply("transpose", x, perm=perm), np_(kops.transpose(x, perm)))


@pytest.mark.parametrize("axis", [1, 2, -1, -2])
def test_concat(rng, axis):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    ax = axis % 3
    for i, s in enumerate(shapes):  # different sizes along the concat axis
        shapes[i] = tuple(d + i if j == ax else d for j, d in enumerate(s))
    xs = [randn(rng, *s) for s in shapes]
    out = apply("concat", *xs, batch=(0, 1, 2), axis=axis)
    np.testing.assert_array_equal(out, np_(kops.concatenate(xs, axis=axis)))


def test_slice(rng):
    x = randn(rng, 2, 5, 3)
    np.testing.assert_array_equal(apply("slice", x, axis=1, start=1, stop=4), x[:, 1:4])
    np.testing.assert_array_equal(apply("slice", x, axis=-1, start=2, stop=3), x[..., 2:3])


# --- convolution -------------------------------------------------------------------------------
CONV_CONFIGS = [(p, s, d) for p in ("same", "valid") for s in (1, 2) for d in (1, 2)]


@pytest.mark.parametrize("padding,stride,dilation", CONV_CONFIGS)
def test_conv2d_matches_keras(rng, padding, stride, dilation):
    x = randn(rng, 2, 9, 8, 3)
    w = randn(rng, 3, 2, 3, 4)  # non-square kernel: catches an H/W mix-up
    out = apply("conv2d", x, w, strides=(stride, stride), padding=padding,
                dilation=(dilation, dilation))
    want = np_(kops.conv(x, w, strides=stride, padding=padding, dilation_rate=dilation))
    assert out.shape == want.shape
    assert_close(out, want)


def test_conv2d_asymmetric_strides_and_dilation(rng):
    x, w = randn(rng, 1, 10, 7, 2), randn(rng, 2, 3, 2, 5)
    out = apply("conv2d", x, w, strides=(2, 1), padding="same", dilation=(1, 2))
    assert_close(out, np_(kops.conv(x, w, strides=(2, 1), padding="same", dilation_rate=(1, 2))))


def test_conv2d_naive_loop(rng):
    """A direct definition: out[n,i,j,o] = sum x[n, i*s+a*d, j*s+b*d, c] w[a,b,c,o] (valid)."""
    x, w = randn(rng, 1, 6, 5, 2).astype(np.float64), randn(rng, 2, 2, 2, 3).astype(np.float64)
    out = apply("conv2d", x, w, strides=(2, 1), padding="valid", dilation=(1, 2))
    oh, ow = out.shape[1:3]
    want = np.zeros_like(out)
    for i in range(oh):
        for j in range(ow):
            patch = x[0, i * 2:i * 2 + 2, j:j + 4:2, :]
            want[0, i, j] = np.tensordot(patch, w, axes=([0, 1, 2], [0, 1, 2]))
    np.testing.assert_allclose(out, want, rtol=1e-12)


@pytest.mark.parametrize("padding,stride,dilation", CONV_CONFIGS)
def test_conv2d_gradients_match_jax(rng, padding, stride, dilation):
    import jax

    x, w = randn(rng, 2, 9, 8, 3), randn(rng, 3, 2, 3, 4)
    attrs = {"strides": (stride, stride), "padding": padding, "dilation": (dilation, dilation)}
    y, pullback = jax.vjp(lambda a, b: kops.conv(a, b, strides=stride, padding=padding,
                                                 dilation_rate=dilation), x, w)
    dy = randn(rng, *y.shape)
    gx, gw = pullback(dy)
    out_x = apply("conv2d_input_grad", dy, w, input_hw=(9, 8), **attrs)
    out_w = apply("conv2d_filter_grad", x, dy, batch=(0, 1), kernel_hw=(3, 2), **attrs)
    assert_close(out_x, np_(gx), atol=1e-4)
    assert_close(out_w, np_(gw), atol=1e-4)


# --- pooling -----------------------------------------------------------------------------------
POOL_CONFIGS = [(p, s, k) for p in ("same", "valid") for s in (1, 2) for k in ((2, 2), (3, 2))]


@pytest.mark.parametrize("padding,stride,pool", POOL_CONFIGS)
def test_max_pool_matches_keras(rng, padding, stride, pool):
    x = randn(rng, 2, 7, 6, 3) - 10.0  # all negative: zero padding would win, -inf must not
    out = apply("max_pool2d", x, pool_size=pool, strides=(stride, stride), padding=padding)
    want = np_(kops.max_pool(x, pool, strides=stride, padding=padding))
    assert out.shape == want.shape
    assert_close(out, want)


@pytest.mark.parametrize("padding,stride,pool", POOL_CONFIGS)
def test_avg_pool_matches_keras(rng, padding, stride, pool):
    x = randn(rng, 2, 7, 6, 3) + 5.0  # counting padding as zeros would visibly shrink the edges
    out = apply("avg_pool2d", x, pool_size=pool, strides=(stride, stride), padding=padding)
    want = np_(kops.average_pool(x, pool, strides=stride, padding=padding))
    assert out.shape == want.shape
    assert_close(out, want)


@pytest.mark.parametrize("padding,stride,pool", [("same", 1, (2, 2)), ("same", 2, (3, 2)),
                                                  ("valid", 1, (3, 2)), ("valid", 2, (2, 2))])
def test_pool_gradients_match_jax(rng, padding, stride, pool):
    import jax

    x = randn(rng, 2, 7, 6, 3)
    attrs = {"pool_size": pool, "strides": (stride, stride), "padding": padding}
    ym, back_max = jax.vjp(lambda a: kops.max_pool(a, pool, strides=stride, padding=padding), x)
    ya, back_avg = jax.vjp(lambda a: kops.average_pool(a, pool, strides=stride, padding=padding), x)
    dy = randn(rng, *ym.shape)
    out = apply("max_pool2d_grad", x, dy, batch=(0, 1), **attrs)
    assert_close(out, np_(back_max(dy)[0]))
    out = apply("avg_pool2d_grad", dy, input_hw=(7, 6), **attrs)
    assert_close(out, np_(back_avg(dy)[0]))


# --- reductions and normalization --------------------------------------------------------------
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axes", [None, (0,), (1, 2), (-1,), (0, 2)])
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions(rng, op, axes, keepdims):
    x = randn(rng, 3, 4, 5)
    out = apply(op, x, axes=axes, keepdims=keepdims)
    want = np_(getattr(kops, op)(x, axis=axes, keepdims=keepdims))
    assert out.shape == want.shape and out.dtype == np.float32
    assert_close(out, want)


def test_sum_of_int32_stays_int32():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = apply("sum", x, axes=(1,))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [6, 22, 38])


@pytest.mark.parametrize("axis", [-1, 1])
def test_batchnorm_inference_formula(rng, axis):
    x = randn(rng, 4, 3, 5)
    c = x.shape[axis]
    gamma, beta, mean = randn(rng, c), randn(rng, c), randn(rng, c)
    var = rng.uniform(0.1, 2.0, c).astype(np.float32)
    eps = 1e-3
    out = apply("batchnorm", x, gamma, beta, mean, var, axis=axis, epsilon=eps)
    shape = [1, 1, 1]
    shape[axis] = c
    r = lambda v: v.reshape(shape)  # noqa: E731
    want = (x - r(mean)) / np.sqrt(r(var) + eps) * r(gamma) + r(beta)
    assert_close(out, want)
    assert_close(out, np_(kops.batch_normalization(x, mean, var, axis=axis, offset=beta, scale=gamma,
                                                   epsilon=eps)))


# --- fused -------------------------------------------------------------------------------------
def test_fused_equals_its_steps(rng):
    x, w, b = randn(rng, 4, 5), randn(rng, 5, 3), randn(rng, 3)
    program = (("matmul", ("i0", "i1"), ()), ("bias_add", ("s0", "i2"), ()),
               ("gelu", ("s1",), (("approximate", True),)))
    out = apply("fused", x, w, b, program=program)
    assert_close(out, np_(kops.gelu(x @ w + b, approximate=True)))


# --- randomness: dropout and the uniform stream ------------------------------------------------
def _dropout_graph(shape=(None, 1000), rate=0.25, salt=3):
    g = Graph(name="dropout")
    x = g.add_input(TensorType(shape), "x")
    key = g.add_input(TensorType((2,), "uint32"), "key")
    g.outputs = g.add_node("dropout", [x, key], {"rate": rate, "salt": salt})
    g.verify()
    return g


def _key(seed, step):
    return np.array([seed, step], np.uint32)


def test_dropout_same_key_same_mask():
    ones = np.ones((4, 1000), np.float32)
    a = run(_dropout_graph(), [ones, _key(1, 2)])[0]
    b = run(_dropout_graph(), [ones, _key(1, 2)])[0]  # a fresh graph, same key and salt
    np.testing.assert_array_equal(a, b)
    assert 0 < np.count_nonzero(a) < a.size


def test_dropout_mask_does_not_depend_on_the_values(rng):
    x = rng.uniform(1.0, 2.0, (4, 1000)).astype(np.float32)
    a = run(_dropout_graph(), [x, _key(1, 2)])[0]
    b = run(_dropout_graph(), [np.ones_like(x), _key(1, 2)])[0]
    np.testing.assert_array_equal(a != 0, b != 0)


@pytest.mark.parametrize("other", [dict(salt=4), dict(key=(2, 2)), dict(key=(1, 3))])
def test_dropout_different_salt_or_key_gives_a_different_mask(other):
    ones = np.ones((4, 1000), np.float32)
    a = run(_dropout_graph(salt=3), [ones, _key(1, 2)])[0] != 0
    b = run(_dropout_graph(salt=other.get("salt", 3)), [ones, _key(*other.get("key", (1, 2)))])[0] != 0
    assert not np.array_equal(a, b)
    # independent masks agree on about p^2 + (1-p)^2 of the elements, not on all of them
    agree = np.mean(a == b)
    assert abs(agree - (0.75**2 + 0.25**2)) < 0.03


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_and_scaling(rng, rate):
    x = rng.uniform(0.5, 1.5, (50, 2000)).astype(np.float32)
    out = run(_dropout_graph((None, 2000), rate=rate, salt=11), [x, _key(7, 0)])[0]
    kept = out != 0
    n = kept.size
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sigma
    np.testing.assert_allclose(out[kept], x[kept] / (1 - rate), rtol=1e-6)
    assert np.all(out[~kept] == 0)


def test_dropout_rate_zero_is_identity(rng):
    x = randn(rng, 3, 50)
    np.testing.assert_array_equal(run(_dropout_graph((None, 50), rate=0.0), [x, _key(1, 1)])[0], x)


def test_dropout_float64(rng):
    x = rng.uniform(0.5, 1.5, (3, 500))
    g = Graph()
    xv = g.add_input(TensorType((None, 500), "float64"), "x")
    kv = g.add_input(TensorType((2,), "uint32"), "key")
    g.outputs = g.add_node("dropout", [xv, kv], {"rate": 0.5, "salt": 0})
    out = run(g, [x, _key(3, 3)])[0]
    assert out.dtype == np.float64
    kept = out != 0
    np.testing.assert_allclose(out[kept], 2 * x[kept], rtol=1e-15)


def test_dropout_mask_is_a_function_of_the_element_index():
    """Counter-based: a batch of 2 draws the same mask as the first 2 rows of a batch of 4."""
    g = _dropout_graph((None, 100), rate=0.5)
    small = run(g, [np.ones((2, 100), np.float32), _key(5, 9)])[0]
    big = run(g, [np.ones((4, 100), np.float32), _key(5, 9)])[0]
    np.testing.assert_array_equal(small, big[:2])


def test_uniform_values_are_in_unit_interval_and_uniform():
    u = uniform(_key(5, 6), 1, (200_000,))
    assert u.dtype == np.float32 and u.shape == (200_000,)
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u * 2**24, np.floor(u * 2**24))  # 24-bit grid, exact in float32
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 60, f"chi2={chi2} over 19 dof"  # p < 1e-5 under uniformity
    # neighbouring elements are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_uniform_is_deterministic_and_streams_differ():
    a = uniform(_key(1, 2), 0, (3, 1000))
    np.testing.assert_array_equal(a, uniform(_key(1, 2), 0, (3, 1000)))
    for other in (uniform(_key(1, 2), 1, (3, 1000)), uniform(_key(1, 3), 0, (3, 1000)),
                  uniform(_key(2, 2), 0, (3, 1000))):
        assert abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.05
        assert np.mean(a == other) < 0.01
    bits = uniform_bits(_key(1, 2), 0, 4096)
    assert bits.dtype == np.uint32 and len(np.unique(bits)) > 4090
    assert abs(np.mean(np.unpackbits(bits.view(np.uint8))) - 0.5) < 0.01  # balanced bits


def test_random_streams_of_swapped_seed_and_salt_differ() -> None:
    """(seed 1, salt 0) and (seed 0, salt 1) once shared a stream (the key was seed ^ salt)."""
    from kcompile.ir.ops.random import uniform_bits

    a = uniform_bits(np.array([1, 0], np.uint32), 0, 64)
    b = uniform_bits(np.array([0, 0], np.uint32), 1, 64)
    assert not np.array_equal(a, b)
