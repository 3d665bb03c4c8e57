"""Models: Functional, Sequential and the `Model` base."""

from kcompile.models.functional import Functional
from kcompile.models.model import Model
from kcompile.models.sequential import Sequential


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.models.load_model`: the same as `kcompile.saving.load_model`."""
    from kcompile.saving import load_model as _load

    return _load(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


__all__ = ["Functional", "Model", "Sequential", "load_model"]
