"""MNIST as Keras serves it: `load_data()` -> `(x_train, y_train), (x_test, y_test)`, uint8 images
(60000/10000, 28, 28) and uint8 labels, from the same `mnist.npz` Keras downloads.

The file is looked up in `$KCOMPILE_DATA_DIR`, then in Keras's own cache (`~/.keras/datasets`, so a
copy Keras already fetched is reused), and otherwise downloaded into the first of those and checked
against its SHA-256. Offline with no copy, the error says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28),
           "y_test": (10000,)}


def cache_dirs() -> list[Path]:
    """Where `mnist.npz` is looked for, in order; downloads go to the first."""
    dirs = []
    if os.environ.get("KCOMPILE_DATA_DIR"):
        dirs.append(Path(os.environ["KCOMPILE_DATA_DIR"]))
    dirs.append(Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets")
    return dirs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(target: Path, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mnist-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(URL, timeout=timeout) as response:
            while block := response.read(1 << 20):
                f.write(block)
        if _sha256(Path(tmp)) != SHA256:
            raise OSError(f"mnist: the file downloaded from {URL} does not have the expected "
                          f"SHA-256 {SHA256}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _find_or_fetch(path: str, timeout: float) -> Path:
    for folder in cache_dirs():
        candidate = folder / path
        if candidate.is_file():
            return candidate
    target = cache_dirs()[0] / path
    try:
        _download(target, timeout)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        places = " or ".join(str(d / path) for d in cache_dirs())
        raise OSError(f"mnist: no cached copy and the download from {URL} failed ({err}). Offline? "
                      f"Fetch that file elsewhere and put it at {places}") from err
    return target


def load_data(path: str = "mnist.npz", timeout: float = 60.0
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`(x_train, y_train), (x_test, y_test)` as in `keras.datasets.mnist.load_data`."""
    file = _find_or_fetch(path, timeout)
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _SHAPES}
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"mnist: {file} is not the MNIST npz file ({err}); delete it to download "
                         "it again") from err
    for k, shape in _SHAPES.items():
        if arrays[k].shape != shape:
            raise ValueError(f"mnist: {file}: {k} has shape {arrays[k].shape}, expected {shape}; "
                             "delete the file to download it again")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
