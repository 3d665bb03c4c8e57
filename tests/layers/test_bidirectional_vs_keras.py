"""Bidirectional against real Keras 3 (JAX backend) with identical weights.

Numbers: every merge mode (concat, sum, mul, ave, None) over SimpleRNN, LSTM and GRU, with
return_sequences and return_state, at batch 1 and 4 on a variable-length Input, run eagerly
(jit_compile=False) and compiled (compile()'s default: the LLVM kernels, no eager fallback) and
called on arrays; initial_state split half and half; a custom backward_layer; masks (a `mask`
argument, and a Masking layer's mask propagated through to the next layer, eager and compiled);
three Adam steps, eager and compiled, masked too, against Keras's losses and weights after.
Structure: weight order, shapes and paths ("bidirectional/forward_lstm/lstm_cell/kernel"), configs
and the serialized form both ways, output shapes and masks; bad arguments raise Keras's ValueErrors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile

F, U = 3, 4
ZEROS = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}  # weights are overwritten
CLASSES = ["SimpleRNN", "LSTM", "GRU"]
MODES = ["concat", "sum", "mul", "ave", None]
OPTIONS = [{}, {"return_sequences": True}, {"return_sequences": True, "return_state": True}]
SHAPES = ((1, 6), (4, 3))  # (batch, length)


def _opt_id(options: dict) -> str:
    return "-".join(options) or "last"


def _n_states(cls: str) -> int:
    return 2 if cls == "LSTM" else 1


def _bidi(mod, cls: str, mode, options: dict, **extra):
    rnn = getattr(mod.layers, cls)(U, name="rnn", **ZEROS, **options)
    return mod.layers.Bidirectional(rnn, merge_mode=mode, name="bidi", **extra)


def _model(mod, cls: str, mode, options: dict, with_state: bool = False, **extra):
    inp = mod.Input((None, F))
    layer = _bidi(mod, cls, mode, options, **extra)
    if with_state:
        states = [mod.Input((U,)) for _ in range(2 * _n_states(cls))]
        return mod.Model([inp, *states], layer(inp, initial_state=states))
    return mod.Model(inp, layer(inp))


def _randomize(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * 0.6).astype(np.float32)
                       for w in model.weights])


def _flat(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else [np.asarray(out)]


def _feeds(cls: str, batch: int, length: int, with_state: bool, rng):
    x = rng.standard_normal((batch, length, F)).astype(np.float32)
    if not with_state:
        return x
    return [x] + [rng.standard_normal((batch, U)).astype(np.float32)
                  for _ in range(2 * _n_states(cls))]


def _compare(ours, theirs, feeds, predict_only: bool = False) -> None:
    want = _flat(theirs(feeds))
    results = [_flat(ours.predict(feeds, verbose=0))]
    if not predict_only:
        results.append(_flat(ours(feeds)))
    for got in results:
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert_close(g, w, 1e-5, 1e-6)


pytestmark = pytest.mark.usefixtures("eager_is_expected")


# every (class, mode), (class, options) and (mode, options) pair once: 15 cases, not all 45
GRID = [(cls, mode, OPTIONS[(i + j) % len(OPTIONS)]) for i, cls in enumerate(CLASSES)
        for j, mode in enumerate(MODES)]


@pytest.mark.parametrize(("cls", "mode", "options"), GRID,
                         ids=[f"{c}-{m}-{_opt_id(o)}" for c, m, o in GRID])
def test_outputs_match_keras(cls, mode, options):
    keras = keras_module()
    ours, theirs = _model(kcompile, cls, mode, options), _model(keras, cls, mode, options)
    ours.compile(loss="mse", jit_compile=False)
    assert [(w.path, w.shape) for w in ours.weights] == \
        [(w.path, tuple(w.shape)) for w in theirs.weights]
    _randomize(ours)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(1)
    for batch, length in SHAPES:
        _compare(ours, theirs, _feeds(cls, batch, length, False, rng))


COMPILED = [("SimpleRNN", "concat", {"return_sequences": True}),
            ("SimpleRNN", None, {"return_state": True}),
            ("LSTM", "concat", {}),
            ("LSTM", "sum", {"return_sequences": True, "return_state": True}),
            ("LSTM", None, {"return_sequences": True}),
            ("GRU", "ave", {"return_sequences": True}),
            ("GRU", "mul", {}),
            ("GRU", "concat", {"return_sequences": True, "return_state": True})]


@pytest.mark.parametrize(("cls", "mode", "options"), COMPILED,
                         ids=[f"{c}-{m}-{_opt_id(o)}" for c, m, o in COMPILED])
def test_compiled_inference_matches_keras(cls, mode, options, module_cache_dir):
    """compile()'s default runs inference through the LLVM kernels (reverse included), no eager
    fallback; batch 1 and 4, two lengths, and the initial states of both directions."""
    keras = keras_module()
    for with_state in (False, True):
        ours = _model(kcompile, cls, mode, options, with_state)
        theirs = _model(keras, cls, mode, options, with_state)
        ours.compile(loss="mse")
        _randomize(ours, 2)
        theirs.set_weights(ours.get_weights())
        rng = np.random.default_rng(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # "runs eagerly" would be an error
            for batch, length in SHAPES:
                _compare(ours, theirs, _feeds(cls, batch, length, with_state, rng), predict_only=True)


@pytest.mark.parametrize("cls", CLASSES)
def test_initial_state_matches_keras(cls):
    """The first half of initial_state seeds the forward layer, the second the backward one."""
    keras = keras_module()
    options = {"return_sequences": True, "return_state": True}
    ours = _model(kcompile, cls, "concat", options, with_state=True)
    theirs = _model(keras, cls, "concat", options, with_state=True)
    ours.compile(loss="mse", jit_compile=False)
    _randomize(ours, 4)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(5)
    for batch, length in SHAPES:
        _compare(ours, theirs, _feeds(cls, batch, length, True, rng))


@pytest.mark.parametrize("cls", CLASSES)
def test_layer_called_eagerly_on_arrays(cls):
    keras = keras_module()
    options = {"return_sequences": True, "return_state": True}
    ours, theirs = _bidi(kcompile, cls, "ave", options), _bidi(keras, cls, "ave", options)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, F)).astype(np.float32)
    ours(x)
    theirs(x)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in ours.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    states = [rng.standard_normal((2, U)).astype(np.float32) for _ in range(2 * _n_states(cls))]
    for call in ({}, {"initial_state": states}):
        got, want = ours(x, **call), theirs(x, **call)
        assert isinstance(got, tuple) and len(got) == len(want) == 1 + 2 * _n_states(cls)
        for g, w in zip(got, want, strict=True):
            assert isinstance(g, np.ndarray)
            assert_close(g, np.asarray(w), 1e-5, 1e-6)


def _custom_pair(mod):
    forward = mod.layers.LSTM(U, return_sequences=True, name="fwd", **ZEROS)
    backward = mod.layers.LSTM(U, return_sequences=True, go_backwards=True, activation="relu",
                               unit_forget_bias=False, name="bwd", **ZEROS)
    return forward, backward


def test_custom_backward_layer_matches_keras():
    """A given backward_layer is used as it is (its name, options and weights); the forward
    layer is still a fresh copy of `layer`."""
    keras = keras_module()

    def build(mod):
        forward, backward = _custom_pair(mod)
        layer = mod.layers.Bidirectional(forward, backward_layer=backward, merge_mode="sum",
                                         name="bidi")
        assert layer.backward_layer is backward and layer.forward_layer is not forward
        assert (layer.forward_layer.name, layer.backward_layer.name) == ("forward_fwd", "bwd")
        inp = mod.Input((None, F))
        return mod.Model(inp, layer(inp))

    ours, theirs = build(kcompile), build(keras)
    ours.compile(loss="mse", jit_compile=False)
    assert [w.path for w in ours.weights] == [w.path for w in theirs.weights]
    assert ours.weights[3].path == "bidi/bwd/lstm_cell/kernel"
    _randomize(ours, 7)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(8)
    for batch, length in SHAPES:
        _compare(ours, theirs, _feeds("LSTM", batch, length, False, rng))
    config = ours.layers[1].get_config()
    assert config == theirs.layers[1].get_config()
    assert config["backward_layer"]["config"]["activation"] == "relu"


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("cls", CLASSES)
def test_weights_and_configs_match_keras(cls, mode):
    """Default initializers: shapes, order and paths, configs and the serialized form (both
    ways), build configs, output shapes."""
    keras = keras_module()
    options = {"return_sequences": True, "return_state": mode is None}
    ours, theirs = _bidi(kcompile, cls, mode, options), _bidi(keras, cls, mode, options)
    ours(kcompile.Input((7, F)))
    theirs(keras.Input((7, F)))
    assert [(w.path, w.shape) for w in ours.weights] == \
        [(w.path, tuple(w.shape)) for w in theirs.weights]
    assert ours.weights[0].path == f"bidi/forward_rnn/{ours.forward_layer.cell.name}/kernel"
    assert [w.trainable for w in ours.weights] == [w.trainable for w in theirs.weights]
    assert ours.get_config() == theirs.get_config()
    assert list(ours.get_config()) == list(theirs.get_config())
    assert kcompile.layers.serialize(ours) == keras.layers.serialize(theirs)
    back = keras.layers.deserialize(kcompile.layers.serialize(ours))
    assert back.get_config() == theirs.get_config()
    again = kcompile.layers.deserialize(keras.layers.serialize(theirs))
    assert type(again) is type(ours) and again.get_config() == ours.get_config()
    assert again.built and [w.shape for w in again.weights] == [w.shape for w in ours.weights]
    # Keras builds deserialized children outside the wrapper: no "bidi/" in their paths
    assert [w.path for w in again.weights] == [w.path for w in back.weights]
    assert ours.count_params() == theirs.count_params()
    for shape in ((None, 7, F), (2, None, F)):
        assert ours.compute_output_shape(shape) == theirs.compute_output_shape(shape)


@pytest.mark.parametrize("options", OPTIONS, ids=_opt_id)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_compute_mask_follows_keras(mode, options):
    keras = keras_module()
    ours, theirs = _bidi(kcompile, "GRU", mode, options), _bidi(keras, "GRU", mode, options)
    mask = np.ones((2, 5), bool)
    got, want = ours.compute_mask(None, mask), theirs.compute_mask(None, mask)
    if options.get("return_state"):  # Keras gives the output mask(s) only; kcompile adds Nones
        heads = list(want) if isinstance(want, tuple) else [want]
        assert len(got) == len(heads) + 2 and got[len(heads):] == [None, None]
        got = tuple(got[:len(heads)]) if isinstance(want, tuple) else got[0]
    assert type(got) is type(want)
    for g, w in zip(_flat(got) if got is not None else [], _flat(want) if want is not None else [],
                    strict=True):
        np.testing.assert_array_equal(g, w)


def test_weights_argument_sets_initial_weights():
    """`weights` (forward then backward arrays) are applied when the layer is built. (Keras 3
    accepts the argument but ignores it.)"""
    rng = np.random.default_rng(9)
    shapes = [(F, 3 * U), (U, 3 * U), (2, 3 * U)] * 2
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    layer = kcompile.layers.Bidirectional(kcompile.layers.GRU(U), weights=weights)
    layer(np.ones((1, 2, F), np.float32))
    for got, want in zip(layer.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


TRAIN = [("SimpleRNN", "concat", {"return_sequences": True}),
         ("LSTM", "ave", {}),
         ("GRU", "mul", {"return_sequences": True}),
         ("LSTM", None, {"return_sequences": True}),
         ("GRU", "sum", {})]


def _train_three_steps(ours, theirs, x, y, jit) -> None:
    """Three Adam steps on both: equal losses, then equal weights. Compiled (jit "auto") must not
    fall back to eager execution."""
    keras = keras_module()
    ours.compile(kcompile.optimizers.Adam(0.01), "mse", jit_compile=jit)
    theirs.compile(keras.optimizers.Adam(0.01), "mse")
    with warnings.catch_warnings():
        if jit:
            warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            np.testing.assert_allclose(ours.train_on_batch(x, y),
                                       float(theirs.train_on_batch(x, y)), rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", [False, "auto"], ids=["eager", "compiled"])
@pytest.mark.parametrize(("cls", "mode", "options"), TRAIN,
                         ids=[f"{c}-{m}-{_opt_id(o)}" for c, m, o in TRAIN])
def test_adam_steps_match_keras(cls, mode, options, jit, module_cache_dir):
    """Three Adam steps, eager and compiled (the LLVM BPTT kernels): the losses and every weight
    after them equal Keras's."""
    keras = keras_module()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 5, F)).astype(np.float32)

    def build(mod):
        inp = mod.Input((5, F))
        out = _bidi(mod, cls, mode, options)(inp)
        if mode is None:
            out = mod.layers.Concatenate()(list(out))
        return mod.Model(inp, mod.layers.Dense(2)(out))

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, 11)
    theirs.set_weights(ours.get_weights())
    y = rng.standard_normal((6, 5, 2) if options else (6, 2)).astype(np.float32)
    _train_three_steps(ours, theirs, x, y, jit)


@pytest.mark.parametrize("mode", ["concat", None])
@pytest.mark.parametrize("cls", CLASSES)
def test_mask_argument_matches_keras(cls, mode):
    """The mask reaches both directions; with return_sequences the masked steps are zeros
    (Keras forces zero_output_for_mask) and compute_mask passes the mask on."""
    keras = keras_module()
    options = {"return_sequences": True, "return_state": True}
    ours, theirs = _bidi(kcompile, cls, mode, options), _bidi(keras, cls, mode, options)
    assert ours.forward_layer.zero_output_for_mask and ours.backward_layer.zero_output_for_mask
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 6, F)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [0, 1, 1, 0, 1, 0]], bool)
    ours(x)
    theirs(x)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.6 for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    got, want = ours(x, mask=mask), theirs(x, mask=mask)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert_close(g, np.asarray(w), 1e-5, 1e-6)


MASKED = [("LSTM", "concat", {"return_sequences": True}),
          ("GRU", "sum", {}),
          ("SimpleRNN", None, {"return_sequences": True}),
          ("GRU", "ave", {"return_sequences": True, "return_state": True})]


def _masked_model(mod, cls, mode, options):
    """Masking -> Bidirectional -> a recurrent layer reading the propagated mask. (A fixed length:
    Masking on a variable-length Input does not trace yet.)"""
    inp = mod.Input((6, F))
    out = _bidi(mod, cls, mode, options)(mod.layers.Masking(0.0)(inp))
    outs = list(out) if isinstance(out, tuple) else [out]
    if options.get("return_sequences"):
        outs[0] = mod.layers.GRU(2, name="after", **ZEROS)(outs[0])  # masked by compute_mask
    return mod.Model(inp, outs)


def _padded(batch: int, length: int, rng) -> np.ndarray:
    x = rng.standard_normal((batch, length, F)).astype(np.float32)
    x[batch - 1, length // 2:] = 0.0  # the last row padded at the end
    x[0, 0] = 0.0  # and a step masked at the start of the first
    return x


@pytest.mark.parametrize(("cls", "mode", "options"), MASKED,
                         ids=[f"{c}-{m}-{_opt_id(o)}" for c, m, o in MASKED])
def test_propagated_mask_matches_keras(cls, mode, options, module_cache_dir):
    """A Masking layer's mask reaches both directions and, through compute_mask, the next layer:
    eager (jit_compile=False) and compiled (compile()'s default) predictions equal Keras's."""
    keras = keras_module()
    theirs = _masked_model(keras, cls, mode, options)
    rng = np.random.default_rng(13)
    for jit in (False, "auto"):
        ours = _masked_model(kcompile, cls, mode, options)
        ours.compile(loss="mse", jit_compile=jit)
        if jit is False:
            _randomize(ours, 14)
            theirs.set_weights(ours.get_weights())
        else:
            ours.set_weights(theirs.get_weights())
        for batch in (1, 4):
            x = _padded(batch, 6, rng)
            want = _flat(theirs(x))
            with warnings.catch_warnings():
                if jit:  # compiled: no eager fallback
                    warnings.simplefilter("error", RuntimeWarning)
                got = _flat(ours.predict(x, verbose=0))
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert_close(g, w, 1e-5, 1e-6)


@pytest.mark.parametrize("jit", [False, "auto"], ids=["eager", "compiled"])
def test_masked_adam_steps_match_keras(jit, module_cache_dir):
    """Three Adam steps through a masked Bidirectional LSTM (sequence output, masked loss)."""
    keras = keras_module()
    rng = np.random.default_rng(15)
    x = _padded(5, 6, rng)
    y = rng.standard_normal((5, 6, 2)).astype(np.float32)

    def build(mod):
        inp = mod.Input((6, F))
        seq = _bidi(mod, "LSTM", "concat", {"return_sequences": True})(mod.layers.Masking()(inp))
        return mod.Model(inp, mod.layers.Dense(2)(seq))

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, 16)
    theirs.set_weights(ours.get_weights())
    _train_three_steps(ours, theirs, x, y, jit)


def test_bad_arguments_raise_like_keras():
    L = kcompile.layers
    with pytest.raises(ValueError, match="Please initialize `Bidirectional` layer with a "
                                         r"`keras.layers.Layer` instance. Received: 3"):
        L.Bidirectional(3)
    with pytest.raises(ValueError, match="`backward_layer` need to be a `keras.layers.Layer` "
                                         "instance. Received: x"):
        L.Bidirectional(L.LSTM(U), backward_layer="x")
    with pytest.raises(ValueError, match=r"Invalid merge mode. Received: max. Merge mode should be "
                                         "one of"):
        L.Bidirectional(L.LSTM(U), merge_mode="max")
    # Keras fails here while recreating Dense with go_backwards (a TypeError); kcompile says why
    with pytest.raises(ValueError, match=r"`layer` must be a recurrent layer .* Dense 'dense_x' has "
                                         r"no `go_backwards`, `return_sequences`, `return_state`"):
        L.Bidirectional(L.Dense(3, name="dense_x"))
    with pytest.raises(ValueError, match="should have different `go_backwards` value"):
        L.Bidirectional(L.LSTM(U), backward_layer=L.LSTM(U))
    with pytest.raises(ValueError, match='the same value for attribute "return_sequences", got '
                                         '"False" for forward layer and "True" for backward'):
        L.Bidirectional(L.LSTM(U), backward_layer=L.LSTM(U, go_backwards=True,
                                                         return_sequences=True))
    with pytest.raises(ValueError, match="should have different `go_backwards`"):
        L.Bidirectional(L.GRU(U, go_backwards=True))  # the backward copy goes backwards too
    layer = L.Bidirectional(L.LSTM(U))
    x = np.ones((2, 3, F), np.float32)
    with pytest.raises(ValueError, match=r"an even number of tensors\), got 3"):
        layer(x, initial_state=[np.zeros((2, U), np.float32)] * 3)
    with pytest.raises(ValueError, match=r"expected 2 initial state tensor\(s\) \(h, c\), got 1"):
        layer(x, initial_state=[np.zeros((2, U), np.float32)] * 2)
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=2"):
        L.Bidirectional(L.GRU(U))(np.ones((2, F), np.float32))


@pytest.mark.parametrize("axis", [None, 1, (0, 2), -1], ids=str)
def test_ops_flip_matches_keras(axis):
    keras = keras_module()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(kcompile.ops.flip(x, axis), np.asarray(keras.ops.flip(x, axis)))
