"""Sequence layers (Conv1D, 1-D pooling, LayerNormalization, TimeDistributed, Embedding) against real
Keras 3 with identical weights: outputs at batch 1 and 5 (compiled, the layer called eagerly, the
eager executor), three training steps, and the errors for bad input (out-of-range ids, wrong rank,
unsupported options).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile

pytestmark = [pytest.mark.filterwarnings("error:Model .* runs eagerly:RuntimeWarning"),
              pytest.mark.usefixtures("module_cache_dir")]

NAME = "probe"
ZERO = {"kernel_initializer": "zeros"}  # overwritten; spares Keras a JAX compile of its initializer


def _randomize(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])


def _pair(make, input_shape, dtype="float32"):
    keras = keras_module()
    ours = kcompile.Sequential([kcompile.Input(input_shape, dtype=dtype), make(kcompile.layers)])
    theirs = keras.Sequential([keras.Input(input_shape, dtype=dtype), make(keras.layers)])
    _randomize(ours)
    copy_weights(ours, theirs)
    return ours, theirs


def _check(ours, theirs, input_shape, draw) -> None:
    layer = ours.layers[-1]
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert tuple(ours.outputs[0].shape) == tuple(theirs.outputs[0].shape)
    assert tuple(layer.compute_output_shape((None, *input_shape))) == \
        tuple(theirs.layers[-1].compute_output_shape((None, *input_shape)))
    rng = np.random.default_rng(1)
    cases = []
    for batch in (1, 5):
        x = draw(rng, (batch, *input_shape))
        want = np.asarray(theirs(x))
        cases.append((x, want))
        got = ours.predict(x, verbose=0)
        assert got.shape == want.shape
        assert_close(got, want)
        assert_close(ours(x), want)  # the compiled fast path
        assert_close(layer(x), want)  # eager: the layer's call() on NumPy, outside any model
    ours.compile(jit_compile=False)
    for x, want in cases:
        assert_close(ours.predict(x, verbose=0), want)


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


LAYER_CASES = [
    ("conv1d-valid", lambda L: L.Conv1D(4, 3, name=NAME, **ZERO), (9, 3)),
    ("conv1d-causal-dilated", lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2,
                                                 activation="relu", name=NAME, **ZERO), (11, 2)),
    ("conv1d-same-strided", lambda L: L.Conv1D(5, 4, strides=2, padding="same", name=NAME, **ZERO),
     (11, 3)),
    ("conv1d-valid-stride3-nobias", lambda L: L.Conv1D(5, 2, strides=3, use_bias=False, name=NAME,
                                                       **ZERO), (10, 3)),
    ("conv1d-causal-strided", lambda L: L.Conv1D(3, 2, strides=2, padding="causal", name=NAME,
                                                 **ZERO), (7, 2)),
    ("maxpool1d-default", lambda L: L.MaxPooling1D(name=NAME), (9, 3)),
    ("maxpool1d-same", lambda L: L.MaxPooling1D(3, strides=2, padding="same", name=NAME), (10, 3)),
    ("avgpool1d-same", lambda L: L.AveragePooling1D(3, strides=2, padding="same", name=NAME), (9, 2)),
    ("gap1d", lambda L: L.GlobalAveragePooling1D(name=NAME), (7, 3)),
    ("gap1d-keepdims", lambda L: L.GlobalAveragePooling1D(keepdims=True, name=NAME), (7, 3)),
    ("gmp1d", lambda L: L.GlobalMaxPooling1D(name=NAME), (5, 4)),
    ("layernorm", lambda L: L.LayerNormalization(name=NAME), (7, 5)),
    ("layernorm-axis1-eps", lambda L: L.LayerNormalization(axis=1, epsilon=1e-5, name=NAME), (7, 5)),
    ("layernorm-two-axes-no-center", lambda L: L.LayerNormalization(axis=[1, 2], center=False,
                                                                    name=NAME), (4, 5)),
    ("layernorm-rank2-no-scale", lambda L: L.LayerNormalization(scale=False, name=NAME), (6,)),
    ("timedistributed-dense", lambda L: L.TimeDistributed(L.Dense(4, activation="tanh", **ZERO),
                                                          name=NAME), (6, 3)),
]


@pytest.mark.parametrize("make,input_shape", [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_matches_keras(make, input_shape):
    ours, theirs = _pair(make, input_shape)
    _check(ours, theirs, input_shape, _normal)


@pytest.mark.parametrize("dtype", ["int32", "float32"])
def test_embedding_matches_keras(dtype):
    ours, theirs = _pair(lambda L: L.Embedding(13, 4, name=NAME), (6,), dtype)
    assert [w.name for w in ours.weights] == ["embeddings"]
    _check(ours, theirs, (6,), lambda rng, shape: rng.integers(0, 13, shape).astype(dtype))


def test_embedding_defaults_match_keras():
    keras = keras_module()
    ours, theirs = kcompile.layers.Embedding(50, 3), keras.layers.Embedding(50, 3)
    assert ours.get_config()["embeddings_initializer"] == theirs.get_config()["embeddings_initializer"]
    ours.build()
    values = ours.get_weights()[0]
    assert values.shape == (50, 3) and values.min() >= -0.05 and values.max() <= 0.05
    assert ours.mask_zero is theirs.mask_zero is False


def test_embedding_on_rank3_ids_and_int64():
    keras = keras_module()
    ids = np.random.default_rng(2).integers(0, 9, (2, 3, 4))
    ours, theirs = kcompile.layers.Embedding(9, 5), keras.layers.Embedding(9, 5)
    ours.build()
    theirs.build()
    theirs.set_weights(ours.get_weights())
    assert_close(ours(ids), np.asarray(theirs(ids)))  # int64 ids, eager
    model = kcompile.Sequential([kcompile.Input((3, 4), dtype="int64"), ours])
    assert_close(model.predict(ids, verbose=0), np.asarray(theirs(ids)))


# --- training parity ------------------------------------------------------------------------------
def _conv_model(m):
    L = m.layers
    return m.Sequential([m.Input((12, 3)),
                         L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
                         L.LayerNormalization(), L.MaxPooling1D(2), L.Conv1D(4, 3, padding="same"),
                         L.TimeDistributed(L.Dense(5, activation="tanh")),
                         L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])


def _embedding_model(m):
    L = m.layers
    return m.Sequential([m.Input((7,), dtype="int32"), L.Embedding(20, 6),
                         L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])


def _data(build, rng):
    x = rng.standard_normal((16, 12, 3)).astype(np.float32) if build is _conv_model else \
        rng.integers(0, 20, (16, 7)).astype(np.int32)  # repeated ids: their gradients add up
    return x, rng.integers(0, 3, 16)


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize("build", [_conv_model, _embedding_model], ids=["conv1d-layernorm", "embedding"])
def test_three_training_steps_match_keras(build, jit):
    keras = keras_module()
    rng = np.random.default_rng(0)
    ours, theirs = build(kcompile), build(keras)
    ours.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    ours.compile(kcompile.optimizers.Adam(0.01), "sparse_categorical_crossentropy", jit_compile=jit)
    theirs.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = _data(build, rng)
    for _ in range(3):
        np.testing.assert_allclose(ours.train_on_batch(x, y), float(theirs.train_on_batch(x, y)),
                                   rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        assert_close(a, np.asarray(b))


# --- bad input ------------------------------------------------------------------------------------
OUT_OF_RANGE = r"layer '(\w+/)?emb'.*id {bad} is out of range; valid ids are 0 to 19 \(input_dim=20\)"


@pytest.mark.parametrize("bad", [20, -1, 1000])
def test_out_of_range_ids_raise_on_every_executor(bad):
    model = kcompile.Sequential([kcompile.Input((7,), dtype="int32"),
                                 kcompile.layers.Embedding(20, 3, name="emb")])
    x = np.zeros((4, 7), np.int32)
    x[2, 5] = bad
    msg = OUT_OF_RANGE.format(bad=bad)
    with pytest.raises(ValueError, match=msg):
        model.predict(x, verbose=0)  # compiled
    with pytest.raises(ValueError, match=msg):
        model(x)  # compiled, the fast path
    with pytest.raises(ValueError, match=msg):
        model.layers[0](x)  # eager layer call
    good = np.ones((4, 7), np.int32)
    want = model.predict(good, verbose=0)  # the error is reset: the next call works
    assert_close(model(good), want)
    model.compile(jit_compile=False)
    with pytest.raises(ValueError, match=msg):
        model.predict(x, verbose=0)  # the eager executor


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_out_of_range_ids_in_training_leave_the_weights_alone(jit):
    model = _embedding_model(kcompile)
    model.layers[0].name = "emb"
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit)
    x, y = _data(_embedding_model, np.random.default_rng(0))
    model.train_on_batch(x, y)
    before = model.get_weights()
    bad = x.copy()
    bad[3, 1] = 20
    with pytest.raises(ValueError, match=OUT_OF_RANGE.format(bad=20)):
        model.train_on_batch(bad, y)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    model.train_on_batch(x, y)  # and training goes on


def test_float_ids_are_truncated_like_keras_and_checked():
    model = kcompile.Sequential([kcompile.Input((3,)), kcompile.layers.Embedding(5, 2, name="emb")])
    table = model.get_weights()[0]
    got = model.predict(np.array([[0.9, 2.5, 4.99]], np.float32), verbose=0)
    np.testing.assert_array_equal(got[0], table[[0, 2, 4]])
    with pytest.raises(ValueError, match=r"id 5 is out of range; valid ids are 0 to 4"):
        model.predict(np.array([[5.2, 0, 0]], np.float32), verbose=0)


def test_mask_zero_runs_like_keras():
    """GlobalAveragePooling1D averages the steps the Embedding's mask keeps (more in
    test_masking_vs_keras.py)."""
    keras = keras_module()
    ours, theirs = (m.Sequential([m.Input((4,), dtype="int32"),
                                  m.layers.Embedding(6, 2, mask_zero=True),
                                  m.layers.GlobalAveragePooling1D()]) for m in (kcompile, keras))
    assert tuple(ours.outputs[0].shape) == (None, 2)
    assert ours.layers[0].get_config()["mask_zero"] is True
    copy_weights(ours, theirs)
    ids = np.array([[1, 2, 0, 0], [0, 0, 5, 3], [4, 0, 1, 0]], np.int32)
    assert_close(ours.predict(ids, verbose=0), np.asarray(theirs(ids)))


def test_wrong_rank_and_bad_options():
    L = kcompile.layers
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=4"):
        kcompile.Sequential([kcompile.Input((5, 5, 2)), L.Conv1D(2, 3)])
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=2"):
        kcompile.Sequential([kcompile.Input((5,)), L.MaxPooling1D()])
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=2"):
        kcompile.Sequential([kcompile.Input((5,)), L.GlobalAveragePooling1D()])
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        kcompile.Sequential([kcompile.Input((5,)), L.TimeDistributed(L.Dense(2))])
    conv = L.Conv1D(2, 3, name="c1")
    conv.build((None, 6, 2))
    with pytest.raises(ValueError, match="c1"):
        conv(np.zeros((6, 2), np.float32))  # rank 2 given to a built layer
    with pytest.raises(ValueError, match="`padding` must be 'valid' or 'same'"):
        L.MaxPooling1D(padding="causal")
    with pytest.raises(ValueError, match="`strides > 1` not supported in conjunction with "
                                         "`dilation_rate > 1`"):
        L.Conv1D(2, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="kernel 3 .* does not fit|does not fit"):
        kcompile.Sequential([kcompile.Input((2, 1)), L.Conv1D(2, 3)])
    with pytest.raises(NotImplementedError, match="TimeDistributed .*wrapping Conv2D is not supported"):
        L.TimeDistributed(L.Conv2D(2, 3))
    with pytest.raises(ValueError, match="`input_dim` must be a positive integer"):
        L.Embedding(0, 3)
    with pytest.raises(ValueError, match="normalized axes"):
        kcompile.Sequential([kcompile.Input((4,)), L.LayerNormalization(axis=0)])
    with pytest.raises(TypeError, match="Expected an int or a list/tuple of ints"):
        L.LayerNormalization(axis="last")
