"""`.keras` archives (Keras 3's format) and `.weights.h5` files, read and written without Keras.

A `.keras` file is a zip of `metadata.json`, `config.json` (the model's serialized config with its
build and compile configs) and `model.weights.h5` (`keras_h5`'s layout, the optimizer's variables
included). Saves go to a temporary file that replaces the destination only when complete. Loads
check everything -- the archive, the config (every unsupported layer listed at once, before any
weight is read), every weight's shape -- before the model is returned, and never touch the file.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from kcompile.saving import keras_h5

# The Keras release whose `.keras` format this writes (recorded in metadata.json; Keras reads it to
# choose compatibility paths, so it names a real Keras version).
KERAS_FORMAT_VERSION = "3.15.1"
CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".kcompile-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_target(path: Any, suffix: str, what: str, overwrite: bool) -> str:
    path = os.fspath(path)
    if not str(path).endswith(suffix):
        raise ValueError(f"{what}: the filename must end in `{suffix}`, got {path!r}")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{what}: {path!r} exists and overwrite=False")
    return path


# -- writing ---------------------------------------------------------------------------------------
def _optimizer_state(model: Any) -> tuple[list[np.ndarray] | None, str | None]:
    optimizer = getattr(model, "optimizer", None)
    if not getattr(model, "compiled", False) or optimizer is None:
        return None, None
    from kcompile.saving.optimizer_state import optimizer_variables

    return optimizer_variables(optimizer, model.trainable_weights), optimizer.name


def _weights_h5_bytes(model: Any, include_optimizer: bool = True) -> bytes:
    import h5py

    arrays, name = _optimizer_state(model) if include_optimizer else (None, None)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        keras_h5.write_state(h5, model, arrays, name)
    return buffer.getvalue()


def serialize_model(model: Any) -> dict[str, Any]:
    """config.json's content: the model's serialized config, with its compile config."""
    from kcompile import layers

    config = layers.serialize(model)
    if getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        from kcompile.saving.optimizer_state import compile_to_config

        config["compile_config"] = compile_to_config(model)
    return config


def save_model(model: Any, filepath: Any, overwrite: bool = True, zipped: bool | None = None,
               include_optimizer: bool = True) -> None:
    """Write `model` as a Keras 3 `.keras` archive that real Keras 3 loads."""
    if zipped is False:
        raise ValueError("save: zipped=False (an unzipped .keras folder) is not supported")
    path = _check_target(filepath, ".keras", "save", overwrite)
    config = json.dumps(serialize_model(model))
    metadata = json.dumps({"keras_version": KERAS_FORMAT_VERSION,
                           "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")})
    weights = _weights_h5_bytes(model, include_optimizer)

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(METADATA, metadata)
            zf.writestr(CONFIG, config)
            zf.writestr(WEIGHTS, weights)

    _atomic_write(path, write)


def save_weights(model: Any, filepath: Any, overwrite: bool = True) -> None:
    """`.weights.h5` in Keras's layout (the optimizer's variables too, as Keras writes them)."""
    path = _check_target(filepath, ".weights.h5", "save_weights", overwrite)
    data = _weights_h5_bytes(model)
    _atomic_write(path, lambda f: f.write(data))


# -- reading ---------------------------------------------------------------------------------------
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, RuntimeError)


def _read_archive(path: str) -> tuple[dict[str, Any], bytes]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_model: no such file {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if CONFIG not in names:
                raise ValueError(f"load_model: {path!r} is a zip archive but not a .keras model: it "
                                 f"has no {CONFIG} (members: {sorted(names)[:8]})")
            if WEIGHTS not in names:
                raise ValueError(f"load_model: {path!r} has no {WEIGHTS}; the archive is incomplete")
            raw_config = zf.read(CONFIG)
            weights = zf.read(WEIGHTS)
    except ValueError:
        raise
    except _READ_ERRORS as err:
        raise ValueError(f"load_model: {path!r} is not a readable .keras archive (truncated or "
                         f"corrupted?): {err}") from err
    try:
        config = json.loads(raw_config)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load_model: {path!r}: {CONFIG} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(f"load_model: {path!r}: {CONFIG} does not describe a model")
    return config, weights


def _open_h5(data: bytes, where: str) -> Any:
    import h5py

    try:
        return h5py.File(io.BytesIO(data), "r")
    except _READ_ERRORS as err:
        raise ValueError(f"{where}: the weights are not a readable HDF5 file: {err}") from err


def _assign(pairs: list[tuple[Any, np.ndarray]]) -> None:
    for var, value in pairs:
        var.assign(value.astype(var.dtype, copy=False))


def _load_state(model: Any, h5: Any, where: str, with_optimizer: bool) -> None:
    """Weights (and optimizer variables) from an open h5 into `model`, all checked first."""
    try:
        pairs = keras_h5.read_weights(h5, model, where)
        optimizer_arrays = keras_h5.read_optimizer(h5) if with_optimizer else None
    except _READ_ERRORS as err:
        raise ValueError(f"{where}: cannot read the weights (corrupted file?): {err}") from err
    optimizer = getattr(model, "optimizer", None)
    load_optimizer = optimizer_arrays is not None and getattr(model, "compiled", False) and \
        optimizer is not None
    if load_optimizer:
        from kcompile.saving.optimizer_state import load_optimizer_variables

        snapshot = (optimizer.iterations, list(optimizer.slots))
        try:
            load_optimizer_variables(optimizer, model.trainable_weights, optimizer_arrays)
        except ValueError as err:
            optimizer.iterations, optimizer.slots = snapshot
            raise ValueError(f"{where}: {err}") from err
    _assign(pairs)


def load_model(filepath: Any, custom_objects: dict[str, Any] | None = None, compile: bool = True,
               safe_mode: bool = True) -> Any:
    """A model from a `.keras` file written by kcompile or by real Keras 3."""
    from kcompile import layers

    path = os.fspath(filepath)
    if not str(path).endswith(".keras"):
        raise ValueError(f"load_model: only `.keras` files are supported, got {path!r}")
    config, weights = _read_archive(path)
    where = f"load_model: {path!r}"
    try:
        model = layers.deserialize(config, custom_objects=custom_objects)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise type(err)(f"{where}: {err}") from err
    compile_config = config.get("compile_config")
    if compile and compile_config:
        from kcompile.saving.optimizer_state import compile_from_config

        try:
            compile_from_config(model, compile_config, custom_objects)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: compile_config: {err}") from err
    with _open_h5(weights, where) as h5:
        _load_state(model, h5, where, with_optimizer=compile)
    return model


def load_weights(model: Any, filepath: Any) -> None:
    """A `.weights.h5` file (Keras's layout) into `model`; shapes checked before anything changes."""
    import h5py

    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file {path!r}")
    where = f"load_weights: {path!r}"
    try:
        h5 = h5py.File(path, "r")
    except _READ_ERRORS as err:
        raise ValueError(f"{where}: not a readable HDF5 weights file: {err}") from err
    with h5:
        _load_state(model, h5, where, with_optimizer=True)


__all__ = ["KERAS_FORMAT_VERSION", "load_model", "load_weights", "save_model", "save_weights",
           "serialize_model"]
