"""Optimizer, loss and metric configs and the optimizer's variables in Keras 3's `.keras` layout,
against real Keras 3: configs both ways, `optimizer/vars` order/shape/value after identical
training, and training resumed from Keras's optimizer state."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, copy_weights, keras_module

import kcompile
from kcompile.saving.optimizer_state import (
    compile_from_config,
    compile_to_config,
    load_optimizer_variables,
    optimizer_from_config,
    optimizer_to_config,
    optimizer_variables,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 8)

EXP = ("ExponentialDecay", {"initial_learning_rate": 0.05, "decay_steps": 2, "decay_rate": 0.5})
COS = ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 10, "warmup_target": 0.05,
                       "warmup_steps": 2})
PIECE = ("PiecewiseConstantDecay", {"boundaries": [1, 3], "values": [0.05, 0.02, 0.01]})
INV = ("InverseTimeDecay", {"initial_learning_rate": 0.05, "decay_steps": 1, "decay_rate": 0.5,
                            "staircase": True})
CASES = [("SGD", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
         ("Adam", {}), ("Adam", {"weight_decay": 0.01, "clipnorm": 1.0}), ("AdamW", {}),
         ("RMSprop", {}), ("RMSprop", {"momentum": 0.5}), ("RMSprop", {"centered": True}),
         ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {}),
         ("SGD", {"momentum": 0.5, "global_clipnorm": 0.2}), ("Adam", {"clipvalue": 0.01}),
         ("Adam", {"schedule": EXP}), ("RMSprop", {"momentum": 0.5, "schedule": COS}),
         ("SGD", {"momentum": 0.9, "schedule": PIECE}), ("Adagrad", {"schedule": INV})]
IDS = [f"{name}-{'-'.join(k if k != 'schedule' else v[0] for k, v in kw.items()) or 'default'}"
       for name, kw in CASES]


def make_optimizer(lib, name, kwargs, default_lr=0.05):
    kwargs = dict(kwargs)
    schedule = kwargs.pop("schedule", None)
    lr = getattr(lib.optimizers.schedules, schedule[0])(**schedule[1]) if schedule else default_lr
    return getattr(lib.optimizers, name)(learning_rate=lr, name="opt", **kwargs)


def models(keras):
    """The same small model (BatchNorm: non-trainable variables in between) in both libraries."""
    kcompile.utils.set_random_seed(3)
    ours = kcompile.Sequential([kcompile.Input((4,)), kcompile.layers.Dense(5, activation="tanh"),
                                kcompile.layers.BatchNormalization(), kcompile.layers.Dense(3)])
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    copy_weights(ours, theirs)
    return ours, theirs


def compile_both(ours, theirs, keras, name, kwargs):
    loss = "sparse_categorical_crossentropy"
    ours.compile(make_optimizer(kcompile, name, kwargs), loss, jit_compile=False)
    theirs.compile(make_optimizer(keras, name, kwargs), loss)


def train(model, steps):
    for _ in range(steps):
        model.train_on_batch(X, Y)


# -- (a) optimizer configs -------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_optimizer_config_matches_keras(name, kwargs):
    keras = keras_module()
    expected = keras.optimizers.serialize(make_optimizer(keras, name, kwargs))
    # Keras's config read by kcompile and written back unchanged
    assert optimizer_to_config(optimizer_from_config(expected)) == expected
    # the same optimizer built in kcompile writes Keras's config (every default included)
    assert optimizer_to_config(make_optimizer(kcompile, name, kwargs)) == expected
    # and real Keras reads kcompile's config
    rebuilt = keras.optimizers.deserialize(optimizer_to_config(make_optimizer(kcompile, name,
                                                                              kwargs)))
    assert keras.optimizers.serialize(rebuilt) == expected


def test_optimizer_default_names_and_learning_rate_rounding():
    keras = keras_module()
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad"):
        ours = optimizer_to_config(getattr(kcompile.optimizers, name)(learning_rate=0.1))
        theirs = keras.optimizers.serialize(getattr(keras.optimizers, name)(learning_rate=0.1))
        assert theirs["config"]["name"].startswith(ours["config"]["name"])  # Keras adds _1, _2...
        assert ours["config"]["learning_rate"] == theirs["config"]["learning_rate"] != 0.1
        assert set(ours["config"]) == set(theirs["config"])


@pytest.mark.parametrize("field,value", [("use_ema", True), ("amsgrad", True),
                                         ("gradient_accumulation_steps", 4),
                                         ("loss_scale_factor", 128.0)])
def test_unsupported_optimizer_options_are_named(field, value):
    keras = keras_module()
    config = keras.optimizers.serialize(keras.optimizers.Adam(**{field: value}))
    with pytest.raises(ValueError, match=f"Adam: {field}={value!r} is not supported"):
        optimizer_from_config(config)


def test_unsupported_schedules_and_callables():
    keras = keras_module()
    config = keras.optimizers.serialize(keras.optimizers.SGD(
        keras.optimizers.schedules.PolynomialDecay(0.1, 10)))
    with pytest.raises(ValueError, match="'PolynomialDecay' is not implemented by kcompile"):
        optimizer_from_config(config)
    with pytest.raises(ValueError, match="Unknown optimizer 'Lion'"):
        optimizer_from_config(keras.optimizers.serialize(keras.optimizers.Lion()))
    with pytest.raises(ValueError, match="plain Python callable"):
        optimizer_to_config(kcompile.optimizers.SGD(lambda step: 0.1))


# -- (b) optimizer variables after identical training ----------------------------------------------
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_optimizer_variables_match_keras_and_resume(name, kwargs):
    keras = keras_module()
    ours, theirs = models(keras)
    compile_both(ours, theirs, keras, name, kwargs)
    train(ours, 3)
    train(theirs, 3)
    arrays = optimizer_variables(ours.optimizer, ours.trainable_weights)
    expected = [np.asarray(v.numpy()) for v in theirs.optimizer.variables]
    assert [(a.shape, a.dtype) for a in arrays] == [(e.shape, e.dtype) for e in expected]
    assert arrays[0] == expected[0] == 3
    for a, e in zip(arrays, expected, strict=True):
        assert_close(a, e)

    # kcompile's state into a fresh Keras optimizer (as Keras's loader assigns it), 2 more steps
    _, keras_fresh = models(keras)
    copy_weights(ours, keras_fresh)
    keras_fresh.compile(make_optimizer(keras, name, kwargs, default_lr=0.5),
                        "sparse_categorical_crossentropy")
    keras_fresh.optimizer.build(keras_fresh.trainable_variables)
    for var, value in zip(keras_fresh.optimizer.variables, arrays, strict=True):
        var.assign(value)
    train(ours, 2)
    train(keras_fresh, 2)
    for a, e in zip(ours.get_weights(), keras_fresh.get_weights(), strict=True):
        assert_close(a, e)

    # (c) Keras's state into a fresh kcompile optimizer, then 2 more steps in both
    fresh, _ = models(keras)
    copy_weights(theirs, fresh)
    fresh.compile(make_optimizer(kcompile, name, kwargs, default_lr=0.5), ours.loss,
                  jit_compile=False)
    load_optimizer_variables(fresh.optimizer, fresh.trainable_weights, expected)
    assert fresh.optimizer.iterations == 3
    train(fresh, 2)
    train(theirs, 2)
    for a, e in zip(fresh.get_weights(), theirs.get_weights(), strict=True):
        assert_close(a, e)
    for a, e in zip(optimizer_variables(fresh.optimizer, fresh.trainable_weights),
                    theirs.optimizer.variables, strict=True):
        assert_close(a, e.numpy())


def test_loaded_state_drives_compiled_steps():
    """The compiled step updates slots in place: loaded slots must be owned, writable arrays."""
    keras = keras_module()
    ours, theirs = models(keras)
    compile_both(ours, theirs, keras, "RMSprop", {"momentum": 0.5, "centered": True})
    train(theirs, 2)
    state = [v.numpy() for v in theirs.optimizer.variables]
    for a in state:
        a.flags.writeable = False
    copy_weights(theirs, ours)
    ours.compile(make_optimizer(kcompile, "RMSprop", {"momentum": 0.5, "centered": True}),
                 ours.loss, jit_compile=True)
    load_optimizer_variables(ours.optimizer, ours.trainable_weights, state)
    train(ours, 2)
    train(theirs, 2)
    for a, e in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        assert_close(a, e)


def test_unbuilt_optimizer_writes_iterations_and_learning_rate_only():
    keras = keras_module()
    ours, theirs = models(keras)
    compile_both(ours, theirs, keras, "Adam", {})
    arrays = optimizer_variables(ours.optimizer, ours.trainable_weights)
    expected = [np.asarray(v.numpy()) for v in theirs.optimizer.variables]  # not built before training
    assert [(a.shape, a.dtype, a.item()) for a in arrays] == \
        [(e.shape, e.dtype, e.item()) for e in expected]
    # such a file leaves fresh slots (what the first step would create)
    train(ours, 1)
    load_optimizer_variables(ours.optimizer, ours.trainable_weights,
                             [np.int32(0), np.float32(0.25)])
    assert ours.optimizer.iterations == 0 and ours.optimizer.learning_rate == 0.25
    assert all(not s.any() for group in ours.optimizer.slots for s in group)


def test_load_checks_count_and_shapes_before_changing_anything():
    keras = keras_module()
    ours, _ = models(keras)
    ours.compile(kcompile.optimizers.Adam(0.01), "mse", jit_compile=False)
    ours.optimizer.build(ours.trainable_weights)
    variables = ours.trainable_weights
    good = optimizer_variables(ours.optimizer, variables)
    assert len(good) == 2 + 2 * 6
    with pytest.raises(ValueError, match=r"optimizer 'adam': the file has 13 variables, the model "
                                         r"needs 14 \(iterations and learning_rate, then 2 slot"):
        load_optimizer_variables(ours.optimizer, variables, good[:-1])
    bad = list(good)
    bad[5] = np.zeros((7,), np.float32)
    with pytest.raises(ValueError, match=r"variable 5 \(velocity of '.*bias'\) has shape \(7,\) in the file"):
        load_optimizer_variables(ours.optimizer, variables, bad)
    bad = [np.float32(3.0), *good[1:]]
    bad[1] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"variable 1 \(learning_rate\) must be a numeric scalar"):
        load_optimizer_variables(ours.optimizer, variables, bad)
    assert ours.optimizer.iterations == 0 and ours.optimizer.learning_rate == 0.01
    scheduled = kcompile.optimizers.Adam(kcompile.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5))
    with pytest.raises(ValueError, match="the file has a constant learning rate, this optimizer "
                                         "uses a schedule"):
        load_optimizer_variables(scheduled, variables, good)


# -- compile configs -------------------------------------------------------------------------------
def _compile_kwargs(lib):
    L, M = lib.losses, lib.metrics
    return [
        {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        {"loss": L.SparseCategoricalCrossentropy(from_logits=True),
         "metrics": [M.SparseCategoricalAccuracy(name="acc2"), "accuracy"],
         "weighted_metrics": ["accuracy"]},
        {"loss": "mse", "metrics": ["mae", M.MeanSquaredError(name="m")], "loss_weights": [0.5],
         "steps_per_execution": 2},
        {"loss": L.BinaryCrossentropy(from_logits=True), "metrics": [M.BinaryAccuracy(threshold=0.3)],
         "jit_compile": False},
        {"loss": L.CategoricalCrossentropy(), "weighted_metrics": [M.CategoricalAccuracy()],
         "run_eagerly": True},
        {"loss": L.MeanAbsoluteError(), "metrics": [M.MeanAbsoluteError(), M.Accuracy()]},
    ]


@pytest.mark.parametrize("case", range(6))
def test_compile_config_both_directions(case):
    keras = keras_module()
    ours, theirs = models(keras)
    theirs.compile(optimizer=keras.optimizers.Adam(0.01, name="opt"),
                   **_compile_kwargs(keras)[case])
    expected = theirs.get_compile_config()
    ours.compile(optimizer=kcompile.optimizers.Adam(0.01, name="opt"),
                 **_compile_kwargs(kcompile)[case])
    assert compile_to_config(ours) == expected  # kcompile writes what Keras writes
    fresh, _ = models(keras)
    compile_from_config(fresh, expected)  # and reads it back
    assert compile_to_config(fresh) == expected
    theirs.compile_from_config(compile_to_config(ours))  # real Keras reads kcompile's
    assert theirs.get_compile_config() == expected


def test_compiled_from_keras_config_evaluates_like_keras():
    keras = keras_module()
    ours, theirs = models(keras)
    theirs.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc2"), "accuracy"])
    compile_from_config(ours, theirs.get_compile_config())
    assert isinstance(ours.loss, kcompile.losses.SparseCategoricalCrossentropy)
    assert ours.loss.from_logits and ours.optimizer.name == theirs.optimizer.name
    got = ours.evaluate(X, Y, verbose=0, return_dict=True)
    want = theirs.evaluate(X, Y, verbose=0, return_dict=True)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert_close(got[key], value)


def test_keras_function_losses_and_metrics_are_read_by_name():
    keras = keras_module()
    ours, theirs = models(keras)
    theirs.compile("sgd", loss=keras.losses.mean_squared_error,
                   metrics=[keras.metrics.mean_absolute_error, "acc"])
    config = theirs.get_compile_config()
    assert config["loss"]["class_name"] == "function"
    compile_from_config(ours, config)
    written = compile_to_config(ours)
    assert written["loss"] == "mean_squared_error"
    assert written["metrics"] == ["mean_absolute_error", "acc"]
    assert written["optimizer"] == config["optimizer"]


def test_kcompile_metric_string_is_written_as_a_list():
    ours = kcompile.Sequential([kcompile.Input((4,)), kcompile.layers.Dense(3)])
    ours.compile("adam", "mse", metrics="mae")
    assert compile_to_config(ours)["metrics"] == ["mae"]


def test_unsupported_loss_and_metric_fields():
    keras = keras_module()
    ours, _ = models(keras)
    base = {"optimizer": "adam", "loss": None}
    for loss, message in [
            (keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
             "CategoricalCrossentropy: label_smoothing=0.1 is not supported"),
            (keras.losses.SparseCategoricalCrossentropy(ignore_class=0),
             "SparseCategoricalCrossentropy: ignore_class=0 is not supported"),
            (keras.losses.Huber(), "loss: unknown class 'Huber'")]:
        config = dict(base, loss=keras.losses.serialize(loss))
        with pytest.raises(ValueError, match=message):
            compile_from_config(ours, config)
    config = dict(base, loss="mse", metrics=[keras.metrics.serialize(keras.metrics.AUC())])
    with pytest.raises(ValueError, match="metrics: unknown class 'AUC'"):
        compile_from_config(ours, config)
    with pytest.raises(ValueError, match="unknown field"):
        compile_from_config(ours, dict(base, loss="mse", bogus=1))
