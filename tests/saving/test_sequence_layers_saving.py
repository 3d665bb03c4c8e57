"""`.keras` files with the sequence layers, both ways with real Keras 3: a model with Embedding,
Conv1D (causal), LayerNormalization, MaxPooling1D, TimeDistributed(Dense) and GlobalAveragePooling1D
saved by one library and loaded by the other (weights equal, predictions equal), and each layer's
config with Keras's keys and values."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile

pytestmark = pytest.mark.usefixtures("module_cache_dir")


def _sequence_model(m, mask_zero: bool = False):
    L = m.layers
    return m.Sequential([m.Input((9,), dtype="int32"),
                         L.Embedding(15, 4, mask_zero=mask_zero, name="emb"),
                         L.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="relu", name="c1"),
                         L.LayerNormalization(name="ln"), L.MaxPooling1D(2, name="pool"),
                         L.Conv1D(3, 2, strides=2, padding="same", name="c2"),
                         L.TimeDistributed(L.Dense(6, activation="tanh", name="inner"), name="td"),
                         L.AveragePooling1D(1, name="avg"), L.GlobalMaxPooling1D(keepdims=True, name="gmp"),
                         L.GlobalAveragePooling1D(name="gap"), L.Dense(2, name="out")], name="seq")


def _randomize(model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in model.get_weights()])


def _ids(batch: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 15, (batch, 9)).astype(np.int32)


def _predict(model, x):
    return np.asarray(model.predict(x, verbose=0))


def test_kcompile_to_keras_and_back(tmp_path):
    keras = keras_module()
    ours = _sequence_model(kcompile)
    _randomize(ours)
    ours.save(tmp_path / "ours.keras")
    theirs = keras.saving.load_model(tmp_path / "ours.keras")
    assert [type(lyr).__name__ for lyr in theirs.layers] == [type(lyr).__name__ for lyr in ours.layers]
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    x = _ids()
    assert_close(_predict(theirs, x), _predict(ours, x))
    assert theirs.get_layer("td").layer.name == "inner"


def test_keras_to_kcompile_and_back(tmp_path):
    keras = keras_module()
    theirs = _sequence_model(keras)
    _randomize(theirs)
    theirs.save(tmp_path / "theirs.keras")
    ours = kcompile.saving.load_model(tmp_path / "theirs.keras")
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    x = _ids()
    want = _predict(theirs, x)
    assert_close(_predict(ours, x), want)
    ours.save(tmp_path / "again.keras")  # what we read we write the same way
    back = keras.saving.load_model(tmp_path / "again.keras")
    assert_close(_predict(back, x), want)


def test_mask_zero_round_trips_and_runs(tmp_path):
    """The mask of Embedding(mask_zero=True) stops at Conv1D (no mask support, as in Keras)."""
    keras = keras_module()
    keras_model = _sequence_model(keras, mask_zero=True)
    _randomize(keras_model, 2)
    keras_model.save(tmp_path / "masked.keras")
    with pytest.warns(UserWarning, match="does not support masking"):
        ours = kcompile.saving.load_model(tmp_path / "masked.keras")
    assert ours.get_layer("emb").mask_zero is True
    x = _ids()
    x[:, -3:] = 0
    assert_close(_predict(ours, x), _predict(keras_model, x))
    ours.save(tmp_path / "again.keras")
    assert keras.saving.load_model(tmp_path / "again.keras").get_layer("emb").mask_zero is True


LAYERS = [
    ("Conv1D", (4, 3), {"strides": 2, "padding": "same", "activation": "relu"}, (None, 9, 2)),
    ("Conv1D", (2, 5), {"padding": "causal", "dilation_rate": 3, "use_bias": False}, (None, 9, 2)),
    ("MaxPooling1D", (), {}, (None, 8, 2)),
    ("AveragePooling1D", (3,), {"strides": 1, "padding": "same"}, (None, 8, 2)),
    ("GlobalAveragePooling1D", (), {"keepdims": True}, (None, 8, 2)),
    ("GlobalMaxPooling1D", (), {}, (None, 8, 2)),
    ("LayerNormalization", (), {"epsilon": 1e-5, "center": False}, (None, 4, 3)),
    ("LayerNormalization", (), {"axis": [1, 2]}, (None, 4, 3)),
    ("Embedding", (30, 4), {"mask_zero": True}, (None, 6)),
]


def _norm(value):
    if isinstance(value, list | tuple):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if k != "dtype"}
    return value


@pytest.mark.parametrize("name,args,kwargs,shape", LAYERS, ids=[f"{c[0]}-{i}" for i, c in enumerate(LAYERS)])
def test_config_matches_keras(name, args, kwargs, shape):
    keras = keras_module()
    ours = getattr(kcompile.layers, name)(*args, **kwargs)
    theirs = getattr(keras.layers, name)(*args, **kwargs)
    for built in (False, True):
        if built:
            ours.build(shape)
            theirs.build(shape)
        config, want = ours.get_config(), theirs.get_config()
        assert set(config) == set(want)
        for key in set(config) - {"name"}:
            assert _norm(config[key]) == _norm(want[key]), key
        assert type(ours).from_config(config).get_config() == config


def test_time_distributed_config_matches_keras():
    keras = keras_module()
    ours = kcompile.layers.TimeDistributed(kcompile.layers.Dense(3, name="d"), name="td")
    theirs = keras.layers.TimeDistributed(keras.layers.Dense(3, name="d"), name="td")
    ours.build((None, 5, 4))
    theirs.build((None, 5, 4))
    config, want = kcompile.layers.serialize(ours), keras.layers.serialize(theirs)
    want.pop("build_config")  # a direct build() call: ours records build shapes from calls only
    assert _norm(config) == _norm(want)  # the inner Dense with its per-step build_config
    clone = kcompile.layers.deserialize(config)
    assert [w.shape for w in clone.weights] == [(4, 3), (3,)]
