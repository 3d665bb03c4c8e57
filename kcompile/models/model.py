"""`Model`: a layer with inputs, outputs and an executor (`predict`, `model(x)`, `summary`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kcompile import random_state, tree
from kcompile.layers.base import KerasTensor, Layer
from kcompile.models.executor import CompiledExecutor, build_executor
from kcompile.models.lowering import (
    InputSig,
    Lowered,
    execute,
    fill_free_dims,
    lower,
    prepare_inputs,
)
from kcompile.tracing import Tracer, current_builder


class Model(Layer):
    """Base of Functional, Sequential and subclassed models.

    `Model(inputs, outputs)` returns a Functional model, as in Keras; subclasses define `call`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Model:
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            from kcompile.models.functional import Functional
            return object.__new__(Functional)
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or "inputs" in kwargs or "outputs" in kwargs:
            raise ValueError(f"{type(self).__name__}: a subclassed Model cannot pass "
                             "inputs/outputs to Model.__init__ yet; build it with "
                             "keras.Model(inputs, outputs) or define call()")
        super().__init__(**kwargs)
        self._lowered: dict[tuple, Lowered] = {}
        self._executors: dict[tuple, CompiledExecutor | None] = {}
        self._fast: CompiledExecutor | None = None
        self._jit_compile = True
        self._jit_explicit = False
        self.compiled = False
        self._rng_seed = random_state.draw_seed()
        self._rng_step = 0

    # -- compilation ---------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None,
                metrics: Any = None, weighted_metrics: Any = None, run_eagerly: bool = False,
                steps_per_execution: int = 1, jit_compile: Any = "auto",
                auto_scale_loss: bool = True) -> None:
        """Keras's signature. `jit_compile=True`/"auto" (default) runs LLVM-compiled code,
        `jit_compile=False` or `run_eagerly=True` the NumPy eager executor."""
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"compile: jit_compile must be True, False or 'auto', got "
                             f"{jit_compile!r}")
        if not isinstance(run_eagerly, bool):
            raise TypeError(f"compile: run_eagerly must be a bool, got {run_eagerly!r}")
        self._jit_compile = jit_compile is not False and not run_eagerly
        self._jit_explicit = jit_compile is True and not run_eagerly
        from kcompile import losses, optimizers

        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss) if loss is not None else None
        from kcompile import metrics as metrics_mod

        for m in [*(metrics if isinstance(metrics, list | tuple) else [metrics] if metrics else []),
                  *(weighted_metrics if isinstance(weighted_metrics, list | tuple)
                    else [weighted_metrics] if weighted_metrics else [])]:
            metrics_mod.get(m)  # unknown names fail at compile time, as in Keras
        self.metrics_config = metrics

        def snapshot(ms: Any) -> Any:  # metric objects as given (resolving may rename them)
            return [copy.copy(m) if isinstance(m, metrics_mod.Metric) else m for m in ms] \
                if isinstance(ms, list | tuple) else copy.copy(ms)

        # what compile was given, for the `compile_config` of saved models
        self._compile_args = {"loss": loss, "loss_weights": loss_weights,
                              "metrics": snapshot(metrics),
                              "weighted_metrics": snapshot(weighted_metrics),
                              "run_eagerly": run_eagerly, "steps_per_execution": steps_per_execution,
                              "jit_compile": jit_compile}
        self._compiled_metrics = None
        self._train_steps = {}
        self.loss_weights, self.weighted_metrics = loss_weights, weighted_metrics
        self.steps_per_execution = steps_per_execution
        self.compiled = True
        self._executors.clear()
        self._fast = None

    @property
    def jit_compile(self) -> bool:
        return self._jit_compile

    def _executor_for(self, sigs: Sequence[InputSig], structure: Any, training: bool
                      ) -> CompiledExecutor | None:
        key = (tuple(sigs), repr(structure), training)
        if key not in self._executors:
            lowered = self._lowered_for(sigs, structure, training)
            self._executors[key] = build_executor(lowered, self.name, self._jit_explicit)
        return self._executors[key]

    # -- structure -----------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        if index is not None:
            if name is not None:
                raise ValueError("Provide only a layer name or a layer index, not both")
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"Was asked to retrieve layer at index {index} but model only "
                                 f"has {len(self.layers)} layers.")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: "
                         f"{[layer.name for layer in self.layers]}.")

    def input_signature(self, x: Any = None) -> tuple[list[InputSig], Any]:
        """The model's inputs (flat signatures and their structure); subclassed models take them
        from example data, as Keras builds them on first call."""
        if x is None:
            raise ValueError(f"Model '{self.name}' has no known inputs; call it on data first")
        items = x if isinstance(x, list | tuple) and x and isinstance(x[0], np.ndarray) else [x]
        sigs = []
        for i, item in enumerate(items):
            arr = np.asarray(item)
            dtype = "float32" if arr.dtype.kind == "f" else arr.dtype.name
            sigs.append(InputSig(f"input_{i}", (None, *arr.shape[1:]), dtype))
        return sigs, (list(range(len(sigs))) if items is x else 0)

    def build(self, input_shape: Any = None) -> None:
        """Create weights by tracing `call` on symbolic inputs of `input_shape`."""
        if input_shape is None:
            raise ValueError(f"Model '{self.name}': build() needs an input_shape")
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        sigs = [InputSig(f"input_{i}", tuple(s), "float32") for i, s in enumerate(shapes)]
        structure = list(range(len(sigs))) if isinstance(input_shape, list) else 0
        self.built = True
        self._build_shapes_arg = input_shape
        self._lowered_for(sigs, structure, False)

    def _maybe_build(self, input_shapes: Any) -> None:
        """Sublayers build themselves while `call` is traced; nothing to do up front."""
        if not self.built:
            self._build_shapes_arg = input_shapes
            self.built = True

    # -- execution -----------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None and len(args) == 1 and not kwargs and type(args[0]) is np.ndarray:
            out = fast.fast(args[0])
            if out is not None:
                return out
        inputs = args[0] if args else kwargs.get("inputs")
        symbolic = any(isinstance(x, KerasTensor | Tracer) for x in tree.flatten(inputs))
        if symbolic or current_builder() is not None:
            return super().__call__(*args, **kwargs)
        return self._run(inputs, bool(kwargs.get("training") or False))

    def _lowered_for(self, sigs: Sequence[InputSig], structure: Any, training: bool) -> Lowered:
        key = (tuple(sigs), repr(structure), training)
        lowered = self._lowered.get(key)
        if lowered is None:
            lowered = lower(self, sigs, structure, training)
            self._lowered[key] = lowered
        return lowered

    def _invalidate(self) -> None:
        self._lowered.clear()
        self._executors.clear()
        self._fast = None

    def _run(self, x: Any, training: bool = False) -> Any:
        sigs, structure = self.input_signature(x)
        arrays = prepare_inputs(self.name, sigs, x)
        sigs = fill_free_dims(sigs, arrays)
        return self._run_arrays(sigs, structure, arrays, training)

    def _run_arrays(self, sigs: list[InputSig], structure: Any, arrays: list[np.ndarray],
                    training: bool) -> Any:
        lowered = self._lowered_for(sigs, structure, training)
        key = None
        if lowered.needs_rng_key:
            key = np.array([self._rng_seed, self._rng_step], np.uint32)
            self._rng_step += 1
        executor = self._executor_for(sigs, structure, training) if self._jit_compile else None
        if executor is not None:
            outs = executor.run(arrays, key)
            if executor.single_io and not training and self._fast is None and \
                    isinstance(structure, int):
                self._fast = executor
        else:
            outs = execute(lowered, arrays, key)
        self.built = True
        return tree.pack_as(self._output_structure(lowered), outs)

    def _output_structure(self, lowered: Lowered) -> Any:
        return 0 if lowered.num_outputs == 1 else list(range(lowered.num_outputs))

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto",
                steps: int | None = None, callbacks: Any = None) -> Any:
        """Run inference batch by batch (default batch size 32) and concatenate the results."""
        if steps is not None or callbacks:
            raise ValueError("predict: `steps` and `callbacks` are not supported yet")
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
        sigs, structure = self.input_signature(x)
        arrays = prepare_inputs(self.name, sigs, x)
        sigs = fill_free_dims(sigs, arrays)
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        if not all(s.shape and s.shape[0] is None for s in sigs):
            return self._run_arrays(sigs, structure, arrays, False)
        chunks = []
        for start in range(0, max(n, 1), batch_size):
            part = [a[start:start + batch_size] for a in arrays]
            chunks.append(tree.flatten(self._run_arrays(sigs, structure, part, False)))
        outs = [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]
        lowered = self._lowered_for(sigs, structure, False)
        return tree.pack_as(self._output_structure(lowered), outs)

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: Any = None,
            sample_weight: Any = None, initial_epoch: int = 0) -> Any:
        """Keras's fit: returns a `History`."""
        from kcompile.models.fit import fit

        return fit(self, x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                   callbacks=callbacks, validation_split=validation_split,
                   validation_data=validation_data, shuffle=shuffle, class_weight=class_weight,
                   sample_weight=sample_weight, initial_epoch=initial_epoch)

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                 verbose: Any = "auto", sample_weight: Any = None, return_dict: bool = False
                 ) -> Any:
        """Loss (and metrics) over the data at inference: a float, or [loss, *metrics] when the
        model has metrics, or a dict with `return_dict`, as Keras."""
        from kcompile.models.fit import evaluate, flatten_logs

        logs = evaluate(self, x, y, batch_size, verbose, sample_weight)
        return logs if return_dict else flatten_logs(self, logs)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None,
                      return_dict: bool = False) -> Any:
        from kcompile.models.fit import flatten_logs, test_batch

        self.reset_metrics()
        logs = test_batch(self, x, y, sample_weight)
        return logs if return_dict else flatten_logs(self, logs)

    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None,
                       class_weight: Any = None, return_dict: bool = False) -> Any:
        """One optimizer step on one batch; returns the loss (before the update) and the metrics
        of this batch, as Keras."""
        from kcompile.models.fit import flatten_logs, train_batch

        self.reset_metrics()
        logs = train_batch(self, x, y, sample_weight, class_weight)
        return logs if return_dict else flatten_logs(self, logs)

    def reset_metrics(self) -> None:
        for m in getattr(self, "_compiled_metrics", None) or []:
            m.reset_state()

    @property
    def metrics_names(self) -> list[str]:
        return ["loss", *[m.name for m in getattr(self, "_compiled_metrics", None) or []]]

    def _steps_for(self, x: Any, training: bool):
        """The (cached) train or test step for inputs like `x`, and `x` as arrays."""
        from kcompile.models.training import TestStep, TrainStep

        if not getattr(self, "compiled", False) or getattr(self, "loss", None) is None:
            what = "training" if training else "evaluate"
            raise RuntimeError(f"Model '{self.name}': call compile(optimizer, loss) before {what}")
        sigs, structure = self.input_signature(x)
        arrays = prepare_inputs(self.name, sigs, x)
        sigs = fill_free_dims(sigs, arrays)
        key = (tuple(sigs), repr(structure), training)
        if key not in self._train_steps:
            metrics, weighted = self._resolve_metrics(sigs, structure)
            if training:
                step = TrainStep(self, sigs, structure, self.loss, self.optimizer, metrics,
                                 weighted, self._jit_compile, self._jit_explicit)
            else:
                step = TestStep(self, sigs, structure, self.loss, metrics, weighted,
                                self._jit_compile, self._jit_explicit)
            self._train_steps[key] = step
        return self._train_steps[key], arrays

    def _train_step_for(self, x: Any):
        return self._steps_for(x, True)

    def _resolve_metrics(self, sigs, structure) -> tuple[list, list]:
        """compile's metrics as objects, once: "accuracy" needs the label and output shapes."""
        if self._compiled_metrics is None:
            from kcompile import metrics as metrics_mod

            lowered = self._lowered_for(sigs, structure, False)
            pred = lowered.graph.outputs[0].type
            label_rank = self.loss.label_type(pred).rank
            self._plain_metrics = metrics_mod.get_list(self.metrics_config, label_rank, pred)
            self._weighted_metrics = metrics_mod.get_list(self.weighted_metrics, label_rank, pred)
            taken = {m.name for m in self._plain_metrics}
            for m in self._weighted_metrics:  # Keras's name for the weighted twin of a metric
                if m.name in taken:
                    m.name = f"weighted_{m.name}"
            self._compiled_metrics = [*self._plain_metrics, *self._weighted_metrics]
        return self._plain_metrics, self._weighted_metrics

    def save(self, filepath: Any, overwrite: bool = True, zipped: bool | None = None,
             **kwargs: Any) -> None:
        """A Keras 3 `.keras` archive (config, weights, optimizer state) that real Keras loads."""
        from kcompile.saving import save_model

        save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_weights(self, filepath: Any, overwrite: bool = True) -> None:
        """`.weights.h5` in Keras's layout (with the optimizer's variables, as Keras), or
        kcompile's `.weights.npz` (weights in `get_weights()` order); written atomically."""
        if str(filepath).endswith(".weights.h5"):
            from kcompile.saving import save_weights

            save_weights(self, filepath, overwrite)
            return
        from kcompile import weights_file

        weights_file.save(self, filepath, overwrite)

    def load_weights(self, filepath: Any, skip_mismatch: bool = False) -> None:
        if skip_mismatch:
            raise ValueError("load_weights: skip_mismatch=True is not supported")
        if str(filepath).endswith(".weights.h5"):
            from kcompile.saving import load_weights

            load_weights(self, filepath)
            return
        from kcompile import weights_file

        weights_file.load(self, filepath)

    def predict_on_batch(self, x: Any) -> Any:
        return self._run(x, training=False)

    def export(self, filepath: Any, format: str = "onnx", verbose: Any = None,
               input_signature: Any = None, opset_version: int | None = None,
               training: bool = False) -> None:
        """Keras 3's `export`: writes the model as ONNX (the one format supported) with a dynamic
        batch dim and default-domain ops only. `opset_version` defaults to the newest tested opset
        (see `kcompile.codegen.onnx.SUPPORTED_OPSETS`).

        training=False: the inference graph, weights as initializers. training=True (a compiled
        model): the whole training step -- forward, backward and optimizer update -- with the
        weights, optimizer slots and step counter as inputs and `<name>.new` outputs; see
        `kcompile.codegen.onnx.training` for the interface and `kcompile.onnx.TrainingSession` to
        drive it with onnxruntime."""
        if format != "onnx":
            raise ValueError(f"export: unrecognized format={format!r}; kcompile supports "
                             "format='onnx'")
        if training:
            from kcompile.codegen.onnx.training import export_training

            export_training(self, filepath, opset_version=opset_version,
                            input_signature=input_signature)
        else:
            from kcompile.codegen.onnx.exporter import export_model

            export_model(self, filepath, opset_version=opset_version,
                         input_signature=input_signature)
        if verbose:
            print(f"Saved artifact at '{filepath}'.")

    # -- reporting -----------------------------------------------------------------------------
    def summary(self, line_length: int | None = None, positions: Any = None,
                print_fn: Callable[[str], Any] | None = None, expand_nested: bool = False,
                show_trainable: bool = False, layer_range: Any = None) -> None:
        from kcompile.models.summary import summary_text

        text = summary_text(self, line_length=line_length, show_trainable=show_trainable)
        (print_fn or print)(text)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> Model:
        """A Functional model's config (`layers`, `input_layers`, `output_layers`) rebuilds the
        graph, as `keras.Model.from_config` does; other configs go to the constructor."""
        from kcompile.models.functional import Functional, is_functional_config

        if is_functional_config(config):
            return Functional.from_config(config, custom_objects=custom_objects)
        return cls(**config)
