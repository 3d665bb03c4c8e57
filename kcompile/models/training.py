"""The training step as one IR graph: forward + loss -> autodiff -> optimizer update.

Inputs: the model inputs (and the rng key when Dropout needs one), every variable, y, the learning
rate, the step counter and every optimizer slot. Outputs: the loss, the new trainable variables, the
new slots, and the BatchNorm moving statistics. Eager and compiled training run this same graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcompile.ir.autodiff import grad
from kcompile.ir.core import TensorType, format_shape
from kcompile.ir.emit import Emitter
from kcompile.ir.interpret import run as interpret
from kcompile.losses import Loss, SparseCategoricalCrossentropy
from kcompile.models.lowering import InputSig, lower
from kcompile.optimizers import Optimizer

if TYPE_CHECKING:
    from kcompile.models.model import Model


class TrainStep:
    def __init__(self, model: Model, sigs: Sequence[InputSig], structure: Any, loss: Loss,
                 optimizer: Optimizer, jit: bool) -> None:
        lowered = lower(model, sigs, structure, training=True)
        if lowered.num_outputs != 1:
            raise NotImplementedError(f"Model '{model.name}': training models with "
                                      f"{lowered.num_outputs} outputs is not supported yet")
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
        self.loss, self.optimizer = loss, optimizer
        label = loss.label_type(y_pred.type)
        y = g.add_input(TensorType(label.shape, label.dtype), "y_true")
        self.label_type = label
        self.num_classes = y_pred.shape[-1]
        lr = g.add_input(TensorType((), "float32"), "learning_rate")
        step = g.add_input(TensorType((), "float32"), "iterations")
        optimizer.build([self.variables[i] for i in self.trainable])
        slot_inputs = [[g.add_input(TensorType(self.variables[i].shape, "float32"), f"slot{i}_{k}")
                        for k in range(len(optimizer.slot_names))] for i in self.trainable]
        e = Emitter(g, "loss")
        loss_value = loss.build(e, y, y_pred)
        train_params = [params[i] for i in self.trainable]
        e.label = "optimizer"
        grads = [gr if gr is not None else e.zeros_like(p)
                 for gr, p in zip(grad(g, loss_value, train_params), train_params, strict=True)]
        new_params, new_slots = optimizer.apply(e, train_params, grads, slot_inputs, lr, step)
        g.outputs = [loss_value, *new_params, *[s for group in new_slots for s in group],
                     *state_outputs]
        g.verify()
        self.graph = g
        self.compiled = None
        if jit:
            from kcompile.codegen.llvm.compiler import compile_graph

            self.compiled = compile_graph(g)
            self.compiled.set_params([])

    def check_labels(self, y: np.ndarray, batch: int) -> np.ndarray:
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
        return np.ascontiguousarray(y, dtype=want.dtype)

    def run(self, inputs: list[np.ndarray], y: np.ndarray, rng_key: np.ndarray | None) -> float:
        opt = self.optimizer
        feeds = list(inputs)
        if self.needs_rng_key:
            feeds.append(np.zeros(2, np.uint32) if rng_key is None else rng_key)
        feeds += [v.value for v in self.variables]
        feeds.append(y)
        feeds.append(np.asarray(opt.current_learning_rate(), np.float32))
        feeds.append(np.asarray(opt.iterations, np.float32))
        feeds += [s for group in opt.slots for s in group]
        outs = self.compiled.run(feeds) if self.compiled is not None else interpret(self.graph, feeds)
        loss = float(outs[0])
        if not np.isfinite(loss):
            return loss  # weights untouched: the caller reports (TerminateOnNaN)
        k = 1
        for i in self.trainable:
            self.variables[i].assign(outs[k])
            k += 1
        for group in opt.slots:
            for j in range(len(group)):
                group[j] = np.array(outs[k], np.float32)
                k += 1
        for var, value in zip(self.state_updates, outs[k:], strict=True):
            var.assign(value)
        opt.iterations += 1
        return loss
