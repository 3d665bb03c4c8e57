"""The `kcompile` command line: demo, summary, bench, compare and export (commands on models are in
`cli_commands`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def build_convnet(input_shape: tuple[int, int, int] = (8, 8, 1), num_classes: int = 10):
    """The Keras docs' simple MNIST convnet, with 'same' padding so it fits 8x8 digits."""
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), padding="same", activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), padding="same", activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="digits_convnet")


def build_mlp(input_dim: int = 64, num_classes: int = 10):
    """The seed MLP (784-512-512-10 in the benchmarks), here on the 64 digit pixels."""
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        layers.Dense(512, activation="relu", input_shape=(input_dim,)),
        layers.Dense(512, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="seed_mlp")


def demo(seed: int = 0, epochs: int = 15) -> int:
    """Train the digits convnet compiled; report test accuracy and time per epoch vs eager. Then the
    seed MLP's IR, and an LSTM trained on the adding problem (`demo_sequence`): the exit status is 1
    when it misses its error threshold."""
    import kcompile as keras
    from kcompile.datasets import digits

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    print(f"digits: {len(x_train)} train / {len(x_test)} test images of 8x8")
    x_train = (x_train[..., None] / 16.0).astype("float32")
    x_test = (x_test[..., None] / 16.0).astype("float32")

    model = build_convnet()
    model.summary()
    initial = model.get_weights()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, initial_epoch=1, verbose=2)
    compiled_epoch = (time.perf_counter() - start) / max(epochs - 1, 1)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"LLVM-compiled training: {compiled_epoch * 1e3:.0f} ms per epoch (first epoch "
          f"{first:.2f} s, compile included); test accuracy {acc:.4f}, test loss {loss:.4f}")

    eager = build_convnet()
    eager.set_weights(initial)
    eager.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    start = time.perf_counter()
    eager.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    eager_epoch = time.perf_counter() - start
    print(f"eager (NumPy) training: {eager_epoch * 1e3:.0f} ms per epoch; compiled is "
          f"{eager_epoch / compiled_epoch:.1f}x faster")
    print()
    keras.compare(model, x_test[:128])
    pred = model.predict(x_test, batch_size=128, verbose=0).argmax(axis=-1)
    print(f"first 10 test predictions: {pred[:10].tolist()}; labels: {y_test[:10].tolist()}")
    print()
    onnx_check(model, x_train, y_train, x_test)

    print()
    mlp = build_mlp()
    mlp.summary()
    flat = x_test.reshape(len(x_test), -1)
    probs = mlp.predict(flat, batch_size=128)
    print(f"seed MLP (untrained) rows sum to 1: {np.allclose(probs.sum(axis=-1), 1, atol=1e-5)}")
    keras.compare(mlp, flat[:128])
    print("traced IR of the seed MLP:")
    print(mlp._lowered_for(*mlp.input_signature(), False).graph)
    print()
    from kcompile import demo_sequence

    return demo_sequence.demo(seed)


def onnx_check(model, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> None:
    """Export the trained model for inference and its training step; onnxruntime must agree with
    the compiled model on predictions and on three more training steps."""
    import onnxruntime as ort

    from kcompile.onnx import TrainingSession

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "digits_convnet.onnx")
        model.export(path, format="onnx")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x_test})[0]
        want = model.predict(x_test, batch_size=128, verbose=0)
        err = float(np.abs(got - want).max())
        same = float((got.argmax(-1) == want.argmax(-1)).mean())
        print(f"ONNX export: onnxruntime vs compiled predictions on {len(x_test)} test images: max "
              f"abs difference {err:.2e}, same class for {same:.1%}")
        if err > 1e-4 or same < 1.0:
            raise SystemExit("onnxruntime disagrees with the compiled model")

        step_path = str(Path(tmp) / "digits_convnet_train.onnx")
        model.export(step_path, format="onnx", training=True)
        ts = TrainingSession(step_path)
        for k in range(3):
            xb, yb = x_train[32 * k:32 * (k + 1)], y_train[32 * k:32 * (k + 1)]
            ours, theirs = model.train_on_batch(xb, yb)[0], ts.train_on_batch(xb, yb)[0]
            print(f"training step {k + 1}: loss compiled {ours:.6f}, onnxruntime {theirs:.6f}")
        diff = max(float(np.abs(a - b).max())
                   for a, b in zip(model.get_weights(), ts.get_weights(), strict=True))
        print(f"ONNX training-step export: weights after 3 steps differ by at most {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("onnxruntime training disagrees with the compiled model")


def _bench_mlp():
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([keras.Input((784,)), layers.Dense(512, activation="relu"),
                             layers.Dense(512, activation="relu"),
                             layers.Dense(10, activation="softmax")], name="mlp_784_512_512_10")


def _bench_convnet():
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(64, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.Conv2D(128, 3, activation="relu"),
        layers.GlobalAveragePooling2D(), layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ], name="mnist_convnet")


BUILTIN_MODELS = {"mlp": lambda: _bench_mlp(), "convnet": lambda: _bench_convnet(),
                  "digits-convnet": build_convnet, "seed-mlp": build_mlp}
_MODEL_HELP = "a .keras file, or 'module:function' / 'path/to/file.py:function' returning a model"


def main(argv: Sequence[str] | None = None) -> int:
    from kcompile import cli_commands as commands

    parser = argparse.ArgumentParser(prog="kcompile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train the digits convnet compiled, compare, export to ONNX; "
                                         "train an LSTM on the adding problem")
    p_demo.add_argument("--seed", type=int, default=0)

    def model_command(name: str, summary: str, description: str, **model_arg: Any):
        """A subcommand whose first argument is MODEL."""
        parser = sub.add_parser(name, help=summary, description=description)
        parser.add_argument("model", metavar="MODEL", **{"help": _MODEL_HELP, **model_arg})
        return parser

    model_command("summary", "print a model's summary", "Print MODEL's Keras-style summary.")

    p_bench = model_command(
        "bench", "compile time and compiled vs eager vs onnxruntime speed",
        "Compile MODEL (cold, then from the on-disk cache) and time one batch of random input "
        "compiled, eager (NumPy) and in onnxruntime on the exported graph.",
        nargs="?", help=_MODEL_HELP + " (default: the built-in --builtin model)")
    p_bench.add_argument("--builtin", "--model", dest="builtin", choices=sorted(BUILTIN_MODELS),
                         default="convnet", help="a built-in benchmark model (default convnet)")
    p_bench.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p_bench.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")

    p_compare = model_command(
        "compare", "parity report: compiled and onnxruntime vs the eager reference",
        "Run MODEL on random input compiled, eager and in onnxruntime; print each output's max "
        "abs/rel error against eager. Exit status 1 when an error is above rtol 1e-4 / atol 1e-5.")
    p_compare.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p_compare.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")

    p_export = model_command(
        "export", "write a model as ONNX (inference, or the whole training step)",
        "Write MODEL as a default-domain ONNX file that stock onnxruntime runs; with --training, "
        "the whole training step (the model must be compiled: a .keras file saved after "
        "compile(), or a function returning a compiled model).")
    p_export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p_export.add_argument("--training", action="store_true",
                          help="export the training step (forward, backward, optimizer update); "
                               "drive it with kcompile.onnx.TrainingSession")
    p_export.add_argument("--opset", type=int, default=None,
                          help="ONNX opset (default: the newest supported)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seed)
    if getattr(args, "batch", 1) < 1 or getattr(args, "repeats", 1) < 1:
        parser.error("--batch and --repeats must be >= 1")
    try:
        if args.command == "summary":
            return commands.summary(args.model)
        if args.command == "bench":
            model = commands.load(args.model) if args.model else BUILTIN_MODELS[args.builtin]()
            return commands.bench(model, args.batch, args.repeats)
        if args.command == "compare":
            return commands.compare(args.model, args.batch, args.repeats)
        if args.command == "export":
            return commands.export(args.model, args.output, args.training, args.opset)
    except (ValueError, TypeError, NotImplementedError, FileNotFoundError) as err:
        print(f"kcompile {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
