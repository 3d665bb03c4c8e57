"""`fit` and `evaluate`: Keras's loop around the one-graph training step.

Keras semantics: batch_size 32, shuffle=True every epoch (from kcompile's seeded generator),
validation_split takes the last fraction of the data before shuffling, the logged epoch loss is the
mean of the batch losses weighted by batch size, `val_` logs from evaluate on the validation data.
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
    if isinstance(x, list | tuple):
        return [np.asarray(a)[idx] for a in x]
    return np.asarray(x)[idx]


def _length(model_name: str, x: Any, y: Any) -> int:
    lengths = {len(a) for a in _arrays(x)}
    if len(lengths) != 1:
        raise ValueError(f"Model '{model_name}': inputs have different lengths {sorted(lengths)}")
    n = lengths.pop()
    if y is not None and len(np.asarray(y)) != n:
        raise ValueError(f"Model '{model_name}': x has {n} samples but y has {len(np.asarray(y))}")
    return n


def fit(model: Model, x: Any, y: Any, batch_size: int | None, epochs: int, verbose: Any,
        callbacks: list[Callback] | None, validation_split: float, validation_data: Any,
        shuffle: bool, initial_epoch: int) -> History:
    batch_size = 32 if batch_size is None else batch_size
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    n = _length(model.name, x, y)
    if validation_split:
        if not 0 < validation_split < 1:
            raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
        split = int(np.ceil(n * (1 - validation_split)))  # as Keras: the tail validates
        if split == 0 or split == n:
            raise ValueError(f"fit: validation_split={validation_split} leaves an empty training or "
                             f"validation set with {n} samples")
        validation_data = (_take(x, slice(split, n)), np.asarray(y)[split:])
        x, y, n = _take(x, slice(0, split)), np.asarray(y)[:split], split
    history = History()
    cbs = [*(callbacks or []), history]
    steps = -(-n // batch_size)
    verbose = 1 if verbose == "auto" else int(verbose)
    for cb in cbs:
        cb.set_model(model)
        cb.set_params({"epochs": epochs, "steps": steps, "verbose": verbose})
        cb.on_train_begin()
    model.stop_training = False
    for epoch in range(initial_epoch, epochs):
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        if verbose == 1:
            sys.stdout.write(f"Epoch {epoch + 1}/{epochs}\n")
        order = random_state.generator().permutation(n) if shuffle else np.arange(n)
        total, seen, start = 0.0, 0, time.perf_counter()
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            for cb in cbs:
                cb.on_train_batch_begin(step)
            loss = model.train_on_batch(_take(x, idx), np.asarray(y)[idx])
            total += loss * len(idx)
            seen += len(idx)
            logs = {"loss": total / seen}
            for cb in cbs:
                cb.on_train_batch_end(step, logs)
            if verbose == 1:
                _progress(step + 1, steps, logs, time.perf_counter() - start)
        logs = {"loss": total / max(seen, 1)}
        if validation_data is not None:
            vx, vy = validation_data[0], validation_data[1]
            logs["val_loss"] = evaluate(model, vx, vy, batch_size, verbose=0)
        line = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        if verbose == 1:  # finish the progress bar's line with the epoch's logs
            _progress(steps, steps, logs, time.perf_counter() - start)
            sys.stdout.write("\n")
        elif verbose == 2:
            sys.stdout.write(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.1f}s - "
                             f"{line}\n")
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if getattr(model, "stop_training", False):
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


def evaluate(model: Model, x: Any, y: Any, batch_size: int | None = None, verbose: Any = 0) -> float:
    """Mean loss over the data (batch losses weighted by batch size), at inference."""
    batch_size = 32 if batch_size is None else batch_size
    n = _length(model.name, x, y)
    if model.loss is None:
        raise RuntimeError(f"Model '{model.name}': call compile(optimizer, loss) before evaluate")
    total = 0.0
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size)
        pred = np.asarray(model.predict_on_batch(_take(x, idx)))
        yy = np.asarray(y)[idx]
        total += float(model.loss(yy, pred)) * len(yy)
    return total / max(n, 1)
