"""The whole training step as one default-domain ONNX model (`model.export(..., training=True)`).

The graph is the one kcompile itself runs (`models.training.TrainStep`: forward, loss, IR autodiff,
optimizer update), written through the same `onnx` rules as inference, so no `Gradient` or
training-domain op appears and any onnxruntime build can train.

Interface (names are stable; `TrainingSession` reads them from the metadata, see below):

- inputs: the model inputs (their Keras names); `rng_key` (uint32[2] = seed, counter) when Dropout
  draws masks -- the counter goes up by one per step, as in kcompile's own `fit`; every model
  weight by its variable path (`seq/dense/kernel`); `y_true`; `sample_weight` (float32[batch]);
  `learning_rate` (float32 scalar); `iterations` (float32 scalar: updates applied so far); every
  optimizer slot as `optimizer/<weight path>/<slot>` (`momentum`, `velocity`, ...).
- outputs: `loss` (the weighted mean, as Keras's `train_on_batch` reports it), one output per metric
  named like the metric (its value on this batch), then `<name>.new` for every input that the step
  changes: trainable weights, slots, BatchNorm moving statistics and `iterations`.
- every state input (weights, slots, iterations, learning rate, rng key) carries its value at export
  time as an initializer of the same name, so the file holds the complete training state and a plain
  onnxruntime session can run it feeding only x, y and sample_weight.
- metadata_props["kcompile.training"]: JSON that lists which input is what, the `get_weights()`
  order, the metric names, the label check and the learning-rate schedule.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from kcompile.codegen.onnx.exporter import _inference_signature, graph_to_onnx, resolve_opset, save
from kcompile.ir.core import TensorType
from kcompile.ir.emit import Emitter

METADATA_KEY = "kcompile.training"
FORMAT_VERSION = 1


def _require_compiled(model: Any) -> None:
    if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None or \
            getattr(model, "optimizer", None) is None:
        raise ValueError(f"export(training=True): model '{model.name}' has no optimizer and loss; "
                         "call model.compile(optimizer=..., loss=...) first")


def _schedule_metadata(optimizer: Any) -> dict[str, Any]:
    """The learning rate as data: a constant, or one of kcompile's schedules by class and config."""
    from kcompile.optimizers import schedules

    lr = optimizer.learning_rate
    if not callable(lr):
        return {"value": float(lr)}
    cls = type(lr)
    if isinstance(lr, schedules.LearningRateSchedule) and getattr(schedules, cls.__name__, None) is cls:
        return {"value": optimizer.current_learning_rate(), "schedule": cls.__name__,
                "config": lr.get_config()}
    warnings.warn(f"export(training=True): the learning rate of optimizer '{optimizer.name}' is a "
                  "Python callable that cannot be stored; the file records its current value "
                  f"{optimizer.current_learning_rate()} and TrainingSession uses that constant unless "
                  "given learning_rate=", stacklevel=3)
    return {"value": optimizer.current_learning_rate()}


def _label_check(step: Any) -> dict[str, Any]:
    from kcompile.losses import SparseCategoricalCrossentropy

    targets = step.targets
    return {"sparse_classes": int(targets.num_classes)
            if isinstance(targets.loss, SparseCategoricalCrossentropy) else None,
            "loss": targets.loss.name}


def build_training_onnx(model: Any, opset_version: int | None = None,
                        input_signature: Any = None) -> onnx.ModelProto:
    """The training step of a compiled `model` as an ONNX ModelProto (see the module docstring)."""
    from kcompile.models.training import TrainStep

    _require_compiled(model)
    opset = resolve_opset(opset_version)
    sigs, structure = _inference_signature(model, input_signature)
    metrics, weighted = model._resolve_metrics(sigs, structure)
    step = TrainStep(model, sigs, structure, model.loss, model.optimizer, metrics, weighted, jit=False)
    g = step.graph
    optimizer = model.optimizer
    variables = step.variables
    k_key = 1 if step.needs_rng_key else 0

    # ONNX names of the graph inputs, in TrainStep's feed order
    weight_names = [v.path for v in variables]
    trainable = [variables[i] for i in step.trainable]
    slot_names = [f"optimizer/{v.path}/{s}" for v in trainable for s in optimizer.slot_names]
    in_names = [s.name for s in sigs] + (["rng_key"] if k_key else []) + weight_names + \
        ["y_true", "sample_weight", "learning_rate", "iterations"] + slot_names
    if len(in_names) != len(g.inputs):
        raise RuntimeError(f"export(training=True): {len(g.inputs)} step inputs, {len(in_names)} "
                           "names (internal error)")
    # model weights the step never reads (rare) stay in the file as inputs so that get_weights()
    # round-trips; they have no `.new` output
    used = {id(v) for v in variables}
    unused = [w for w in model.weights if id(w) not in used]
    for w in unused:
        g.add_input(TensorType(tuple(w.shape), w.dtype), w.path)
        in_names.append(w.path)

    # outputs: loss, per-metric batch values, then the new state
    e = Emitter(g, "metrics")
    n_metric = step.num_metric_outputs
    totals = g.outputs[1:1 + n_metric]
    metric_values = [e.div(totals[2 * k], e.maximum(totals[2 * k + 1], 1e-30))
                     for k in range(n_metric // 2)]
    metric_names = [m.name for m in step.targets.metrics]
    rest = g.outputs[1 + n_metric:]
    e.label = "optimizer"
    iterations = g.inputs[in_names.index("iterations")]
    new_iterations = e.add(iterations, 1.0)
    state_paths = [v.path for v in step.state_updates]
    new_names = [f"{n}.new" for n in ([v.path for v in trainable] + slot_names + state_paths)]
    g.outputs = [g.outputs[0], *metric_values, *rest, new_iterations]
    out_names = ["loss", *metric_names, *new_names, "iterations.new"]
    g.verify()

    proto = graph_to_onnx(g, weights=None, opset_version=opset, input_names=in_names,
                          output_names=out_names, name=f"{model.name}_train_step", check=False)

    # the training state at export time, as the default values of the state inputs
    defaults: dict[str, np.ndarray] = {}
    for name, v in zip(weight_names, variables, strict=True):
        defaults[name] = np.asarray(v.value)
    for w in unused:
        defaults[w.path] = np.asarray(w.value)
    flat_slots = [s for group in optimizer.slots for s in group]
    for name, s in zip(slot_names, flat_slots, strict=True):
        defaults[name] = np.asarray(s, np.float32)
    defaults["iterations"] = np.asarray(optimizer.iterations, np.float32)
    defaults["learning_rate"] = np.asarray(optimizer.current_learning_rate(), np.float32)
    if k_key:
        defaults["rng_key"] = np.array([model._rng_seed, model._rng_step], np.uint32)
    declared = {i.name for i in proto.graph.input}
    for name, value in defaults.items():
        if name not in declared:
            raise RuntimeError(f"export(training=True): no input named {name!r} (internal error)")
        proto.graph.initializer.append(numpy_helper.from_array(np.array(value, order="C"), name))

    meta = {
        "format": FORMAT_VERSION,
        "model": model.name,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in sigs],
        "structure": "list" if isinstance(structure, list) else "single",
        "rng_key": "rng_key" if k_key else None,
        "weights": [w.path for w in model.weights],  # get_weights() order
        "trainable": [v.path for v in trainable],
        "slots": slot_names,
        "state": [v.path for v in step.state_updates],
        "labels": "y_true",
        "sample_weight": "sample_weight",
        "metrics": metric_names,
        "learning_rate": _schedule_metadata(optimizer),
        "optimizer": type(optimizer).__name__,
        **_label_check(step),
    }
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_training(model: Any, filepath: Any, opset_version: int | None = None,
                    input_signature: Any = None) -> onnx.ModelProto:
    """Write the training step of `model` to `filepath`; returns the ModelProto."""
    proto = build_training_onnx(model, opset_version, input_signature)
    save(proto, filepath)
    return proto


__all__ = ["METADATA_KEY", "build_training_onnx", "export_training"]
