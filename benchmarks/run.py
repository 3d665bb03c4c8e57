"""Benchmarks: kcompile compiled vs kcompile eager vs onnxruntime (2 intra-op threads), interleaved
in one process. Prints median times and the ratio to onnxruntime; `--write` updates RESULTS.md.

    KERAS_BACKEND=jax python benchmarks/run.py [--quick] [--only lstm ...] [--write]

`--only` runs some of the models; with `--write` it replaces just their rows in RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402


def _timer(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


PAUSE_SECONDS = 0.5


def interleaved(fns: dict, rounds: int, block_seconds: float = 0.05) -> dict[str, float]:
    """Median seconds per call. Executors alternate in blocks of ~`block_seconds` so drift hits all
    alike; a pause before each block lets the other runtime's spinning worker threads go idle, so
    they do not steal its cores. onnxruntime's keep spinning for over 0.1 s after a run: with a
    10 ms pause the compiled MLP at batch 1024 measured 7.4 ms instead of its 4.5 ms alone, hence
    half a second."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    calls = {}
    for name, fn in fns.items():
        warm = _timer(fn, 3)
        calls[name] = max(1, min(2000, int(block_seconds / max(min(warm), 1e-7))))
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(PAUSE_SECONDS)
            fn()
            times[name] += _timer(fn, calls[name])
    return {k: float(np.median(v)) for k, v in times.items()}


def ort_session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(models.to_onnx(model), so, providers=["CPUExecutionProvider"])


def bench_inference(model, batches, quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    sess = ort_session(model)
    rows = []
    flops = models.flops(model)
    for batch in batches:
        x = rng.random((batch, *model.inputs[0].shape[1:]), dtype=np.float32)
        model(x)  # compile (and take the fast path from now on)
        sigs, structure = model.input_signature(x)
        lowered = model._lowered_for(sigs, structure, False)
        ref = sess.run(None, {"x": x})[0]
        err = float(np.abs(model(x) - ref).max())
        work = flops * batch
        rounds = 3 if quick else 7
        fns = {"compiled": lambda x=x: model(x), "onnxruntime": lambda x=x: sess.run(None, {"x": x})}
        med = interleaved(fns, rounds)
        rows.append({"model": model.name, "batch": batch, **med, "gflops": work / med["compiled"] / 1e9,
                     "ort_gflops": work / med["onnxruntime"] / 1e9, "max_abs_vs_ort": err,
                     "_eager": (lowered, x, 2 if work > 5e7 else 6)})
    return rows


def bench_eager(rows: list[dict]) -> None:
    """Eager (NumPy) timings last: NumPy's BLAS threads spin after each call and would steal the
    cores from the compiled and onnxruntime measurements."""
    from kcompile.models.lowering import execute

    for r in rows:
        lowered, x, calls = r.pop("_eager")
        r["eager"] = float(np.median(_timer(lambda x=x, lw=lowered: execute(lw, [x]), calls)))


def bench_compile(model_fn) -> dict:
    """Cold compile (empty cache dir) and from the on-disk cache, in fresh model objects."""
    from kcompile.codegen.llvm.compiler import compile_graph
    from kcompile.codegen.llvm.jit import temporary_cache_dir

    with temporary_cache_dir():
        model = model_fn()
        x = np.zeros((1, *model.inputs[0].shape[1:]), np.float32)
        sigs, structure = model.input_signature(x)
        graph = model._lowered_for(sigs, structure, False).graph
        cold = compile_graph(graph).stats
        cached = compile_graph(graph).stats
    return {"model": model.name, "cold_s": cold.seconds, "llvm_s": cold.llvm_seconds,
            "cached_s": cached.seconds, "cache_hit": cached.cached}


def format_rows(rows: list[dict]) -> str:
    lines = ["| model | batch | compiled | onnxruntime | ratio (compiled / ort) | eager | compiled GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {_fmt(r['compiled'])} | {_fmt(r['onnxruntime'])} "
                     f"| **{r['compiled'] / r['onnxruntime']:.2f}x** | {_fmt(r['eager'])} "
                     f"| {r['gflops']:.0f} |")
    return "\n".join(lines)


def merge_rows(text: str, table: str) -> str:
    """`text` (RESULTS.md) with `table`'s rows put into its table with the same header line: a row
    for the same model (and batch, where the table has that column) is replaced, a new one appended."""
    header, _, *rows = table.splitlines()
    lines = text.splitlines()
    if header not in lines:
        raise ValueError(f"RESULTS.md has no table with the header {header!r}: run --write without --only")
    start = end = lines.index(header) + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    width = 2 if header.split("|")[2].strip() == "batch" else 1
    body = lines[start:end]
    for row in rows:
        key = row.split("|")[1:1 + width]
        same = [i for i, old in enumerate(body) if old.split("|")[1:1 + width] == key]
        if same:
            body[same[0]] = row
        else:
            body.append(row)
    lines[start:end] = body
    return "\n".join(lines) + "\n"


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


# inference rows: the model and its batch sizes (the LSTM at issue 7's batch 32)
MODELS = {"mlp": (models.mlp, [1, 64, 1024]), "convnet": (models.convnet, [1, 128]),
          "lstm": (models.lstm, [32])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (CI smoke run)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--only", action="append", choices=sorted(MODELS), metavar="MODEL",
                        help=f"run only these models ({', '.join(MODELS)}; repeatable); with --write, "
                             f"only their rows in RESULTS.md are replaced")
    args = parser.parse_args(argv)
    chosen = [name for name in MODELS if not args.only or name in args.only]
    import kcompile

    kcompile.utils.set_random_seed(0)
    rows = []
    for name in chosen:
        builder, batches = MODELS[name]
        rows += bench_inference(builder(), batches, args.quick)
    bench_eager(rows)
    table = format_rows(rows)
    from training import bench_training, format_training

    train_rows = bench_training(interleaved, args.quick, [MODELS[name][0] for name in chosen])
    ttable = format_training(train_rows)
    comp = [bench_compile(MODELS[name][0]) for name in ("convnet", "mlp", "lstm") if name in chosen]
    header = ["| model | cold compile | of which LLVM | from disk cache |", "|---|---:|---:|---:|"]
    ctable = "\n".join(header +
                       [f"| {c['model']} | {c['cold_s'] * 1e3:.0f} ms | {c['llvm_s'] * 1e3:.0f} ms | "
                        f"{c['cached_s'] * 1e3:.1f} ms |" for c in comp])
    print(table)
    print()
    print(ttable)
    print()
    print(ctable)
    path = Path(__file__).with_name("RESULTS.md")
    if args.write and args.only:
        text = path.read_text()
        for t in (table, ttable, ctable):
            text = merge_rows(text, t)
        path.write_text(text)
    elif args.write:
        from kcompile.codegen.llvm.jit import host_target
        from kcompile.codegen.llvm.threads import default_threads

        t = host_target()
        text = (f"# Benchmark results\n\nCommand: `KERAS_BACKEND=jax python benchmarks/run.py --write`"
                f"\n\nMachine: {platform.machine()} {t.cpu} ({t.isa}), {default_threads()} threads; "
                f"onnxruntime with intra_op_num_threads=2. Times are medians of interleaved runs; "
                f"ratio < 1 means kcompile is faster. The LSTM's onnxruntime runs kcompile's ONNX "
                f"export (ONNX's LSTM op).\n\n## Inference\n\n{table}\n\n"
                f"## Training step (forward + backward + Adam)\n\nSparse categorical cross-entropy on "
                f"each model's softmax Dense(10). Ratios in brackets: compiled time / that column's "
                f"time; \"(eager fallback)\": the compiled step is not there yet for that model and "
                f"the eager executor ran it.\n\n{ttable}\n\n## Compile time\n\n{ctable}\n")
        old = path.read_text() if path.exists() else ""
        marker = "<!-- notes: kept by run.py --write -->"
        notes = old[old.index(marker):] if marker in old else marker + "\n"
        path.write_text(text + "\n" + notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
