"""Keras 3 optimizers as IR: `apply` appends one update step (Keras's formulas and defaults) for
every trainable variable, so eager, compiled and exported training steps share it.

The step counter (`iterations`, before this step) and the learning rate are graph inputs: schedules
and ReduceLROnPlateau change the rate without recompiling. Slots are explicit inputs/outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kcompile.ir.core import Value
from kcompile.ir.emit import Emitter
from kcompile.optimizers import schedules  # noqa: F401 - keras.optimizers.schedules


class Optimizer:
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.001,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 name: str | None = None, **kwargs: Any) -> None:
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
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self.slots: list[list[np.ndarray]] = []  # per variable, per slot name

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
        super().__init__(learning_rate, amsgrad=amsgrad, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

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

    def initial_slots(self, shape):
        return [np.full(shape, self.initial_accumulator_value, np.float32)]

    def update(self, e, p, g, slots, lr, iterations):
        acc = e.add(slots[0], e.square(g))
        return e.sub(p, e.div(e.mul(g, lr), e.sqrt(e.add(acc, self.epsilon)))), [acc]


_NAMES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier: Any) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    raise ValueError(f"Unknown optimizer {identifier!r}; kcompile supports {sorted(_NAMES)} "
                     "(or an Optimizer instance)")
