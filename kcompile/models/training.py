"""The training and test steps as IR graphs: forward + loss + metrics (-> autodiff -> optimizer).

Training step inputs: the model inputs (and the rng key when Dropout needs one), every variable,
y, per-sample weights, the learning rate, the step counter and every optimizer slot. Outputs: the
loss, (sum, count) per metric, the new trainable variables, the new slots, and the BatchNorm moving
statistics. The test step is the inference forward with the same loss and metric outputs. Eager and
compiled execution run these same graphs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcompile import variables
from kcompile.ir.autodiff import grad
from kcompile.ir.core import Graph, TensorType, Value, format_shape
from kcompile.ir.emit import Emitter
from kcompile.ir.interpret import run as interpret
from kcompile.losses import Loss, SparseCategoricalCrossentropy
from kcompile.metrics import Metric
from kcompile.models.executor import build_executor
from kcompile.models.lowering import InputSig, Lowered, execute, lower
from kcompile.optimizers import Optimizer

if TYPE_CHECKING:
    from kcompile.models.model import Model


TRAIN_METRICS_MASKED = False  # see TrainStep: what Keras 3 with the JAX backend reports


def _lower_one_output(model: Model, sigs: Sequence[InputSig], structure: Any, training: bool
                      ) -> Lowered:
    lowered = lower(model, sigs, structure, training=training)
    if lowered.num_outputs != 1:
        raise NotImplementedError(f"Model '{model.name}': training and evaluating models with "
                                  f"{lowered.num_outputs} outputs is not supported yet")
    return lowered


class _Targets:
    """y, the sample weights, the loss and the metric totals appended to a forward graph."""

    def __init__(self, model_name: str, g: Graph, y_pred: Value, loss: Loss,
                 metrics: Sequence[Metric], weighted: Sequence[Metric],
                 mask: Value | None = None, mask_metrics: bool = True) -> None:
        self.model_name = model_name
        self.loss = loss
        label = loss.label_type(y_pred.type)
        self.label_type = label
        self.num_classes = y_pred.shape[-1] if y_pred.type.rank else 1
        self.mask_shape = mask.shape if mask is not None else None
        y = g.add_input(TensorType(label.shape, label.dtype), "y_true")
        sw = g.add_input(TensorType((y_pred.shape[0],), "float32"), "sample_weight")
        e = Emitter(g, "loss")
        # a mask on the predictions (Keras's) weights the loss and the metrics (kcompile/losses.py)
        self.loss_value = loss.build(e, y, y_pred, sw, mask)
        e.label = "metrics"
        self.metric_values: list[Value] = []
        metric_mask = mask if mask_metrics else None
        for m in metrics:
            self.metric_values += m.build_total(e, y, y_pred, None, metric_mask)
        for m in weighted:
            self.metric_values += m.build_total(e, y, y_pred, sw, metric_mask)
        self.metrics = [*metrics, *weighted]

    def check(self, y: Any, sample_weight: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        want = self.label_type.with_batch(batch)
        y = np.asarray(y)
        if isinstance(self.loss, SparseCategoricalCrossentropy):
            if y.ndim == len(want.shape) + 1 and y.shape[-1] == 1:
                y = y.reshape(y.shape[:-1])
            if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
                raise ValueError(f"{self.loss.name}: labels must be integer class ids")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.loss.name}: labels must be in [0, {self.num_classes}), "
                                 f"got values from {y.min()} to {y.max()}")
        if y.shape != want.shape:
            raise ValueError(f"Model '{self.model_name}': labels y have shape {format_shape(y.shape)}, "
                             f"the loss {self.loss.name} expects {format_shape(want.shape)}")
        if sample_weight is None:
            sw = np.ones(batch, np.float32)
        else:
            sw = np.asarray(sample_weight, np.float32)
            if sw.ndim == 2 and sw.shape[1] == 1:
                sw = sw.reshape(-1)
            if sw.shape != (batch,):
                raise ValueError(f"Model '{self.model_name}': sample_weight must have shape "
                                 f"({batch},), one weight per sample, got {format_shape(sw.shape)}")
            mask = self.mask_shape
            if mask is not None and batch != 1 and \
                    not (len(mask) == 1 or (len(mask) == 2 and mask[1] == 1)):
                # Keras multiplies the (batch,) weights into the (batch, steps) mask, which fails
                raise ValueError(f"Model '{self.model_name}': per-sample weights (sample_weight or "
                                 f"class_weight) cannot be combined with the mask of shape "
                                 f"{format_shape(mask)} the model's output carries (Keras 3 "
                                 "cannot broadcast them either); remove the mask or the weights")
        return np.ascontiguousarray(y, dtype=want.dtype), np.ascontiguousarray(sw)

    def accumulate(self, outs: Sequence[np.ndarray]) -> None:
        """Add a step's (sum, count) outputs to the metric objects' running state."""
        for i, m in enumerate(self.metrics):
            m.accumulate(outs[2 * i], outs[2 * i + 1])


class TrainStep:
    def __init__(self, model: Model, sigs: Sequence[InputSig], structure: Any, loss: Loss,
                 optimizer: Optimizer, metrics: Sequence[Metric], weighted: Sequence[Metric],
                 jit: bool, explicit: bool = True) -> None:
        lowered = _lower_one_output(model, sigs, structure, True)
        g = lowered.graph
        self.model_name = model.name
        self.variables = lowered.variables
        self.state_updates = lowered.state_updates
        self.needs_rng_key = lowered.needs_rng_key
        self.trainable = [i for i, v in enumerate(self.variables) if v.trainable]
        params = list(g.params)
        g.inputs += params
        g.params = []
        y_pred = g.outputs[0]
        state_outputs = g.outputs[1:]
        self.optimizer = optimizer
        # Keras 3 (JAX backend, the reference) masks the training loss but not the training
        # metrics: its train step takes the predictions out of jax.value_and_grad, which drops
        # their mask (its test step, and so evaluate, masks both)
        self.targets = _Targets(model.name, g, y_pred, loss, metrics, weighted, lowered.masks[0],
                                mask_metrics=TRAIN_METRICS_MASKED)
        lr = g.add_input(TensorType((), "float32"), "learning_rate")
        step = g.add_input(TensorType((), "float32"), "iterations")
        optimizer.build([self.variables[i] for i in self.trainable])
        slot_inputs = [[g.add_input(TensorType(self.variables[i].shape, "float32"), f"slot{i}_{k}")
                        for k in range(len(optimizer.slot_names))] for i in self.trainable]
        e = Emitter(g, "optimizer")
        train_params = [params[i] for i in self.trainable]
        loss_value = self.targets.loss_value
        grads = [gr if gr is not None else e.zeros_like(p)
                 for gr, p in zip(grad(g, loss_value, train_params), train_params, strict=True)]
        new_params, new_slots = optimizer.apply(e, train_params, grads, slot_inputs, lr, step)
        self.num_metric_outputs = len(self.targets.metric_values)
        g.outputs = [loss_value, *self.targets.metric_values, *new_params,
                     *[s for group in new_slots for s in group], *state_outputs]
        g.verify()
        self.graph = g
        self.compiled = None
        if jit:
            from kcompile.codegen.llvm.compiler import compile_graph

            # weights, slots and BatchNorm statistics are updated in place; a non-finite loss
            # stops the compiled step before anything is written
            olds = [*train_params, *[s for group in slot_inputs for s in group],
                    *[params[self.variables.index(v)] for v in self.state_updates]]
            first = 1 + self.num_metric_outputs
            wanted = {first + k: g.inputs.index(v) for k, v in enumerate(olds)}
            try:
                self.compiled = compile_graph(g, aliases=wanted, guard=0)
            except NotImplementedError as err:  # as inference: eager unless jit_compile=True
                if explicit:
                    raise
                warnings.warn(f"Model '{model.name}' trains eagerly: {err}", RuntimeWarning,
                              stacklevel=5)
            else:
                self.compiled.set_params([])

    def check(self, y: Any, sample_weight: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.targets.check(y, sample_weight, batch)

    def run(self, inputs: list[np.ndarray], y: np.ndarray, sample_weight: np.ndarray,
            rng_key: np.ndarray | None) -> float:
        """One step; the weights, slots and metric states change only when the loss is finite."""
        opt = self.optimizer
        feeds = list(inputs)
        if self.needs_rng_key:
            feeds.append(np.zeros(2, np.uint32) if rng_key is None else rng_key)
        feeds += [v.value for v in self.variables]
        feeds += [y, sample_weight]
        feeds.append(np.asarray(opt.current_learning_rate(), np.float32))
        feeds.append(np.asarray(opt.iterations, np.float32))
        feeds += [s for group in opt.slots for s in group]
        if self.compiled is not None:
            out = [None] * len(self.graph.outputs)
            for i, j in self.compiled.program.aliases.items():
                out[i] = feeds[j]
            outs = self.compiled.run(feeds, out=out)
        else:
            outs = interpret(self.graph, feeds)
        loss = float(outs[0])
        if not np.isfinite(loss):
            return loss  # nothing was updated: the caller reports (TerminateOnNaN)
        k = 1 + self.num_metric_outputs
        self.targets.accumulate(outs[1:k])
        written = {feeds[j].ctypes.data for j in self.compiled.program.aliases.values()} \
            if self.compiled is not None else set()
        for i in self.trainable:
            if outs[k].ctypes.data not in written:
                self.variables[i].assign(outs[k])
            k += 1
        for group in opt.slots:
            for j in range(len(group)):
                if outs[k].ctypes.data not in written:
                    group[j] = np.ascontiguousarray(outs[k], np.float32)
                k += 1
        for var, value in zip(self.state_updates, outs[k:], strict=True):
            if value.ctypes.data not in written:
                var.assign(value)
        variables.EPOCH.value += 1  # in-place updates moved the weights too
        opt.iterations += 1
        return loss


class TestStep:
    """Inference forward + loss + metric totals, for evaluate/test_on_batch (compiled or eager)."""

    __test__ = False  # not a pytest class

    def __init__(self, model: Model, sigs: Sequence[InputSig], structure: Any, loss: Loss,
                 metrics: Sequence[Metric], weighted: Sequence[Metric], jit: bool,
                 explicit: bool) -> None:
        lowered = _lower_one_output(model, sigs, structure, False)
        g = lowered.graph
        self.targets = _Targets(model.name, g, g.outputs[0], loss, metrics, weighted,
                                lowered.masks[0])
        g.outputs = [self.targets.loss_value, *self.targets.metric_values]
        lowered.state_updates = []
        lowered.num_outputs = len(g.outputs)
        g.verify()
        self.lowered = lowered
        self.executor = build_executor(lowered, model.name, explicit) if jit else None

    def check(self, y: Any, sample_weight: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.targets.check(y, sample_weight, batch)

    def run(self, inputs: list[np.ndarray], y: np.ndarray, sample_weight: np.ndarray) -> float:
        feeds = [*inputs, y, sample_weight]
        if self.executor is not None:
            outs = self.executor.run(feeds)
        else:
            outs = execute(self.lowered, feeds, None)
        self.targets.accumulate(outs[1:])
        return float(outs[0])
