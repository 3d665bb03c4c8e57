"""Functional model configs in Keras 3's format, both ways with real Keras 3.

Each model is written once with code that runs unchanged on both libraries (`m` is `kcompile` or
`keras`) and names every layer, so the two configs can be compared exactly. Checked for each:
kcompile's config equals Keras's; kcompile's config builds in Keras (and Keras's in kcompile) with
the same predictions once the weights are copied; get_config -> from_config -> get_config is stable.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module, scale_layer_class

import kcompile


# -- the models ------------------------------------------------------------------------------------
def mlp(m):
    L = m.layers
    x = m.Input((6,), name="x")
    h = L.Dropout(0.2, name="drop")(L.Dense(8, activation="relu", name="h")(x))
    return m.Model(x, L.Dense(3, name="out")(h), name="mlp")


def two_inputs(m):
    L = m.layers
    a, b = m.Input((4,), name="a"), m.Input((3,), name="b")
    joined = L.Concatenate(name="cat")([L.Dense(5, name="da")(a), b])
    return m.Model([a, b], L.Dense(2, name="y")(joined), name="two_inputs")


def two_outputs(m):
    L = m.layers
    a = m.Input((5,), name="a")
    h = L.Dense(6, activation="tanh", name="h")(a)
    return m.Model(a, [L.Dense(2, name="y1")(h), L.Dense(1, name="y2")(h)], name="two_outputs")


def shared_dense(m):
    """One Dense called three times, at two depths (node indices 0, 1 and 2)."""
    L = m.layers
    a, b = m.Input((4,), name="a"), m.Input((4,), name="b")
    shared = L.Dense(4, activation="relu", name="shared")
    deep = shared(L.Dense(4, name="pre")(shared(b)))
    return m.Model([a, b], L.Add(name="add")([shared(a), deep]), name="shared_dense")


def reused_layer(m):
    """A layer first called for another model: this model's config numbers only its own calls."""
    L = m.layers
    d = L.Dense(3, name="d")
    other = m.Input((2,), name="other")
    d(other)
    x = m.Input((2,), name="x")
    return m.Model(x, L.Dense(2, name="top")(d(x)), name="reused")


def residual(m):
    L = m.layers
    a = m.Input((6,), name="a")
    h = L.Dense(6, name="h2")(L.Dense(6, activation="relu", name="h1")(a))
    return m.Model(a, L.Activation("relu", name="act")(L.Add(name="res")([a, h])), name="residual")


def conv_branch(m):
    L = m.layers
    img = m.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="c1")(img)
    x = L.Activation("relu", name="r")(L.BatchNormalization(name="bn")(x))
    x = L.Concatenate(name="cat")([L.MaxPooling2D(name="mp")(x),
                                   L.AveragePooling2D((2, 2), name="ap")(x)])
    flat = L.Flatten(name="flat")(L.Reshape((4, 4, 8), name="rs")(x))
    pooled = L.GlobalAveragePooling2D(name="gap")(x)
    peak = L.GlobalMaxPooling2D(name="gmp")(x)
    return m.Model(img, [L.Dense(2, name="o1")(flat), L.Dense(3, name="o2")(pooled),
                         L.Dense(1, name="o3")(peak)], name="conv_branch")


def nested_sequential(m):
    L = m.layers
    inner = m.Sequential([m.Input((4,), name="inner_in"), L.Dense(5, activation="relu", name="i1"),
                          L.BatchNormalization(name="ibn"), L.Dense(3, name="i2")], name="inner")
    a = m.Input((4,), name="a")
    return m.Model(a, L.Dense(2, name="top")(inner(a)), name="nested_sequential")


def nested_functional(m):
    """A Functional model called three times inside another, one call being an output."""
    L = m.layers
    i = m.Input((4,), name="inner_in")
    inner = m.Model(i, L.Dense(4, activation="tanh", name="inner_d")(i), name="inner_fn")
    a = m.Input((4,), name="a")
    return m.Model(a, [inner(L.Dense(4, name="pre")(inner(a))), inner(a)], name="nested_functional")


def functional_in_sequential(m):
    L = m.layers
    i = m.Input((4,), name="inner_in")
    inner = m.Model(i, L.Dense(3, name="inner_d")(i), name="inner_fn")
    return m.Sequential([m.Input((4,), name="seq_in"), inner, L.Dense(2, name="sd")],
                        name="functional_in_sequential")


def dict_io(m):
    L = m.layers
    a, b = m.Input((4,), name="a"), m.Input((3,), name="b")
    x = L.Concatenate(name="cat")([a, b])
    return m.Model({"a": a, "b": b}, {"p": L.Dense(2, name="p")(x), "q": L.Dense(1, name="q")(x)},
                   name="dict_io")


def call_kwargs(m):
    """Explicit `training=` arguments, which the nodes record (Keras overrides them at run time;
    kcompile does not, so this model is compared by config only)."""
    L = m.layers
    i = m.Input((4,), name="inner_in")
    inner_fn = m.Model(i, L.Dense(4, name="inner_d")(i), name="inner_fn")
    inner_seq = m.Sequential([m.Input((4,), name="seq_in"), L.Dense(4, name="seq_d")], name="inner_seq")
    a = m.Input((4,), name="a")
    x = L.Dropout(0.5, name="d1")(a, training=True)
    x = L.BatchNormalization(name="bn")(x, training=False)
    x = inner_seq(inner_fn(x, training=False), training=True)
    return m.Model(a, L.Dropout(0.5, name="d2")(x), name="call_kwargs")


MODELS = [mlp, two_inputs, two_outputs, shared_dense, reused_layer, residual, conv_branch,
          nested_sequential, nested_functional, functional_in_sequential, dict_io, call_kwargs]
PREDICTABLE = [b for b in MODELS if b is not call_kwargs]


# -- helpers ---------------------------------------------------------------------------------------
def _json(config):
    return json.loads(json.dumps(config))


def _randomize(model, seed: int = 1) -> None:
    """Non-trivial weights; BatchNorm variances positive."""
    rng = np.random.default_rng(seed)
    model.set_weights([np.abs(rng.standard_normal(w.shape)).astype("float32") + 0.5
                       if "variance" in v.path else
                       (0.5 * rng.standard_normal(w.shape)).astype("float32")
                       for v, w in zip(model.weights, model.get_weights(), strict=True)])


def _inputs(model, seed: int = 0):
    """Data in the structure of the model's inputs (a tensor, a list or a dict)."""
    rng = np.random.default_rng(seed)
    data = {t.name: rng.standard_normal((5, *t.shape[1:])).astype("float32") for t in model.inputs}
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        return {k: data[t.name] for k, t in structure.items()}
    if isinstance(structure, list | tuple):
        return [data[t.name] for t in structure]
    return next(iter(data.values()))


def _flat(out):
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, list | tuple):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def _ours(model, x):
    model.compile(jit_compile=False)  # the NumPy executor: no LLVM compile needed here
    return _flat(model.predict(x, verbose=0))


def _theirs(model, x):
    return _flat(model(x, training=False))


def _assert_same_outputs(ours, theirs, x):
    a, b = _ours(ours, x), _theirs(theirs, x)
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert_close(u, v)


def _model_class(lib, model):
    return lib.Sequential if type(model).__name__ == "Sequential" else lib.Model


# -- both ways -------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", MODELS, ids=[b.__name__ for b in MODELS])
def test_config_equals_keras_config(build):
    keras = keras_module()
    ours = kcompile.layers.serialize(build(kcompile))
    theirs = keras.saving.serialize_keras_object(build(keras))
    assert json.dumps(ours) == json.dumps(theirs)  # same content and key order


@pytest.mark.parametrize("build", PREDICTABLE, ids=[b.__name__ for b in PREDICTABLE])
def test_kcompile_config_builds_in_keras(build):
    keras = keras_module()
    ours = build(kcompile)
    _randomize(ours)
    config = _json(ours.get_config())
    theirs = _model_class(keras, ours).from_config(copy.deepcopy(config))
    copy_weights(ours, theirs)
    _assert_same_outputs(ours, theirs, _inputs(ours))
    assert _json(theirs.get_config()) == config


@pytest.mark.parametrize("build", PREDICTABLE, ids=[b.__name__ for b in PREDICTABLE])
def test_keras_config_builds_in_kcompile(build):
    keras = keras_module()
    theirs = build(keras)
    _randomize(theirs, seed=2)
    config = _json(theirs.get_config())
    ours = _model_class(kcompile, theirs).from_config(copy.deepcopy(config))
    copy_weights(theirs, ours)
    _assert_same_outputs(ours, theirs, _inputs(ours))
    assert _json(ours.get_config()) == config  # and written back exactly as Keras wrote it


@pytest.mark.parametrize("build", MODELS, ids=[b.__name__ for b in MODELS])
def test_round_trip_is_stable(build):
    model = build(kcompile)
    config = model.get_config()
    again = type(model).from_config(_json(config))
    assert type(again) is type(model)
    assert _json(again.get_config()) == _json(config)
    assert [w.shape for w in again.weights] == [w.shape for w in model.weights]
    whole = kcompile.layers.deserialize(_json(kcompile.layers.serialize(model)))
    assert _json(whole.get_config()) == _json(config)


def test_model_from_config_dispatches_and_keeps_structure():
    config = _json(dict_io(kcompile).get_config())
    model = kcompile.Model.from_config(copy.deepcopy(config))
    assert type(model) is kcompile.Functional and model.name == "dict_io"
    assert list(model._inputs_struct) == ["a", "b"] and list(model._outputs_struct) == ["p", "q"]
    assert type(kcompile.Functional.from_config(copy.deepcopy(config))) is kcompile.Functional
    single = kcompile.Model.from_config(_json(mlp(kcompile).get_config()))
    assert single.get_config()["input_layers"] == ["x", 0, 0]  # a single tensor, not a list of one
    frozen = kcompile.Model.from_config({**config, "trainable": False})
    assert frozen.trainable is False


def test_nested_node_indices_follow_keras():
    """In input/output_layers Keras counts a nested Functional's calls from 1, in inbound_nodes
    from 0; both readers must agree."""
    config = _json(nested_functional(kcompile).get_config())
    assert config["output_layers"] == [["inner_fn", 2, 0], ["inner_fn", 3, 0]]
    inner = next(e for e in config["layers"] if e["name"] == "inner_fn")
    histories = [n["args"][0]["config"]["keras_history"] for n in inner["inbound_nodes"]]
    assert histories == [["a", 0, 0], ["pre", 0, 0], ["a", 0, 0]]
    assert inner["inbound_nodes"][0]["kwargs"] == {"mask": None}


def test_keras_whole_serialized_model_deserializes():
    """`layers.deserialize` takes Keras's serialize_keras_object form (with compile_config)."""
    keras = keras_module()
    theirs = nested_sequential(keras)
    theirs.compile(optimizer="adam", loss="mse")
    entry = _json(keras.saving.serialize_keras_object(theirs))
    ours = kcompile.layers.deserialize(entry)
    assert type(ours) is kcompile.Functional
    assert type(ours.get_layer("inner")) is kcompile.Sequential
    copy_weights(theirs, ours)
    _assert_same_outputs(ours, theirs, _inputs(ours))


def test_legacy_inbound_node_form_is_read():
    config = _json(two_inputs(kcompile).get_config())
    for entry in config["layers"]:  # Keras 2's [[layer, node, tensor, kwargs], ...]
        entry["inbound_nodes"] = [
            [[*t["config"]["keras_history"], {}] for t in
             (n["args"][0] if isinstance(n["args"][0], list) else [n["args"][0]])]
            for n in entry["inbound_nodes"]]
    model = kcompile.Model.from_config(config)
    assert [lyr.name for lyr in model.layers] == ["a", "da", "b", "cat", "y"]
    assert model.outputs[0].shape == (None, 2)


# -- errors and custom classes ---------------------------------------------------------------------
def _keras_config_with_unsupported_layers():
    """Keras's config of a model holding a Lambda, a raw op, and an unknown layer, one of them
    inside a nested Sequential."""
    keras = keras_module()
    L = keras.layers

    class Mystery(L.Layer):
        def call(self, x):
            return x

    inner = keras.Sequential([keras.Input((4,), name="inner_in"), Mystery(name="deep_mystery")],
                             name="inner")
    a = keras.Input((4,), name="a")
    x = L.Lambda(lambda t: t * 2.0, name="lam")(inner(a))
    x = keras.ops.add(Mystery(name="mystery")(x), 1.0)
    return _json(keras.Model(a, L.Dense(2, name="out")(x), name="bad").get_config())


def test_every_unsupported_layer_is_listed_before_anything_is_built(monkeypatch):
    config = _keras_config_with_unsupported_layers()
    built = []
    real = kcompile.layers.deserialize_entry
    monkeypatch.setattr(kcompile.layers, "deserialize_entry",
                        lambda *args, **kw: built.append(args) or real(*args, **kw))
    with pytest.raises(ValueError) as info:
        kcompile.Model.from_config(copy.deepcopy(config))
    message = str(info.value)
    assert "4 layer(s)" in message
    assert "Lambda layer 'lam'" in message and "cannot be loaded" in message
    assert "Unknown layer 'Mystery' (layer 'mystery')" in message
    assert "Unknown layer 'Mystery' (layer 'inner/deep_mystery')" in message
    assert re.search(r"Keras op 'Add' \(keras\.src\.ops\.numpy\) as layer 'add(_\d+)?'", message)
    assert built == []
    with pytest.raises(ValueError) as info:  # the whole serialized model: paths from the top
        kcompile.layers.deserialize({"module": "keras.src.models.functional",
                                     "class_name": "Functional", "config": config,
                                     "registered_name": "Functional"})
    for part in ("Lambda layer 'bad/lam'", "(layer 'bad/mystery')", "(layer 'bad/inner/deep_mystery')",
                 "as layer 'bad/add"):
        assert part in str(info.value)


Scale = scale_layer_class()  # a custom layer known only through custom_objects


class LoudDense(kcompile.layers.Dense):
    """Stands in for the built-in Dense when given as custom_objects={"Dense": ...}."""


def _with_scale():
    L = kcompile.layers
    x = kcompile.Input((3,), name="x")
    y = Scale(3.0, name="scale")(L.Dense(2, name="d")(x))
    return kcompile.Model(x, y, name="with_scale")


def test_custom_objects_resolve_custom_layers():
    model = _with_scale()
    config = _json(model.get_config())
    entry = config["layers"][2]
    assert (entry["class_name"], entry["registered_name"], entry["module"]) == \
        ("Scale", "Scale", Scale.__module__)
    with pytest.raises(ValueError, match=r"Unknown layer 'Scale' \(layer 'scale'\)"):
        kcompile.Model.from_config(copy.deepcopy(config))
    loaded = kcompile.Model.from_config(copy.deepcopy(config), custom_objects={"Scale": Scale})
    assert isinstance(loaded.get_layer("scale"), Scale) and loaded.get_layer("scale").factor == 3.0
    copy_weights(model, loaded)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    assert_close(_ours(loaded, x)[0], _ours(model, x)[0])
    # through a nested model and through layers.deserialize / Sequential.from_config too
    seq = kcompile.Sequential([kcompile.Input((3,)), _with_scale()], name="outer")
    seq_config = _json(seq.get_config())
    with pytest.raises(ValueError, match=r"layer 'with_scale/scale'"):
        kcompile.Sequential.from_config(copy.deepcopy(seq_config))
    again = kcompile.Sequential.from_config(seq_config, custom_objects={"Scale": Scale})
    assert isinstance(again.layers[0].get_layer("scale"), Scale)
    whole = kcompile.layers.deserialize(_json(kcompile.layers.serialize(model)),
                                        custom_objects={"Scale": Scale})
    assert isinstance(whole.get_layer("scale"), Scale)


def test_custom_objects_take_precedence_over_builtins():
    config = _json(mlp(kcompile).get_config())
    model = kcompile.Model.from_config(config, custom_objects={"Dense": LoudDense})
    assert type(model.get_layer("h")) is LoudDense and type(model.get_layer("out")) is LoudDense
    assert type(model.get_layer("drop")) is kcompile.layers.Dropout


def test_deserialization_error_names_the_layer():
    config = _json(two_inputs(kcompile).get_config())
    entry = next(e for e in config["layers"] if e["name"] == "da")
    entry["config"]["units"] = -3
    with pytest.raises(ValueError, match=r"Layer 'da' \(class 'Dense'\)"):
        kcompile.Model.from_config(copy.deepcopy(config))
    entry["config"]["units"] = 5
    entry["config"]["no_such_argument"] = 1
    with pytest.raises(TypeError, match=r"Layer 'da' \(class 'Dense'\).*no_such_argument"):
        kcompile.Model.from_config(copy.deepcopy(config))


def test_broken_graphs_are_reported():
    config = _json(two_inputs(kcompile).get_config())
    cat = next(e for e in config["layers"] if e["name"] == "cat")
    cat["inbound_nodes"][0]["args"][0][0]["config"]["keras_history"] = ["nowhere", 0, 0]
    with pytest.raises(ValueError, match=r"layer 'cat'.*unknown layer 'nowhere'"):
        kcompile.Model.from_config(copy.deepcopy(config))
    cat["inbound_nodes"][0]["args"][0][0]["config"]["keras_history"] = ["da", 5, 0]
    with pytest.raises(ValueError, match=r"cycle or refers to layer calls.*'cat' \(node 0\)"):
        kcompile.Model.from_config(copy.deepcopy(config))
    with pytest.raises(ValueError, match=r"Not a Functional model config"):
        kcompile.Functional.from_config({"name": "x", "layers": []})
