"""The `kcompile` command line: `kcompile demo`, `kcompile bench`, `kcompile export`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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
    """Train the digits convnet compiled; report test accuracy and time per epoch vs eager."""
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
    return 0


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


def bench(model_name: str, batch: int, repeats: int) -> int:
    """Cold and cached compile time, compiled vs eager time, for a built-in benchmark model."""
    import kcompile as keras
    from kcompile.codegen.llvm.compiler import compile_graph
    from kcompile.codegen.llvm.jit import temporary_cache_dir

    builders = {"mlp": lambda: _bench_mlp(), "convnet": lambda: _bench_convnet(),
                "digits-convnet": build_convnet, "seed-mlp": build_mlp}
    model = builders[model_name]()
    x = np.random.default_rng(0).random((batch, *model.inputs[0].shape[1:]), dtype=np.float32)
    graph = model._lowered_for(*model.input_signature(x), False).graph
    with temporary_cache_dir():
        cold = compile_graph(graph).stats
        cached = compile_graph(graph).stats
    print(f"{model.name}: compile {cold.seconds * 1e3:.0f} ms cold (LLVM {cold.llvm_seconds * 1e3:.0f} "
          f"ms), {cached.seconds * 1e3:.1f} ms from the on-disk cache")
    keras.compare(model, x, repeats=repeats)
    return 0


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


def load_model_ref(ref: str):
    """A model from `module:function` (the function is called with no arguments; `module` may be
    a dotted name importable from the current directory or a path to a .py file)."""
    from kcompile.models.model import Model

    if ":" not in ref:
        if ref.endswith(".keras"):
            raise ValueError(f"{ref}: reading .keras files is not supported yet; pass a Python "
                             "'module:function' that returns the model")
        raise ValueError(f"{ref!r}: expected 'module:function' (a function returning a model)")
    module_name, func_name = ref.rsplit(":", 1)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"{ref}: no such file {module_name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{ref}: cannot import module {module_name!r}: {err}") from err
        finally:
            sys.path.pop(0)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{ref}: module {module_name!r} has no function {func_name!r}")
    model = func()
    if not isinstance(model, Model):
        raise TypeError(f"{ref}: {func_name}() returned {type(model).__name__}, not a kcompile Model")
    return model


def export(ref: str, out: str, training: bool, opset: int | None) -> int:
    """Write a model's inference graph (or its training step) as ONNX."""
    model = load_model_ref(ref)
    model.export(out, format="onnx", training=training, opset_version=opset)
    import onnx

    proto = onnx.load(out)
    what = "training step" if training else "inference graph"
    print(f"wrote {out}: {model.name} {what}, opset {proto.opset_import[0].version}, "
          f"{len(proto.graph.node)} nodes, inputs {[i.name for i in proto.graph.input][:4]}"
          f"{' ...' if len(proto.graph.input) > 4 else ''}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kcompile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="build the digits convnet and the seed MLP, predict")
    p_demo.add_argument("--seed", type=int, default=0)
    p_bench = sub.add_parser("bench", help="compile time (cold and cached) and compiled vs eager "
                                           "speed of a built-in model")
    p_bench.add_argument("--model", choices=["mlp", "convnet", "digits-convnet", "seed-mlp"],
                         default="convnet")
    p_bench.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p_bench.add_argument("--repeats", type=int, default=10)
    p_export = sub.add_parser(
        "export", help="write a model as ONNX (inference, or the whole training step)",
        description="Write MODEL as a default-domain ONNX file that stock onnxruntime runs. MODEL "
                    "is 'module:function' (or 'path/to/file.py:function'): a function, called "
                    "with no arguments, that returns a kcompile model -- compiled (optimizer and "
                    "loss) for --training.")
    p_export.add_argument("model", metavar="MODEL", help="module:function returning the model")
    p_export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p_export.add_argument("--training", action="store_true",
                          help="export the training step (forward, backward, optimizer update); "
                               "drive it with kcompile.onnx.TrainingSession")
    p_export.add_argument("--opset", type=int, default=None,
                          help="ONNX opset (default: the newest supported)")
    args = parser.parse_args(argv)
    if args.command == "export":
        try:
            return export(args.model, args.output, args.training, args.opset)
        except (ValueError, TypeError, NotImplementedError) as err:
            print(f"kcompile export: error: {err}", file=sys.stderr)
            return 2
    if args.command == "demo":
        return demo(args.seed)
    if args.command == "bench":
        if args.batch < 0 or args.repeats < 1:
            parser.error("--batch must be >= 0 and --repeats >= 1")
        return bench(args.model, args.batch, args.repeats)
    return 2


if __name__ == "__main__":
    sys.exit(main())
