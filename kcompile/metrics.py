"""Keras metrics, written as IR so the training/test step graphs compute them next to the loss.

A metric here is Keras's `MeanMetricWrapper`: a per-sample value (`values`) averaged over every sample
seen since the last `reset_state`. The step graphs output the batch's sum of values; the metric
object accumulates sum and count in Python, as Keras's `Mean` state does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile.ir.core import TensorType, Value
from kcompile.ir.emit import Emitter
from kcompile.ir.interpret import run
from kcompile.losses import eager_graph, mask_weights


class Metric:
    """Running mean of a per-sample value; `update_state`, `result`, `reset_state` as in Keras."""

    name = "metric"
    _direction: str | None = None  # "up"/"down": what improving means (callbacks' mode="auto")

    def __init__(self, name: str | None = None, dtype: Any = None) -> None:
        self.name = name or self.name
        self.dtype = "float32"
        self.reset_state()

    # -- the IR definition ---------------------------------------------------------------------
    def values(self, e: Emitter, y_true: Value, y_pred: Value) -> Value:
        """Per-sample values (batch first); float32."""
        raise NotImplementedError

    def build_total(self, e: Emitter, y_true: Value, y_pred: Value, sample_weight: Value | None,
                    mask: Value | None = None) -> tuple[Value, Value]:
        """(sum of the batch's values, their count); weighted when `sample_weight` is given; a mask
        on the predictions (Keras) leaves the masked values out of both."""
        vals = self.values(e, y_true, y_pred)
        w = None
        if sample_weight is not None:
            w = broadcast_weights(e, sample_weight, vals)
        if mask is not None:
            m = mask_weights(e, mask, vals, normalize=False)
            w = m if w is None else e.mul(w, m)
        if w is not None:
            return e.sum(e.mul(vals, w)), e.sum(w)
        ones = e.broadcast_like(e.const(1.0), vals)
        return e.sum(vals), e.sum(ones)

    # -- the stateful API ----------------------------------------------------------------------
    def reset_state(self) -> None:
        self.total = 0.0
        self.count = 0.0

    def accumulate(self, total: float, count: float) -> None:
        self.total += float(total)
        self.count += float(count)

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Eager update from arrays (runs the same IR through the interpreter); a mask `y_pred`
        carries leaves masked values out, as in Keras."""
        from kcompile.layers.base import get_keras_mask

        mask = get_keras_mask(y_pred)
        y_pred = np.asarray(y_pred, np.float32)
        y_true = np.asarray(y_true)
        y_true = y_true.astype(np.int32 if y_true.dtype.kind in "iub" else np.float32)
        g, (t, p, w), feeds = eager_graph(self.name, y_true, y_pred, sample_weight)
        m = None
        if mask is not None:
            mask = np.asarray(mask, np.float32)
            m = g.add_input(TensorType(mask.shape, "float32"), "mask")
            feeds.append(mask)
        g.outputs = list(self.build_total(Emitter(g, self.name), t, p, w, m))
        total, count = run(g, feeds)
        self.accumulate(total, count)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Metric:
        config = dict(config)
        from kcompile.serialization import require_float32

        require_float32(cls.__name__, config.pop("dtype", None))
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}>"


def broadcast_weights(e: Emitter, sample_weight: Value, like: Value) -> Value:
    """Per-sample weights (batch,) or (batch, ...) broadcast to the per-sample values `like`."""
    w = sample_weight
    if w.type.rank < like.type.rank:
        w = e.reshape(w, (*w.shape, *[1] * (like.type.rank - w.type.rank)))
    return e.broadcast_like(w, like) if w.shape != like.shape else w


def _float(e: Emitter, v: Value) -> Value:
    return v if v.dtype == "float32" else e.cast(v, "float32")


def _last(v: Value) -> tuple[int]:
    return (v.type.rank - 1,)


def _mean_last(e: Emitter, v: Value) -> Value:
    """Per-sample values: the mean over the last axis where there is more than the batch axis."""
    return e.mean(v, _last(v)) if v.type.rank > 1 else v


def _error(e: Emitter, y_true: Value, y_pred: Value, elementwise) -> Value:
    return e.mean(elementwise(e.sub(y_pred, _float(e, y_true))), _last(y_pred))


class Accuracy(Metric):
    """How often predictions equal labels exactly (mean over the last axis)."""

    name = "accuracy"
    _direction = "up"

    def values(self, e, y_true, y_pred):
        return _mean_last(e, e.compare(_float(e, y_true), y_pred, "eq"))


class BinaryAccuracy(Metric):
    name = "binary_accuracy"
    _direction = "up"

    def __init__(self, name: str | None = None, dtype: Any = None, threshold: float = 0.5) -> None:
        super().__init__(name, dtype)
        self.threshold = float(threshold)

    def values(self, e, y_true, y_pred):
        yhat = e.compare(y_pred, self.threshold, "gt")
        return _mean_last(e, e.compare(_float(e, y_true), yhat, "eq"))

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"
    _direction = "up"

    def values(self, e, y_true, y_pred):
        a = e.op("argmax", _float(e, y_true), axis=-1)
        b = e.op("argmax", y_pred, axis=-1)
        return e.compare(_float(e, a), _float(e, b), "eq")


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"
    _direction = "up"

    def values(self, e, y_true, y_pred):
        if y_true.type.rank == y_pred.type.rank and y_true.shape[-1] == 1:
            y_true = e.reshape(y_true, y_pred.shape[:-1])
        b = e.op("argmax", y_pred, axis=-1)
        return e.compare(_float(e, y_true), _float(e, b), "eq")


class MeanSquaredError(Metric):
    name = "mean_squared_error"
    _direction = "down"

    def values(self, e, y_true, y_pred):
        return _error(e, y_true, y_pred, e.square)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"
    _direction = "down"

    def values(self, e, y_true, y_pred):
        return _error(e, y_true, y_pred, e.abs)


_CLASSES = (Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
            MeanSquaredError, MeanAbsoluteError)
_ALIASES: dict[str, type[Metric]] = {"mse": MeanSquaredError, "mae": MeanAbsoluteError}
for _cls in _CLASSES:
    _ALIASES[_cls.name] = _cls
    _ALIASES[_cls.__name__] = _cls


def get(identifier: Any, y_true_rank: int | None = None, y_pred_type: TensorType | None = None
        ) -> Metric:
    """A metric object for `compile(metrics=[...])`: a name, a class or an instance.

    "accuracy"/"acc" picks binary, sparse categorical or categorical accuracy from the label and
    prediction shapes, as Keras does; a string identifier is also the name the logs use.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if isinstance(identifier, str):
        if identifier.lower() in ("accuracy", "acc"):
            if y_pred_type is None or y_true_rank is None:
                return Accuracy(name=identifier)
            last = y_pred_type.shape[-1] if y_pred_type.rank else 1
            if last == 1:
                return BinaryAccuracy(name=identifier)
            if y_true_rank < y_pred_type.rank:
                return SparseCategoricalAccuracy(name=identifier)
            return CategoricalAccuracy(name=identifier)
        if identifier in _ALIASES:
            return _ALIASES[identifier](name=identifier)
    raise ValueError(f"Unknown metric {identifier!r}; kcompile supports "
                     f"{sorted(k for k in _ALIASES if k[0].islower())} and 'accuracy' (or a Metric "
                     "instance)")


def get_list(identifiers: Any, y_true_rank: int, y_pred_type: TensorType) -> list[Metric]:
    if identifiers is None:
        return []
    items = identifiers if isinstance(identifiers, list | tuple) else [identifiers]
    if isinstance(identifiers, dict):
        raise ValueError("compile: metrics as a dict (per output) is not supported yet; models "
                         "train with one output")
    return [get(m, y_true_rank, y_pred_type) for m in items]
