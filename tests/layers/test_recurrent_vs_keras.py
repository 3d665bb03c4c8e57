"""SimpleRNN, LSTM and GRU against real Keras 3 (JAX backend) with identical weights.

Numbers: every output (sequence or last state, and the final states with return_state) of a
Functional model on a variable-length Input, at batch 1 and 4 and sequence lengths 1 and 7, with
go_backwards, initial_state, both GRU variants and other activations, run by the eager executor
(jit_compile=False); the layer called eagerly on arrays too; compiled (LLVM) == eager for every
variant (float64 layers run eagerly: jit_compile=True says so).
Structure: weight shapes, order and paths, configs (get_config and the serialized form, both
ways), build configs. Options kcompile does not implement raise clear errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile

F, U = 3, 4
# Weights are overwritten; constant initializers spare Keras a JAX compilation of its random and
# orthogonal initializers per weight shape.
ZEROS = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}
VARIANTS = [("SimpleRNN", {}), ("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False})]
OPTIONS = [{}, {"return_sequences": True}, {"return_state": True, "go_backwards": True},
           {"return_sequences": True, "return_state": True, "go_backwards": True}]
# (batch, length) pairs: both batch sizes and both lengths, each model at two of them
SHAPES = ((1, 7), (4, 1))


def _id(cls: str, kw: dict) -> str:
    return cls + "".join(f"-{k}={v}" for k, v in kw.items())


def _n_states(cls: str) -> int:
    return 2 if cls == "LSTM" else 1


def _model(mod, cls: str, kw: dict, with_state: bool = False):
    inp = mod.Input((None, F))
    layer = getattr(mod.layers, cls)(U, name="rnn", **ZEROS, **kw)
    if with_state:
        states = [mod.Input((U,)) for _ in range(_n_states(cls))]
        return mod.Model([inp, *states], layer(inp, initial_state=states))
    return mod.Model(inp, layer(inp))


def _pair(cls: str, kw: dict, with_state: bool = False, seed: int = 0, jit: bool = False):
    keras = keras_module()
    ours = _model(kcompile, cls, kw, with_state)
    ours.compile(loss="mse", jit_compile=jit)
    theirs = _model(keras, cls, kw, with_state)
    rng = np.random.default_rng(seed)
    ours.set_weights([(rng.standard_normal(w.shape) * 0.6).astype(np.float32)
                      for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _flat(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else [np.asarray(out)]


def _compare(ours, theirs, feeds) -> None:
    want = _flat(theirs(feeds))
    for got in (_flat(ours.predict(feeds, verbose=0)), _flat(ours(feeds))):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert_close(g, w, 1e-5, 1e-6)


def _feeds(cls: str, batch: int, length: int, with_state: bool, rng):
    x = rng.standard_normal((batch, length, F)).astype(np.float32)
    if not with_state:
        return x
    return [x] + [rng.standard_normal((batch, U)).astype(np.float32) for _ in range(_n_states(cls))]


pytestmark = pytest.mark.usefixtures("eager_is_expected")


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "".join(o) or "defaults")
@pytest.mark.parametrize(("cls", "kw"), VARIANTS, ids=[_id(*v) for v in VARIANTS])
def test_outputs_match_keras(cls, kw, options):
    ours, theirs = _pair(cls, {**kw, **options})
    assert [w.path for w in ours.weights] == [w.path for w in theirs.weights]
    assert [w.shape for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    rng = np.random.default_rng(1)
    for batch, length in SHAPES:
        _compare(ours, theirs, _feeds(cls, batch, length, False, rng))


@pytest.mark.parametrize(("cls", "kw"), VARIANTS, ids=[_id(*v) for v in VARIANTS])
def test_initial_state_matches_keras(cls, kw):
    ours, theirs = _pair(cls, {**kw, "return_sequences": True, "return_state": True}, True)
    rng = np.random.default_rng(2)
    for batch, length in SHAPES:
        _compare(ours, theirs, _feeds(cls, batch, length, True, rng))


ACTIVATIONS = [("SimpleRNN", {"activation": None, "use_bias": False}),
               ("SimpleRNN", {"activation": "relu", "go_backwards": True}),
               ("LSTM", {"activation": "relu", "recurrent_activation": "tanh"}),
               ("LSTM", {"use_bias": False, "return_sequences": True}),
               ("GRU", {"activation": "sigmoid", "recurrent_activation": "tanh"}),
               ("GRU", {"use_bias": False, "reset_after": False, "return_sequences": True})]


@pytest.mark.parametrize(("cls", "kw"), ACTIVATIONS, ids=[_id(*v) for v in ACTIVATIONS])
def test_activations_and_no_bias_match_keras(cls, kw):
    ours, theirs = _pair(cls, kw, seed=3)
    assert [w.shape for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    _compare(ours, theirs, _feeds(cls, 4, 7, False, np.random.default_rng(3)))


@pytest.mark.parametrize(("cls", "kw"), VARIANTS, ids=[_id(*v) for v in VARIANTS])
def test_layer_called_eagerly_on_arrays(cls, kw):
    keras = keras_module()
    ours = getattr(kcompile.layers, cls)(U, return_state=True, **ZEROS, **kw)
    theirs = getattr(keras.layers, cls)(U, return_state=True, **ZEROS, **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, F)).astype(np.float32)
    ours(x)
    theirs(x)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in ours.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    states = [rng.standard_normal((2, U)).astype(np.float32) for _ in range(_n_states(cls))]
    for got, want in zip(ours(x, initial_state=states), theirs(x, initial_state=states), strict=True):
        assert isinstance(got, np.ndarray)
        assert_close(got, np.asarray(want), 1e-5, 1e-6)


@pytest.mark.parametrize(("cls", "kw"), VARIANTS, ids=[_id(*v) for v in VARIANTS])
def test_weights_and_configs_match_keras(cls, kw):
    """Default initializers: shapes, order, paths, build and layer configs, both directions."""
    keras = keras_module()
    kw = {**kw, "return_sequences": True, "go_backwards": True, "unroll": True}
    ours = getattr(kcompile.layers, cls)(U, name="rec", **kw)
    theirs = getattr(keras.layers, cls)(U, name="rec", **kw)
    ours(kcompile.Input((7, F)))
    theirs(keras.Input((7, F)))
    assert [(w.path, w.shape) for w in ours.weights] == \
        [(w.path, tuple(w.shape)) for w in theirs.weights]
    assert [w.trainable for w in ours.weights] == [w.trainable for w in theirs.weights]
    assert ours.get_config() == theirs.get_config()
    assert list(ours.get_config()) == list(theirs.get_config())
    assert kcompile.layers.serialize(ours) == keras.layers.serialize(theirs)
    back = keras.layers.deserialize(kcompile.layers.serialize(ours))
    assert back.get_config() == theirs.get_config()
    again = kcompile.layers.deserialize(keras.layers.serialize(theirs))
    assert type(again) is type(ours) and again.get_config() == ours.get_config()
    assert again.built and [w.shape for w in again.weights] == [w.shape for w in ours.weights]
    assert ours.count_params() == theirs.count_params()
    assert tuple(ours.compute_output_shape((None, 7, F))) == \
        tuple(theirs.compute_output_shape((None, 7, F)))


def test_initial_weights_follow_keras():
    """glorot_uniform kernels, orthogonal recurrent kernels, zero biases; LSTM's forget-gate
    quarter of the bias starts at one (unit_forget_bias)."""
    lstm = kcompile.layers.LSTM(3)
    lstm.build((None, 2, 5))
    kernel, recurrent, bias = lstm.get_weights()
    np.testing.assert_array_equal(bias, [0] * 3 + [1] * 3 + [0] * 6)
    assert np.abs(kernel).max() <= np.sqrt(6 / (5 + 12))
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(3), atol=1e-5)
    plain = kcompile.layers.LSTM(3, unit_forget_bias=False, bias_initializer="ones")
    plain.build((None, 2, 5))
    np.testing.assert_array_equal(plain.get_weights()[2], np.ones(12))
    gru = kcompile.layers.GRU(3)
    gru.build((None, 2, 5))
    assert [w.shape for w in gru.weights] == [(5, 9), (3, 9), (2, 9)]
    before = kcompile.layers.GRU(3, reset_after=False)
    before.build((None, 2, 5))
    assert [w.shape for w in before.weights] == [(5, 9), (3, 9), (9,)]


def test_functional_shapes_and_state_outputs():
    inp = kcompile.Input((None, F))
    seq, h, c = kcompile.layers.LSTM(U, return_sequences=True, return_state=True)(inp)
    assert (seq.shape, h.shape, c.shape) == ((None, None, U), (None, U), (None, U))
    assert kcompile.layers.GRU(U, go_backwards=True)(seq, initial_state=h).shape == (None, U)
    fixed = kcompile.Input((6, F))
    assert kcompile.layers.SimpleRNN(U, return_sequences=True)(fixed).shape == (None, 6, U)


COMPILED = [("SimpleRNN", {"return_sequences": True, "return_state": True}),
            ("SimpleRNN", {"go_backwards": True, "activation": "relu"}),
            ("LSTM", {"return_sequences": True, "return_state": True}),
            ("LSTM", {"go_backwards": True, "units": 19}),
            ("GRU", {"return_sequences": True, "return_state": True}),
            ("GRU", {"go_backwards": True, "units": 21}),
            ("GRU", {"reset_after": False, "return_sequences": True, "units": 18})]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize(("cls", "kw"), COMPILED, ids=[_id(*v) for v in COMPILED])
def test_compiled_matches_eager(cls, kw, with_state, module_cache_dir):
    """The LLVM time-loop kernel against the eager executor, on the same model and data; units
    that are not a multiple of the vector width take the masked edge block."""
    kw = dict(kw)
    units = kw.pop("units", U)

    def build(jit):
        inp = kcompile.Input((None, F))
        layer = getattr(kcompile.layers, cls)(units, name="rnn", **kw)
        if with_state:
            states = [kcompile.Input((units,)) for _ in range(_n_states(cls))]
            model = kcompile.Model([inp, *states], layer(inp, initial_state=states))
        else:
            model = kcompile.Model(inp, layer(inp))
        model.compile(loss="mse", jit_compile=jit)
        return model

    compiled, eager = build(True), build(False)
    rng = np.random.default_rng(5)
    compiled.set_weights([(rng.standard_normal(w.shape) * 0.6).astype(np.float32)
                          for w in compiled.weights])
    eager.set_weights(compiled.get_weights())
    for batch, length in ((1, 1), (17, 7)):  # 17 rows on 2 threads: 6-row tiles, pairs, singles
        x = rng.standard_normal((batch, length, F)).astype(np.float32)
        feeds = [x] + [rng.standard_normal((batch, units)).astype(np.float32)
                       for _ in range(_n_states(cls))] if with_state else x
        for got, want in zip(_flat(compiled.predict(feeds, verbose=0)),
                             _flat(eager.predict(feeds, verbose=0)), strict=True):
            assert_close(got, want)


def test_what_is_not_compiled_says_so():
    """The kernel is float32 only: jit_compile=True raises, "auto" warns and runs eagerly."""
    x = np.ones((2, 3, F))
    model = kcompile.Sequential([kcompile.Input((3, F), dtype="float64"),
                                 kcompile.layers.GRU(U, dtype="float64", name="rnn")])
    model.compile(loss="mse", jit_compile=True)
    with pytest.raises(NotImplementedError, match=r"gru \(.*rnn\): the LLVM recurrent kernel is "
                                                  r"float32 only, got float64; use jit_compile=False"):
        model.predict(x, verbose=0)
    model.compile(loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="runs eagerly: .*float32 only"):
            model.predict(x, verbose=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dropout": 0.2}, "`dropout`=0.2 is not supported yet"),
    ({"recurrent_dropout": 0.1}, "`recurrent_dropout`=0.1 is not supported yet"),
    ({"stateful": True}, "`stateful=True` is not supported yet"),
    ({"activation": "gelu"}, "activation='gelu' is not supported yet"),
    ({"recurrent_activation": "softmax"}, "recurrent_activation='softmax' is not supported"),
    ({"kernel_regularizer": "l2"}, "`kernel_regularizer` is not supported yet"),
    ({"units": 0}, "positive integer"),
    ({"use_cudnn": "maybe"}, "use_cudnn"),
])
def test_unsupported_options_raise(kwargs, match):
    kwargs = {"units": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        kcompile.layers.LSTM(**kwargs)


def test_bad_calls_raise():
    layer = kcompile.layers.LSTM(U)
    x = np.ones((2, 3, F), np.float32)
    with pytest.raises(ValueError, match="the mask must have shape"):  # masks: test_masking_vs_keras
        layer(x, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"expected 2 initial state tensor\(s\) \(h, c\), got 1"):
        layer(x, initial_state=[np.zeros((2, U), np.float32)])
    with pytest.raises(ValueError, match=r"initial state must have shape \(batch, 4\)"):
        layer(x, initial_state=[np.zeros((2, 3), np.float32)] * 2)
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=2"):
        kcompile.layers.GRU(U)(np.ones((2, F), np.float32))
