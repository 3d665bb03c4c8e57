"""Masked losses, metrics and training against real Keras 3 (JAX backend), identical weights.

When the model's output carries a mask (Embedding(mask_zero=True) or Masking -> recurrent layer
with return_sequences -> Dense), Keras weights the per-step losses by the mask with total/valid
(`keras.src.losses.loss.apply_mask`), so "sum_over_batch_size" is the mean over the valid steps;
metrics average over the valid steps too. Keras's JAX train step drops the mask for the metrics
(not for the loss): `train_on_batch`/`fit` report unmasked training metrics, `evaluate` masked ones.
Checked: the loss and metric values, three Adam steps (losses, metrics, weights after), fit's
history, BatchNormalization's masked statistics, an all-padding batch, and the error Keras raises
too for per-sample weights with a (batch, steps) mask -- eager (jit_compile=False) and compiled.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import keras_module

import kcompile
from kcompile.layers.base import get_keras_mask

pytestmark = pytest.mark.usefixtures("module_cache_dir")

VOCAB, E, U, T, N = 10, 3, 5, 6, 7
ZEROS = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}  # weights are copied
EXECUTORS = ["eager", "compiled"]


def _ids(seed: int, batch: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (batch, T))
    ids[0, 4:] = 0  # right-padded
    ids[1, :3] = 0  # left-padded
    ids[2, [1, 3]] = 0  # holes
    if batch > 4:
        ids[4, :] = 0  # nothing
    return ids.astype(np.int32)


def _targets(loss: str, seed: int, batch: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    if loss.startswith("sparse"):
        return rng.integers(0, 3, (batch, T)).astype(np.int32)
    if loss == "binary_crossentropy":
        return (rng.random((batch, T, 1)) > 0.5).astype(np.float32)
    return rng.standard_normal((batch, T, 2)).astype(np.float32)


def _head(mod, loss: str):
    if loss.startswith("sparse"):
        return mod.layers.Dense(3, activation="softmax")
    if loss == "binary_crossentropy":
        return mod.layers.Dense(1, activation="sigmoid")
    return mod.layers.Dense(2)


def _model(mod, cls: str, kw: dict, loss: str, source: str = "embedding", norm: bool = False):
    L = mod.layers
    if source == "embedding":
        inp = mod.Input((T,), dtype="int32")
        x = L.Embedding(VOCAB, E, mask_zero=True)(inp)
    else:
        inp = mod.Input((T, E))
        x = L.Masking(0.0)(inp)
    if norm:
        x = L.BatchNormalization()(x)
    x = getattr(L, cls)(U, **ZEROS, **kw)(x)
    return mod.Model(inp, _head(mod, loss)(x))


def _sequences(seed: int, batch: int = N) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((batch, T, E)).astype(np.float32)
    x[_ids(seed, batch) == 0] = 0.0
    return x


def _pair(cls, kw, loss, executor, metrics=("mae",), source="embedding", norm=False, seed=0):
    keras = keras_module()
    ours, theirs = _model(kcompile, cls, kw, loss, source, norm), \
        _model(keras, cls, kw, loss, source, norm)
    rng = np.random.default_rng(seed)
    ours.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    ours.compile(kcompile.optimizers.Adam(0.01), loss, metrics=list(metrics),
                 jit_compile=executor == "compiled")
    theirs.compile(keras.optimizers.Adam(0.01), loss, metrics=list(metrics))
    return ours, theirs


def _close(a, b, rtol=1e-4, atol=1e-6) -> None:
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol)


def _same_weights(ours, theirs) -> None:
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        _close(a, np.asarray(b), 1e-4, 1e-5)


CASES = [("LSTM", {"return_sequences": True}, "mean_squared_error", "embedding"),
         ("GRU", {"return_sequences": True, "go_backwards": True, "reset_after": False},
          "sparse_categorical_crossentropy", "embedding"),
         ("SimpleRNN", {"return_sequences": True, "zero_output_for_mask": True},
          "binary_crossentropy", "embedding"),
         ("GRU", {"return_sequences": True}, "mean_absolute_error", "masking"),
         ("LSTM", {"go_backwards": True}, "mean_squared_error", "embedding")]  # no output mask


def _case_id(case) -> str:
    cls, kw, loss, source = case
    return "-".join([cls, *kw, loss[:6], source])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_masked_loss_metrics_and_steps(case):
    """Keras runs the case once; both executors replay it: evaluate (loss and metrics over the
    valid steps only), three optimizer steps (the loss masked, the training metrics not: Keras's
    JAX train step), the weights after, evaluate again."""
    cls, kw, loss, source = case
    if not kw.get("return_sequences"):
        loss_y = np.random.default_rng(3).standard_normal((N, 2)).astype(np.float32)
    else:
        loss_y = _targets(loss, 3)
    metrics = ("accuracy",) if loss.startswith("sparse") or loss.startswith("binary") else ("mae",)
    x = _ids(3) if source == "embedding" else _sequences(3)

    def run(model) -> tuple[list, list]:
        results = [model.evaluate(x, loss_y, verbose=0)]
        results += [model.train_on_batch(x, loss_y) for _ in range(3)]
        weights = [np.asarray(w) for w in model.get_weights()]
        return results + [model.evaluate(x, loss_y, verbose=0)], weights

    want = None
    for executor in EXECUTORS:
        ours, theirs = _pair(cls, kw, loss, executor, metrics, source)
        if want is None:
            want = run(theirs)
        got = run(ours)
        for a, b in zip(got[0], want[0], strict=True):
            _close(a, b)
        for a, b in zip(got[1], want[1], strict=True):
            _close(a, b, 1e-4, 1e-5)


def test_masked_loss_formula():
    """sum_over_batch_size with a mask = the mean of the per-step losses over the valid steps."""
    ours, _ = _pair("LSTM", {"return_sequences": True}, "mean_squared_error", "eager")
    x, y = _ids(4), _targets("mean_squared_error", 4)
    pred = ours.predict(x, verbose=0)
    per_step = ((pred - y) ** 2).mean(-1)
    valid = (x != 0).astype(np.float64)
    _close(ours.evaluate(x, y, verbose=0)[0], (per_step * valid).sum() / valid.sum(), 1e-5)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fit_history(executor):
    ours, theirs = _pair("LSTM", {"return_sequences": True}, "mean_squared_error", executor)
    x = np.concatenate([_ids(5), _ids(6)])
    y = np.concatenate([_targets("mse", 5), _targets("mse", 6)])
    got = ours.fit(x, y, batch_size=N, epochs=2, shuffle=False, verbose=0,
                   validation_data=(_ids(7), _targets("mse", 7))).history
    want = theirs.fit(x, y, batch_size=N, epochs=2, shuffle=False, verbose=0,
                      validation_data=(_ids(7), _targets("mse", 7))).history
    assert sorted(got) == sorted(want)
    for key in want:
        _close(got[key], want[key])
    _same_weights(ours, theirs)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_batchnorm_masked_statistics(executor):
    """BatchNormalization takes its training statistics over the unmasked steps only."""
    ours, theirs = _pair("LSTM", {"return_sequences": True}, "mean_squared_error", executor,
                         norm=True)
    x, y = _ids(8), _targets("mse", 8)
    for _ in range(2):
        _close(ours.train_on_batch(x, y), theirs.train_on_batch(x, y))
    _same_weights(ours, theirs)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_all_padding_batch(executor):
    """Nothing valid: Keras's divide_no_nan makes the loss 0 (and the step changes nothing but
    Adam's state)."""
    ours, theirs = _pair("GRU", {"return_sequences": True}, "mean_squared_error", executor)
    x, y = np.zeros((3, T), np.int32), _targets("mse", 9, 3)
    _close(ours.evaluate(x, y, verbose=0), theirs.evaluate(x, y, verbose=0))
    _close(ours.train_on_batch(x, y), theirs.train_on_batch(x, y))
    _same_weights(ours, theirs)


def test_sample_weight_with_step_mask_fails_as_in_keras():
    ours, theirs = _pair("LSTM", {"return_sequences": True}, "mean_squared_error", "eager")
    x, y = _ids(10), _targets("mse", 10)
    sw = np.linspace(0.5, 2.0, N).astype(np.float32)
    with pytest.raises(ValueError):
        theirs.train_on_batch(x, y, sample_weight=sw)
    with pytest.raises(ValueError, match="cannot be combined with the mask"):
        ours.train_on_batch(x, y, sample_weight=sw)
    with pytest.raises(ValueError, match="cannot be combined with the mask"):
        ours.evaluate(x, y, sample_weight=sw, verbose=0)
    # per-sample weights with an output that carries no mask still work, as in Keras
    ours, theirs = _pair("LSTM", {}, "mean_squared_error", "eager")
    y2 = np.random.default_rng(10).standard_normal((N, 2)).astype(np.float32)
    _close(ours.train_on_batch(x, y2, sample_weight=sw),
           theirs.train_on_batch(x, y2, sample_weight=sw))


def test_eager_loss_and_metric_read_the_mask():
    """`loss(y_true, y_pred)` and `metric.update_state` on a layer's output (arrays) use the mask
    it carries, as Keras's do."""
    keras = keras_module()
    ids, y = _ids(11), _targets("mse", 11)
    emb = kcompile.layers.Embedding(VOCAB, 2, mask_zero=True)
    k_emb = keras.layers.Embedding(VOCAB, 2, mask_zero=True)
    pred = emb(ids)
    k_emb(ids)
    k_emb.set_weights(emb.get_weights())
    k_pred = k_emb(ids)
    assert get_keras_mask(pred) is not None
    _close(kcompile.losses.MeanSquaredError()(y, pred), keras.losses.MeanSquaredError()(y, k_pred))
    ours, theirs = kcompile.metrics.MeanAbsoluteError(), keras.metrics.MeanAbsoluteError()
    ours.update_state(y, pred)
    theirs.update_state(y, k_pred)
    _close(ours.result(), theirs.result())


def test_masked_training_warns_nothing():
    """Building and training a masked model raises no warnings (nothing falls back to eager)."""
    ours, _ = _pair("LSTM", {"return_sequences": True}, "mean_squared_error", "compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.train_on_batch(_ids(12), _targets("mse", 12))
        ours.predict(_ids(12), verbose=0)
