"""The LLVM backend's machinery: op coverage, generated code, the object cache, dumps, ISAs,
threads and allocations."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

import kcompile as keras
from kcompile import layers
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.codegen.llvm.jit import Target, emit_assembly, host_target
from kcompile.codegen.llvm.kernels import load_all
from kcompile.codegen.llvm.kernels.common import LOWERINGS
from kcompile.codegen.llvm.kernels.elementwise import ELEMENTWISE
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run as interpret
from kcompile.ir.opdef import all_ops


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path / "cache"))


def _mlp(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([layers.Input((37,)), layers.Dense(70, activation="relu"),
                             layers.Dense(19, activation="softmax")])


def _lowered(model, x, training=False):
    sigs, st = model.input_signature(x)
    return model._lowered_for(sigs, st, training)


# Ops without an LLVM lowering yet: compiling a graph with one raises NotImplementedError (the step
# falls back to the eager executor unless jit_compile=True was asked for explicitly).
NOT_COMPILED_YET: set[str] = set()


def test_every_op_has_an_llvm_lowering() -> None:
    load_all()
    covered = set(LOWERINGS) | set(ELEMENTWISE) | {"fused"}
    missing = sorted(set(all_ops()) - covered - NOT_COMPILED_YET)
    assert not missing, f"ops without an LLVM lowering: {missing}"
    assert not NOT_COMPILED_YET & covered, "a lowering exists: drop it from NOT_COMPILED_YET"


def test_gemm_uses_512_bit_fmas_on_avx512() -> None:
    # Code generation only (nothing runs), so an AVX-512 target works on any host.
    host_target()  # initialises LLVM
    target = Target("x86_64-unknown-linux-gnu", "znver4",
                    "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx2,+fma,+f16c",
                    "avx512")
    g = Graph(name="gemm")
    x = g.add_input(TensorType((None, 256)), "x")
    w = g.add_param(TensorType((256, 128)), "w")
    g.outputs = g.add_node("matmul", [x, w])
    from kcompile.codegen.llvm.compiler import _emit_module
    from kcompile.ir.passes import optimize
    from kcompile.ir.passes.memory import plan_memory

    split = optimize(g)
    text, _ = _emit_module(split, plan_memory(split.main), target)
    asm = emit_assembly(text, target)
    fmas = re.findall(r"vfmadd\d+ps\s+[^\n]*zmm", asm)
    assert len(fmas) >= 24, f"expected the 6x64 register tile (24 zmm FMAs), found {len(fmas)}"


def test_one_compile_serves_every_batch_size() -> None:
    model = _mlp()
    lw = _lowered(model, np.zeros((1, 37), np.float32))
    cg = compile_graph(lw.graph)
    params = [v.value for v in lw.variables]
    cg.set_params(params)
    rng = np.random.default_rng(1)
    for batch in (1, 5, 6, 7, 64, 1031):
        x = rng.standard_normal((batch, 37), dtype=np.float32)
        np.testing.assert_allclose(cg.run([x])[0], interpret(lw.graph, [x], params)[0],
                                   rtol=1e-4, atol=1e-5)
    assert cg.run([np.zeros((0, 37), np.float32)])[0].shape == (0, 19)


def test_object_cache_hit_and_corruption(tmp_path) -> None:
    model = _mlp(1)
    lw = _lowered(model, np.zeros((1, 37), np.float32))
    cold = compile_graph(lw.graph)
    warm = compile_graph(lw.graph)
    assert not cold.stats.cached and warm.stats.cached
    objects = list((tmp_path / "cache").glob("*.o"))
    assert objects, "no object was written to the cache"
    for obj in objects:
        obj.write_bytes(b"garbage")  # a damaged entry must be rebuilt, never loaded
    again = compile_graph(lw.graph)
    assert not again.stats.cached
    again.set_params([v.value for v in lw.variables])
    x = np.ones((3, 37), np.float32)
    np.testing.assert_allclose(again.run([x])[0], model.predict(x), rtol=1e-4, atol=1e-5)


def test_dump_writes_ir_after_each_pass_llvm_and_assembly(tmp_path) -> None:
    model = keras.Sequential([layers.Input((6, 6, 2)), layers.Conv2D(4, 3, activation="relu"),
                              layers.BatchNormalization(), layers.Flatten(), layers.Dense(3)])
    lw = _lowered(model, np.zeros((1, 6, 6, 2), np.float32))
    compile_graph(lw.graph, dump=str(tmp_path / "dump"))
    files = {p.name for p in (tmp_path / "dump").rglob("*") if p.is_file()}
    assert {"module.ll", "module.opt.ll", "module.s"} <= files
    assert any(name.endswith("-fuse.ir") for name in files)
    assert any(name.endswith("-fold_batchnorm.ir") for name in files)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_narrower_isas_compute_the_same(isa: str) -> None:
    model = keras.Sequential([layers.Input((9, 9, 3)), layers.Conv2D(17, 3, padding="same",
                                                                     activation="gelu"),
                              layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5, activation="tanh")])
    x = np.random.default_rng(2).standard_normal((4, 9, 9, 3), dtype=np.float32)
    lw = _lowered(model, x)
    cg = compile_graph(lw.graph, target=host_target(isa))
    cg.set_params([v.value for v in lw.variables])
    np.testing.assert_allclose(cg.run([x])[0], interpret(lw.graph, [x], [v.value for v in
                                                                         lw.variables])[0],
                               rtol=1e-4, atol=1e-5)


def test_one_and_two_threads_agree() -> None:
    model = _mlp(3)
    x = np.random.default_rng(3).standard_normal((50, 37), dtype=np.float32)
    lw = _lowered(model, x)
    cg = compile_graph(lw.graph)
    cg.set_params([v.value for v in lw.variables])
    np.testing.assert_array_equal(cg.run([x], nthreads=1)[0], cg.run([x], nthreads=2)[0])


def test_steady_state_predict_allocates_only_outputs() -> None:
    model = _mlp(4)
    x = np.random.default_rng(4).standard_normal((32, 37), dtype=np.float32)
    for _ in range(3):
        model(x)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = [model(x) for _ in range(20)]
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = sum(k.nbytes for k in kept)
    assert after - before <= out_bytes + 20 * 512, (after - before, out_bytes)
    assert peak - before <= out_bytes + 64 * 1024


def test_weights_changed_after_compile_are_used() -> None:
    model = _mlp(5)
    x = np.ones((2, 37), np.float32)
    first = model(x)
    w = model.get_weights()
    w[2] = w[2] * 0
    model.set_weights(w)
    second = model(x)
    np.testing.assert_allclose(second, np.full((2, 19), 1 / 19, np.float32), rtol=1e-5)
    assert not np.allclose(first, second)


def test_jit_compile_false_runs_eagerly_and_agrees() -> None:
    model = _mlp(6)
    x = np.random.default_rng(6).standard_normal((9, 37), dtype=np.float32)
    model.compile(jit_compile=False)
    assert not model.jit_compile
    eager = model.predict(x)
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x), eager, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        model.compile(jit_compile="yes")


def test_compare_reports_errors_and_times(capsys) -> None:
    model = _mlp(7)
    report = keras.compare(model, np.random.default_rng(7).standard_normal((16, 37)))
    assert report.ok()
    assert report.outputs[0].shape == (16, 19) and report.outputs[0].max_abs < 1e-5
    assert report.eager_seconds > 0 and report.compiled_seconds > 0
    assert "max abs err" in capsys.readouterr().out


def test_concurrent_calls_from_python_threads() -> None:
    import threading

    model = _mlp(8)
    xs = [np.random.default_rng(i).standard_normal((3 + i, 37), dtype=np.float32) for i in range(4)]
    want = [model.predict(x) for x in xs]
    errors = []

    def worker(i: int) -> None:
        for _ in range(50):
            if not np.allclose(model(xs[i]), want[i], rtol=1e-5, atol=1e-6):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_compiled_model_works_in_a_forked_child() -> None:
    import multiprocessing as mp

    model = _mlp(9)
    x = np.random.default_rng(9).standard_normal((8, 37), dtype=np.float32)
    want = model(x)  # compiled, and the parent's worker threads exist now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_predict, args=(model, x, queue))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0, "the forked child crashed or hung"
    np.testing.assert_allclose(queue.get(timeout=5), want, rtol=1e-6)


def _child_predict(model, x, queue) -> None:
    queue.put(model(x))


@pytest.mark.parametrize("padding,hw,ci,co", [("same", (7, 9), 17, 19), ("valid", (8, 11), 16, 33),
                                             ("same", (1, 1), 20, 16), ("valid", (3, 4), 24, 64)])
def test_winograd_convolution_matches_direct(padding, hw, ci, co, monkeypatch) -> None:
    from kcompile.codegen.llvm.kernels import winograd

    keras.utils.set_random_seed(11)
    model = keras.Sequential([layers.Input((*hw, ci)),
                              layers.Conv2D(co, 3, padding=padding, activation="relu"),
                              layers.BatchNormalization()])
    rng = np.random.default_rng(11)
    model.layers[1].set_weights([rng.uniform(0.5, 1.5, co).astype(np.float32) for _ in range(4)])
    x = rng.standard_normal((3, *hw, ci), dtype=np.float32)
    lw = _lowered(model, x)
    params = [v.value for v in lw.variables]
    want = interpret(lw.graph, [x], params)[0]
    calls = []
    original = winograd.emit_winograd
    monkeypatch.setattr(winograd, "emit_winograd", lambda *a: calls.append(1) or original(*a))
    cg = compile_graph(lw.graph)
    assert calls, "this conv should take the Winograd path"
    cg.set_params(params)
    np.testing.assert_allclose(cg.run([x])[0], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cg.run([x[:1]])[0], want[:1], rtol=1e-4, atol=1e-5)


def test_inputs_are_validated_before_native_code() -> None:
    model = _mlp(12)
    lw = _lowered(model, np.zeros((1, 37), np.float32))
    cg = compile_graph(lw.graph)
    cg.set_params([v.value for v in lw.variables])
    good = np.ones((4, 37), np.float32)
    with pytest.raises(ValueError, match=r"float32.*\(None, 37\).*\(4, 36\)"):
        cg.run([np.ones((4, 36), np.float32)])
    with pytest.raises(ValueError, match="float32"):
        cg.run([good.astype(np.float64)])
    with pytest.raises(ValueError, match="not contiguous"):
        cg.run([np.ones((4, 74), np.float32)[:, ::2]])
    with pytest.raises(ValueError, match="takes 1 input"):
        cg.run([good, good])
    with pytest.raises(TypeError, match="NumPy array"):
        cg.run([good.tolist()])
    assert cg.fast_call([np.asfortranarray(np.ones((4, 37), np.float32))]) is None  # not C order
    # through the model, odd layouts and dtypes are converted, never passed through
    x = np.random.default_rng(12).standard_normal((6, 74)).astype(np.float64)
    strided = x[:, ::2]
    want = interpret(lw.graph, [np.ascontiguousarray(strided, np.float32)],
                     [v.value for v in lw.variables])[0]
    np.testing.assert_allclose(model(strided), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.predict(np.asfortranarray(strided)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [5, 48, 131, 300])
def test_static_gemm_row_chunks(batch):
    """Large batches go through the static-weight GEMM in L2-sized row chunks (48 rows for K=1000):
    full chunks, a partial chunk and the last batch % 6 rows all match the eager result."""
    model = keras.Sequential([keras.Input((1000,)), layers.Dense(40, activation="relu"),
                              layers.Dense(7)])
    x = np.random.default_rng(batch).standard_normal((batch, 1000)).astype("float32")
    report = keras.compare(model, x, repeats=1, print_report=False)
    assert report.ok(), report
