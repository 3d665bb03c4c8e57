"""Max ulp error of the vectorised transcendental functions against float64 NumPy."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from kcompile.codegen.llvm import mathfn
from kcompile.codegen.llvm.builder import I64, PTR, KernelBuilder, define, module_text, new_module
from kcompile.codegen.llvm.jit import compile_cached, host_target

_FUNCS = {
    "exp": (mathfn.exp, np.exp, (-87.0, 88.0)),
    "tanh": (mathfn.tanh, np.tanh, (-12.0, 12.0)),
    "sigmoid": (mathfn.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-30.0, 30.0)),
    "log": (mathfn.log, np.log, (1e-30, 1e30)),
    "fast_tanh": (mathfn.fast_tanh, np.tanh, (-12.0, 12.0)),
    "fast_sigmoid": (mathfn.fast_sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-30.0, 30.0)),
}
# Bounds we guarantee (the measured values are printed by `-s` and recorded in RESULTS.md).
_MAX_ULP = {"exp": 2, "tanh": 4, "sigmoid": 4, "log": 3}


def _compile(name: str, isa: str | None = None):
    target = host_target(isa)
    module = new_module(f"ulp_{name}", target)
    fn = define(module, "apply", [PTR, PTR, I64], target, internal=False)
    kb = KernelBuilder(fn, target)
    x, y, n = fn.args
    with kb.loop(kb.i64(0), n, kb.vw, "i") as i:
        kb.vstore(_FUNCS[name][0](kb, kb.vload(x, i)), y, i)
    kb.finish()
    text = module_text(module, target)
    lib, _, _ = compile_cached(f"ulp-test-{name}-{isa}", lambda: (text, {}), target)
    cfn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(lib.address("apply"))

    def apply(values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, np.float32)
        pad = -len(values) % 16
        buf = np.concatenate([values, np.zeros(pad, np.float32)])
        out = np.empty_like(buf)
        cfn(buf.ctypes.data, out.ctypes.data, len(buf))
        return out[:len(values)]

    apply.lib = lib  # the code lives as long as the function
    return apply


def ulp_error(got: np.ndarray, want64: np.ndarray) -> np.ndarray:
    want32 = want64.astype(np.float32)
    spacing = np.spacing(np.abs(want32)).astype(np.float64)
    spacing = np.maximum(spacing, np.float64(np.finfo(np.float32).smallest_normal) * 2.0**-23)
    return np.abs(got.astype(np.float64) - want64) / spacing


def _inputs(lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    if lo > 0:  # log: cover many binades
        xs = np.exp(rng.uniform(math.log(lo), math.log(hi), 200_000))
    else:
        xs = rng.uniform(lo, hi, 200_000)
    dense = np.linspace(-1, 1, 20_001) if lo < 0 else np.linspace(0.5, 2, 20_001)
    return np.concatenate([xs, dense]).astype(np.float32)


@pytest.mark.parametrize("name", sorted(n for n in _FUNCS if not n.startswith("fast_")))
def test_max_ulp_error(name: str) -> None:
    fn = _compile(name)
    xs = _inputs(*_FUNCS[name][2])
    got = fn(xs)
    want = _FUNCS[name][1](xs.astype(np.float64))
    err = ulp_error(got, want)
    print(f"{name}: max ulp error {err.max():.2f} over {len(xs)} inputs")
    assert err.max() <= _MAX_ULP[name], f"{name}: {err.max():.2f} ulp at x={xs[err.argmax()]!r}"


def test_special_values() -> None:
    exp, log, tanh, sig = (_compile(n) for n in ("exp", "log", "tanh", "sigmoid"))
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 100.0, -100.0, 89.0, -104.0], np.float32)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(exp(specials), _exp_expect(specials))
        assert np.isnan(log(np.array([np.nan, -1.0], np.float32))).all()
        assert log(np.array([0.0], np.float32))[0] == -np.inf
        assert log(np.array([np.inf], np.float32))[0] == np.inf
        np.testing.assert_allclose(log(np.array([1e-40], np.float32)), np.log(1e-40), rtol=1e-6)
    np.testing.assert_array_equal(tanh(np.array([np.inf, -np.inf, 30.0], np.float32)), [1, -1, 1])
    assert np.isnan(tanh(np.array([np.nan], np.float32))).all()
    np.testing.assert_array_equal(sig(np.array([np.inf, -np.inf, 0.0], np.float32)), [1, 0, 0.5])


# The recurrent kernels' rational tanh and sigmoid promise an absolute error (what a gate or a
# state in (-1, 1) carries), and a relative one for tanh near 0 where a state decays.
_FAST_ABS = {"fast_tanh": 4e-7, "fast_sigmoid": 2.5e-7}


@pytest.mark.parametrize("name", sorted(_FAST_ABS))
def test_fast_activations_error(name: str) -> None:
    fn = _compile(name)
    xs = np.concatenate([_inputs(*_FUNCS[name][2]), np.geomspace(1e-30, 1e-2, 5000, dtype=np.float32)])
    want = _FUNCS[name][1](xs.astype(np.float64))
    got = fn(xs).astype(np.float64)
    err = np.abs(got - want)
    print(f"{name}: max |error| {err.max():.2e}")
    assert err.max() <= _FAST_ABS[name], f"{name}: {err.max():.2e} at x={xs[err.argmax()]!r}"
    assert got.min() >= 0.0 if name == "fast_sigmoid" else np.abs(got).max() <= 1.0
    if name == "fast_tanh":
        small = np.abs(xs) < 0.5
        assert (ulp_error(got[small], want[small]) <= 4).all()
    specials = np.array([np.inf, -np.inf, 0.0, 50.0, -50.0], np.float32)
    want = [1, -1, 0, 1, -1] if name == "fast_tanh" else [1, 0, 0.5, 1, 0]
    np.testing.assert_array_equal(fn(specials), want)
    assert np.isnan(fn(np.array([np.nan], np.float32))).all()


def _exp_expect(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    want[x < -87.33654] = 0.0  # below the smallest normal we flush (NumPy would give denormals)
    return want


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_narrower_isas_agree(isa: str) -> None:
    xs = _inputs(-20.0, 20.0)[:5000]
    np.testing.assert_allclose(_compile("tanh", isa)(xs), np.tanh(xs.astype(np.float64)),
                               rtol=2e-6, atol=1e-7)
