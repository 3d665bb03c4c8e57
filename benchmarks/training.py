"""Training-step benchmarks: one forward + backward + Adam step at batch 128, kcompile compiled and
eager against onnxruntime running kcompile's exported training step (`export(training=True)`),
Keras 3/JAX `train_on_batch` (jit) and PyTorch eager, each with the same weights.

Keras and PyTorch are optional here (anchors, not dependencies): a missing one is reported as
"not installed" and its column left empty.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import models
import numpy as np

BATCH = 128


def _data(model):
    rng = np.random.default_rng(0)
    shape = tuple(model.inputs[0].shape[1:])
    return rng.standard_normal((BATCH, *shape)).astype(np.float32), rng.integers(0, 10, BATCH)


def _adam_step(model, weights, x_like, **compile_kw):
    """`train_on_batch` closure of `model` compiled with Adam and sparse CE on the shared data."""
    model.set_weights(weights)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", **compile_kw)
    x, y = _data(x_like)
    return lambda: model.train_on_batch(x, y)


def kcompile_step(builder, jit: bool, weights):
    model = builder()
    return _adam_step(model, weights, model, jit_compile=jit)


def onnxruntime_step(builder, weights):
    """The same model's training step exported to ONNX, run by onnxruntime (2 threads)."""
    import onnxruntime as ort

    from kcompile.onnx import TrainingSession

    model = builder()
    model.set_weights(weights)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        model.export(path, training=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        ts = TrainingSession(path, sess_options=options)
    x, y = _data(model)
    return lambda: ts.train_on_batch(x, y)


def keras_step(builder, weights):
    """Keras 3 (JAX backend, jit) twin with the same layers and weights, or None."""
    try:
        import keras
    except Exception:  # noqa: BLE001 - any import failure means the anchor is absent
        return None
    ours = builder()
    theirs = keras.Sequential.from_config(ours.get_config())  # kcompile writes Keras's config
    return _adam_step(theirs, weights, ours, jit_compile=True)


def torch_step(builder, weights):
    """PyTorch eager twin (NCHW convolutions, same weights), or None when torch is absent."""
    try:
        import torch
    except Exception:  # noqa: BLE001
        return None
    from kcompile import layers

    torch.set_num_threads(2)
    ours = builder()
    ours.set_weights(weights)
    mods: list = []
    for layer in ours.layers:
        if isinstance(layer, layers.Conv2D):
            w, b = layer.get_weights()
            conv = torch.nn.Conv2d(w.shape[2], w.shape[3], w.shape[:2])
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(b.copy())
            mods += [conv, torch.nn.ReLU()]
        elif isinstance(layer, layers.Dense):
            w, b = layer.get_weights()
            lin = torch.nn.Linear(*w.shape)
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
            lin.bias.data = torch.from_numpy(b.copy())
            mods.append(lin)
            if layer.activation.__name__ == "relu":
                mods.append(torch.nn.ReLU())
        elif isinstance(layer, layers.MaxPooling2D):
            mods.append(torch.nn.MaxPool2d(layer.pool_size))
        elif isinstance(layer, layers.GlobalAveragePooling2D):
            mods += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        elif isinstance(layer, layers.Dropout):
            mods.append(torch.nn.Dropout(layer.rate))
    net = torch.nn.Sequential(*mods)  # softmax + CE: CrossEntropyLoss on the logits
    opt = torch.optim.Adam(net.parameters(), lr=0.001, eps=1e-7)
    x, y = _data(ours)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
    ty = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(tx), ty)
        loss.backward()
        opt.step()

    return step


def bench_training(interleaved, quick: bool) -> list[dict]:
    import kcompile

    rows = []
    for builder in (models.mlp, models.convnet):
        kcompile.utils.set_random_seed(0)
        weights = builder().get_weights()
        fns = {"compiled": kcompile_step(builder, True, weights),
               "onnxruntime": onnxruntime_step(builder, weights)}
        for name, make in (("keras_jax", keras_step), ("pytorch", torch_step)):
            fn = make(builder, weights)
            if fn is not None:
                fns[name] = fn
        times = interleaved(fns, 3 if quick else 10)
        eager = kcompile_step(builder, False, weights)
        eager()
        start = time.perf_counter()
        calls = 1 if builder is models.convnet else 5
        for _ in range(calls):
            eager()
        times["eager"] = (time.perf_counter() - start) / calls
        rows.append({"model": builder().name, "batch": BATCH, **times})
    return rows


def format_training(rows: list[dict]) -> str:
    def cell(r, k):
        if k not in r:
            return "not installed"
        return f"{r[k] * 1e3:.2f} ms ({r['compiled'] / r[k]:.2f}x)"

    lines = ["| model (Adam step) | batch | compiled | eager | onnxruntime (exported step) | "
             "Keras 3/JAX jit | PyTorch eager |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | **{r['compiled'] * 1e3:.2f} ms** | "
                     f"{cell(r, 'eager')} | {cell(r, 'onnxruntime')} | {cell(r, 'keras_jax')} | "
                     f"{cell(r, 'pytorch')} |")
    return "\n".join(lines)
