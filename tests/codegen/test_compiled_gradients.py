"""Forward and backward graphs of every op: compiled == eager (the training step is such a graph)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.autodiff import grad
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir_core"))
from test_ir_registry import SAMPLES  # noqa: E402

SKIP = {"fused", "constant"}  # internal / no inputs (covered elsewhere)
NO_GRAD = {"compare", "argmax", "one_hot", "stop_gradient", "conv2d_input_grad", "conv2d_filter_grad",
           "max_pool2d_grad", "avg_pool2d_grad", "gelu_grad"}
# the recurrent BPTT ops have no gradient of their own (second derivatives): forward only here
NO_GRAD |= {"simple_rnn_bptt", "lstm_bptt", "gru_bptt"}
NOT_COMPILED_YET: set[str] = set()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))


def _feeds(types, batch, rng):
    out = []
    for shape, dtype in types:
        concrete = tuple(batch if d is None else d for d in shape)
        if dtype == "uint32":
            out.append(np.array([5, 11], np.uint32))
        elif dtype == "int32":
            out.append(rng.integers(0, 4, concrete).astype(np.int32))
        else:
            out.append(np.asarray(rng.uniform(0.3, 1.5, concrete) * rng.choice([-1, 1], concrete),
                                  dtype=dtype))
    return out


@pytest.mark.parametrize("op", sorted(set(SAMPLES) - SKIP - NOT_COMPILED_YET))
def test_forward_and_backward_compiled_equals_eager(op):
    types, attrs = SAMPLES[op]
    if op in ("log", "sqrt", "pow"):  # positive domains
        types = list(types)
    g = Graph(name=f"train_{op}")
    xs = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    outputs = list(g.add_node(op, xs, attrs))  # every output (recurrent ops have several)
    out = outputs[0]
    if op not in NO_GRAD and out.dtype == "float32":
        w = g.add_input(TensorType(out.shape, out.dtype), "w")
        y = g.add_node("sum", [g.add_node("mul", [out, w])[0]], {"axes": None})[0]
        outputs += [v for v in grad(g, y, [x for x in xs if x.dtype == "float32"]) if v is not None]
    g.outputs = outputs
    g.verify()
    cg = compile_graph(g)
    cg.set_params([])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        feeds = _feeds(types, batch, rng)
        if op in ("log", "sqrt", "pow"):
            feeds = [np.abs(f) if f.dtype == np.float32 else f for f in feeds]
            feeds = [np.asarray(f) for f in feeds]
        if len(g.inputs) > len(types):
            feeds.append(rng.standard_normal(out.type.with_batch(batch).shape).astype(np.float32))
        want = run(g, feeds)
        got = cg.run(feeds)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=op)
