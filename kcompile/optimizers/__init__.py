"""Keras 3 optimizers as IR: `apply` appends one update step (Keras's formulas and defaults) for
every trainable variable, so eager, compiled and exported training steps share it.

The step counter (`iterations`, before this step) and the learning rate are graph inputs: schedules
and ReduceLROnPlateau change the rate without recompiling. Slots are explicit inputs/outputs.

`get_config`/`serialize`/`deserialize` use Keras's config format (see
`kcompile.saving.optimizer_state` for the state's `.keras` layout).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kcompile.ir.core import Value
from kcompile.ir.emit import Emitter
from kcompile.optimizers import schedules


def _snake_case(name: str) -> str:
    """Keras's default optimizer names: "adam", "sgd", "rm_sprop", "adam_w"."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


class Optimizer:
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.001,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 use_ema: bool = False, ema_momentum: float = 0.99,
                 ema_overwrite_frequency: int | None = None, loss_scale_factor: float | None = None,
                 gradient_accumulation_steps: int | None = None, name: str | None = None,
                 **kwargs: Any) -> None:
        # Keras's options that kcompile does not implement: accepted (and written back to configs)
        # at their defaults only
        for option, value in (("use_ema", use_ema), ("loss_scale_factor", loss_scale_factor),
                              ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if value not in (None, False):
                raise ValueError(f"{type(self).__name__}: {option}={value!r} is not supported by "
                                 "kcompile (only its default)")
        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False)}
        if unsupported:
            raise ValueError(f"{type(self).__name__}: options {sorted(unsupported)} are not "
                             "supported yet")
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set.")
        if not callable(learning_rate) and float(learning_rate) < 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be >= 0")
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = False, ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = self.gradient_accumulation_steps = None
        self.name = name or _snake_case(type(self).__name__)
        self.iterations = 0
        self.slots: list[list[np.ndarray]] = []  # per variable, per slot name

    @property
    def keras_slot_groups(self) -> tuple[tuple[str, ...], ...]:
        """How Keras orders the slot variables (`optimizer.variables` after iterations and the
        learning rate): one group after the other; within a group, per trainable variable, its
        slots in the group's order. Adam: ((momentum, velocity),) interleaves them per variable;
        RMSprop creates all velocities, then all momentums, then all average gradients."""
        return (self.slot_names,) if self.slot_names else ()

    # -- configs (Keras's `get_config`/`from_config`) -------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Keras's config: every field Keras writes, in its order (the learning rate rounded to
        float32 as Keras's variable holds it; a schedule serialized)."""
        lr = self.learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr_config: Any = schedules.serialize(lr)
        elif callable(lr):
            raise ValueError(f"Optimizer '{self.name}': its learning_rate is a plain Python "
                             f"callable ({lr!r}), which cannot be saved; use a "
                             "keras.optimizers.schedules.LearningRateSchedule")
        else:
            lr_config = float(np.float32(lr))
        return {"name": self.name, "learning_rate": lr_config, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                "clipvalue": self.clipvalue, "use_ema": self.use_ema,
                "ema_momentum": self.ema_momentum,
                "ema_overwrite_frequency": self.ema_overwrite_frequency,
                "loss_scale_factor": self.loss_scale_factor,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> Optimizer:
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"],
                                                            custom_objects)
        config.pop("decay", None)  # Keras ignores it too (a Keras 2 leftover)
        return cls(**config)

    def current_learning_rate(self) -> float:
        lr = self.learning_rate
        return float(lr(self.iterations)) if callable(lr) else float(lr)

    def initial_slots(self, shape: tuple[int, ...]) -> list[np.ndarray]:
        return [np.zeros(shape, np.float32) for _ in self.slot_names]

    def build(self, variables: Sequence[Any]) -> None:
        if not self.slots:
            self.slots = [self.initial_slots(tuple(v.shape)) for v in variables]

    def _clip(self, e: Emitter, grads: list[Value]) -> list[Value]:
        if self.clipnorm:
            return [_clip_by_norm(e, g, self.clipnorm) for g in grads]
        if self.global_clipnorm:
            sq = None
            for g in grads:
                s = e.sum(e.square(g))
                sq = s if sq is None else e.add(sq, s)
            norm = e.sqrt(sq)
            scale = e.div(self.global_clipnorm, e.maximum(norm, self.global_clipnorm))
            return [e.mul(g, scale) for g in grads]
        if self.clipvalue:
            v = float(self.clipvalue)
            return [e.minimum(e.maximum(g, -v), v) for g in grads]
        return grads

    def apply(self, e: Emitter, params: list[Value], grads: list[Value], slots: list[list[Value]],
              lr: Value, iterations: Value) -> tuple[list[Value], list[list[Value]]]:
        """New params and slots after one step (iterations: the count before it, float32)."""
        grads = self._clip(e, grads)
        new_params, new_slots = [], []
        for p, g, s in zip(params, grads, slots, strict=True):
            if self.weight_decay:
                p = e.sub(p, e.mul(e.mul(p, float(self.weight_decay)), lr))
            p2, s2 = self.update(e, p, g, s, lr, iterations)
            new_params.append(p2)
            new_slots.append(s2)
        return new_params, new_slots

    def update(self, e, p, g, slots, lr, iterations):
        raise NotImplementedError


def _clip_by_norm(e: Emitter, g: Value, clip: float) -> Value:
    norm = e.sqrt(e.sum(e.square(g)))
    return e.div(e.mul(g, float(clip)), e.maximum(norm, float(clip)))


class SGD(Optimizer):
    def __init__(self, learning_rate: Any = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        if not 0 <= momentum <= 1:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum else ()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, e, p, g, slots, lr, iterations):
        if not self.momentum:
            return e.sub(p, e.mul(g, lr)), []
        m = e.add(e.neg(e.mul(g, lr)), e.mul(slots[0], self.momentum))
        step = e.add(e.neg(e.mul(g, lr)), e.mul(m, self.momentum)) if self.nesterov else m
        return e.add(p, step), [m]


class Adam(Optimizer):
    slot_names = ("momentum", "velocity")

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        if amsgrad:
            raise ValueError(f"{type(self).__name__}: amsgrad=True is not supported by kcompile "
                             "(only its default)")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = False

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}

    def update(self, e, p, g, slots, lr, iterations):
        m, v = slots
        step = e.add(iterations, 1.0)
        b1p, b2p = e.pow(e.const(self.beta_1), step), e.pow(e.const(self.beta_2), step)
        alpha = e.div(e.mul(lr, e.sqrt(e.sub(1.0, b2p))), e.sub(1.0, b1p))
        m = e.add(m, e.mul(e.sub(g, m), 1.0 - self.beta_1))
        v = e.add(v, e.mul(e.sub(e.square(g), v), 1.0 - self.beta_2))
        p = e.sub(p, e.div(e.mul(m, alpha), e.add(e.sqrt(v), self.epsilon)))
        return p, [m, v]


class AdamW(Adam):
    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any):
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)
        self.slot_names = ("velocity",) + (("momentum",) if self.momentum > 0 else ()) + \
            (("average_gradient",) if self.centered else ())

    @property
    def keras_slot_groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple((name,) for name in self.slot_names)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}

    def update(self, e, p, g, slots, lr, iterations):
        slots = list(slots)
        vel = e.add(e.mul(slots[0], self.rho), e.mul(e.square(g), 1.0 - self.rho))
        new = [vel]
        k = 1 + (self.momentum > 0)
        if self.centered:
            avg = e.add(e.mul(slots[k], self.rho), e.mul(g, 1.0 - self.rho))
            denominator = e.add(e.sub(vel, e.square(avg)), self.epsilon)
        else:
            denominator = e.add(vel, self.epsilon)
        increment = e.div(e.mul(g, lr), e.sqrt(denominator))
        if self.momentum > 0:
            mom = e.add(e.mul(slots[1], self.momentum), increment)
            new.append(mom)
            p = e.sub(p, mom)
        else:
            p = e.sub(p, increment)
        if self.centered:
            new.append(avg)
        return p, new


class Adagrad(Optimizer):
    slot_names = ("accumulator",)

    def __init__(self, learning_rate: Any = 0.001, initial_accumulator_value: float = 0.1,
                 epsilon: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}

    def initial_slots(self, shape):
        return [np.full(shape, self.initial_accumulator_value, np.float32)]

    def update(self, e, p, g, slots, lr, iterations):
        acc = e.add(slots[0], e.square(g))
        return e.sub(p, e.div(e.mul(g, lr), e.sqrt(e.add(acc, self.epsilon)))), [acc]


_NAMES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


_CLASSES = {cls.__name__: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """Keras's `{"module", "class_name", "config", "registered_name"}` form of an optimizer."""
    from kcompile.serialization import serialize_known

    return serialize_known(optimizer, "keras.optimizers", _CLASSES)


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Optimizer:
    """An optimizer from its serialized form (as `serialize` and real Keras write it)."""
    from kcompile.saving.object_registration import resolve_custom

    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Not a serialized optimizer: {config!r}")
    name = config["class_name"]
    cls = resolve_custom(name, config.get("registered_name"), custom_objects)
    if cls is None:
        cls = _CLASSES.get(name) or _NAMES.get(str(name).lower())
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(f"Unknown optimizer {name!r}; kcompile supports {sorted(_CLASSES)} (and "
                         "registered Optimizer subclasses)")
    return cls.from_config(config.get("config") or {}, custom_objects)


def get(identifier: Any) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    raise ValueError(f"Unknown optimizer {identifier!r}; kcompile supports {sorted(_NAMES)} "
                     "(or an Optimizer instance)")
