"""`fit`, `evaluate` and the single-batch steps: Keras's loop around the step graphs.

Keras semantics: batch_size 32, shuffle=True every epoch (from kcompile's seeded generator),
validation_split takes the last fraction of the data before shuffling, the logged loss is the mean of
the batch losses weighted by batch size, metrics are running means over the epoch, `val_` logs come
from evaluate on the validation data, log keys are sorted as Keras 3 sorts them.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from kcompile import random_state
from kcompile.callbacks import Callback, History

if TYPE_CHECKING:
    from kcompile.models.model import Model


def _arrays(x: Any) -> list[np.ndarray]:
    items = x if isinstance(x, list | tuple) else [x]
    return [np.asarray(a) for a in items]


def _take(x: Any, idx) -> Any:
    if x is None:
        return None
    if isinstance(x, list | tuple):
        return [np.asarray(a)[idx] for a in x]
    return np.asarray(x)[idx]


def _length(model_name: str, x: Any, y: Any, sample_weight: Any = None) -> int:
    if x is None:
        raise ValueError(f"Model '{model_name}': no input data x given")
    lengths = {len(a) for a in _arrays(x)}
    if len(lengths) != 1:
        raise ValueError(f"Model '{model_name}': inputs have different lengths {sorted(lengths)}")
    n = lengths.pop()
    if y is None:
        raise ValueError(f"Model '{model_name}': no labels y given")
    if len(np.asarray(y)) != n:
        raise ValueError(f"Model '{model_name}': x has {n} samples but y has {len(np.asarray(y))}")
    if sample_weight is not None and len(np.asarray(sample_weight)) != n:
        raise ValueError(f"Model '{model_name}': x has {n} samples but sample_weight has "
                         f"{len(np.asarray(sample_weight))}")
    return n


def class_weights(model_name: str, y: np.ndarray, class_weight: dict) -> np.ndarray:
    """Per-sample weights from a {class: weight} dict (integer labels, or one-hot / (n, 1))."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"Model '{model_name}': class_weight must be a dict {{class: weight}}, got "
                        f"{type(class_weight).__name__}")
    y = np.asarray(y)
    ids = np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))
    ids = np.round(ids).astype(np.int64)
    table = dict(class_weight)
    missing = sorted(set(np.unique(ids).tolist()) - set(table))
    if missing:
        raise ValueError(f"Model '{model_name}': class_weight has no entry for classes {missing}")
    return np.array([table[i] for i in ids.tolist()], np.float32)


def _logs(loss: float, metrics: list) -> dict[str, float]:
    logs = {"loss": loss, **{m.name: m.result() for m in metrics}}
    return dict(sorted(logs.items()))


def flatten_logs(model: Model, logs: dict[str, float]) -> Any:
    """Keras's return of evaluate/train_on_batch: the loss alone, or [loss, *metrics]."""
    names = model.metrics_names
    if len(names) == 1:
        return logs["loss"]
    return [logs[k] for k in names]


def _rng_key(model: Model, step) -> np.ndarray | None:
    if not step.needs_rng_key:
        return None
    key = np.array([model._rng_seed, model._rng_step], np.uint32)
    model._rng_step += 1
    return key


def _weights(model: Model, y: Any, sample_weight: Any, class_weight: Any) -> Any:
    if class_weight is None:
        return sample_weight
    if sample_weight is not None:
        raise ValueError(f"Model '{model.name}': arguments `sample_weight` and `class_weight` "
                         "cannot be specified at the same time (as in Keras)")
    return class_weights(model.name, y, class_weight)


def train_batch(model: Model, x: Any, y: Any, sample_weight: Any = None, class_weight: Any = None
                ) -> dict[str, float]:
    """One optimizer step; the metric objects accumulate (the caller resets them)."""
    step, arrays = model._steps_for(x, True)
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    if y is None:
        raise ValueError(f"Model '{model.name}': no labels y given")
    sw = _weights(model, y, sample_weight, class_weight)
    yy, ww = step.check(y, sw, batch)
    loss = step.run(arrays, yy, ww, _rng_key(model, step))
    model._last_batch_loss = loss
    return _logs(loss, step.targets.metrics)


def test_batch(model: Model, x: Any, y: Any, sample_weight: Any = None) -> dict[str, float]:
    step, arrays = model._steps_for(x, False)
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    if y is None:
        raise ValueError(f"Model '{model.name}': no labels y given")
    yy, ww = step.check(y, sample_weight, batch)
    loss = step.run(arrays, yy, ww)
    return _logs(loss, step.targets.metrics)


def _validation(model: Model, x, y, sw, validation_split, validation_data):
    n = _length(model.name, x, y, sw)
    if validation_split and validation_data is None:
        if not 0 < validation_split < 1:
            raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
        split = int(np.ceil(n * (1 - validation_split)))  # as Keras: the tail validates
        if split == 0 or split == n:
            raise ValueError(f"fit: validation_split={validation_split} leaves an empty training or "
                             f"validation set with {n} samples")
        tail = slice(split, n)
        validation_data = (_take(x, tail), np.asarray(y)[tail], _take(sw, tail))
        head = slice(0, split)
        x, y, sw, n = _take(x, head), np.asarray(y)[:split], _take(sw, head), split
    if validation_data is not None:
        if not isinstance(validation_data, list | tuple) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be a tuple (x_val, y_val) or "
                             "(x_val, y_val, val_sample_weight)")
        validation_data = tuple(validation_data) + (None,) * (3 - len(validation_data))
    return x, y, sw, n, validation_data


def fit(model: Model, x: Any, y: Any, *, batch_size: int | None = None, epochs: int = 1,
        verbose: Any = "auto", callbacks: list[Callback] | None = None,
        validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
        class_weight: Any = None, sample_weight: Any = None, initial_epoch: int = 0) -> History:
    batch_size = 32 if batch_size is None else batch_size
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    x, y, sample_weight, n, validation_data = _validation(model, x, y, sample_weight,
                                                          validation_split, validation_data)
    model._steps_for(_take(x, slice(0, 1)), True)  # compile errors surface before any callback
    sample_weight = _weights(model, y, sample_weight, class_weight)
    history = History()
    cbs = [*(callbacks or []), history]
    steps = -(-n // batch_size)
    verbose = 1 if verbose == "auto" else int(verbose)
    for cb in cbs:
        cb.set_model(model)
        cb.set_params({"epochs": epochs, "steps": steps, "verbose": verbose})
    model.history = history
    model.stop_training = False
    for cb in cbs:
        cb.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        if verbose == 1:
            sys.stdout.write(f"Epoch {epoch + 1}/{epochs}\n")
        order = random_state.generator().permutation(n) if shuffle else np.arange(n)
        total, seen, start = 0.0, 0, time.perf_counter()
        logs: dict[str, float] = {}
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            for cb in cbs:
                cb.on_train_batch_begin(step)
            batch_logs = train_batch(model, _take(x, idx), np.asarray(y)[idx],
                                     _take(sample_weight, idx))
            total += batch_logs["loss"] * len(idx)
            seen += len(idx)
            logs = {**batch_logs, "loss": total / seen}
            for cb in cbs:
                cb.on_train_batch_end(step, logs)
            if verbose == 1:
                _progress(step + 1, steps, logs, time.perf_counter() - start)
            if model.stop_training:  # as Keras 3: a batch-end callback (TerminateOnNaN) stops now
                break
        logs = dict(logs)
        if validation_data is not None:  # Keras validates even an epoch a callback stopped
            vx, vy, vw = validation_data
            val = evaluate(model, vx, vy, batch_size, 0, vw)
            logs.update({f"val_{k}": v for k, v in val.items()})
        line = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        if verbose == 1:  # finish the progress bar's line with the epoch's logs
            _progress(steps, steps, logs, time.perf_counter() - start)
            sys.stdout.write("\n")
        elif verbose == 2:
            sys.stdout.write(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.1f}s - "
                             f"{line}\n")
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in cbs:
        cb.on_train_end()
    return history


def _progress(step: int, steps: int, logs: dict, elapsed: float) -> None:
    width = 30
    done = int(width * step / steps)
    bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
    line = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
    sys.stdout.write(f"\r{step}/{steps} [{bar}] - {elapsed:.1f}s - {line}")
    sys.stdout.flush()


def evaluate(model: Model, x: Any, y: Any, batch_size: int | None = None, verbose: Any = 0,
             sample_weight: Any = None) -> dict[str, float]:
    """Loss (batch losses weighted by batch size) and metrics over the data, at inference."""
    batch_size = 32 if batch_size is None else batch_size
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be a positive int, got {batch_size!r}")
    n = _length(model.name, x, y, sample_weight)
    model._steps_for(_take(x, slice(0, 1)), False)  # RuntimeError before compile
    model.reset_metrics()
    total, start_time = 0.0, time.perf_counter()
    logs: dict[str, float] = {}
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size)
        logs = test_batch(model, _take(x, idx), np.asarray(y)[idx], _take(sample_weight, idx))
        total += logs["loss"] * min(batch_size, n - start)
    logs["loss"] = total / max(n, 1)
    if verbose == "auto" or verbose == 1:
        steps = -(-n // batch_size)
        _progress(steps, steps, logs, time.perf_counter() - start_time)
        sys.stdout.write("\n")
    return logs
