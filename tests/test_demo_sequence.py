"""The demo's sequence task: the adding-problem generator and a short LSTM training run."""

import numpy as np
import pytest

from kcompile import demo_sequence
from kcompile.demo_sequence import BASELINE_MSE, adding_problem


def test_adding_problem_shapes_and_dtypes() -> None:
    x, y = adding_problem(64, timesteps=12, seed=3)
    assert x.shape == (64, 12, 2) and x.dtype == np.float32
    assert y.shape == (64, 1) and y.dtype == np.float32


def test_adding_problem_is_seeded() -> None:
    x1, y1 = adding_problem(32, 10, seed=5)
    x2, y2 = adding_problem(32, 10, seed=5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = adding_problem(32, 10, seed=6)
    assert not np.array_equal(x1, x3)


def test_adding_problem_target_is_the_sum_of_the_two_marked_values() -> None:
    timesteps = 11
    x, y = adding_problem(500, timesteps, seed=0)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) == {0.0, 1.0}
    half = timesteps // 2
    assert (markers[:, :half].sum(axis=1) == 1).all()  # one marker in the first half
    assert (markers[:, half:].sum(axis=1) == 1).all()  # and one in the rest
    first = values[np.arange(500), markers[:, :half].argmax(axis=1)]
    second = values[np.arange(500), half + markers[:, half:].argmax(axis=1)]
    np.testing.assert_allclose(y[:, 0], first + second, rtol=1e-6)
    # the mean predictor's error is the variance of U(0,1) + U(0,1)
    assert abs(float(np.var(adding_problem(20000, 8, seed=1)[1])) - BASELINE_MSE) < 0.01


def test_adding_problem_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="timesteps >= 2"):
        adding_problem(4, timesteps=1)


def test_short_training_lowers_the_loss() -> None:
    import kcompile as keras

    keras.utils.set_random_seed(0)
    x, y = adding_problem(256, timesteps=10, seed=0)
    model = demo_sequence.build_model(timesteps=10, units=8)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history, _ = demo_sequence.fit_quietly(model, x, y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(np.isfinite(losses))


def test_result_threshold() -> None:
    r = demo_sequence.Result(test_mse=0.002, within_tolerance=0.9, train_seconds=5.0,
                             first_epoch_seconds=2.0, compiled=True, epochs=4)
    assert r.passed and r.epoch_seconds == 1.0
    r.test_mse = BASELINE_MSE
    assert not r.passed
