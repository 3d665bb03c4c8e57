"""Training with onnxruntime from a file written by `model.export(path, training=True)`.

    ts = kcompile.onnx.TrainingSession("step.onnx")
    for x, y in batches:
        loss = ts.train_on_batch(x, y)
    model.set_weights(ts.get_weights())

The session holds the training state (weights, optimizer slots, step counter, Dropout's rng key)
as NumPy arrays, starting from the values stored in the file, feeds it to every step and keeps the
step's `<name>.new` outputs. Any onnxruntime build runs the file: it has default-domain ops only.
A step whose loss is not finite leaves the state unchanged, as kcompile's own compiled step does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kcompile.codegen.onnx.training import FORMAT_VERSION, METADATA_KEY
from kcompile.ir.core import format_shape
from kcompile.models.lowering import InputSig, prepare_inputs


def _learning_rate(meta: dict[str, Any], override: Any):
    """A callable of the step count, from the override or the file's constant/schedule."""
    if override is not None:
        if callable(override):
            return override
        value = float(override)
        return lambda step: value
    lr = meta["learning_rate"]
    if lr.get("schedule"):
        from kcompile.optimizers import schedules

        return getattr(schedules, lr["schedule"]).from_config(lr["config"])
    value = float(lr["value"])
    return lambda step: value


class TrainingSession:
    """Runs an exported training step with onnxruntime, carrying the training state."""

    def __init__(self, path: str | Path | bytes, *, learning_rate: Any = None,
                 providers: list[str] | None = None, sess_options: Any = None) -> None:
        """path: the `.onnx` file (or its bytes); learning_rate: a float or a callable of the step
        count, instead of the file's (its constant or its kcompile schedule)."""
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        proto = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        where = "<bytes>" if isinstance(path, bytes) else str(path)
        if METADATA_KEY not in props:
            raise ValueError(f"TrainingSession: {where} is not a kcompile training-step export "
                             "(write one with model.export(path, format='onnx', training=True))")
        meta = json.loads(props[METADATA_KEY])
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"TrainingSession: {where} has training-export format "
                             f"{meta.get('format')!r}; this kcompile reads format {FORMAT_VERSION}")
        self.meta = meta
        self.name = meta["model"]
        inputs = {i.name for i in proto.graph.input}
        self.state: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t).copy() for t in proto.graph.initializer
            if t.name in inputs}
        # the state is fed every step: its stored defaults need not be in the session
        kept = [t for t in proto.graph.initializer if t.name not in inputs]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        self._sigs = [InputSig(i["name"], tuple(i["shape"]), i["dtype"]) for i in meta["inputs"]]
        self._label = next(i for i in proto.graph.input if i.name == meta["labels"])
        self._lr = _learning_rate(meta, learning_rate)
        self._session = ort.InferenceSession(
            proto.SerializeToString(), sess_options,
            providers=providers or ["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]

    # -- state ----------------------------------------------------------------------------------
    @property
    def iterations(self) -> int:
        """Optimizer updates applied so far (Keras's `optimizer.iterations`)."""
        return int(self.state["iterations"])

    @property
    def metrics_names(self) -> list[str]:
        return ["loss", *self.meta["metrics"]]

    def get_weights(self) -> list[np.ndarray]:
        """The weights in the model's `get_weights()` order: `model.set_weights(ts.get_weights())`."""
        return [self.state[n].copy() for n in self.meta["weights"]]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        names = self.meta["weights"]
        if len(weights) != len(names):
            raise ValueError(f"TrainingSession.set_weights: expected {len(names)} arrays (the "
                             f"model's weights), got {len(weights)}")
        for n, w in zip(names, weights, strict=True):
            arr = np.asarray(w)
            if arr.shape != self.state[n].shape:
                raise ValueError(f"TrainingSession.set_weights: weight {n!r} has shape "
                                 f"{format_shape(self.state[n].shape)}, got {format_shape(arr.shape)}")
            self.state[n] = np.ascontiguousarray(arr, dtype=self.state[n].dtype)

    # -- a step ---------------------------------------------------------------------------------
    def _labels(self, y: Any, batch: int) -> np.ndarray:
        from onnx import helper

        elem = self._label.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(elem.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in elem.shape.dim]
        y = np.asarray(y)
        classes = self.meta.get("sparse_classes")
        if classes is not None:
            if y.ndim == len(dims) + 1 and y.shape[-1] == 1:
                y = y.reshape(y.shape[:-1])
            if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
                raise ValueError(f"{self.meta['loss']}: labels must be integer class ids")
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise ValueError(f"{self.meta['loss']}: labels must be in [0, {classes}), got "
                                 f"values from {y.min()} to {y.max()}")
        if list(y.shape) != dims:
            raise ValueError(f"TrainingSession '{self.name}': labels y have shape "
                             f"{format_shape(y.shape)}, the loss {self.meta['loss']} expects "
                             f"{format_shape(tuple(dims))}")
        return np.ascontiguousarray(y, dtype=dtype)

    def train_on_batch(self, x: Any, y: Any, sample_weight: Any = None,
                       return_dict: bool = False) -> Any:
        """One optimizer step in onnxruntime; returns the loss, or [loss, *metrics] when the model
        has metrics (this batch's values), or a dict with `return_dict` -- as Keras."""
        arrays = prepare_inputs(self.name, self._sigs, x)
        batch = arrays[0].shape[0]
        feeds = {s.name: a for s, a in zip(self._sigs, arrays, strict=True)}
        feeds[self.meta["labels"]] = self._labels(y, batch)
        if sample_weight is None:
            sw = np.ones(batch, np.float32)
        else:
            sw = np.asarray(sample_weight, np.float32).reshape(-1)
            if sw.shape != (batch,):
                raise ValueError(f"TrainingSession '{self.name}': sample_weight must have shape "
                                 f"({batch},), one weight per sample, got "
                                 f"{format_shape(np.shape(sample_weight))}")
        feeds[self.meta["sample_weight"]] = np.ascontiguousarray(sw)
        self.state["learning_rate"] = np.asarray(self._lr(self.iterations), np.float32)
        feeds.update(self.state)
        outs = dict(zip(self._outputs, self._session.run(self._outputs, feeds), strict=True))
        loss = float(outs["loss"])
        key = self.meta.get("rng_key")
        if key:  # a new Dropout mask every step, finite or not, as kcompile's fit
            self.state[key] = self.state[key] + np.array([0, 1], np.uint32)
        if np.isfinite(loss):
            for name, value in outs.items():
                if name.endswith(".new"):
                    self.state[name[:-4]] = value
        logs = {"loss": loss, **{m: float(outs[m]) for m in self.meta["metrics"]}}
        if return_dict:
            return dict(sorted(logs.items()))
        return loss if len(logs) == 1 else [logs[k] for k in self.metrics_names]


__all__ = ["TrainingSession"]
