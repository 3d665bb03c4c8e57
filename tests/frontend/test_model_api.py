"""The model API behaves like Keras 3: building Sequential/Functional models, naming, weights,
parameter counts, predict batching, seeding, default initializers, activations and summary()."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile as keras
from kcompile import layers as kl


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _summary(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def _total_params(text: str) -> int:
    match = re.search(r"Total params: ([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


# -- building models ------------------------------------------------------------------------------

def test_sequential_list_and_add_build_the_same_model():
    listed = keras.Sequential([keras.Input((4,)), kl.Dense(8, activation="relu"), kl.Dense(2)])
    added = keras.Sequential()
    added.add(keras.Input((4,)))
    added.add(kl.Dense(8, activation="relu"))
    added.add(kl.Dense(2))
    assert listed.count_params() == added.count_params() == 4 * 8 + 8 + 8 * 2 + 2
    assert [type(lyr) for lyr in listed.layers] == [type(lyr) for lyr in added.layers] == [kl.Dense] * 2
    copy_weights(listed, added)
    x = _x(5, 4)
    np.testing.assert_array_equal(listed.predict(x), added.predict(x))


def test_add_rejects_non_layers_and_duplicates():
    m = keras.Sequential([keras.Input((3,))], name="adder")
    with pytest.raises(TypeError, match=r"Only instances of `keras.Layer`.*int"):
        m.add(3)
    d = kl.Dense(3)
    m.add(d)
    with pytest.raises(ValueError, match=r"'adder'.*already in the model"):
        m.add(d)


def test_input_shape_on_first_layer_builds_at_once():
    m = keras.Sequential([kl.Dense(5, input_shape=(3,)), kl.Dense(1)])
    assert m.built
    assert m.count_params() == 3 * 5 + 5 + 5 + 1
    assert m.inputs[0].shape == (None, 3)
    assert m.outputs[0].shape == (None, 1)
    assert [lyr.__class__ for lyr in m.layers] == [kl.Dense, kl.Dense]  # the InputLayer is hidden
    m_dim = keras.Sequential([kl.Dense(5, input_dim=3)])
    assert m_dim.inputs[0].shape == (None, 3) and m_dim.count_params() == 20


def test_input_tensor_gives_shape_and_batch():
    x = keras.Input(shape=(7, 3), name="api_in")
    assert x.shape == (None, 7, 3) and x.dtype == "float32" and x.ndim == 3
    assert keras.Input((2,), batch_size=4).shape == (4, 2)
    assert keras.Input(5).shape == (None, 5)
    m = keras.Sequential([x, kl.Flatten(), kl.Dense(2)])
    assert m.outputs[0].shape == (None, 2)
    assert m.predict(_x(3, 7, 3)).shape == (3, 2)


def test_pop_removes_the_last_layer():
    m = keras.Sequential([keras.Input((4,)), kl.Dense(8, name="pop_a"), kl.Dense(2, name="pop_b")])
    popped = m.pop()
    assert popped.name == "pop_b"
    assert [lyr.name for lyr in m.layers] == ["pop_a"]
    assert m.count_params() == 40
    assert m.outputs[0].shape == (None, 8)
    assert m.predict(_x(3, 4)).shape == (3, 8)
    m.add(kl.Dense(1, name="pop_c"))
    assert m.predict(_x(3, 4)).shape == (3, 1)
    m.pop()
    m.pop()
    with pytest.raises(IndexError, match=r"no layers"):
        m.pop()


def test_deferred_build_on_first_predict():
    m = keras.Sequential([kl.Dense(3, name="late_a"), kl.Dense(1, name="late_b")], name="late")
    assert not m.built
    with pytest.raises(ValueError, match=r"count_params.*'late'.*isn't built"):
        m.count_params()
    assert m.weights == []
    out = m.predict(_x(4, 6))
    assert out.shape == (4, 1)
    assert m.built
    assert [tuple(w.shape) for w in m.weights] == [(6, 3), (3,), (3, 1), (1,)]
    assert m.count_params() == 6 * 3 + 3 + 3 + 1
    assert m.inputs[0].shape == (None, 6)
    # the input shape is now fixed
    with pytest.raises(ValueError, match=r"'late'.*\(None, 6\).*\(2, 5\)"):
        m.predict(_x(2, 5))


def test_deferred_build_on_call_and_on_build():
    called = keras.Sequential([kl.Dense(2)])
    assert called(_x(3, 5)).shape == (3, 2)
    assert called.count_params() == 12
    built = keras.Sequential([kl.Dense(2)])
    built.build((None, 5))
    assert built.built and built.count_params() == 12
    assert built.outputs[0].shape == (None, 2)


# -- layers and names ------------------------------------------------------------------------------

def test_get_layer_by_name_and_index():
    m = keras.Sequential([keras.Input((4,)), kl.Dense(3, name="gl_a"), kl.Dropout(0.1, name="gl_b"),
                          kl.Dense(2, name="gl_c")], name="gl")
    assert m.get_layer("gl_b") is m.layers[1]
    assert m.get_layer(index=0).name == "gl_a"
    assert m.get_layer(index=-1).name == "gl_c"
    with pytest.raises(ValueError, match=r"No such layer: nope.*gl_a.*gl_c"):
        m.get_layer("nope")
    with pytest.raises(ValueError, match=r"index 3.*3 layers"):
        m.get_layer(index=3)
    with pytest.raises(ValueError, match=r"only a layer name or a layer index"):
        m.get_layer("gl_a", index=0)


def test_functional_get_layer_includes_input_layer():
    a = keras.Input((3,), name="fgl_in")
    m = keras.Model(a, kl.Dense(2, name="fgl_d")(a))
    assert [lyr.name for lyr in m.layers] == ["fgl_in", "fgl_d"]
    assert isinstance(m.get_layer(index=0), kl.InputLayer)
    assert m.get_layer("fgl_d").units == 2


def _split_name(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert match
    return match.group(1), int(match.group(2) or 0)


def test_layer_names_are_unique_and_keras_style():
    names = [kl.Dense(1).name for _ in range(3)]
    assert len(set(names)) == 3
    bases, counts = zip(*map(_split_name, names), strict=True)
    assert set(bases) == {"dense"}
    assert list(counts) == [counts[0], counts[0] + 1, counts[0] + 2]
    explicit = kl.Dense(1, name="my_name")
    assert explicit.name == "my_name"


@pytest.mark.parametrize("cls,args", [
    ("Dense", (1,)), ("Conv2D", (1, 1)), ("MaxPooling2D", ()), ("AveragePooling2D", ((2, 2),)),
    ("GlobalAveragePooling2D", ()), ("GlobalMaxPooling2D", ()), ("BatchNormalization", ()),
    ("Dropout", (0.1,)), ("Flatten", ()), ("Reshape", ((1,),)), ("Add", ()), ("Concatenate", ()),
    ("Activation", ("relu",)),
])
def test_default_name_bases_match_keras(cls, args):
    k = keras_module()
    ours = _split_name(getattr(kl, cls)(*args).name)[0]
    theirs = _split_name(getattr(k.layers, cls)(*args).name)[0]
    assert ours == theirs


def test_sequential_and_functional_model_names():
    assert _split_name(keras.Sequential().name)[0] == "sequential"
    a = keras.Input((2,))
    assert _split_name(keras.Model(a, kl.Dense(1)(a)).name)[0] == "functional"
    assert keras.Sequential(name="named").name == "named"


# -- weights ----------------------------------------------------------------------------------------

def test_weights_trainable_and_non_trainable():
    m = keras.Sequential([keras.Input((5,)), kl.Dense(4, name="w_d"), kl.BatchNormalization(name="w_bn")])
    paths = [w.path for w in m.weights]
    assert paths == ["w_d/kernel", "w_d/bias", "w_bn/gamma", "w_bn/beta", "w_bn/moving_mean",
                     "w_bn/moving_variance"]
    assert [w.path for w in m.trainable_weights] == paths[:4]
    assert [w.path for w in m.non_trainable_weights] == paths[4:]
    assert all(not w.trainable for w in m.non_trainable_weights)
    assert m.count_params() == 24 + 16
    bn = m.get_layer("w_bn")
    assert [w.name for w in bn.non_trainable_weights] == ["moving_mean", "moving_variance"]


def test_weight_order_matches_keras():
    k = keras_module()
    ours = keras.Sequential([keras.Input((5,)), kl.Dense(4), kl.BatchNormalization(), kl.Dense(2)])
    theirs = k.Sequential([k.Input((5,)), k.layers.Dense(4), k.layers.BatchNormalization(),
                           k.layers.Dense(2)])
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert [w.name for w in ours.trainable_weights] == [w.name for w in theirs.trainable_weights]
    assert ours.count_params() == theirs.count_params()


def test_frozen_layer_moves_weights_to_non_trainable():
    m = keras.Sequential([keras.Input((3,)), kl.Dense(4, name="fz_a"), kl.Dense(2, name="fz_b")])
    m.get_layer("fz_a").trainable = False
    assert [w.path for w in m.trainable_weights] == ["fz_b/kernel", "fz_b/bias"]
    assert [w.path for w in m.non_trainable_weights] == ["fz_a/kernel", "fz_a/bias"]
    assert len(m.weights) == 4
    assert "Non-trainable params: 16" in _summary(m)


def test_get_and_set_weights_round_trip():
    m = keras.Sequential([keras.Input((3,)), kl.Dense(2)])
    new = [np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1.0, -1.0], np.float32)]
    m.set_weights(new)
    for got, want in zip(m.get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, want)
    got = m.get_weights()
    got[0][...] = 0  # get_weights returns copies
    np.testing.assert_array_equal(m.get_weights()[0], new[0])
    x = _x(4, 3)
    assert_close(m.predict(x), x @ new[0] + new[1])


def test_shared_layer_weights_counted_once():
    a = keras.Input((3,), name="sh_in")
    shared = kl.Dense(3, name="sh_d")
    out = kl.Add(name="sh_add")([shared(a), shared(shared(a))])
    m = keras.Model(a, out)
    assert m.count_params() == 12
    assert len(m.weights) == 2
    assert [lyr.name for lyr in m.layers] == ["sh_in", "sh_d", "sh_add"]
    text = _summary(m)
    assert _total_params(text) == 12
    assert "multiple" in text  # a layer used at several points has no single output shape
    w, b = (v.numpy() for v in shared.weights)
    x = _x(2, 3)
    h = x @ w + b
    assert_close(m.predict(x), h + (h @ w + b))


# -- predict ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 10, 64])
def test_predict_uneven_batches_equal_one_batch(batch_size):
    m = keras.Sequential([keras.Input((4,)), kl.Dense(6, activation="relu"), kl.Dense(2)])
    x = _x(10, 4)
    whole = m.predict(x, batch_size=10)
    part = m.predict(x, batch_size=batch_size)
    assert part.shape == (10, 2)
    np.testing.assert_allclose(part, whole, rtol=1e-6, atol=1e-6)


def test_predict_conv_model_uneven_batches():
    m = keras.Sequential([keras.Input((6, 6, 2)), kl.Conv2D(3, 3, padding="same"), kl.BatchNormalization(),
                          kl.MaxPooling2D(), kl.Flatten(), kl.Dense(2)])
    x = _x(10, 6, 6, 2)
    np.testing.assert_allclose(m.predict(x, batch_size=3), m.predict(x, batch_size=10), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_predict_on_zero_samples(batch_size):
    m = keras.Sequential([keras.Input((4,)), kl.Dense(2)])
    out = m.predict(np.zeros((0, 4), np.float32), batch_size=batch_size)
    assert out.shape == (0, 2) and out.dtype == np.float32
    conv = keras.Sequential([keras.Input((5, 5, 1)), kl.Conv2D(3, 3)])
    assert conv.predict(np.zeros((0, 5, 5, 1), np.float32), batch_size=batch_size).shape == (0, 3, 3, 3)


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_call_equals_predict(jit):
    m = keras.Sequential([keras.Input((4,)), kl.Dense(5, activation="tanh"),
                          kl.Dense(3, activation="softmax")])
    m.compile(jit_compile=jit)
    x = _x(6, 4)
    direct = m(x)
    assert isinstance(direct, np.ndarray) and direct.shape == (6, 3)
    np.testing.assert_allclose(direct, m.predict(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(direct, m.predict_on_batch(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(direct.sum(axis=-1), 1.0, rtol=1e-5)


def test_predict_rejects_bad_batch_size():
    m = keras.Sequential([keras.Input((2,)), kl.Dense(1)])
    with pytest.raises(ValueError, match=r"batch_size.*positive.*0"):
        m.predict(np.zeros((2, 2), np.float32), batch_size=0)


def test_predict_matches_keras():
    k = keras_module()
    ours = keras.Sequential([keras.Input((4,)), kl.Dense(6, activation="relu"), kl.Dense(2)])
    theirs = k.Sequential([k.Input((4,)), k.layers.Dense(6, activation="relu"), k.layers.Dense(2)])
    copy_weights(ours, theirs)
    x = _x(10, 4)
    assert_close(ours.predict(x, batch_size=3), theirs.predict(x, batch_size=3, verbose=0))


# -- functional with several inputs / outputs -------------------------------------------------------

def _two_by_two():
    i1, i2 = keras.Input((3,), name="mio_a"), keras.Input((2,), name="mio_b")
    o1 = kl.Dense(2, name="mio_o1")(i1)
    o2 = kl.Dense(1, name="mio_o2")(kl.Concatenate(name="mio_cat")([i1, i2]))
    return keras.Model([i1, i2], [o1, o2], name="mio")


def test_multi_output_model_returns_a_list():
    m = _two_by_two()
    xa, xb = _x(5, 3), _x(5, 2, seed=1)
    for out in (m.predict([xa, xb]), m.predict([xa, xb], batch_size=2), m([xa, xb]),
                m.predict({"mio_a": xa, "mio_b": xb})):
        assert isinstance(out, list)
        assert [o.shape for o in out] == [(5, 2), (5, 1)]
    k1, b1, k2, b2 = m.get_weights()
    o1, o2 = m.predict([xa, xb], batch_size=2)
    assert_close(o1, xa @ k1 + b1)
    assert_close(o2, np.concatenate([xa, xb], axis=1) @ k2 + b2)
    zero = m.predict([np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32)])
    assert [o.shape for o in zero] == [(0, 2), (0, 1)]


def test_multi_output_model_matches_keras():
    k = keras_module()
    ours = _two_by_two()
    i1, i2 = k.Input((3,)), k.Input((2,))
    theirs = k.Model([i1, i2], [k.layers.Dense(2)(i1),
                                k.layers.Dense(1)(k.layers.Concatenate()([i1, i2]))])
    copy_weights(ours, theirs)
    xa, xb = _x(4, 3), _x(4, 2, seed=1)
    for a, b in zip(ours.predict([xa, xb]), theirs.predict([xa, xb], verbose=0), strict=True):
        assert_close(a, b)


def test_single_output_functional_returns_an_array():
    a = keras.Input((3,))
    m = keras.Model(a, kl.Dense(2)(a))
    assert isinstance(m.predict(_x(2, 3)), np.ndarray)
    listed = keras.Model([a], [kl.Dense(2)(a)])
    out = listed.predict(_x(2, 3))
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == (2, 2)


# -- seeding and initializers -----------------------------------------------------------------------

def _fresh_model():
    return keras.Sequential([keras.Input((4, 4, 2)), kl.Conv2D(3, 3), kl.Flatten(), kl.Dense(5)])


def test_set_random_seed_makes_init_reproducible():
    keras.utils.set_random_seed(1)
    w1 = _fresh_model().get_weights()
    keras.utils.set_random_seed(1)
    w2 = _fresh_model().get_weights()
    keras.utils.set_random_seed(2)
    w3 = _fresh_model().get_weights()
    assert len(w1) == len(w2) == len(w3) == 4
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(w1[0], w3[0])
    assert not np.array_equal(w1[2], w3[2])
    # without re-seeding, the next model differs from the previous one
    assert not np.array_equal(_fresh_model().get_weights()[0], w3[0])


def test_set_random_seed_rejects_bad_seeds():
    with pytest.raises(ValueError, match=r"set_random_seed.*non-negative.*-1"):
        keras.utils.set_random_seed(-1)
    with pytest.raises(ValueError, match=r"set_random_seed"):
        keras.utils.set_random_seed("1")


def test_glorot_uniform_dense_kernel_and_zero_bias():
    keras.utils.set_random_seed(3)
    d = kl.Dense(300)
    d.build((None, 200))
    kernel, bias = d.kernel.numpy(), d.bias.numpy()
    limit = math.sqrt(6 / (200 + 300))
    assert kernel.dtype == np.float32
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.mean()) < 0.01 * limit
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    np.testing.assert_array_equal(bias, np.zeros(300, np.float32))


def test_glorot_uniform_conv_kernel_counts_receptive_field():
    keras.utils.set_random_seed(4)
    c = kl.Conv2D(32, 3)
    c.build((None, 8, 8, 16))
    kernel = c.kernel.numpy()
    assert kernel.shape == (3, 3, 16, 32)
    limit = math.sqrt(6 / (9 * 16 + 9 * 32))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.03)
    np.testing.assert_array_equal(c.bias.numpy(), np.zeros(32, np.float32))


def test_batchnorm_initial_weights():
    bn = kl.BatchNormalization()
    bn.build((None, 7))
    gamma, beta, mean, var = bn.get_weights()
    np.testing.assert_array_equal(gamma, np.ones(7))
    np.testing.assert_array_equal(beta, np.zeros(7))
    np.testing.assert_array_equal(mean, np.zeros(7))
    np.testing.assert_array_equal(var, np.ones(7))
    bn_plain = kl.BatchNormalization(center=False, scale=False)
    bn_plain.build((None, 2, 3))
    assert [w.name for w in bn_plain.weights] == ["moving_mean", "moving_variance"]
    # at inference a fresh BatchNormalization is x / sqrt(1 + epsilon)
    m = keras.Sequential([keras.Input((3,)), kl.BatchNormalization()])
    x = _x(4, 3)
    assert_close(m.predict(x), x / np.sqrt(1 + 1e-3))


def test_explicit_initializers_by_name_and_instance():
    d = kl.Dense(4, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(0.5))
    d.build((None, 3))
    np.testing.assert_array_equal(d.kernel.numpy(), np.ones((3, 4)))
    np.testing.assert_array_equal(d.bias.numpy(), np.full(4, 0.5))
    seeded = [kl.Dense(4, kernel_initializer=keras.initializers.HeNormal(seed=9)) for _ in range(2)]
    for layer in seeded:
        layer.build((None, 3))
    np.testing.assert_array_equal(seeded[0].kernel.numpy(), seeded[1].kernel.numpy())


# -- activations ------------------------------------------------------------------------------------

ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "exponential", "linear"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_functions_match_keras(name):
    k = keras_module()
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    ours = getattr(keras.activations, name)(x)
    theirs = np.asarray(getattr(k.activations, name)(x))
    assert_close(ours, theirs)
    assert keras.activations.get(name) is getattr(keras.activations, name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_by_name_equals_by_function(name):
    x = _x(3, 4)
    keras.utils.set_random_seed(5)
    by_name = keras.Sequential([keras.Input((4,)), kl.Dense(3, activation=name)])
    keras.utils.set_random_seed(5)
    by_fn = keras.Sequential([keras.Input((4,)), kl.Dense(3, activation=getattr(keras.activations, name))])
    np.testing.assert_array_equal(by_name.predict(x), by_fn.predict(x))
    assert by_fn.layers[0].get_config()["activation"] == name


def test_activation_values():
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    np.testing.assert_array_equal(keras.activations.relu(x), [[0.0, 0.0, 3.0]])
    assert_close(keras.activations.sigmoid(x), 1 / (1 + np.exp(-x)))
    assert_close(keras.activations.softmax(x), np.exp(x) / np.exp(x).sum())
    assert keras.activations.get(None) is keras.activations.linear
    assert keras.activations.get("swish") is keras.activations.silu
    assert keras.activations.get("ReLU") is keras.activations.relu
    m = keras.Sequential([keras.Input((3,)), kl.Activation("relu")])
    np.testing.assert_array_equal(m.predict(x), [[0.0, 0.0, 3.0]])


def test_custom_activation_callable():
    d = kl.Dense(2, activation=lambda t: keras.ops.multiply(t, 0.0), kernel_initializer="ones")
    m = keras.Sequential([keras.Input((2,)), d])
    np.testing.assert_array_equal(m.predict(np.ones((3, 2), np.float32)), np.zeros((3, 2)))


# -- summary ----------------------------------------------------------------------------------------

def test_summary_lists_layers_shapes_and_total_params():
    m = keras.Sequential([keras.Input((8, 8, 3)), kl.Conv2D(16, 3, name="sm_conv"),
                          kl.BatchNormalization(name="sm_bn"), kl.MaxPooling2D(name="sm_pool"),
                          kl.Flatten(name="sm_flat"), kl.Dense(10, name="sm_dense")], name="sm_model")
    text = _summary(m)
    assert 'Model: "sm_model"' in text
    for name, cls, shape in [("sm_conv", "Conv2D", "(None, 6, 6, 16)"),
                             ("sm_bn", "BatchNormalization", "(None, 6, 6, 16)"),
                             ("sm_pool", "MaxPooling2D", "(None, 3, 3, 16)"),
                             ("sm_flat", "Flatten", "(None, 144)"),
                             ("sm_dense", "Dense", "(None, 10)")]:
        row = next(line for line in text.splitlines() if f"{name} ({cls})" in line)
        assert shape in row, row
    assert m.count_params() == 448 + 64 + 1450
    assert _total_params(text) == m.count_params()
    assert "Total params: 1,962" in text  # thousands separators, as Keras
    assert "Trainable params: 1,930" in text
    assert "Non-trainable params: 32" in text
    conv_row = next(line for line in text.splitlines() if "sm_conv" in line)
    assert "448" in conv_row


def test_summary_prints_to_stdout_by_default(capsys):
    m = keras.Sequential([keras.Input((2,)), kl.Dense(3, name="stdout_d")])
    m.summary()
    out = capsys.readouterr().out
    assert "stdout_d (Dense)" in out and _total_params(out) == 9


def test_functional_summary_has_connections():
    m = _two_by_two()
    text = _summary(m)
    assert "Connected to" in text
    cat_row = next(line for line in text.splitlines() if "mio_cat (Concatenate)" in line)
    assert "mio_a[0][0]" in cat_row and "mio_b[0][0]" in cat_row and "(None, 5)" in cat_row
    assert _total_params(text) == m.count_params() == 8 + 6
