"""The `kcompile` command line: `kcompile demo`."""

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


def demo(seed: int = 0) -> int:
    import kcompile as keras
    from kcompile.datasets import digits

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    print(f"digits: {len(x_train)} train / {len(x_test)} test images of 8x8")
    images = (x_test[..., None] / 16.0).astype("float32")
    flat = images.reshape(len(images), -1)

    for model, x in ((build_convnet(), images), (build_mlp(), flat)):
        print()
        model.summary()
        start = time.perf_counter()
        probs = model.predict(x, batch_size=128)
        elapsed = time.perf_counter() - start
        pred = probs.argmax(axis=-1)
        print(f"predict on {len(x)} images: {elapsed * 1e3:.1f} ms (eager NumPy executor); "
              f"rows sum to 1: {np.allclose(probs.sum(axis=-1), 1, atol=1e-5)}")
        print(f"first 10 predictions (untrained): {pred[:10].tolist()}; labels: "
              f"{y_test[:10].tolist()}; accuracy {np.mean(pred == y_test):.3f} (chance ~0.1)")
    print()
    print("traced IR of the seed MLP:")
    mlp = build_mlp()
    mlp.predict(flat[:1])
    print(mlp._lowered_for(*mlp.input_signature(), False).graph)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kcompile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="build the digits convnet and the seed MLP, predict")
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
