"""The `kcompile` command line: `kcompile demo`, `kcompile bench`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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
    mlp = build_mlp()
    mlp.summary()
    flat = x_test.reshape(len(x_test), -1)
    probs = mlp.predict(flat, batch_size=128)
    print(f"seed MLP (untrained) rows sum to 1: {np.allclose(probs.sum(axis=-1), 1, atol=1e-5)}")
    keras.compare(mlp, flat[:128])
    print("traced IR of the seed MLP:")
    print(mlp._lowered_for(*mlp.input_signature(), False).graph)
    return 0


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
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seed)
    if args.command == "bench":
        if args.batch < 0 or args.repeats < 1:
            parser.error("--batch must be >= 0 and --repeats >= 1")
        return bench(args.model, args.batch, args.repeats)
    return 2


if __name__ == "__main__":
    sys.exit(main())
