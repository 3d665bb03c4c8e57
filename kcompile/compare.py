"""`kcompile.compare(model, x)`: how far compiled results are from the eager reference, and how fast
each executor is, on the user's own model and data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kcompile.models.executor import CompiledExecutor
from kcompile.models.lowering import execute, fill_free_dims, prepare_inputs


@dataclass
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float


@dataclass
class CompareReport:
    model: str
    batch: int
    outputs: list[OutputDiff] = field(default_factory=list)
    eager_seconds: float = 0.0
    compiled_seconds: float = 0.0
    compile_seconds: float = 0.0
    compile_cached: bool = False
    onnx_outputs: list[OutputDiff] = field(default_factory=list)  # onnxruntime vs eager, if run
    onnx_seconds: float | None = None

    @property
    def speedup(self) -> float:
        return self.eager_seconds / self.compiled_seconds if self.compiled_seconds else float("inf")

    def ok(self, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        return all(o.max_abs <= atol or o.max_rel <= rtol
                   for o in (*self.outputs, *self.onnx_outputs))

    def __str__(self) -> str:
        lines = [f"kcompile.compare: model '{self.model}', batch {self.batch}",
                 f"  {'output':<24}{'shape':<20}{'max abs err':>14}{'max rel err':>14}"]
        for o in self.outputs:
            lines.append(f"  {o.name:<24}{str(o.shape):<20}{o.max_abs:>14.3e}{o.max_rel:>14.3e}")
        how = "from cache" if self.compile_cached else "cold"
        lines.append(f"  eager    {self.eager_seconds * 1e3:10.3f} ms (median)")
        lines.append(f"  compiled {self.compiled_seconds * 1e3:10.3f} ms (median)  "
                     f"{self.speedup:.1f}x faster; compile {self.compile_seconds * 1e3:.0f} ms ({how})")
        if self.onnx_seconds is not None:
            worst = max((o.max_abs for o in self.onnx_outputs), default=0.0)
            lines.append(f"  onnxruntime {self.onnx_seconds * 1e3:7.3f} ms (median)  compiled takes "
                         f"{self.compiled_seconds / self.onnx_seconds:.2f}x its time; max abs err vs "
                         f"eager {worst:.3e}")
        return "\n".join(lines)


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _diff(name: str, got: np.ndarray, want: np.ndarray) -> OutputDiff:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-30)
    return OutputDiff(name, got.shape, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)))


def _onnxruntime_runner(lowered: Any, arrays: list[np.ndarray]) -> Callable[[], list[np.ndarray]]:
    """The inference graph exported to ONNX in memory and loaded by onnxruntime."""
    import onnxruntime as ort

    from kcompile.codegen.onnx.exporter import graph_to_onnx

    proto = graph_to_onnx(lowered.graph, weights=[np.asarray(v.value) for v in lowered.variables],
                          check=False)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays, strict=True)}
    return lambda: sess.run(None, feeds)


def compare(model: Any, x: Any, *, repeats: int = 10, print_report: bool = True,
            onnxruntime: bool = False) -> CompareReport:
    """Run `model` on `x` with the eager and the compiled executor (and onnxruntime on the exported
    graph, with `onnxruntime=True`); report the per-output max abs / rel error against eager and the
    median time of each."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"compare: repeats must be a positive int, got {repeats!r}")
    sigs, structure = model.input_signature(x)
    arrays = prepare_inputs(model.name, sigs, x)
    sigs = fill_free_dims(sigs, arrays)
    lowered = model._lowered_for(sigs, structure, False)
    from kcompile.codegen.llvm.compiler import compile_graph

    executor = CompiledExecutor(lowered, compile_graph(lowered.graph))
    eager = execute(lowered, arrays)
    compiled = executor.run(arrays)
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    report = CompareReport(model.name, batch, compile_seconds=executor.compiled.stats.seconds,
                           compile_cached=executor.compiled.stats.cached)
    names = [getattr(v, "name", None) or f"output_{i}" for i, v in
             enumerate(lowered.graph.outputs[:lowered.num_outputs])]
    names = [names[i] if i < len(names) else f"output_{i}" for i in range(len(eager))]
    report.outputs = [_diff(n, c, e) for n, c, e in zip(names, compiled, eager, strict=True)]
    report.eager_seconds = _median_time(lambda: execute(lowered, arrays), repeats)
    report.compiled_seconds = _median_time(lambda: executor.run(arrays), repeats)
    if onnxruntime:
        run_ort = _onnxruntime_runner(lowered, arrays)
        report.onnx_outputs = [_diff(n, o, e) for n, o, e in zip(names, run_ort(), eager, strict=True)]
        report.onnx_seconds = _median_time(run_ort, repeats)
    if print_report:
        print(report)
    return report
