"""Layer and Sequential configs: get_config -> from_config -> get_config is stable, and the configs
have Keras 3's keys and default values (so they interoperate with Keras in both directions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import keras_module

import kcompile as keras
from kcompile import layers as kl

# (layer class name, args, kwargs): defaults first, then non-default settings
CASES = [
    ("Dense", (3,), {}),
    ("Dense", (5,), {"activation": "relu", "use_bias": False, "kernel_initializer": "he_normal",
                     "bias_initializer": "ones"}),
    ("Activation", ("tanh",), {}),
    ("Activation", ("softmax",), {}),
    ("Dropout", (0.3,), {}),
    ("Dropout", (0.5,), {"seed": 7}),
    ("Flatten", (), {}),
    ("Reshape", ((2, 3),), {}),
    ("Reshape", ((-1, 4),), {}),
    ("Add", (), {}),
    ("Concatenate", (), {}),
    ("Concatenate", (), {"axis": 1}),
    ("Conv2D", (4, 3), {}),
    ("Conv2D", (8, (3, 2)), {"strides": (2, 1), "padding": "same", "activation": "sigmoid",
                             "kernel_initializer": "lecun_uniform"}),
    ("Conv2D", (2, 3), {"dilation_rate": 2, "use_bias": False}),
    ("MaxPooling2D", (), {}),
    ("MaxPooling2D", ((3, 3),), {"strides": 2, "padding": "same"}),
    ("AveragePooling2D", ((2, 2),), {}),  # Keras 3 has no default pool_size here
    ("AveragePooling2D", ((3, 2),), {"strides": (1, 1)}),
    ("GlobalAveragePooling2D", (), {}),
    ("GlobalAveragePooling2D", (), {"keepdims": True}),
    ("GlobalMaxPooling2D", (), {}),
    ("GlobalMaxPooling2D", (), {"keepdims": True}),
    ("BatchNormalization", (), {}),
    ("BatchNormalization", (), {"momentum": 0.9, "epsilon": 1e-5, "center": False,
                                "gamma_initializer": "random_normal"}),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]

# the layers the brief asks about; every one must appear in CASES (or be InputLayer)
REQUIRED = {"Dense", "Activation", "Dropout", "Flatten", "Reshape", "Add", "Concatenate", "Conv2D",
            "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
            "BatchNormalization"}


def _norm(value):
    """Compare configs structurally: tuples and lists alike, JSON-style."""
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def test_every_required_layer_is_covered():
    assert REQUIRED <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,args,kwargs", CASES, ids=IDS)
def test_round_trip_is_stable(name, args, kwargs):
    layer = getattr(kl, name)(*args, **kwargs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    assert clone.name == layer.name
    # the config survives JSON (what a .keras file stores) and still rebuilds the same layer
    via_json = type(layer).from_config(json.loads(json.dumps(config)))
    assert _norm(via_json.get_config()) == _norm(config)


@pytest.mark.parametrize("name,args,kwargs", CASES, ids=IDS)
def test_keys_and_values_match_keras(name, args, kwargs):
    k = keras_module()
    ours = getattr(kl, name)(*args, **kwargs).get_config()
    theirs = getattr(k.layers, name)(*args, **kwargs).get_config()
    assert set(ours) == set(theirs)
    for key in sorted(set(ours) - {"name"}):
        assert _norm(ours[key]) == _norm(theirs[key]), key


@pytest.mark.parametrize("name,args,kwargs", CASES, ids=IDS)
def test_keras_config_loads_and_back(name, args, kwargs):
    """A config written by Keras rebuilds an equivalent kcompile layer, and vice versa."""
    k = keras_module()
    theirs = getattr(k.layers, name)(*args, **kwargs).get_config()
    assert _norm(getattr(kl, name).from_config(dict(theirs)).get_config()) == _norm(theirs)
    ours = getattr(kl, name)(*args, **kwargs).get_config()
    assert _norm(getattr(k.layers, name).from_config(dict(ours)).get_config()) == _norm(ours)


def test_common_default_values():
    dense = kl.Dense(3).get_config()
    assert dense["kernel_initializer"]["class_name"] == "GlorotUniform"
    assert dense["kernel_initializer"]["module"] == "keras.initializers"
    assert dense["kernel_initializer"]["config"]["seed"] is None
    assert dense["bias_initializer"]["class_name"] == "Zeros"
    assert dense["activation"] == "linear" and dense["use_bias"] is True
    assert dense["dtype"]["config"]["name"] == "float32"
    conv = kl.Conv2D(4, 3).get_config()
    assert _norm(conv["kernel_size"]) == [3, 3] and _norm(conv["strides"]) == [1, 1]
    assert _norm(conv["dilation_rate"]) == [1, 1]
    assert conv["padding"] == "valid" and conv["data_format"] == "channels_last"
    pool = kl.MaxPooling2D().get_config()
    assert _norm(pool["pool_size"]) == [2, 2] and _norm(pool["strides"]) == [2, 2]
    bn = kl.BatchNormalization().get_config()
    assert (bn["axis"], bn["momentum"], bn["epsilon"]) == (-1, 0.99, 1e-3)
    assert bn["gamma_initializer"]["class_name"] == "Ones"
    assert bn["moving_variance_initializer"]["class_name"] == "Ones"
    assert bn["beta_initializer"]["class_name"] == "Zeros"
    assert bn["moving_mean_initializer"]["class_name"] == "Zeros"


def test_round_trip_keeps_non_default_settings():
    conv = kl.Conv2D.from_config(kl.Conv2D(6, (5, 3), strides=2, padding="same", activation="relu",
                                           use_bias=False).get_config())
    assert (conv.filters, conv.kernel_size, conv.strides, conv.padding, conv.use_bias) == \
        (6, (5, 3), (2, 2), "same", False)
    assert conv.activation is keras.activations.relu
    bn = kl.BatchNormalization.from_config(kl.BatchNormalization(momentum=0.5, scale=False).get_config())
    assert bn.momentum == 0.5 and bn.scale is False
    drop = kl.Dropout.from_config(kl.Dropout(0.25, seed=3, trainable=False).get_config())
    assert (drop.rate, drop.seed, drop.trainable) == (0.25, 3, False)


def test_seeded_initializer_round_trip_gives_same_weights():
    d1 = kl.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed=11))
    d2 = kl.Dense.from_config(d1.get_config())
    assert d1.get_config()["kernel_initializer"]["config"]["seed"] == 11
    d1.build((None, 3))
    d2.build((None, 3))
    np.testing.assert_array_equal(d1.kernel.numpy(), d2.kernel.numpy())


def test_built_layer_config_is_unchanged_and_build_config_rebuilds():
    layer = kl.Dense(3)
    before = layer.get_config()
    layer(np.zeros((2, 5), np.float32))
    assert layer.get_config() == before
    entry = kl.serialize(layer)
    assert entry["class_name"] == "Dense" and entry["build_config"] == {"input_shape": (2, 5)}
    clone = kl.deserialize(entry)
    assert clone.built and [w.shape for w in clone.weights] == [(5, 3), (3,)]


def test_input_layer_round_trip_and_keras_keys():
    k = keras_module()
    layer = kl.InputLayer(shape=(3, 4), name="cfg_input")
    config = layer.get_config()
    theirs = k.layers.InputLayer(shape=(3, 4), name="cfg_input").get_config()
    assert set(config) == set(theirs)
    assert _norm(config) == _norm(theirs)
    clone = kl.InputLayer.from_config(config)
    assert clone.get_config() == config
    assert clone.output_tensor.shape == (None, 3, 4)
    fixed = kl.InputLayer(batch_shape=(8, 2), name="cfg_fixed").get_config()
    assert _norm(fixed["batch_shape"]) == [8, 2]
    assert kl.InputLayer.from_config(fixed).batch_shape == (8, 2)


def test_unknown_class_name_in_deserialize():
    with pytest.raises(ValueError, match=r"Unknown layer 'NoSuchLayer'"):
        kl.deserialize({"class_name": "NoSuchLayer", "config": {}})


# -- Sequential ------------------------------------------------------------------------------------

def _cnn(name: str) -> keras.Sequential:
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        kl.Conv2D(4, 3, activation="relu", padding="same"),
        kl.BatchNormalization(),
        kl.MaxPooling2D(),
        kl.Conv2D(6, 3),
        kl.GlobalAveragePooling2D(),
        kl.Dropout(0.2),
        kl.Dense(5, activation="softmax"),
    ], name=name)


def _architecture(model):
    return [(type(lyr).__name__, lyr.name, [tuple(w.shape) for w in lyr.weights]) for lyr in model.layers]


def test_sequential_round_trip_rebuilds_same_architecture():
    model = _cnn("cfg_cnn")
    config = model.get_config()
    clone = keras.Sequential.from_config(config)
    assert clone.name == "cfg_cnn"
    assert clone.count_params() == model.count_params() == 40 + 16 + 222 + 35
    assert _architecture(clone) == _architecture(model)
    assert clone.get_config() == config
    # same weights -> same predictions
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(clone.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)


def test_sequential_config_matches_keras():
    k = keras_module()
    ours = _cnn("cfg_cmp").get_config()
    theirs = k.Sequential([
        k.Input((8, 8, 1)),
        k.layers.Conv2D(4, 3, activation="relu", padding="same"),
        k.layers.BatchNormalization(),
        k.layers.MaxPooling2D(),
        k.layers.Conv2D(6, 3),
        k.layers.GlobalAveragePooling2D(),
        k.layers.Dropout(0.2),
        k.layers.Dense(5, activation="softmax"),
    ], name="cfg_cmp").get_config()
    assert set(ours) == set(theirs)
    assert [e["class_name"] for e in ours["layers"]] == [e["class_name"] for e in theirs["layers"]]
    for a, b in zip(ours["layers"], theirs["layers"], strict=True):
        assert set(a["config"]) == set(b["config"]), a["class_name"]
    assert _norm(ours["build_input_shape"]) == _norm(theirs["build_input_shape"])


def test_sequential_configs_interoperate_with_keras():
    k = keras_module()
    ours = _cnn("cfg_interop")
    theirs = k.Sequential.from_config(ours.get_config())
    assert theirs.count_params() == ours.count_params()
    back = keras.Sequential.from_config(theirs.get_config())
    assert back.count_params() == ours.count_params()
    assert [type(lyr).__name__ for lyr in back.layers] == [type(lyr).__name__ for lyr in ours.layers]


def test_sequential_round_trip_with_input_shape_kwarg():
    model = keras.Sequential([kl.Dense(7, input_shape=(4,)), kl.Dense(2)], name="cfg_kw")
    config = model.get_config()
    assert config["layers"][0]["class_name"] == "InputLayer"
    clone = keras.Sequential.from_config(config)
    assert clone.count_params() == model.count_params() == 35 + 16
    assert clone.inputs[0].shape == (None, 4)


def test_unbuilt_sequential_round_trip_stays_deferred():
    model = keras.Sequential([kl.Dense(3), kl.Dense(1)], name="cfg_deferred")
    config = model.get_config()
    assert "build_input_shape" not in config
    clone = keras.Sequential.from_config(config)
    assert not clone.built
    assert clone.predict(np.ones((2, 6), np.float32)).shape == (2, 1)
    assert clone.count_params() == 6 * 3 + 3 + 3 + 1
