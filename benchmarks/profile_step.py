"""Per-node profile of a compiled training step: where does the time of one step go?

Builds the training-step graph of a benchmark model (benchmarks/models.py), runs the compiler's pass
pipeline on it, then compiles every node of the optimised graph on its own (a one-node graph whose
inputs are that node's operand types) and times it on random data of the right shapes and dtypes.
Prints a table sorted by time -- op, shapes, attributes, ms, GFLOP/s for the convolutions and GEMMs,
GB/s (bytes read + written) for the rest -- and the total, next to the time of the whole step.

    KERAS_BACKEND=jax python benchmarks/profile_step.py convnet [--batch 128] [--top 25] [--whole]

Nodes timed alone run with the same thread pool as the whole step, but their operands may be
warmer or colder in cache than inside the step, so the sum only approximates the step time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402


def _training_graph(name: str, batch: int):
    model = getattr(models, name)()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    x = np.zeros((batch, *model.inputs[0].shape[1:]), np.float32)
    step, _ = model._train_step_for(x)
    return step.graph


def _shape(t, batch: int) -> tuple[int, ...]:
    return tuple(batch if d is None else d for d in t.shape)


def _random(t, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = _shape(t, batch)
    if t.dtype in ("float32", "float64"):
        return rng.standard_normal(shape).astype(t.dtype)
    if t.dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return np.zeros(shape, t.dtype)  # labels, rng keys, indices: 0 is valid everywhere


def _anchor(node) -> tuple[str, dict]:
    """(op, attrs) of the node's anchor (the first step of a fused program)."""
    if node.op == "fused":
        op, _, attrs = node.attrs["program"][0]
        return op, dict(attrs)
    return node.op, node.attrs


def node_flops(node, batch: int) -> float | None:
    """Multiply-adds x 2 of convolutions (forward and gradients) and GEMMs; None for the rest."""
    op, attrs = _anchor(node)
    ins = [_shape(v.type, batch) for v in node.inputs]
    out = _shape(node.outputs[0].type, batch)
    if op == "conv2d":
        kh, kw, ci, co = ins[1]
        return 2.0 * math.prod(out[:3]) * kh * kw * ci * co
    if op == "conv2d_input_grad":  # dy (n, oh, ow, co), w (kh, kw, ci, co)
        kh, kw, ci, co = ins[1]
        return 2.0 * math.prod(ins[0][:3]) * kh * kw * ci * co
    if op == "conv2d_filter_grad":  # x, dy -> (kh, kw, ci, co)
        return 2.0 * math.prod(ins[1][:3]) * math.prod(out)
    if op == "matmul":
        a = ins[0]
        k = a[-2] if attrs.get("transpose_a") else a[-1]
        return 2.0 * math.prod(out) * k
    return None


def _describe(node) -> tuple[str, str]:
    op, attrs = _anchor(node)
    if node.op == "fused":
        op = "fused:" + "+".join(step[0] for step in node.attrs["program"])
    shown = {k: v for k, v in attrs.items() if k not in ("program", "value")}
    text = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return op, text


def _one_node_graph(node):
    from kcompile.ir.core import Graph, Node

    g = Graph(name=f"profile_{node.op}")
    inputs = {}
    for v in node.inputs:
        if v not in inputs:
            inputs[v] = g.add_input(v.type, f"in{len(inputs)}")
    clone = Node(node.op, [inputs[v] for v in node.inputs], node.attrs,
                 [v.type for v in node.outputs], node.label)
    g.nodes.append(clone)
    g.outputs = list(clone.outputs)
    g.verify()
    return g, list(inputs)


class _Runner:
    """Calls a compiled graph with preallocated outputs (as inside the step, where they live in the
    arena), so first-touch page faults of fresh output arrays are not timed."""

    def __init__(self, compiled, feeds: list[np.ndarray], batch: int) -> None:
        self.compiled = compiled
        self.feeds = feeds
        self.batch = batch
        self.outs = [np.zeros(_shape(v.type, batch), v.dtype) for v in compiled.graph.outputs]

    def __call__(self) -> None:
        c = self.compiled
        if hasattr(c, "_run_locked"):
            with c.pool.lock:
                c._run_locked(self.feeds, self.outs, self.batch, None)
        else:
            c.run(self.feeds)


def _best(fn, repeat: int, min_seconds: float) -> float:
    fn()
    best = math.inf
    spent = 0.0
    runs = 0
    while runs < repeat or (spent < min_seconds and runs < 50 * repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return best


def profile(name: str, batch: int, repeat: int = 5, min_seconds: float = 0.05,
            only: str | None = None, whole_only: bool = False) -> tuple[list[dict], float | None]:
    from kcompile.codegen.llvm.compiler import compile_graph
    from kcompile.ir.passes import optimize

    graph = _training_graph(name, batch)
    main = optimize(graph).main
    rng = np.random.default_rng(0)
    rows = []
    for index, node in enumerate([] if whole_only else main.nodes):
        if node.op == "reshape":
            continue  # a view inside the step (same arena slot), nothing runs
        op, attrs = _describe(node)
        if only and only not in op:
            continue
        g, values = _one_node_graph(node)
        compiled = compile_graph(g)
        compiled.set_params([])
        feeds = [_random(v.type, batch, rng) for v in values]
        seconds = _best(_Runner(compiled, feeds, batch), repeat, min_seconds)
        flops = node_flops(node, batch)
        nbytes = sum(math.prod(_shape(v.type, batch)) * np.dtype(v.dtype).itemsize
                     for v in [*node.inputs, *node.outputs])
        shapes = " ".join("x".join(map(str, _shape(v.type, batch))) or "()" for v in node.inputs)
        shapes += " -> " + "x".join(map(str, _shape(node.outputs[0].type, batch)))
        rows.append({"index": index, "op": op, "shapes": shapes, "attrs": attrs, "ms": seconds * 1e3,
                     "gflops": flops / seconds / 1e9 if flops else None,
                     "gbs": nbytes / seconds / 1e9, "label": node.label or ""})
    whole = None
    if not only:
        compiled = compile_graph(graph)
        compiled.set_params([])
        feeds = [_random(v.type, batch, rng) for v in compiled.graph.inputs]
        for i, v in enumerate(compiled.graph.inputs):  # a finite loss: labels in range
            if v.name == "sample_weight":
                feeds[i] = np.ones_like(feeds[i])
            elif v.name == "learning_rate":
                feeds[i] = np.asarray(1e-3, np.float32)
            elif v.name == "iterations":
                feeds[i] = np.asarray(1.0, np.float32)
            elif v.name and v.name.startswith("slot") and v.name.endswith("_1"):
                feeds[i] = np.abs(feeds[i])
        whole = _best(_Runner(compiled, feeds, batch), repeat, min_seconds) * 1e3
    return rows, whole


def print_table(rows: list[dict], whole: float | None, top: int | None = None) -> None:
    rows = sorted(rows, key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    shown = rows[:top] if top else rows
    print(f"{'#':>4} {'op':<34} {'shapes':<44} {'ms':>9} {'%':>6} {'GFLOP/s':>8} {'GB/s':>7}  attrs")
    for r in shown:
        gf = f"{r['gflops']:8.1f}" if r["gflops"] is not None else f"{'':>8}"
        print(f"{r['index']:>4} {r['op'][:34]:<34} {r['shapes'][:44]:<44} {r['ms']:9.3f} "
              f"{100 * r['ms'] / total:6.1f} {gf} {r['gbs']:7.1f}  {r['attrs'][:70]}")
    if top and len(rows) > top:
        rest = sum(r["ms"] for r in rows[top:])
        print(f"{'':>4} {f'... {len(rows) - top} more nodes':<34} {'':<44} {rest:9.3f} "
              f"{100 * rest / total:6.1f}")
    print(f"{'':>4} {'total (nodes timed alone)':<34} {'':<44} {total:9.3f}")
    if whole is not None:
        print(f"{'':>4} {'whole step, one compiled graph':<34} {'':<44} {whole:9.3f}")
    by_op: dict[str, float] = {}
    for r in rows:
        key = r["op"].split(":")[0] if not r["op"].startswith("fused:conv2d") and \
            not r["op"].startswith("fused:matmul") else r["op"].split("+")[0]
        by_op[key] = by_op.get(key, 0.0) + r["ms"]
    print("\nby op: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(by_op.items(),
                                                                       key=lambda kv: -kv[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="convnet", help="a function of benchmarks/models.py")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="runs per node (the min is kept)")
    parser.add_argument("--top", type=int, default=0, help="show only the N slowest nodes")
    parser.add_argument("--only", default=None, help="profile only ops whose name contains this")
    parser.add_argument("--whole", action="store_true", help="time only the whole step")
    args = parser.parse_args()
    rows, whole = profile(args.model, args.batch, args.repeat, only=args.only, whole_only=args.whole)
    print(f"{args.model}, batch {args.batch}: one training step (forward + backward + Adam)\n")
    if args.whole:
        print(f"whole step, one compiled graph: {whole:.3f} ms (min of {args.repeat}+ runs)")
        return
    print_table(rows, whole, args.top or None)


if __name__ == "__main__":
    main()
