"""Learning-rate schedules against Keras 3: values per step, and training with a schedule."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile
from kcompile import layers as kl

SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5,
                              staircase=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.2, decay_steps=3, decay_rate=0.3)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.2, decay_steps=3, decay_rate=0.3,
                              staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[5, 12], values=[0.1, 0.05, 0.01])),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=20, warmup_target=0.1,
                         warmup_steps=6)),
]


@pytest.mark.parametrize("name,kwargs", SCHEDULES, ids=[f"{n}-{i}" for i, (n, _) in
                                                        enumerate(SCHEDULES)])
def test_schedule_values_match_keras(name, kwargs):
    keras = keras_module()
    ours = getattr(kcompile.optimizers.schedules, name)(**kwargs)
    theirs = getattr(keras.optimizers.schedules, name)(**kwargs)
    steps = range(0, 40)
    assert_close([ours(s) for s in steps], [float(theirs(s)) for s in steps], rtol=1e-6, atol=1e-9)
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_training_with_a_schedule_matches_keras(jit):
    keras = keras_module()
    kcompile.utils.set_random_seed(1)
    ours = kcompile.Sequential([kcompile.Input((4,)), kl.Dense(5, activation="tanh"), kl.Dense(2)])
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.Dense(2)])
    theirs.set_weights(ours.get_weights())
    kw = dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5, staircase=True)
    ours.compile(kcompile.optimizers.SGD(kcompile.optimizers.schedules.ExponentialDecay(**kw),
                                         momentum=0.9), "mse", jit_compile=jit)
    theirs.compile(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(**kw),
                                        momentum=0.9), "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)
    h1 = ours.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    h2 = theirs.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    assert_close(h1.history["loss"], h2.history["loss"], rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bad_schedules():
    with pytest.raises(ValueError, match="decay_steps"):
        kcompile.optimizers.schedules.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError, match="1 less than the length of values"):
        kcompile.optimizers.schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
