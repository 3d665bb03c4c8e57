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


@pytest.fixture
def eager_is_expected():
    """Silence "Model ... runs eagerly": for tests that run the eager executor on purpose."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Model .* runs eagerly", RuntimeWarning)
        yield


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


def znver4_fma_tiles(graph, fmas: int) -> list[str]:
    """The basic blocks with `fmas` zmm FMAs in the assembly of `graph` compiled for an AVX-512
    CPU (znver4; code generation only, so this runs on any host): where a kernel's register tile
    is, to check that it does not spill."""
    import re

    from kcompile.codegen.llvm.compiler import _emit_module
    from kcompile.codegen.llvm.jit import DumpSink, Target, host_target, optimize_and_emit
    from kcompile.codegen.llvm.kernels import load_all
    from kcompile.ir.passes import optimize
    from kcompile.ir.passes.memory import plan_memory

    host_target()  # initialises LLVM
    load_all()
    target = Target("x86_64-unknown-linux-gnu", "znver4",
                    "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx2,+fma,+f16c", "avx512")
    split = optimize(graph)
    text, _ = _emit_module(split, plan_memory(split.main), target)

    class Sink(DumpSink):
        def __init__(self):
            self.files = {}

        def write(self, filename, text):
            self.files[filename] = text

    sink = Sink()
    optimize_and_emit(text, target, sink)
    blocks = re.split(r"\n(?=\.LBB\d+_\d+:)", sink.files["module.s"])
    return [blk for blk in blocks if len(re.findall(r"vfmadd\d+ps\s+[^\n]*zmm", blk)) == fmas]
