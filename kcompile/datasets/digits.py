"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images), split like a Keras dataset."""

from __future__ import annotations

import numpy as np


def load_data(test_split: float = 0.2, seed: int = 0
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`(x_train, y_train), (x_test, y_test)`: uint8 images (n, 8, 8) with values 0..16, int labels.

    The split is a seeded shuffle, so it is the same on every machine.
    """
    if not 0.0 < test_split < 1.0:
        raise ValueError(f"digits.load_data: test_split must be in (0, 1), got {test_split}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install 'kcompile[demo]'") from err
    data = load_digits()
    x = data.images.astype(np.uint8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_split))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])
