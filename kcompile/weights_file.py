"""`.weights.npz`: the model's weights in `get_weights()` order, a NumPy-only alternative to
Keras's `.weights.h5` (kcompile.saving). Written to a temporary file and renamed, so a failed save never
leaves a corrupt file at the destination."""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any

import numpy as np

SUFFIX = ".weights.npz"


def _check_path(path: str, what: str) -> str:
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"{what}: the filename must end in `.weights.h5` (Keras's format) or "
                         f"`{SUFFIX}`, got {path!r}")
    return path


def save(model: Any, path: str, overwrite: bool = True) -> None:
    path = _check_path(path, "save_weights")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"save_weights: {path!r} exists and overwrite=False")
    weights = model.get_weights()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"w{i:04d}": w for i, w in enumerate(weights)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(model: Any, path: str) -> None:
    """Shapes and count are checked (by `set_weights`) before any weight changes."""
    path = _check_path(path, "load_weights")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = sorted(data.files)
            if keys != [f"w{i:04d}" for i in range(len(keys))]:
                raise ValueError(f"load_weights: {path!r} is not a kcompile weights file")
            weights = [data[k] for k in keys]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"load_weights: cannot read {path!r}: {exc}") from exc
    model.set_weights(weights)
