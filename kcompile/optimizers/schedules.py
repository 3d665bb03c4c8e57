"""Keras 3 learning-rate schedules: callables of the optimizer's step count (the number of updates
applied before this one), evaluated in Python each step and fed to the training graph as its
`learning_rate` input, so a schedule never recompiles anything."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class LearningRateSchedule:
    name = "LearningRateSchedule"

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        return cls(**config)


def _positive_steps(decay_steps: float) -> None:
    if decay_steps <= 0:
        raise ValueError(f"Argument `decay_steps` must be > 0. Received: decay_steps={decay_steps}")


def _f32(x: float) -> float:
    """Keras computes schedules in float32; round the same way so learning rates match."""
    return float(np.float32(x))


class _StepDecay(LearningRateSchedule):
    """Shared by the two decays of p = step / decay_steps (floored with `staircase`)."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, decay_rate: float,
                 staircase: bool = False, name: str | None = None) -> None:
        _positive_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase = decay_rate, staircase
        self.name = name or type(self).__name__

    def _progress(self, step: int) -> np.float32:
        p = np.float32(step) / np.float32(self.decay_steps)
        return np.floor(p) if self.staircase else p

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_StepDecay):
    """initial * decay_rate ** p."""

    def __call__(self, step: int) -> float:
        return _f32(np.float32(self.initial_learning_rate) *
                    np.float32(self.decay_rate) ** self._progress(step))


class InverseTimeDecay(_StepDecay):
    """initial / (1 + decay_rate * p)."""

    def __call__(self, step: int) -> float:
        return _f32(np.float32(self.initial_learning_rate) /
                    (np.float32(1) + np.float32(self.decay_rate) * self._progress(step)))


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while step <= boundaries[i], then the last."""

    def __init__(self, boundaries: Sequence[float], values: Sequence[float],
                 name: str = "PiecewiseConstant") -> None:
        if len(boundaries) != len(values) - 1:
            raise ValueError("The length of boundaries should be 1 less than the length of values. "
                             f"Received: boundaries={list(boundaries)} of length "
                             f"{len(boundaries)}, and values={list(values)} of length {len(values)}.")
        self.boundaries, self.values, self.name = list(boundaries), list(values), name

    def __call__(self, step: int) -> float:
        for bound, value in zip(self.boundaries, self.values, strict=False):
            if step <= bound:
                return _f32(value)
        return _f32(self.values[-1])

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Optional linear warmup to `warmup_target`, then half a cosine down to alpha * the start."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, alpha: float = 0.0,
                 name: str = "CosineDecay", warmup_target: float | None = None,
                 warmup_steps: float = 0) -> None:
        _positive_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.alpha = (initial_learning_rate,
                                                                    decay_steps, alpha)
        self.name, self.warmup_target, self.warmup_steps = name, warmup_target, warmup_steps

    def _decay(self, step: float, start: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        if self.warmup_target is None:
            return _f32(self._decay(min(step, self.decay_steps), self.initial_learning_rate))
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return _f32(delta * step / self.warmup_steps + self.initial_learning_rate)
        return _f32(self._decay(step - self.warmup_steps, self.warmup_target))

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_BUILTIN = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay,
                                          CosineDecay)}
_KERAS_ONLY = ("PolynomialDecay", "CosineDecayRestarts")


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """Keras's form: {"module": "keras.optimizers.schedules", "class_name", "config", ...}."""
    from kcompile.serialization import serialize_known

    return serialize_known(schedule, "keras.optimizers.schedules", _BUILTIN)


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                ) -> LearningRateSchedule:
    """A schedule from its serialized form (as `serialize` and real Keras write it)."""
    from kcompile.saving.object_registration import resolve_custom

    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Not a serialized learning-rate schedule: {config!r}")
    name = config["class_name"]
    cls = resolve_custom(name, config.get("registered_name"), custom_objects) or _BUILTIN.get(name)
    if not (isinstance(cls, type) and issubclass(cls, LearningRateSchedule)):
        known = f"kcompile supports {sorted(_BUILTIN)} and registered LearningRateSchedule subclasses"
        what = "is not implemented by kcompile" if name in _KERAS_ONLY else "is unknown"
        raise ValueError(f"Learning-rate schedule {name!r} {what}; {known}")
    return cls.from_config(dict(config.get("config") or {}))
