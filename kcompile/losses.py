"""Keras losses, written as IR so every executor (and the training-step export) runs them.

`loss.build(e, y_true, y_pred, sample_weight)` appends the scalar loss to a graph with Keras's
formulas and its default reduction, "sum_over_batch_size": sum(per-sample loss * weight) / number
of per-sample losses.

When the predictions carry a Keras mask (e.g. Embedding(mask_zero=True) -> LSTM(return_sequences=True)
-> Dense), `build(..., mask=)` weights the per-sample losses as Keras's `apply_mask` does: a masked
entry weighs 0, a valid one total/valid (total = entries of the mask, valid = its nonzero ones), so
"sum_over_batch_size" is sum(loss * weight over valid entries) / valid (0 when nothing is valid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile.ir.core import Graph, TensorType, Value
from kcompile.ir.emit import Emitter
from kcompile.ir.interpret import run

EPSILON = 1e-7  # keras.backend.epsilon()


class Loss:
    name = "loss"

    def __init__(self, reduction: str = "sum_over_batch_size", name: str | None = None) -> None:
        if reduction not in ("sum_over_batch_size", "sum", "mean", "none"):
            raise ValueError(f"{type(self).__name__}: unknown reduction {reduction!r}")
        self.reduction = reduction
        self.name = name or self.name

    def label_type(self, pred: TensorType) -> TensorType:
        """What y_true must look like for predictions of type `pred`."""
        return pred

    def per_sample(self, e: Emitter, y_true: Value, y_pred: Value) -> Value:
        raise NotImplementedError

    def build(self, e: Emitter, y_true: Value, y_pred: Value, sample_weight: Value | None = None,
              mask: Value | None = None) -> Value:
        losses = self.per_sample(e, y_true, y_pred)
        weights = None
        if sample_weight is not None:
            from kcompile.metrics import broadcast_weights

            weights = broadcast_weights(e, sample_weight, losses)
        if mask is not None:
            m = mask_weights(e, mask, losses, self.reduction in ("sum_over_batch_size", "mean"))
            weights = m if weights is None else e.mul(weights, m)
        if weights is not None:
            losses = e.mul(losses, weights)
        if self.reduction == "none":
            return losses
        total = e.sum(losses)
        if self.reduction in ("sum_over_batch_size", "mean"):
            ones = e.broadcast_like(e.const(1.0, losses.dtype), losses)
            total = e.div(total, e.sum(ones))
        return total

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> np.ndarray:
        """Eager evaluation on arrays (as `keras.losses.X()(y_true, y_pred)`); a mask `y_pred`
        carries (the output of a layer called on arrays) weights the losses, as in Keras."""
        from kcompile.layers.base import get_keras_mask

        mask = get_keras_mask(y_pred)
        y_pred = np.asarray(y_pred, np.float32)
        y_true = np.asarray(y_true, self.label_type(TensorType(y_pred.shape)).dtype)
        g, (t, p, w), feeds = eager_graph(self.name, y_true, y_pred, sample_weight)
        m = None
        if mask is not None:
            mask = np.asarray(mask, np.float32)
            m = g.add_input(TensorType(mask.shape, "float32"), "mask")
            feeds.append(mask)
        g.outputs = [self.build(Emitter(g), t, p, w, m)]
        return run(g, feeds)[0]

    # Keras config fields kcompile implements only at their default (written back as such)
    _keras_fixed: dict[str, Any] = {}

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Loss:
        config = dict(config)
        for key, default in cls._keras_fixed.items():
            value = config.pop(key, default)
            if value != default:
                raise ValueError(f"{cls.__name__}: {key}={value!r} is not supported by kcompile "
                                 f"(only {default!r})")
        from kcompile.serialization import require_float32

        require_float32(cls.__name__, config.pop("dtype", None))
        return cls(**config)


def align_mask(e: Emitter, mask: Value, like: Value) -> Value:
    """The mask as 0/1 values of `like`'s dtype and rank (Keras casts masks to bool and
    squeezes or expands a trailing size-1 axis to match ranks); not yet broadcast."""
    m = e.compare(mask if mask.dtype == like.dtype else e.cast(mask, like.dtype), 0.0, "ne")
    if m.type.rank == like.type.rank + 1 and m.shape[-1] == 1:
        m = e.reshape(m, m.shape[:-1])
    elif like.type.rank == m.type.rank + 1 and like.shape[-1] == 1:
        m = e.reshape(m, (*m.shape, 1))
    return m


def _broadcast_mask(e: Emitter, m: Value, like: Value) -> Value:
    if m.shape == like.shape:
        return m
    try:
        return e.broadcast_like(m, like)
    except ValueError:
        raise ValueError(f"The mask the predictions carry, of shape {m.shape}, does not fit the "
                         f"per-sample values of shape {like.shape}") from None


def mask_weights(e: Emitter, mask: Value, like: Value, normalize: bool) -> Value:
    """Keras's `apply_mask` weights for per-sample values `like`: 0 where masked, else 1, or with
    `normalize` (reductions "sum_over_batch_size"/"mean") total/valid, where total is the number of
    mask entries and valid the unmasked ones (0 weights when none is valid)."""
    m = align_mask(e, mask, like)
    if normalize:
        total = e.sum(e.broadcast_like(e.const(1.0, m.dtype), m))
        valid = e.sum(m)
        m = e.mul(m, e.div(total, e.maximum(valid, 1.0)))
    return _broadcast_mask(e, m, like)


def eager_graph(name: str, y_true: np.ndarray, y_pred: np.ndarray, sample_weight: Any
                ) -> tuple[Graph, tuple[Value, Value, Value | None], list[np.ndarray]]:
    """A graph taking (y_true, y_pred[, sample_weight]) for the eager loss and metric APIs."""
    g = Graph(name=name)
    t = g.add_input(TensorType(y_true.shape, y_true.dtype.name), "y_true")
    p = g.add_input(TensorType(y_pred.shape, "float32"), "y_pred")
    feeds = [y_true, y_pred]
    w = None
    if sample_weight is not None:
        sw = np.asarray(sample_weight, np.float32)
        w = g.add_input(TensorType(sw.shape, "float32"), "sample_weight")
        feeds.append(sw)
    return g, (t, p, w), feeds


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def per_sample(self, e, y_true, y_pred):
        return e.mean(e.square(e.sub(y_pred, y_true)), (-1 % y_pred.type.rank,))


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def per_sample(self, e, y_true, y_pred):
        return e.mean(e.abs(e.sub(y_pred, y_true)), (-1 % y_pred.type.rank,))


class _FromLogits(Loss):
    def __init__(self, from_logits: bool = False, reduction: str = "sum_over_batch_size",
                 name: str | None = None) -> None:
        super().__init__(reduction, name)
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, **self._keras_fixed}


class BinaryCrossentropy(_FromLogits):
    name = "binary_crossentropy"
    _keras_fixed = {"label_smoothing": 0.0, "axis": -1}

    def per_sample(self, e, y_true, y_pred):
        if self.from_logits:  # log_sigmoid(x) = min(x, 0) - log(1 + exp(-|x|))
            def log_sigmoid(x):
                return e.sub(e.minimum(x, 0.0), e.log(e.add(1.0, e.exp(e.neg(e.abs(x))))))
            bce = e.add(e.mul(y_true, log_sigmoid(y_pred)),
                        e.mul(e.sub(1.0, y_true), log_sigmoid(e.neg(y_pred))))
        else:
            p = e.minimum(e.maximum(y_pred, EPSILON), 1.0 - EPSILON)
            bce = e.add(e.mul(y_true, e.log(p)), e.mul(e.sub(1.0, y_true), e.log(e.sub(1.0, p))))
        return e.neg(e.mean(bce, (-1 % y_pred.type.rank,)))


def _log_probs(e: Emitter, y_pred: Value, from_logits: bool) -> Value:
    axis = y_pred.type.rank - 1
    if from_logits:
        return e.op("log_softmax", y_pred, axis=-1)
    norm = e.div(y_pred, e.broadcast_like(e.sum(y_pred, (axis,), keepdims=True), y_pred))
    return e.log(e.minimum(e.maximum(norm, EPSILON), 1.0 - EPSILON))


class CategoricalCrossentropy(_FromLogits):
    name = "categorical_crossentropy"
    _keras_fixed = {"label_smoothing": 0.0, "axis": -1}

    def per_sample(self, e, y_true, y_pred):
        axis = y_pred.type.rank - 1
        return e.neg(e.sum(e.mul(y_true, _log_probs(e, y_pred, self.from_logits)), (axis,)))


class SparseCategoricalCrossentropy(_FromLogits):
    name = "sparse_categorical_crossentropy"
    _keras_fixed = {"ignore_class": None}

    def label_type(self, pred: TensorType) -> TensorType:
        return TensorType(pred.shape[:-1], "int32")

    def per_sample(self, e, y_true, y_pred):
        depth = y_pred.shape[-1]
        if y_true.type.rank == y_pred.type.rank and y_true.shape[-1] == 1:
            y_true = e.reshape(y_true, y_pred.shape[:-1])
        onehot = e.op("one_hot", y_true, depth=depth, dtype=y_pred.dtype)
        axis = y_pred.type.rank - 1
        return e.neg(e.sum(e.mul(onehot, _log_probs(e, y_pred, self.from_logits)), (axis,)))


_ALIASES = {
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
for _cls in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy, CategoricalCrossentropy,
             SparseCategoricalCrossentropy):
    _ALIASES[_cls.__name__] = _cls


def get(identifier: Any) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]()
    raise ValueError(f"Unknown loss {identifier!r}; kcompile supports "
                     f"{sorted(k for k in _ALIASES if k[0].islower())} (or a Loss instance)")
