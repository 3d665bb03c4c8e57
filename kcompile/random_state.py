"""Global seeding: `utils.set_random_seed` makes weight init, dropout and shuffling reproducible."""

from __future__ import annotations

import random

import numpy as np

_generator = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed kcompile's generator (and Python's and NumPy's legacy ones, as Keras does)."""
    global _generator
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"set_random_seed: seed must be a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def generator(seed: int | None = None) -> np.random.Generator:
    """A fresh generator for an explicit seed, else the global one."""
    return np.random.default_rng(seed) if seed is not None else _generator


def draw_seed() -> int:
    """A uint32 seed from the global generator (for layers that need their own stream)."""
    return int(_generator.integers(0, 2**32 - 1))
