"""Shared test set-up: real Keras 3 (JAX backend) is the oracle."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # fp32 contract: compiled == eager == Keras


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def keras_module():
    import keras

    assert keras.backend.backend() == "jax", "tests compare against Keras with the JAX backend"
    return keras


def copy_weights(src, dst) -> None:
    """Copy weights between a kcompile and a Keras model (same architecture, same order)."""
    dst.set_weights([np.asarray(w) for w in src.get_weights()])


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory):
    """A private compile cache for one test module (cold compiles, nothing left in ~/.cache)."""
    old = os.environ.get("KCOMPILE_CACHE_DIR")
    os.environ["KCOMPILE_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcompile-cache"))
    yield
    if old is None:
        os.environ.pop("KCOMPILE_CACHE_DIR", None)
    else:
        os.environ["KCOMPILE_CACHE_DIR"] = old


def scale_layer_class():
    """A small custom layer (x * factor) for custom-object tests; a fresh class per call, so a test
    may register it without affecting others."""
    import kcompile
    from kcompile import ops

    class Scale(kcompile.layers.Layer):
        def __init__(self, factor: float = 2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return ops.multiply(x, self.factor)

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    return Scale
