"""Hypothesis-driven differential tests: random small models, compiled code == the eager NumPy
interpreter at batch sizes 1, 3 and 17 from ONE compile of each model.

Architectures are valid by construction: every layer's output size is computed as the stack is
drawn, and a layer that would not fit is replaced by one that does.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcompile as keras
from kcompile import layers
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.interpret import run as interpret

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 3, 17)
ACTS = ["relu", "sigmoid", "tanh", "gelu", "linear", "softmax"]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("module_cache_dir")


# -- shape arithmetic ------------------------------------------------------------------------------
def _conv_out(size: int, k: int, s: int, d: int, padding: str) -> int:
    if padding == "same":
        return -(-size // s)
    return (size - d * (k - 1) - 1) // s + 1


def _pool_out(size: int, p: int, s: int, padding: str) -> int:
    return -(-size // s) if padding == "same" else (size - p) // s + 1


# -- spatial layers --------------------------------------------------------------------------------
@st.composite
def conv_layer(draw, h: int, w: int, c: int, keep_size: bool = False):
    """(layer, description, new shape); with keep_size the spatial size is preserved."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    filters = draw(st.integers(1, 20))
    strides = (1, 1) if keep_size else (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    dilation = (1, 1)
    if strides == (1, 1):
        dilation = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    padding = "same" if keep_size else draw(st.sampled_from(["same", "valid"]))
    oh = _conv_out(h, kh, strides[0], dilation[0], padding)
    ow = _conv_out(w, kw, strides[1], dilation[1], padding)
    if oh < 1 or ow < 1:  # too big for the input: fall back to a same-padded conv
        padding, oh, ow = "same", -(-h // strides[0]), -(-w // strides[1])
    act = draw(st.sampled_from(ACTS))
    use_bias = draw(st.booleans())
    layer = layers.Conv2D(filters, (kh, kw), strides=strides, padding=padding,
                          dilation_rate=dilation, activation=act, use_bias=use_bias)
    return layer, (oh, ow, filters)


@st.composite
def pool_layer(draw, h: int, w: int, c: int, keep_size: bool = False):
    cls = draw(st.sampled_from([layers.MaxPooling2D, layers.AveragePooling2D]))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if keep_size:
        return cls((ph, pw), strides=1, padding="same"), (h, w, c)
    strides = draw(st.sampled_from([None, 1, 2, (1, 2), (2, 1)]))
    padding = draw(st.sampled_from(["same", "valid"]))
    sh, sw = (ph, pw) if strides is None else (strides, strides) if isinstance(strides, int) else strides
    oh, ow = _pool_out(h, ph, sh, padding), _pool_out(w, pw, sw, padding)
    if oh < 1 or ow < 1:
        padding, oh, ow = "same", -(-h // sh), -(-w // sw)
    return cls((ph, pw), strides=strides, padding=padding), (oh, ow, c)


@st.composite
def spatial_stack(draw, h: int, w: int, c: int, depth: int, keep_size: bool = False):
    stack = []
    for _ in range(depth):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "bn", "act", "dropout", "dense"]))
        if kind == "conv":
            layer, (h, w, c) = draw(conv_layer(h, w, c, keep_size))
        elif kind == "pool":
            layer, (h, w, c) = draw(pool_layer(h, w, c, keep_size))
        elif kind == "bn":
            layer = layers.BatchNormalization(axis=draw(st.sampled_from([-1, -1, 1, 2])),
                                              epsilon=draw(st.sampled_from([1e-3, 1e-1])))
        elif kind == "act":
            layer = layers.Activation(draw(st.sampled_from(ACTS)))
        elif kind == "dropout":
            layer = layers.Dropout(draw(st.floats(0.0, 0.9)))
        else:  # Dense on the channel axis of a 4-D tensor
            c = draw(st.integers(1, 20))
            layer = layers.Dense(c, activation=draw(st.sampled_from(ACTS)))
        stack.append(layer)
    return stack, (h, w, c)


@st.composite
def dense_head(draw, max_layers: int = 3):
    stack = []
    for _ in range(draw(st.integers(0, max_layers))):
        kind = draw(st.sampled_from(["dense", "dense", "bn", "act", "dropout"]))
        if kind == "dense":
            stack.append(layers.Dense(draw(st.integers(1, 40)), activation=draw(st.sampled_from(ACTS)),
                                      use_bias=draw(st.booleans())))
        elif kind == "bn":
            stack.append(layers.BatchNormalization())
        elif kind == "act":
            stack.append(layers.Activation(draw(st.sampled_from(ACTS))))
        else:
            stack.append(layers.Dropout(0.5))
    stack.append(layers.Dense(draw(st.integers(1, 12)), activation=draw(st.sampled_from(ACTS))))
    return stack


@st.composite
def image_shape(draw):
    return draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 20))


@st.composite
def sequential_cnn(draw):
    h, w, c = draw(image_shape())
    body, (oh, ow, oc) = draw(spatial_stack(h, w, c, draw(st.integers(1, 5))))
    head_kind = draw(st.sampled_from(["flatten", "gap", "gmp", "none"]))
    reduce = {"flatten": layers.Flatten, "gap": layers.GlobalAveragePooling2D,
              "gmp": layers.GlobalMaxPooling2D}
    head = [] if head_kind == "none" else [reduce[head_kind](), *draw(dense_head())]
    return (h, w, c), [*body, *head]


@st.composite
def sequential_mlp(draw):
    features = draw(st.integers(1, 64))
    return (features,), draw(dense_head(max_layers=5))


# -- checking --------------------------------------------------------------------------------------
def _randomise_bn(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.normal(0, 0.5, beta.shape).astype(np.float32),
                               rng.normal(0, 0.5, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 2.0, var.shape).astype(np.float32)])


def _assert_compiled_equals_eager(model, shapes, seed: int) -> None:
    """One compile of the lowered inference graph; compiled == interpreted at every batch size."""
    rng = np.random.default_rng(seed)
    probe = [np.zeros((1, *s), np.float32) for s in shapes]
    sigs, structure = model.input_signature(probe if len(probe) > 1 else probe[0])
    lowered = model._lowered_for(sigs, structure, False)
    assert not lowered.needs_rng_key  # inference: Dropout is the identity
    compiled = compile_graph(lowered.graph)
    params = [v.value for v in lowered.variables]
    compiled.set_params(params)
    for batch in BATCHES:
        xs = [rng.standard_normal((batch, *s)).astype(np.float32) for s in shapes]
        got = compiled.run(xs)
        want = interpret(lowered.graph, xs, params)
        assert len(got) == len(want) == lowered.num_outputs
        for i, (g, e) in enumerate(zip(got, want, strict=True)):
            assert g.shape == e.shape and g.shape[0] == batch, (i, g.shape, e.shape)
            assert g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL,
                                       err_msg=f"output {i}, batch {batch}\n{_describe(model)}")


def _describe(model) -> str:
    return "\n".join(f"  {type(layer).__name__}: {_short_config(layer)}" for layer in model.layers)


def _short_config(layer) -> dict:
    keep = ("units", "filters", "kernel_size", "strides", "padding", "dilation_rate", "pool_size",
            "activation", "axis", "rate", "use_bias", "target_shape")
    return {k: v for k, v in layer.get_config().items() if k in keep}


# -- tests -----------------------------------------------------------------------------------------
@SETTINGS
@given(sequential_cnn(), st.integers(0, 2**16))
def test_random_sequential_cnn(spec, seed) -> None:
    shape, stack = spec
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape), *stack])
    _randomise_bn(model, seed)
    _assert_compiled_equals_eager(model, [shape], seed)


@SETTINGS
@given(sequential_mlp(), st.integers(0, 2**16))
def test_random_sequential_mlp(spec, seed) -> None:
    shape, stack = spec
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape), *stack])
    _randomise_bn(model, seed)
    _assert_compiled_equals_eager(model, [shape], seed)


@st.composite
def two_branch_functional(draw):
    """A shared image input, two same-size branches merged with Add or Concatenate, optionally a
    second (vector) input concatenated after global pooling, and several outputs."""
    h, w, c = draw(image_shape())
    merge = draw(st.sampled_from(["add", "concat_channels", "concat_rows", "concat_cols"]))
    second_input = draw(st.booleans())
    extra_outputs = draw(st.sampled_from(["none", "branch", "merged"]))
    depth_a, depth_b = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    stack_a, _ = draw(spatial_stack(h, w, c, depth_a, keep_size=True))
    stack_b, _ = draw(spatial_stack(h, w, c, depth_b, keep_size=True))
    channels = draw(st.integers(1, 20))
    final_a = draw(st.sampled_from(["conv", "dense"]))
    final_b = draw(st.sampled_from(["conv", "dense"]))
    k_a, k_b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    act_a, act_b = draw(st.sampled_from(ACTS)), draw(st.sampled_from(ACTS))
    vec = draw(st.integers(1, 9))
    head = draw(dense_head(max_layers=2))
    pool = draw(st.sampled_from([layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D,
                                 layers.Flatten]))
    return dict(shape=(h, w, c), merge=merge, second_input=second_input, extra=extra_outputs,
                stacks=(stack_a, stack_b), channels=channels, finals=(final_a, final_b),
                kernels=(k_a, k_b), acts=(act_a, act_b), vec=vec, head=head, pool=pool)


def _branch_end(kind: str, channels: int, k: int, act: str):
    if kind == "conv":
        return layers.Conv2D(channels, k, padding="same", activation=act)
    return layers.Dense(channels, activation=act)


@SETTINGS
@given(two_branch_functional(), st.integers(0, 2**16))
def test_random_functional_two_branches(spec, seed) -> None:
    keras.utils.set_random_seed(seed)
    image = keras.Input(spec["shape"])
    branches = []
    for stack, kind, k, act in zip(spec["stacks"], spec["finals"], spec["kernels"], spec["acts"],
                                   strict=True):
        x = image
        for layer in stack:
            x = layer(x)
        branches.append(_branch_end(kind, spec["channels"], k, act)(x))
    merge = spec["merge"]
    if merge == "add":
        merged = layers.Add()(branches)
    else:
        axis = {"concat_channels": -1, "concat_rows": 1, "concat_cols": 2}[merge]
        merged = layers.Concatenate(axis=axis)(branches)
    x = spec["pool"]()(merged)
    inputs, shapes = [image], [spec["shape"]]
    if spec["second_input"]:
        vector = keras.Input((spec["vec"],))
        inputs.append(vector)
        shapes.append((spec["vec"],))
        x = layers.Concatenate()([x, layers.Dense(5, activation="relu")(vector)])
    for layer in spec["head"]:
        x = layer(x)
    outputs = [x]
    if spec["extra"] == "branch":
        outputs.append(branches[0])
    elif spec["extra"] == "merged":
        outputs.append(merged)
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])
    _randomise_bn(model, seed)
    _assert_compiled_equals_eager(model, shapes, seed)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["add", "concat"]),
       st.sampled_from(ACTS), st.sampled_from(ACTS), st.booleans(), st.integers(0, 2**16))
def test_random_functional_vectors(d1, d2, merge, act1, act2, residual, seed) -> None:
    """Two vector inputs, Dense branches merged, optional residual add of an input into a Dense."""
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((d1,)), keras.Input((d2,))
    width = d1 if residual else 8
    ha = layers.Dense(width, activation=act1)(a)
    hb = layers.Dense(width, activation=act2)(b)
    merged = layers.Add()([ha, hb]) if merge == "add" else layers.Concatenate()([ha, hb, b])
    out = layers.Dense(3, activation="softmax")(merged)
    outputs = [out]
    if residual:
        outputs.append(layers.Add()([a, layers.Dense(d1)(a)]))
    model = keras.Model([a, b], outputs)
    _assert_compiled_equals_eager(model, [(d1,), (d2,)], seed)
