"""Models: Functional, Sequential and the `Model` base."""

from kcompile.models.functional import Functional
from kcompile.models.model import Model
from kcompile.models.sequential import Sequential

__all__ = ["Functional", "Model", "Sequential"]
