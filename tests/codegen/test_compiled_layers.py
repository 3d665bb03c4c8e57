"""Layer by layer: compiled code == the eager NumPy reference (fp32 contract rtol 1e-4, atol 1e-5).

Each model is compiled once and that one compiled program serves every batch size (1 and 7); the
eager reference is the same model with `jit_compile=False`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import kcompile as keras
from kcompile import layers
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.interpret import run as interpret

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 7)
ACTIVATIONS = ["relu", "sigmoid", "softmax", "tanh", "gelu", "linear"]


pytestmark = pytest.mark.usefixtures("module_cache_dir")


# -- helpers ---------------------------------------------------------------------------------------
def _data(shapes, batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed * 1000 + batch)
    return [rng.standard_normal((batch, *s)).astype(np.float32) for s in shapes]


def _feed(xs: list[np.ndarray]):
    return xs[0] if len(xs) == 1 else xs


def _flat(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


def _close(actual, expected, what: str = "") -> None:
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def _check(model, shapes, seed: int = 0, batches=BATCHES) -> dict[int, list[np.ndarray]]:
    """Eager outputs (jit off) vs compiled outputs (jit on, via predict and __call__) at every batch
    size; one compiled executor must serve all of them. Returns the eager outputs."""
    data = {b: _data(shapes, b, seed) for b in batches}
    model.compile(jit_compile=False)
    eager = {b: _flat(model.predict(_feed(data[b]))) for b in batches}
    assert not model._executors, "jit_compile=False must not compile"
    model.compile(jit_compile=True)
    for b in batches:
        for how, out in (("predict", model.predict(_feed(data[b]))), ("call", model(_feed(data[b])))):
            got = _flat(out)
            assert len(got) == len(eager[b])
            for i, (g, e) in enumerate(zip(got, eager[b], strict=True)):
                assert g.shape[0] == b
                _close(g, e, f"{how} batch {b} output {i}")
    assert len(model._executors) == 1, "one compile must serve every batch size"
    (executor,) = model._executors.values()
    assert executor is not None, "the model fell back to eager execution"
    return eager


def _seq(input_shape, *stack, seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(input_shape), *stack])


def _randomise_bn(model, seed: int) -> None:
    """Non-trivial gamma, beta, moving mean and moving variance."""
    rng = np.random.default_rng(seed)
    found = False
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            found = True
            weights = []
            for w, var in zip(layer.get_weights(), layer.weights, strict=True):
                if "variance" in var.name:
                    weights.append(rng.uniform(0.3, 2.5, w.shape).astype(np.float32))
                elif "gamma" in var.name:
                    weights.append(rng.uniform(0.5, 1.8, w.shape).astype(np.float32))
                else:
                    weights.append(rng.normal(0.0, 0.7, w.shape).astype(np.float32))
            layer.set_weights(weights)
    assert found


def _compiled_ops(model) -> list[str]:
    (executor,) = model._executors.values()
    return [node.op for node in executor.compiled.graph.nodes]


# -- Dense and activations -------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_everywhere(activation) -> None:
    """Standalone Activation layer on raw input, fused into a conv and into a dense."""
    model = _seq((5, 6, 3), layers.Activation(activation),
                 layers.Conv2D(17, 3, padding="same", activation=activation),
                 layers.Flatten(), layers.Dense(13, activation=activation))
    eager = _check(model, [(5, 6, 3)])
    if activation == "softmax":
        np.testing.assert_allclose(eager[7][0].sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_standalone_activation_layer_4d(activation) -> None:
    _check(_seq((4, 3, 17), layers.Activation(activation)), [(4, 3, 17)])


@pytest.mark.parametrize("units,use_bias", [(1, True), (13, False), (70, True)])
def test_dense(units, use_bias) -> None:
    model = _seq((37,), layers.Dense(units, use_bias=use_bias),
                 layers.Dense(6, activation="relu"))
    if use_bias:
        dense = model.layers[0]
        dense.bias.assign(np.linspace(-1, 1, units).astype(np.float32))
    _check(model, [(37,)])


def test_dense_on_rank3_and_rank4_inputs() -> None:
    model = _seq((5, 4, 3), layers.Dense(11, activation="tanh"), layers.Reshape((20, 11)),
                 layers.Dense(7, activation="softmax"))
    _check(model, [(5, 4, 3)])


# -- Conv2D ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("channels", [3, 17])
def test_conv2d_non_square(padding, strides, channels) -> None:
    kernel = (3, 2) if channels == 3 else (2, 4)
    filters = 20 - channels
    model = _seq((9, 7, channels), layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                                                  activation="relu"))
    model.layers[0].bias.assign(np.linspace(-0.5, 0.5, filters).astype(np.float32))
    out_h = -(-9 // strides) if padding == "same" else (9 - kernel[0]) // strides + 1
    out_w = -(-7 // strides) if padding == "same" else (7 - kernel[1]) // strides + 1
    eager = _check(model, [(9, 7, channels)])
    assert eager[7][0].shape == (7, out_h, out_w, filters)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("channels", [3, 17])
def test_conv2d_3x3_square(padding, channels) -> None:
    """3x3 stride 1 with >= 16 channels takes the Winograd kernel; 3 channels the direct one."""
    model = _seq((10, 9, channels), layers.Conv2D(17, 3, padding=padding, activation="sigmoid"),
                 layers.Conv2D(channels, 3, padding=padding))
    _check(model, [(10, 9, channels)])


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("channels", [3, 17])
def test_conv2d_dilation_2(padding, channels) -> None:
    model = _seq((11, 9, channels),
                 layers.Conv2D(5, (3, 2), dilation_rate=2, padding=padding, use_bias=False),
                 layers.Conv2D(4, 3, dilation_rate=(2, 1), padding=padding, activation="tanh"))
    eager = _check(model, [(11, 9, channels)])
    if padding == "valid":
        assert eager[1][0].shape == (1, 11 - 4 - 4, 9 - 2 - 2, 4)


@pytest.mark.parametrize("strides", [1, 2])
def test_conv2d_1x1_and_kernel_as_large_as_input(strides) -> None:
    model = _seq((6, 5, 3), layers.Conv2D(17, 1, strides=strides),
                 layers.Conv2D(3, (3, 3), padding="valid", activation="gelu"))
    _check(model, [(6, 5, 3)])
    model = _seq((4, 3, 17), layers.Conv2D(6, (4, 3), padding="valid"))
    eager = _check(model, [(4, 3, 17)])
    assert eager[7][0].shape == (7, 1, 1, 6)


# -- pooling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("channels", [3, 17])
def test_pooling(cls, padding, strides, channels) -> None:
    model = _seq((9, 7, channels), cls((3, 2), strides=strides, padding=padding))
    eager = _check(model, [(9, 7, channels)])
    out_h = -(-9 // strides) if padding == "same" else (9 - 3) // strides + 1
    out_w = -(-7 // strides) if padding == "same" else (7 - 2) // strides + 1
    assert eager[7][0].shape == (7, out_h, out_w, channels)


@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
def test_pooling_default_strides_after_conv(cls) -> None:
    """Default strides = pool size; pooling of a conv output (fusion boundary)."""
    model = _seq((11, 10, 3), layers.Conv2D(17, 3, activation="relu"), cls(2),
                 cls(3, padding="same"))
    _check(model, [(11, 10, 3)])


@pytest.mark.parametrize("cls", [layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D])
@pytest.mark.parametrize("channels", [3, 17])
def test_global_pooling(cls, channels) -> None:
    model = _seq((7, 5, channels), cls(), layers.Dense(4))
    _check(model, [(7, 5, channels)])


@pytest.mark.parametrize("cls", [layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D])
def test_global_pooling_keepdims(cls) -> None:
    model = _seq((6, 9, 17), layers.Conv2D(5, 3, activation="tanh"), cls(keepdims=True))
    eager = _check(model, [(6, 9, 17)])
    assert eager[7][0].shape == (7, 1, 1, 5)


# -- BatchNormalization ----------------------------------------------------------------------------
@pytest.mark.parametrize("use_bias", [True, False])
def test_batchnorm_folded_into_conv(use_bias) -> None:
    model = _seq((8, 7, 3), layers.Conv2D(17, (3, 2), padding="same", use_bias=use_bias),
                 layers.BatchNormalization(), layers.Activation("relu"),
                 layers.Conv2D(5, 3, strides=2), layers.BatchNormalization())
    _randomise_bn(model, 1)
    _check(model, [(8, 7, 3)])
    assert "batchnorm" not in _compiled_ops(model)


@pytest.mark.parametrize("use_bias", [True, False])
def test_batchnorm_folded_into_dense(use_bias) -> None:
    model = _seq((23,), layers.Dense(19, use_bias=use_bias), layers.BatchNormalization(),
                 layers.Dense(3, activation="softmax"))
    _randomise_bn(model, 2)
    _check(model, [(23,)])
    assert "batchnorm" not in _compiled_ops(model)


def test_batchnorm_standalone_after_activation_and_on_input() -> None:
    model = _seq((6, 5, 17), layers.BatchNormalization(),
                 layers.Conv2D(7, 3, padding="same", activation="relu"),
                 layers.BatchNormalization(), layers.MaxPooling2D(),
                 layers.Activation("tanh"), layers.BatchNormalization(), layers.Flatten(),
                 layers.Dense(9, activation="gelu"), layers.BatchNormalization())
    _randomise_bn(model, 3)
    _check(model, [(6, 5, 17)])


def test_batchnorm_matches_the_formula() -> None:
    """Independent of the eager interpreter: y = (x - mean) / sqrt(var + eps) * gamma + beta."""
    model = _seq((4, 3, 17), layers.BatchNormalization(epsilon=1e-2))
    _randomise_bn(model, 4)
    gamma, beta, mean, var = model.layers[0].get_weights()
    x = _data([(4, 3, 17)], 7, 4)[0]
    model.compile(jit_compile=True)
    expected = (x - mean) / np.sqrt(var + 1e-2) * gamma + beta
    np.testing.assert_allclose(model.predict(x), expected, rtol=RTOL, atol=ATOL)


def test_batchnorm_not_folded_when_conv_output_is_also_a_model_output() -> None:
    keras.utils.set_random_seed(5)
    x = keras.Input((7, 6, 3))
    conv = layers.Conv2D(17, 3, padding="same")(x)
    bn = layers.BatchNormalization()(conv)
    bn_axis1 = layers.BatchNormalization(axis=1)(layers.Activation("relu")(bn))
    model = keras.Model(x, [conv, bn, bn_axis1])
    _randomise_bn(model, 5)
    eager = _check(model, [(7, 6, 3)])
    assert not np.allclose(eager[7][0], eager[7][1], atol=1e-3)


def test_batchnorm_weight_change_after_compile_is_seen() -> None:
    """Folded BN statistics live in the prepare graph: changing them must re-prepare the weights."""
    model = _seq((6, 6, 3), layers.Conv2D(17, 3), layers.BatchNormalization(), layers.Flatten(),
                 layers.Dense(5), layers.BatchNormalization())
    _randomise_bn(model, 6)
    first = _check(model, [(6, 6, 3)])
    _randomise_bn(model, 7)
    second = _check(model, [(6, 6, 3)])
    assert not np.allclose(first[7][0], second[7][0], atol=1e-3)


def test_batchnorm_training_compiled_equals_eager() -> None:
    """Training mode: batch statistics and the moving-stat state updates match."""
    model = _seq((6, 5, 3), layers.Conv2D(17, 3, padding="same"), layers.BatchNormalization(),
                 layers.Flatten(), layers.Dense(4), layers.BatchNormalization(momentum=0.5))
    _randomise_bn(model, 8)
    start = model.get_weights()
    results = {}
    for jit in (False, True):
        model.set_weights(start)
        model.compile(jit_compile=jit)
        outs = [model(x, training=True) for x in (_data([(6, 5, 3)], b, 8)[0] for b in (7, 3))]
        results[jit] = (outs, model.get_weights())
    (eager_outs, eager_w), (comp_outs, comp_w) = results[False], results[True]
    for c, e in zip(comp_outs, eager_outs, strict=True):
        _close(c, e)
    for c, e in zip(comp_w, eager_w, strict=True):
        np.testing.assert_allclose(c, e, rtol=RTOL, atol=ATOL)
    assert any(not np.allclose(e, s) for e, s in zip(eager_w, start, strict=True)), \
        "training should have updated the moving statistics"


# -- Dropout ---------------------------------------------------------------------------------------
def _dropout_model():
    keras.utils.set_random_seed(9)
    x = keras.Input((6, 5, 3))
    visible = layers.Dropout(0.4)(x)
    h = layers.Conv2D(17, 3, padding="same", activation="relu")(x)
    h = layers.Dropout(0.25)(h)
    out = layers.Dense(4)(layers.Flatten()(h))
    return keras.Model(x, [visible, out])


def test_dropout_is_identity_at_inference() -> None:
    model = _dropout_model()
    eager = _check(model, [(6, 5, 3)])
    for b in BATCHES:
        np.testing.assert_array_equal(eager[b][0], _data([(6, 5, 3)], b, 0)[0])


def test_dropout_training_same_key_same_mask_low_level() -> None:
    model = _dropout_model()
    x1 = _data([(6, 5, 3)], 1, 10)[0]
    sigs, st = model.input_signature(x1)
    lw = model._lowered_for(sigs, st, True)
    assert lw.needs_rng_key
    cg = compile_graph(lw.graph)
    params = [v.value for v in lw.variables]
    cg.set_params(params)
    masks = []
    for batch in BATCHES:
        x = _data([(6, 5, 3)], batch, 10)[0]
        for key in ([3, 0], [3, 1], [77, 0]):
            feeds = [x, np.array(key, np.uint32)]
            compiled = cg.run(feeds)
            eager = interpret(lw.graph, feeds, params)
            for c, e in zip(compiled[:2], eager[:2], strict=True):
                _close(c, e, f"batch {batch} key {key}")
            np.testing.assert_array_equal(compiled[0] == 0, eager[0] == 0)
            kept = compiled[0] != 0
            np.testing.assert_allclose(compiled[0][kept], x[kept] / 0.6, rtol=1e-6)
            masks.append(kept)
        # same graph, same key -> same mask on a second run
        np.testing.assert_array_equal(cg.run([x, np.array([3, 0], np.uint32)])[0] != 0, masks[-3])
        assert not np.array_equal(masks[-3], masks[-2])
        assert not np.array_equal(masks[-3], masks[-1])
    big = masks[3]  # batch 7, 630 elements at rate 0.4
    assert 0.25 < 1 - big.mean() < 0.55


def test_dropout_training_through_the_model_api() -> None:
    """model(x, training=True) with jit on and off, same model rng seed and step -> same output."""
    model = _dropout_model()
    outs = {}
    for jit in (False, True):
        model.compile(jit_compile=jit)
        model._rng_step = 0
        outs[jit] = [_flat(model(_data([(6, 5, 3)], b, 11)[0], training=True)) for b in BATCHES * 2]
    assert len(model._executors) == 1
    for step, (c, e) in enumerate(zip(outs[True], outs[False], strict=True)):
        for i, (ci, ei) in enumerate(zip(c, e, strict=True)):
            _close(ci, ei, f"step {step} output {i}")
    # successive steps draw different masks
    assert not np.array_equal(outs[True][1][0] == 0, outs[True][3][0] == 0)


# -- reshaping and merging -------------------------------------------------------------------------
def test_flatten_and_reshape() -> None:
    model = _seq((6, 5, 3), layers.Flatten(), layers.Dense(12, activation="relu"),
                 layers.Reshape((2, 3, 2)), layers.Conv2D(5, (2, 2), padding="same"),
                 layers.Reshape((-1,)), layers.Reshape((5, 6)))
    eager = _check(model, [(6, 5, 3)])
    assert eager[7][0].shape == (7, 5, 6)


def test_reshape_only_model() -> None:
    model = _seq((4, 6), layers.Reshape((3, 8)), layers.Flatten())
    eager = _check(model, [(4, 6)])
    np.testing.assert_array_equal(eager[7][0], _data([(4, 6)], 7, 0)[0].reshape(7, 24))


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_concatenate(axis) -> None:
    keras.utils.set_random_seed(12)
    x = keras.Input((6, 5, 3))
    a = layers.Conv2D(7, 3, padding="same", activation="relu")(x)
    b = layers.Conv2D(7, (1, 3), padding="same")(x)
    if axis == -1:
        b = layers.Conv2D(17, 1)(b)
    cat = layers.Concatenate(axis=axis)([a, b, a])
    model = keras.Model(x, layers.Conv2D(3, 2)(cat))
    _check(model, [(6, 5, 3)])


def test_add() -> None:
    keras.utils.set_random_seed(13)
    x = keras.Input((7, 5, 17))
    a = layers.Conv2D(17, 3, padding="same")(x)
    b = layers.Activation("sigmoid")(x)
    summed = layers.Add()([a, x, b])
    model = keras.Model(x, layers.GlobalAveragePooling2D()(layers.Activation("relu")(summed)))
    _check(model, [(7, 5, 17)])


def test_two_input_concatenate_and_add_of_vectors() -> None:
    keras.utils.set_random_seed(14)
    a, b = keras.Input((13,)), keras.Input((5,))
    ha = layers.Dense(6, activation="tanh")(a)
    hb = layers.Dense(6)(b)
    model = keras.Model([a, b], layers.Concatenate()([layers.Add()([ha, hb]), a, hb]))
    eager = _check(model, [(13,), (5,)])
    assert eager[7][0].shape == (7, 25)


# -- multi-input / multi-output Functional ---------------------------------------------------------
def test_multi_input_multi_output_functional() -> None:
    keras.utils.set_random_seed(15)
    a, b = keras.Input((8, 6, 3)), keras.Input((10,))
    h = layers.Conv2D(5, 3, padding="same", activation="relu")(a)  # an output, also used below
    g = layers.GlobalAveragePooling2D()(layers.MaxPooling2D()(h))
    hb = layers.Dense(7, activation="tanh")(b)
    head = layers.Dense(4, activation="softmax")(layers.Concatenate()([g, hb]))
    flat_a = layers.Flatten()(a)  # a direct Flatten of an input
    reshaped_b = layers.Reshape((2, 5))(b)  # a direct Reshape of an input
    model = keras.Model([a, b], [head, h, flat_a, reshaped_b, head, hb, a])
    shapes = [(8, 6, 3), (10,)]
    eager = _check(model, shapes)
    for batch in BATCHES:
        xa, xb = _data(shapes, batch, 0)
        outs = eager[batch]
        np.testing.assert_array_equal(outs[2], xa.reshape(batch, -1))
        np.testing.assert_array_equal(outs[3], xb.reshape(batch, 2, 5))
        np.testing.assert_array_equal(outs[0], outs[4])
        np.testing.assert_array_equal(outs[6], xa)
    # compiled outputs are fresh arrays: the duplicated output and the pass-throughs alias nothing
    xs = _data(shapes, 7, 0)
    compiled = model(xs)
    np.testing.assert_array_equal(compiled[0], compiled[4])
    for i, out in enumerate(compiled):
        for j, other in enumerate([*compiled[i + 1:], *xs]):
            assert not np.shares_memory(out, other), (i, j)
    compiled[4][...] = -1.0
    _close(compiled[0], eager[7][0], "writing to one copy of a duplicated output changed the other")


def test_output_consumed_internally_in_sequential_chain() -> None:
    keras.utils.set_random_seed(16)
    x = keras.Input((9,))
    h1 = layers.Dense(8, activation="relu")(x)
    h2 = layers.Dense(8, activation="sigmoid")(h1)
    h3 = layers.Add()([h1, h2])
    model = keras.Model(x, [h3, h1, h2])
    eager = _check(model, [(9,)])
    np.testing.assert_allclose(eager[7][0], eager[7][1] + eager[7][2], rtol=1e-6)


@pytest.mark.parametrize("kernel,channels", [(3, 17), (3, 5), (1, 5)])
def test_residual_add_of_the_conv_input(kernel, channels) -> None:
    """conv(x) + x: x is both the conv's data and its epilogue's residual operand (Winograd,
    direct and 1x1 convolutions)."""
    keras.utils.set_random_seed(17)
    x = keras.Input((7, 5, channels))
    y = layers.Conv2D(channels, kernel, padding="same")(x)
    model = keras.Model(x, layers.Activation("relu")(layers.Add()([y, x])))
    _check(model, [(7, 5, channels)])


@pytest.mark.parametrize("use_bias,x_first", [(True, True), (False, False)])
def test_residual_add_of_the_dense_input(use_bias, x_first) -> None:
    keras.utils.set_random_seed(18)
    x = keras.Input((9,))
    y = layers.Dense(9, use_bias=use_bias)(x)
    model = keras.Model(x, layers.Activation("tanh")(layers.Add()([x, y] if x_first else [y, x])))
    _check(model, [(9,)])


# -- the thread pool -------------------------------------------------------------------------------
_POOL_SCRIPT = r"""
import sys, threading, time
import numpy as np
import kcompile as keras
from kcompile import layers
from kcompile.codegen.llvm import threads as kthreads
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.interpret import run as interpret


class LateThread(threading.Thread):
    # a worker the OS schedules late: it reaches native code after the first call was published
    def __init__(self, target=None, args=(), **kwargs):
        def late(*a):
            time.sleep(0.3)
            target(*a)
        super().__init__(target=late, args=args, **kwargs)


kthreads.threading.Thread = LateThread
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((6, 5, 3)), layers.Conv2D(8, 3, padding="same", activation="relu"),
                          layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(5)])
x = np.random.default_rng(0).standard_normal((64, 6, 5, 3)).astype(np.float32)
sigs, st = model.input_signature(x)
lw = model._lowered_for(sigs, st, False)
params = [v.value for v in lw.variables]
cg = compile_graph(lw.graph)
cg.set_params(params)
assert cg.pool.nthreads == 4, cg.pool.nthreads
want = interpret(lw.graph, [x], params)[0]
for nthreads in (None, 2, 3, 1, 4, 2):
    got = cg.run([x], nthreads=nthreads)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"nthreads={nthreads}")
print("pool ok")
"""


def test_thread_pool_late_workers_and_fewer_threads_than_the_pool(tmp_path) -> None:
    """A fresh process (the pool is per process) with a 4-thread pool whose workers start late:
    the first call must not deadlock, and `run(nthreads=k)` with 1 < k < pool size must be right."""
    import subprocess
    import sys

    env = {**os.environ, "KCOMPILE_NUM_THREADS": "4", "KCOMPILE_CACHE_DIR": str(tmp_path / "cache")}
    try:
        proc = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], env=env, capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the compiled model hung (thread pool deadlock)")
    assert proc.returncode == 0 and "pool ok" in proc.stdout, proc.stdout + proc.stderr
