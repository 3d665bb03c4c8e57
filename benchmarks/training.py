"""Training-step benchmarks: one forward + backward + Adam step (sparse categorical cross-entropy on
the softmax Dense(10) head of every model) at batch 128 (the LSTM at issue 7's batch 32), kcompile
compiled and eager against onnxruntime running kcompile's exported training step
(`export(training=True)`), Keras 3/JAX `train_on_batch` (jit) and PyTorch eager, each with the same
weights.

Keras and PyTorch are optional here (anchors, not dependencies): a missing one is reported as
"not installed" and its column left empty. A model whose training step kcompile cannot export yet
gets "not exported yet" in the onnxruntime column; one whose compiled step falls back to the eager
executor (the RuntimeWarning "... trains eagerly") is marked "(eager fallback)".
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import models
import numpy as np

BATCH = 128
BATCHES = {"lstm_50x32_128": 32}  # issue 7's batch; the others use BATCH


def batch_of(model) -> int:
    return BATCHES.get(model.name, BATCH)


def _data(model):
    rng = np.random.default_rng(0)
    shape = tuple(model.inputs[0].shape[1:])
    batch = batch_of(model)
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch)


def _adam_step(model, weights, x_like, **compile_kw):
    """`train_on_batch` closure of `model` compiled with Adam and sparse CE on the shared data."""
    model.set_weights(weights)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", **compile_kw)
    x, y = _data(x_like)
    return lambda: model.train_on_batch(x, y)


def kcompile_step(builder, jit: bool, weights):
    model = builder()
    return _adam_step(model, weights, model, jit_compile=jit)


def compiled_step(builder, weights):
    """`kcompile_step(jit=True)` (jit_compile left at its default, so an unsupported op falls back
    instead of raising), run once; and whether it fell back to the eager executor."""
    model = builder()
    fn = _adam_step(model, weights, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    fallback = any(issubclass(w.category, RuntimeWarning) and "trains eagerly" in str(w.message)
                   for w in caught)
    return fn, fallback


def onnxruntime_step(builder, weights):
    """The same model's training step exported to ONNX, run by onnxruntime (2 threads)."""
    import onnxruntime as ort

    from kcompile.onnx import TrainingSession

    model = builder()
    model.set_weights(weights)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an eager fallback: reported above
                model.export(path, training=True)
        except NotImplementedError:  # e.g. the recurrent layers' gradient ops have no ONNX rule yet
            return None
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
    """PyTorch eager twin (NCHW convolutions, same weights; an LSTM with Keras's gate order i, f, c,
    o, which is torch's, and Keras's one bias as `bias_ih`), or None when torch is absent."""
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
        if isinstance(layer, layers.LSTM):
            mods.append(_torch_lstm(torch, *layer.get_weights()))
        elif isinstance(layer, layers.Conv2D):
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


def _torch_lstm(torch, kernel, recurrent_kernel, bias):
    """torch.nn.LSTM with a Keras LSTM's weights, returning the last step's output (Keras's
    return_sequences=False)."""

    class LastStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(kernel.shape[0], recurrent_kernel.shape[0], batch_first=True)
            self.lstm.weight_ih_l0.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            self.lstm.weight_hh_l0.data = torch.from_numpy(np.ascontiguousarray(recurrent_kernel.T))
            self.lstm.bias_ih_l0.data = torch.from_numpy(bias.copy())
            self.lstm.bias_hh_l0.data = torch.zeros_like(self.lstm.bias_hh_l0.data)

        def forward(self, x):
            return self.lstm(x)[0][:, -1]

    return LastStep()


def bench_training(interleaved, quick: bool, builders=(models.mlp, models.convnet, models.lstm)
                   ) -> list[dict]:
    import kcompile

    rows = []
    for builder in builders:
        kcompile.utils.set_random_seed(0)
        weights = builder().get_weights()
        compiled, fallback = compiled_step(builder, weights)
        fns = {"compiled": compiled}
        for name, make in (("onnxruntime", onnxruntime_step), ("keras_jax", keras_step),
                           ("pytorch", torch_step)):
            fn = make(builder, weights)
            if fn is not None:
                fns[name] = fn
        times = interleaved(fns, 3 if quick else 10)
        eager = kcompile_step(builder, False, weights)
        eager()
        start = time.perf_counter()
        calls = 5 if builder is models.mlp else 3 if builder is models.lstm else 1
        for _ in range(calls):
            eager()
        times["eager"] = (time.perf_counter() - start) / calls
        model = builder()
        rows.append({"model": model.name, "batch": batch_of(model), "fallback": fallback, **times})
    return rows


def format_training(rows: list[dict]) -> str:
    def cell(r, k):
        if k not in r:
            return "not exported yet" if k == "onnxruntime" else "not installed"
        return f"{r[k] * 1e3:.2f} ms ({r['compiled'] / r[k]:.2f}x)"

    lines = ["| model (Adam step) | batch | compiled | eager | onnxruntime (exported step) | "
             "Keras 3/JAX jit | PyTorch eager |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        compiled = f"**{r['compiled'] * 1e3:.2f} ms**" + (" (eager fallback)" if r["fallback"] else "")
        lines.append(f"| {r['model']} | {r['batch']} | {compiled} | "
                     f"{cell(r, 'eager')} | {cell(r, 'onnxruntime')} | {cell(r, 'keras_jax')} | "
                     f"{cell(r, 'pytorch')} |")
    return "\n".join(lines)
