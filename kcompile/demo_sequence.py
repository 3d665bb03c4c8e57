"""The demo's sequence task: the adding problem (Hochreiter & Schmidhuber, 1997), learned by an LSTM.

Each sample is a sequence of `(value, marker)` pairs: the values are uniform in [0, 1) and exactly
two markers are 1, one in each half of the sequence; the target is the sum of the two marked
values. A model without memory can do no better than predicting the mean, 1.0, whose mean squared
error is the variance of the sum of two uniform values, 2/12 = 0.167 (`BASELINE_MSE`); an LSTM that
remembers the first marked value across the sequence drives the error far below that.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

BASELINE_MSE = 2.0 / 12.0  # predict the mean sum, 1.0: the variance of U(0,1) + U(0,1)
THRESHOLD_MSE = 0.01  # what the demo's model must reach on the test set (6% of the baseline)
TOLERANCE = 0.04  # a prediction within this of the target counts as correct (the original paper's)


def adding_problem(n: int, timesteps: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(x, y)`: x float32 (n, timesteps, 2) of (value, marker) pairs, y float32 (n, 1), the sum of
    the two marked values. The first marker lies in the first half (`timesteps // 2` steps), the
    second in the rest. The same `seed` gives the same arrays on every machine."""
    if n < 1 or timesteps < 2:
        raise ValueError(f"adding_problem: need n >= 1 and timesteps >= 2, got n={n}, "
                         f"timesteps={timesteps}")
    rng = np.random.default_rng(seed)
    values = rng.random((n, timesteps), dtype=np.float32)
    half = timesteps // 2
    markers = np.zeros((n, timesteps), np.float32)
    rows = np.arange(n)
    markers[rows, rng.integers(0, half, n)] = 1.0
    markers[rows, rng.integers(half, timesteps, n)] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values * markers).sum(axis=1, keepdims=True, dtype=np.float32)
    return x, y


def build_model(timesteps: int = 30, units: int = 32):
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input(shape=(timesteps, 2)),
        layers.LSTM(units),
        layers.Dense(1),
    ], name="adding_lstm")


@dataclass
class Result:
    test_mse: float
    within_tolerance: float  # fraction of test predictions within TOLERANCE of the target
    train_seconds: float  # all epochs, the first one's compile included
    first_epoch_seconds: float
    compiled: bool  # False when the training step fell back to the eager executor
    eager_epoch_seconds: float | None = None  # one eager epoch, timed only when compiled ran
    epochs: int = 0

    @property
    def epoch_seconds(self) -> float:
        """Per epoch after the first (the first alone when there is only one)."""
        if self.epochs <= 1:
            return self.first_epoch_seconds
        return (self.train_seconds - self.first_epoch_seconds) / (self.epochs - 1)

    @property
    def passed(self) -> bool:
        return self.test_mse < THRESHOLD_MSE


def fit_quietly(model, x, y, **kwargs) -> tuple[object, bool]:
    """`model.fit(...)`, and whether it ran compiled: the eager-fallback RuntimeWarning is caught
    and turned into the flag instead of being printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, **kwargs)
    eager = [w for w in caught if issubclass(w.category, RuntimeWarning) and "eagerly" in str(w.message)]
    for w in caught:
        if w not in eager:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return history, not eager


def train(seed: int = 0, n_train: int = 3000, n_test: int = 1000, timesteps: int = 30,
          epochs: int = 10, batch_size: int = 32, units: int = 32, time_eager: bool = True,
          verbose: int = 0) -> Result:
    """Train the LSTM on the adding problem with the default (LLVM-compiled) training step and
    measure it on a held-out test set. With `time_eager`, one epoch of the eager executor from the
    same initial weights is timed too, when the compiled step actually ran."""
    import kcompile as keras

    keras.utils.set_random_seed(seed)
    x, y = adding_problem(n_train, timesteps, seed)
    x_test, y_test = adding_problem(n_test, timesteps, seed + 1)
    model = build_model(timesteps, units)
    initial = model.get_weights()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    start = time.perf_counter()
    _, compiled = fit_quietly(model, x, y, batch_size=batch_size, epochs=1, verbose=verbose)
    first = time.perf_counter() - start
    if epochs > 1:
        model.fit(x, y, batch_size=batch_size, epochs=epochs, initial_epoch=1, verbose=verbose)
    seconds = time.perf_counter() - start
    pred = model.predict(x_test, batch_size=256, verbose=0)
    result = Result(test_mse=float(np.mean((pred - y_test) ** 2)),
                    within_tolerance=float(np.mean(np.abs(pred - y_test) < TOLERANCE)),
                    train_seconds=seconds, first_epoch_seconds=first, compiled=compiled,
                    epochs=epochs)
    if time_eager and compiled:
        eager = build_model(timesteps, units)
        eager.set_weights(initial)
        eager.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=False)
        start = time.perf_counter()
        eager.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        result.eager_epoch_seconds = time.perf_counter() - start
    return result


def demo(seed: int = 0) -> int:
    """The `kcompile demo` part: train, print the figures against the threshold; 1 if missed."""
    n_train, timesteps = 3000, 30
    print(f"adding problem: {n_train} sequences of {timesteps} (value, marker) pairs; the target is "
          f"the sum of the two marked values")
    build_model(timesteps).summary()
    r = train(seed, n_train=n_train, timesteps=timesteps)
    how = ("LLVM-compiled training" if r.compiled else
           "training (eager: the model's training step could not be compiled)")
    print(f"{how}: {r.epochs} epochs in {r.train_seconds:.1f} s, {r.epoch_seconds * 1e3:.0f} ms per "
          f"epoch (first epoch {r.first_epoch_seconds:.2f} s, compile included)")
    if r.eager_epoch_seconds is not None:
        print(f"eager (NumPy) training: {r.eager_epoch_seconds * 1e3:.0f} ms per epoch; compiled is "
              f"{r.eager_epoch_seconds / r.epoch_seconds:.1f}x faster")
    print(f"test MSE {r.test_mse:.4f} (threshold {THRESHOLD_MSE}; predicting the mean scores "
          f"{BASELINE_MSE:.3f}); {r.within_tolerance:.1%} of test sums within {TOLERANCE}")
    if not r.passed:
        print(f"the LSTM missed the adding problem's threshold: test MSE {r.test_mse:.4f} >= "
              f"{THRESHOLD_MSE}")
        return 1
    return 0
