"""Keras masking end to end, against real Keras 3 (JAX backend) with identical weights.

Embedding(mask_zero=True) and Masking make masks; SimpleRNN, LSTM and GRU (both variants) skip the
masked steps (return_sequences, return_state, go_backwards, zero_output_for_mask; right-padded,
left-padded and holes; batch 1 and more), eager (jit_compile=False) and compiled (LLVM). Masks pass
through Dense, Activation, Dropout, TimeDistributed, LayerNormalization; merge layers combine them;
GlobalAveragePooling1D averages the unmasked steps; layers without mask support drop them with
Keras's warning; `initial_state` follows Keras (the mask is not passed then, unless explicit).
Symbolic tensors carry their mask's spec, layers called on arrays carry masks too, custom layers
get `mask=` and may define `compute_mask`. Bad masks raise a ValueError naming the layer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile
from kcompile.layers.base import get_keras_mask

pytestmark = pytest.mark.usefixtures("module_cache_dir")

VOCAB, E, U, T = 12, 3, 4, 6
ZEROS = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}
CELLS = [("SimpleRNN", {}), ("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False})]
OPTIONS = [{}, {"return_sequences": True}, {"go_backwards": True},
           {"return_sequences": True, "go_backwards": True, "return_state": True},
           {"return_sequences": True, "zero_output_for_mask": True},
           {"zero_output_for_mask": True, "go_backwards": True, "return_state": True}]
EXECUTORS = ["eager", "compiled"]


def _id(cls: str, kw: dict) -> str:
    return cls + "".join(f"-{k}={v}" for k, v in kw.items())


def tokens(batch: int, seed: int = 0, length: int = T) -> np.ndarray:
    """Ids with 0 = padding: rows right-padded, left-padded, with holes, unpadded, all padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (batch, length))
    for k in range(batch):
        cut = int(rng.integers(1, length))
        kind = k % 5
        if kind == 0:
            ids[k, cut:] = 0
        elif kind == 1:
            ids[k, :cut] = 0
        elif kind == 2:
            ids[k, [1, length - 2]] = 0
        elif kind == 4:
            ids[k, :] = 0
    return ids.astype(np.int32)


def _randomize(ours, theirs, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ours.set_weights([(rng.standard_normal(w.shape) * 0.6).astype(np.float32) for w in ours.weights])
    theirs.set_weights(ours.get_weights())


def _flat(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in out] if isinstance(out, list | tuple) else [np.asarray(out)]


def _run(model, x, executor: str):
    """The model's predictions with the eager executor or compiled code (jit_compile=True raises
    when something cannot be compiled)."""
    model.compile(loss="mse", jit_compile=executor == "compiled")
    return _flat(model.predict(x, verbose=0))


def _check(ours, theirs, x, executor: str, atol: float = 1e-6) -> None:
    want = _flat(theirs(x))
    got = _run(ours, x, executor)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert_close(g, w, 1e-5, atol)


def _embedded_rnn(mod, cls: str, kw: dict):
    inp = mod.Input((T,), dtype="int32")
    x = mod.layers.Embedding(VOCAB, E, mask_zero=True, name="emb")(inp)
    return mod.Model(inp, getattr(mod.layers, cls)(U, name="rnn", **ZEROS, **kw)(x))


# -- Embedding(mask_zero=True) -> recurrent layer ----------------------------------------------------
@pytest.mark.parametrize("kw", OPTIONS, ids=[_id("", kw) or "plain" for kw in OPTIONS])
@pytest.mark.parametrize(("cls", "cell_kw"), CELLS, ids=[_id(c, k) for c, k in CELLS])
def test_embedding_mask_into_rnn(cls, cell_kw, kw):
    """Both executors against one Keras model (one case builds the Keras side once)."""
    keras = keras_module()
    ours = _embedded_rnn(kcompile, cls, {**cell_kw, **kw})
    theirs = _embedded_rnn(keras, cls, {**cell_kw, **kw})
    _randomize(ours, theirs)
    for executor in EXECUTORS:
        for batch, seed in ((7, 1), (1, 3)):
            _check(ours, theirs, tokens(batch, seed), executor)


def test_masked_steps_are_skipped():
    """Right padding changes nothing: the last state equals that of the unpadded sequence."""
    ours = _embedded_rnn(kcompile, "LSTM", {})
    ours.set_weights([np.random.default_rng(4).standard_normal(w.shape).astype(np.float32)
                      for w in ours.weights])
    ids = np.array([[3, 5, 7, 0, 0, 0], [0, 0, 0, 3, 5, 7], [3, 0, 5, 0, 7, 0]], np.int32)
    out = ours.predict(ids, verbose=0)
    assert_close(out[1], out[0], 1e-6, 1e-6)
    assert_close(out[2], out[0], 1e-6, 1e-6)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize(("cls", "cell_kw"), CELLS[1:3], ids=["LSTM", "GRU"])
def test_initial_state_as_keras(cls, cell_kw, executor):
    """Keras passes the mask only when the layer's one tensor argument carries it: with an
    initial state the sequence runs unmasked (the output still carries the mask); an explicit
    `mask=` is used."""
    keras = keras_module()
    n_states = 2 if cls == "LSTM" else 1

    def build(mod, explicit: bool):
        inp = mod.Input((T,), dtype="int32")
        states = [mod.Input((U,)) for _ in range(n_states)]
        mask = mod.Input((T,))
        x = mod.layers.Embedding(VOCAB, E, mask_zero=True)(inp)
        layer = getattr(mod.layers, cls)(U, return_sequences=True, **ZEROS, **cell_kw)
        y = layer(x, initial_state=states, mask=mask) if explicit else layer(x, initial_state=states)
        return mod.Model([inp, *states, mask], mod.layers.Dense(2)(y))

    rng = np.random.default_rng(5)
    ids = tokens(6, 5)
    feeds = [ids] + [rng.standard_normal((6, U)).astype(np.float32) for _ in range(n_states)]
    feeds.append((rng.random((6, T)) > 0.3).astype(np.float32))
    for explicit in (False, True):
        ours, theirs = build(kcompile, explicit), build(keras, explicit)
        _randomize(ours, theirs, 6)
        _check(ours, theirs, feeds, executor)


# -- Masking ------------------------------------------------------------------------------------------
def _masked_sequences(batch: int, value: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, T, E)).astype(np.float32)
    mask = tokens(batch, seed) != 0
    x[~mask] = value
    x[0, 2, 0] = value  # one feature equal to mask_value does not mask the step
    return x


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("mask_value", [0.0, -1.0])
def test_masking_into_lstm(mask_value, executor):
    keras = keras_module()

    def build(mod):
        return mod.Sequential([mod.Input((T, E)), mod.layers.Masking(mask_value=mask_value),
                               mod.layers.LSTM(U, return_sequences=True, **ZEROS),
                               mod.layers.Dense(2)])

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, theirs, 7)
    for batch in (6, 1):
        _check(ours, theirs, _masked_sequences(batch, mask_value, batch), executor)


def test_masking_layer_output_and_mask():
    keras = keras_module()
    x = _masked_sequences(5, -1.0, 3)
    ours, theirs = kcompile.layers.Masking(-1.0), keras.layers.Masking(-1.0)
    got, want = ours(x), theirs(x)
    assert_close(got, np.asarray(want))
    np.testing.assert_array_equal(get_keras_mask(got).astype(bool), np.asarray(want._keras_mask))
    np.testing.assert_array_equal(np.asarray(ours.compute_mask(x, None)).astype(bool),
                                  np.asarray(theirs.compute_mask(x, None)))
    assert ours.supports_masking and theirs.supports_masking


@pytest.mark.parametrize("kwargs", [{}, {"mask_value": -1.5}, {"mask_value": 2}])
def test_masking_config(kwargs):
    keras = keras_module()
    ours = kcompile.layers.Masking(name="pad", **kwargs)
    theirs = keras.layers.Masking(name="pad", **kwargs)
    assert ours.get_config() == theirs.get_config()
    again = kcompile.layers.Masking.from_config(theirs.get_config())
    assert again.mask_value == theirs.mask_value
    assert kcompile.layers.serialize(ours)["class_name"] == "Masking"


# -- what masks pass through, what drops them ---------------------------------------------------------
@pytest.mark.parametrize("executor", EXECUTORS)
def test_mask_through_dense_dropout_timedistributed(executor):
    keras = keras_module()

    def build(mod):
        L = mod.layers
        inp = mod.Input((T,), dtype="int32")
        x = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        x = L.Dense(5, activation="tanh")(x)
        x = L.Dropout(0.3)(x)
        x = L.Activation("relu")(x)
        x = L.TimeDistributed(L.Dense(4))(x)
        x = L.LayerNormalization()(x)
        x = L.GRU(U, return_sequences=True, **ZEROS)(x)
        x = L.TimeDistributed(L.Dense(3))(x)
        y = L.SimpleRNN(2, **ZEROS)(x)
        return mod.Model(inp, y)

    ours, theirs = build(kcompile), build(keras)
    assert ours.layers[-1].input._keras_mask.shape == (None, T)
    _randomize(ours, theirs, 8)
    _check(ours, theirs, tokens(9, 8), executor)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_layers_without_mask_support_drop_it(executor):
    """Conv1D supports no masking: the mask is dropped (Keras's warning) and the LSTM runs over
    every step; GlobalMaxPooling1D likewise."""
    keras = keras_module()

    def build(mod):
        L = mod.layers
        inp = mod.Input((T,), dtype="int32")
        x = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        x = L.Conv1D(4, 2, padding="same", name="conv")(x)
        a = L.LSTM(U, **ZEROS)(x)
        b = L.GlobalMaxPooling1D()(L.Embedding(VOCAB, 2, mask_zero=True)(inp))
        return mod.Model(inp, L.Concatenate()([a, b]))

    with pytest.warns(UserWarning, match="does not support masking"):
        ours = build(kcompile)
    theirs = build(keras)
    assert get_keras_mask(ours.get_layer("conv").output) is None
    _randomize(ours, theirs, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _check(ours, theirs, tokens(6, 9), executor)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_global_average_pooling_and_merges(executor):
    keras = keras_module()

    def build(mod):
        L = mod.layers
        inp = mod.Input((T,), dtype="int32")
        inp2 = mod.Input((T,), dtype="int32")
        a = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        b = L.Embedding(VOCAB, E, mask_zero=True)(inp2)
        c = L.Dense(E)(a)  # the mask of `a`
        s = L.Add()([a, b])  # the union of both masks
        k = L.Concatenate(axis=-1)([c, b])
        j = L.Concatenate(axis=1)([a, b])  # along the steps: the masks are concatenated
        outs = [L.GlobalAveragePooling1D()(s), L.GlobalAveragePooling1D(keepdims=True)(k),
                L.LSTM(U, return_sequences=True, **ZEROS)(s), L.GRU(U, **ZEROS)(j)]
        return mod.Model([inp, inp2], outs)

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, theirs, 10)
    a, b = tokens(7, 10), tokens(7, 11)
    a[4], b[4] = 0, np.arange(T) % 2  # a row that only the second input fills (half of it)
    a[6] = b[6] = 0  # nothing in either: the average is 0/0 = nan in both libraries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = _flat(theirs([a, b]))
        got = _run(ours, [a, b], executor)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_symbolic_masks_as_keras():
    """The mask spec on KerasTensors: shape (batch, steps), where Keras has one."""
    keras = keras_module()
    for mod in (kcompile, keras):
        L = mod.layers
        inp = mod.Input((T,), dtype="int32")
        e = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        seq, h, c = L.LSTM(U, return_sequences=True, return_state=True)(e)
        last = L.GRU(U)(e)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flat = L.Flatten()(e)
        assert tuple(e._keras_mask.shape) == (None, T)
        assert tuple(seq._keras_mask.shape) == (None, T)
        for t in (h, c, last, flat, inp):
            assert getattr(t, "_keras_mask", None) is None
        assert tuple(L.Dense(2)(seq)._keras_mask.shape) == (None, T)
        assert getattr(L.Embedding(VOCAB, E)(inp), "_keras_mask", None) is None


def test_layers_called_on_arrays_carry_masks():
    keras = keras_module()
    ids = tokens(5, 12)
    emb, k_emb = kcompile.layers.Embedding(VOCAB, E, mask_zero=True), \
        keras.layers.Embedding(VOCAB, E, mask_zero=True)
    lstm, k_lstm = kcompile.layers.LSTM(U, return_sequences=True), \
        keras.layers.LSTM(U, return_sequences=True, **ZEROS)
    x = emb(ids)
    np.testing.assert_array_equal(get_keras_mask(x), (ids != 0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(emb.compute_mask(ids, None)).astype(bool),
                                  np.asarray(k_emb.compute_mask(ids, None)))
    y = lstm(x)
    k_emb(ids)
    k_emb.set_weights(emb.get_weights())
    k_lstm(k_emb(ids))
    k_lstm.set_weights(lstm.get_weights())
    assert_close(y, np.asarray(k_lstm(k_emb(ids))), 1e-5, 1e-6)
    np.testing.assert_array_equal(get_keras_mask(y), get_keras_mask(x))
    # an explicit mask wins over the one the input carries; bool masks are taken too
    mask = np.ones((5, T), bool)
    assert_close(lstm(x, mask=mask), np.asarray(k_lstm(k_emb(ids), mask=mask)), 1e-5, 1e-6)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_custom_layer_gets_mask_and_computes_one(executor):
    """A Functional model with a custom layer written alike for both libraries: `call` receives
    the mask, `compute_mask` passes a new one on (here the inverted mask: the recurrent layer after
    it runs over the padding steps only)."""
    keras = keras_module()

    def layer_class(mod):
        ops = mod.ops

        class MaskedScale(mod.layers.Layer):
            def call(self, x, mask=None):
                assert mask is not None
                return ops.multiply(x, ops.reshape(ops.cast(mask, x.dtype), (-1, T, 1)))

            def compute_mask(self, x, mask=None):
                if mod is keras:
                    return ops.logical_not(mask)
                return ops.subtract(1.0, mask)  # kcompile's masks are 0/1 floats

        return MaskedScale

    def build(mod):
        L = mod.layers
        inp = mod.Input((T,), dtype="int32")
        x = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        x = layer_class(mod)()(x)
        return mod.Model(inp, L.SimpleRNN(U, return_sequences=True, **ZEROS)(x))

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, theirs, 13)
    _check(ours, theirs, tokens(6, 13), executor)


class _Twice(kcompile.layers.Layer):
    def __init__(self, supports: bool, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = supports

    def call(self, x):
        return kcompile.ops.multiply(x, 2.0)


@pytest.mark.parametrize("supports", [True, False])
def test_custom_layer_mask_passthrough(supports):
    """A custom layer that sets supports_masking passes the mask on; one that does not, drops it."""
    inp = kcompile.Input((T,), dtype="int32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _Twice(supports)(kcompile.layers.Embedding(VOCAB, E, mask_zero=True)(inp))
    assert (get_keras_mask(out) is not None) is supports
    assert any("does not support masking" in str(w.message) for w in caught) is not supports


@pytest.mark.parametrize("executor", EXECUTORS)
def test_nested_models_pass_masks(executor):
    keras = keras_module()

    def build(mod):
        L = mod.layers
        inner = mod.Sequential([mod.Input((T, E)), L.Dense(E),
                                L.LSTM(U, return_sequences=True, **ZEROS)])
        inp = mod.Input((T,), dtype="int32")
        x = L.Embedding(VOCAB, E, mask_zero=True)(inp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Keras: models "do not support masking"
            y = inner(x)
        return mod.Model(inp, L.GRU(U, **ZEROS)(y))

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, theirs, 14)
    _check(ours, theirs, tokens(6, 14), executor)


# -- bad masks ----------------------------------------------------------------------------------------
def test_wrong_mask_shape_names_the_layer():
    lstm = kcompile.layers.LSTM(U, name="my_lstm")
    x = np.zeros((3, T, E), np.float32)
    for bad in (np.ones((3, T + 1)), np.ones((3,)), np.ones((2, T)), np.ones((3, T, 2))):
        with pytest.raises(ValueError, match="my_lstm") as err:
            lstm(x, mask=bad)
        assert "mask" in str(err.value)
    inp = kcompile.Input((T, E))
    with pytest.raises(ValueError, match="my_gru.*mask"):
        kcompile.layers.GRU(U, name="my_gru")(inp, mask=kcompile.Input((T + 2,)))


# -- files --------------------------------------------------------------------------------------------
def test_keras_masked_functional_files_both_ways(tmp_path):
    """Keras writes the masks it passed as calls of Keras ops (not_equal, any, logical_or) feeding
    `mask=` arguments; kcompile derives the masks itself, so it reads such files and writes files
    Keras reads (where Keras derives them again)."""
    keras = keras_module()
    L = keras.layers
    inp = keras.Input((T,), dtype="int32")
    seq = keras.Input((T, E))
    a = L.Embedding(VOCAB, E, mask_zero=True)(inp)
    b = L.Embedding(VOCAB, E, mask_zero=True)(inp)
    s = L.LSTM(U, return_sequences=True, **ZEROS)(L.Add()([a, b]))
    pooled = L.GlobalAveragePooling1D()(L.Dense(2)(s))
    m = L.GRU(3, go_backwards=True, **ZEROS)(L.Masking(-1.0)(seq))
    theirs = keras.Model([inp, seq], L.Concatenate()([pooled, m]))
    _randomize(theirs, theirs, 15)
    assert any(entry["class_name"] == "NotEqual" for entry in theirs.get_config()["layers"])
    theirs.save(tmp_path / "masked.keras")
    ours = kcompile.saving.load_model(tmp_path / "masked.keras")
    x = [tokens(6, 15), _masked_sequences(6, -1.0, 15)]
    want = np.asarray(theirs(x))
    assert_close(ours.predict(x, verbose=0), want, 1e-5, 1e-6)
    ours.save(tmp_path / "again.keras")
    back = keras.saving.load_model(tmp_path / "again.keras")
    assert_close(np.asarray(back(x)), want, 1e-5, 1e-6)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_variable_length_masks_as_keras(executor):
    """A variable-length Input: Masking and Embedding masks (whose traces have two unknown dims)
    into LSTM and Bidirectional(GRU), several lengths from one model."""
    keras = keras_module()

    def build(mod):
        ids = mod.Input((None,), dtype="int32")
        seq = mod.layers.Embedding(VOCAB, E, mask_zero=True)(ids)
        seq = mod.layers.Bidirectional(mod.layers.GRU(U, return_sequences=True))(seq)
        feats = mod.Input((None, E))
        other = mod.layers.LSTM(U)(mod.layers.Masking()(feats))
        return mod.Model([ids, feats], [seq, other])

    ours, theirs = build(kcompile), build(keras)
    _randomize(ours, theirs)
    for length, seed in ((5, 1), (8, 2)):
        ids = tokens(4, seed, length)
        feats = np.random.default_rng(seed).standard_normal((4, length, E)).astype(np.float32)
        feats[1, :2] = 0.0
        _check(ours, theirs, [ids, feats], executor)
