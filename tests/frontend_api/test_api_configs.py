"""get_config / from_config round trips (with Keras's key sets and defaults), seeded initialisation,
Keras default initialisers and the model API's behaviours."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import keras_module

import kcompile
from kcompile import layers as kl

LAYERS = [
    ("Dense", (3,), {"activation": "relu"}),
    ("Activation", ("tanh",), {}),
    ("Dropout", (0.3,), {"seed": 5}),
    ("Flatten", (), {}),
    ("Reshape", ((2, 3),), {}),
    ("Add", (), {}),
    ("Concatenate", (), {"axis": 1}),
    ("Conv2D", (4, 3), {"strides": 2, "padding": "same", "dilation_rate": 1}),
    ("MaxPooling2D", ((2, 2),), {"padding": "same"}),
    ("AveragePooling2D", ((3, 3),), {"strides": 1}),
    ("GlobalAveragePooling2D", (), {"keepdims": True}),
    ("GlobalMaxPooling2D", (), {}),
    ("BatchNormalization", (), {"momentum": 0.9}),
]


def _norm(value):
    if isinstance(value, list | tuple):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if k not in ("dtype",)}
    return value


@pytest.mark.parametrize("name,args,kwargs", LAYERS, ids=[c[0] for c in LAYERS])
def test_config_round_trip_and_keras_keys(name, args, kwargs):
    keras = keras_module()
    ours = getattr(kl, name)(*args, **kwargs)
    config = ours.get_config()
    clone = type(ours).from_config(config)
    assert clone.get_config() == config
    theirs = getattr(keras.layers, name)(*args, **kwargs).get_config()
    assert set(config) == set(theirs)
    for key in set(config) - {"name", "dtype"}:
        assert _norm(config[key]) == _norm(theirs[key]), key


def test_input_layer_config():
    keras = keras_module()
    ours = kl.InputLayer(shape=(3, 4)).get_config()
    theirs = keras.layers.InputLayer(shape=(3, 4)).get_config()
    assert _norm(ours["batch_shape"]) == _norm(theirs["batch_shape"])
    assert kl.InputLayer.from_config(ours).get_config() == ours


def test_sequential_config_round_trip():
    model = kcompile.Sequential([kcompile.Input((8, 8, 1)), kl.Conv2D(4, 3, activation="relu"),
                                 kl.MaxPooling2D(), kl.Flatten(), kl.Dense(5)])
    clone = kcompile.Sequential.from_config(model.get_config())
    assert [type(layer).__name__ for layer in clone.layers] == \
        [type(layer).__name__ for layer in model.layers]
    assert clone.count_params() == model.count_params()


def test_seeded_initialisation_is_reproducible():
    def weights(seed):
        kcompile.utils.set_random_seed(seed)
        m = kcompile.Sequential([kcompile.Input((6,)), kl.Dense(5), kl.Dense(3)])
        return m.get_weights()

    a, b, c = weights(1), weights(1), weights(2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_keras_default_initialisers():
    kcompile.utils.set_random_seed(0)
    dense = kl.Dense(300)
    conv = kl.Conv2D(16, 3)
    bn = kl.BatchNormalization()
    kcompile.Sequential([kcompile.Input((200,)), dense])
    kcompile.Sequential([kcompile.Input((9, 9, 8)), conv, bn])
    limit = np.sqrt(6 / (200 + 300))
    k = dense.kernel.numpy()
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit  # glorot_uniform
    assert abs(k.std() - limit / np.sqrt(3)) < 0.05 * limit
    assert not dense.bias.numpy().any()
    climit = np.sqrt(6 / (3 * 3 * 8 + 3 * 3 * 16))
    assert np.abs(conv.kernel.numpy()).max() <= climit
    g, beta, mean, var = bn.get_weights()
    assert (g == 1).all() and (beta == 0).all() and (mean == 0).all() and (var == 1).all()


def test_model_api_behaviours(capsys):
    m = kcompile.Sequential()
    m.add(kl.Dense(4, activation="relu", input_shape=(3,)))
    m.add(kl.Dense(2))
    assert [layer.name for layer in m.layers][0].startswith("dense")
    assert m.get_layer(index=1) is m.layers[1]
    assert m.get_layer(m.layers[0].name) is m.layers[0]
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    full = m.predict(x)
    np.testing.assert_allclose(m.predict(x, batch_size=3), full, rtol=1e-6)
    np.testing.assert_allclose(m(x), full, rtol=1e-6)
    assert m.predict(x[:0]).shape == (0, 2)
    m.pop()
    assert m.predict(x).shape == (10, 4)
    m.summary()
    out = capsys.readouterr().out
    assert "Total params: 16" in out
    names = [kl.Dense(1).name for _ in range(3)]
    assert len(set(names)) == 3


def test_deferred_build_sequential():
    m = kcompile.Sequential([kl.Dense(3), kl.Dense(2)])
    assert not m.built
    out = m.predict(np.ones((4, 5), np.float32))
    assert out.shape == (4, 2) and m.built and m.count_params() == 5 * 3 + 3 + 3 * 2 + 2
