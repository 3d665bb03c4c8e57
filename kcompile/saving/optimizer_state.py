"""Compile configs and optimizer state in Keras 3's `.keras` layout.

`config.json`'s `compile_config` holds the optimizer, loss and metrics serialized as Keras writes
them: `{"module", "class_name", "config", "registered_name"}` objects, with names (a loss or metric
given as a string) kept as strings. `model.weights.h5` stores the optimizer's variables as
`optimizer/vars/0..K`, in the order of Keras's `optimizer.variables`:

    0          iterations (int32 scalar)
    1          learning_rate (float32 scalar) -- only for a constant rate; absent with a schedule
    then       the slot variables (float32, shaped like their trainable variable), one group after
               the other (`Optimizer.keras_slot_groups`), and within a group per trainable
               variable its slots in the group's order:
                 Adam/AdamW: momentum_0, velocity_0, momentum_1, velocity_1, ...
                 SGD (momentum): momentum_0, momentum_1, ...   (no momentum: no slots)
                 RMSprop: velocity_0..n, then momentum_0..n (momentum > 0), then
                          average_gradient_0..n (centered)
                 Adagrad: accumulator_0, accumulator_1, ...

An optimizer that has not been built (compiled, never trained) has only the first one or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile import losses as losses_mod
from kcompile import metrics as metrics_mod
from kcompile import optimizers
from kcompile.ir.core import format_shape
from kcompile.saving.object_registration import resolve_custom
from kcompile.serialization import serialize_known

COMPILE_FIELDS = ("optimizer", "loss", "loss_weights", "metrics", "weighted_metrics", "run_eagerly",
                  "steps_per_execution", "jit_compile")


# -- optimizer configs -----------------------------------------------------------------------------
def optimizer_to_config(opt: optimizers.Optimizer) -> dict[str, Any]:
    """`{"module": "keras.optimizers", "class_name", "config", "registered_name"}`, every field Keras
    writes (its defaults for the options kcompile does not implement, e.g. use_ema false)."""
    return optimizers.serialize(opt)


def optimizer_from_config(config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                          ) -> optimizers.Optimizer:
    """An optimizer from a serialized config (kcompile's or real Keras's); a learning-rate schedule
    is rebuilt too. An option kcompile cannot honour (use_ema=True, amsgrad=True,
    gradient_accumulation_steps, loss_scale_factor, ...) raises a ValueError naming it."""
    return optimizers.deserialize(config, custom_objects)


# -- loss and metric entries -----------------------------------------------------------------------
def _serialize_entry(obj: Any, base: type, module: str, table: dict[str, Any], what: str) -> Any:
    """A loss or metric as compile() got it: a name stays a string, an object (or class) becomes
    Keras's serialized form."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, type) and issubclass(obj, base):
        obj = obj()
    if isinstance(obj, base):
        return serialize_known(obj, module, table)
    raise ValueError(f"compile_config: cannot serialize the {what} {obj!r}")


def _serialize_loss(loss: Any) -> Any:
    return _serialize_entry(loss, losses_mod.Loss, "keras.losses", losses_mod._ALIASES, "loss")


def _serialize_metric(metric: Any) -> Any:
    if metric is None:
        raise ValueError("compile_config: cannot serialize the metric None")
    return _serialize_entry(metric, metrics_mod.Metric, "keras.metrics", metrics_mod._ALIASES,
                            "metric")


def _serialize_metrics(metrics: Any) -> Any:
    if metrics is None:
        return None
    items = metrics if isinstance(metrics, list | tuple) else [metrics]  # Keras wants a list
    return [_serialize_metric(m) for m in items]


def _function_name(entry: dict[str, Any]) -> str | None:
    """Keras writes a loss/metric given as a function as {"class_name": "function", "config":
    "<its name>", ...}; kcompile resolves the name."""
    if entry.get("class_name") == "function" and isinstance(entry.get("config"), str):
        return entry["config"]
    return None


def _deserialize_entry(entry: Any, kind: str, base: type, table: dict[str, Any],
                       custom_objects: dict[str, Any] | None) -> Any:
    if entry is None or isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ValueError(f"{kind}: {entry!r} is not supported (kcompile models train one output: "
                         f"one {kind} by name or as a serialized object)")
    name = _function_name(entry)
    if name is not None:
        return name
    class_name = entry["class_name"]
    cls = resolve_custom(class_name, entry.get("registered_name"), custom_objects)
    if cls is None and class_name[:1].isupper():
        cls = table.get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        known = sorted(k for k in table if k[:1].isupper())
        raise ValueError(f"{kind}: unknown class {class_name!r}; kcompile supports {known} (and "
                         f"registered {base.__name__} subclasses)")
    return cls.from_config(dict(entry.get("config") or {}))


def _deserialize_metrics(entries: Any, kind: str, custom_objects: dict[str, Any] | None) -> Any:
    if entries is None:
        return None
    if isinstance(entries, dict) and "class_name" not in entries:
        raise ValueError(f"{kind}: metrics per output (a dict) are not supported; kcompile models "
                         "train one output")
    items = entries if isinstance(entries, list | tuple) else [entries]
    if any(isinstance(m, list | tuple) for m in items):
        raise ValueError(f"{kind}: metrics per output (nested lists) are not supported; kcompile "
                         "models train one output")
    return [_deserialize_entry(m, kind, metrics_mod.Metric, metrics_mod._ALIASES, custom_objects)
            for m in items]


# -- compile configs -------------------------------------------------------------------------------
def compile_to_config(model: Any) -> dict[str, Any]:
    """config.json's `compile_config` for a compiled model, as Keras writes it: the optimizer
    serialized, the loss and metrics as given (names as strings, objects serialized) and
    `jit_compile` resolved (true unless compiled with jit_compile=False or run_eagerly=True)."""
    if not getattr(model, "compiled", False):
        raise ValueError(f"Model '{model.name}' is not compiled; it has no compile config")
    args = getattr(model, "_compile_args", None) or {
        "loss": model.loss, "loss_weights": getattr(model, "loss_weights", None),
        "metrics": getattr(model, "metrics_config", None),
        "weighted_metrics": getattr(model, "weighted_metrics", None), "run_eagerly": False,
        "steps_per_execution": getattr(model, "steps_per_execution", 1)}
    return {"optimizer": optimizer_to_config(model.optimizer),
            "loss": _serialize_loss(args["loss"]),
            "loss_weights": args["loss_weights"],
            "metrics": _serialize_metrics(args["metrics"]),
            "weighted_metrics": _serialize_metrics(args["weighted_metrics"]),
            "run_eagerly": bool(args["run_eagerly"]),
            "steps_per_execution": args["steps_per_execution"],
            "jit_compile": bool(model.jit_compile)}


def compile_from_config(model: Any, config: dict[str, Any],
                        custom_objects: dict[str, Any] | None = None) -> None:
    """`model.compile(...)` from a `compile_config` written by kcompile or real Keras 3.

    `jit_compile: true` (what Keras writes for its default "auto") compiles as "auto" does: the
    model falls back to the eager executor, with a warning, where compiled code is unavailable."""
    if not isinstance(config, dict):
        raise ValueError(f"compile_config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(COMPILE_FIELDS))
    if unknown:
        raise ValueError(f"compile_config: unknown field(s) {unknown}; expected {list(COMPILE_FIELDS)}")
    opt = config.get("optimizer", "rmsprop")
    optimizer = optimizer_from_config(opt, custom_objects) if isinstance(opt, dict) \
        else optimizers.get(opt)
    loss = _deserialize_entry(config.get("loss"), "loss", losses_mod.Loss, losses_mod._ALIASES,
                              custom_objects)
    jit = config.get("jit_compile", "auto")
    run_eagerly = config.get("run_eagerly")
    model.compile(optimizer=optimizer, loss=loss, loss_weights=config.get("loss_weights"),
                  metrics=_deserialize_metrics(config.get("metrics"), "metrics", custom_objects),
                  weighted_metrics=_deserialize_metrics(config.get("weighted_metrics"),
                                                        "weighted_metrics", custom_objects),
                  run_eagerly=bool(run_eagerly) if run_eagerly is not None else False,
                  steps_per_execution=config.get("steps_per_execution") or 1,
                  jit_compile="auto" if jit is True or jit is None else jit)


# -- optimizer variables ---------------------------------------------------------------------------
def _header(opt: optimizers.Optimizer) -> list[str]:
    return ["iterations"] + ([] if callable(opt.learning_rate) else ["learning_rate"])


def _slot_layout(opt: optimizers.Optimizer, variables: Sequence[Any]) -> list[tuple[int, int, str]]:
    """(variable index, index in `opt.slots[i]`, slot name) in Keras's order."""
    return [(i, opt.slot_names.index(name), name) for group in opt.keras_slot_groups
            for i in range(len(variables)) for name in group]


def _built(opt: optimizers.Optimizer, variables: Sequence[Any]) -> bool:
    if not variables:
        return True
    if not opt.slots:
        return False
    if len(opt.slots) != len(variables):
        raise ValueError(f"optimizer '{opt.name}' holds slots for {len(opt.slots)} variables, "
                         f"the model has {len(variables)} trainable variables")
    return True


def optimizer_variables(opt: optimizers.Optimizer, trainable_variables: Sequence[Any]
                        ) -> list[np.ndarray]:
    """The optimizer's state as Keras's `optimizer/vars/0..K` arrays (see the module docstring):
    iterations (int32), the learning rate (float32, constant rates only), the slots in Keras's
    order. An optimizer never built (no training yet) gives only the first one or two, as Keras."""
    arrays = [np.asarray(opt.iterations, np.int32)]
    if not callable(opt.learning_rate):
        arrays.append(np.asarray(opt.learning_rate, np.float32))
    if not _built(opt, trainable_variables):
        return arrays
    for i, k, _ in _slot_layout(opt, trainable_variables):
        arrays.append(np.asarray(opt.slots[i][k], np.float32))
    return arrays


def load_optimizer_variables(opt: optimizers.Optimizer, trainable_variables: Sequence[Any],
                             arrays: Sequence[Any]) -> None:
    """Set `opt`'s iterations, learning rate (a constant one) and slots from Keras-ordered arrays
    (`optimizer_variables`'s layout, as real Keras writes them). Everything is checked before
    anything changes; a wrong count or shape raises a ValueError. A file with only iterations (and
    the learning rate) -- an optimizer saved before its first step -- leaves fresh slots."""
    header = _header(opt)
    layout = _slot_layout(opt, trainable_variables)
    arrays = [np.asarray(a) for a in arrays]
    n_vars = len(trainable_variables)
    if len(arrays) not in (len(header), len(header) + len(layout)):
        per = sum(len(g) for g in opt.keras_slot_groups)
        slots = f"{per} slot(s) {list(opt.slot_names)} for each of its {n_vars} trainable " \
                f"variable(s)" if per else "no slots"
        msg = (f"optimizer '{opt.name}': the file has {len(arrays)} variables, the model needs "
               f"{len(header) + len(layout)} ({' and '.join(header)}, then {slots})")
        scalar_second = len(arrays) > 1 and arrays[1].shape == ()
        if len(arrays) == len(header) + len(layout) + 1 and len(header) == 1 and scalar_second:
            msg += "; the file has a constant learning rate, this optimizer uses a schedule"
        elif len(arrays) == len(header) + len(layout) - 1 and len(header) == 2 and \
                not scalar_second:
            msg += "; the file was saved with a learning-rate schedule, this optimizer has a " \
                   "constant learning rate"
        raise ValueError(msg)
    for i, name in enumerate(header):
        if arrays[i].shape != () or arrays[i].dtype.kind not in "iuf":
            raise ValueError(f"optimizer '{opt.name}': variable {i} ({name}) must be a numeric "
                             f"scalar, the file has {arrays[i].dtype} of shape "
                             f"{format_shape(arrays[i].shape)}")
    slot_arrays = arrays[len(header):]
    for j, ((i, _, name), value) in enumerate(zip(layout, slot_arrays, strict=False)):
        var = trainable_variables[i]
        if value.shape != tuple(var.shape):
            raise ValueError(f"optimizer '{opt.name}': variable {len(header) + j} ({name} of "
                             f"'{getattr(var, 'path', i)}') has shape {format_shape(value.shape)} in "
                             f"the file, the model needs {format_shape(tuple(var.shape))}")
    iterations = int(arrays[0])
    if iterations < 0:
        raise ValueError(f"optimizer '{opt.name}': iterations is negative ({iterations})")
    if slot_arrays:
        slots: list[list[Any]] = [[None] * len(opt.slot_names) for _ in range(n_vars)]
        for (i, k, _), value in zip(layout, slot_arrays, strict=True):
            slots[i][k] = np.array(value, np.float32, order="C")  # owned: steps update in place
    else:
        slots = [opt.initial_slots(tuple(v.shape)) for v in trainable_variables]
    opt.iterations = iterations
    if len(header) == 2:
        opt.learning_rate = float(arrays[1])
    opt.slots = slots


__all__ = ["compile_from_config", "compile_to_config", "load_optimizer_variables",
           "optimizer_from_config", "optimizer_to_config", "optimizer_variables"]
