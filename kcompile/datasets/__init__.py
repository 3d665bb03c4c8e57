"""Data sets with Keras's `load_data()` form: MNIST (downloaded and cached) and the 8x8 digits
bundled with scikit-learn."""

from kcompile.datasets import digits, mnist

__all__ = ["digits", "mnist"]
