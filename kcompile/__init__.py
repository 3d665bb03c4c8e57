"""kcompile: Keras-compatible models, compiled.

`import kcompile as keras` gives the Keras 3 surface: Sequential, Model, Input, layers, activations,
initializers, ops, utils.
"""

from kcompile import (
    activations,
    callbacks,
    datasets,
    initializers,
    layers,
    losses,
    metrics,
    ops,
    optimizers,
    utils,
)
from kcompile.compare import CompareReport, compare
from kcompile.layers import Input, InputSpec, KerasTensor, Layer
from kcompile.models import Functional, Model, Sequential
from kcompile.variables import Variable

__version__ = "0.1.0"

__all__ = [
    "CompareReport", "Functional", "Input", "InputSpec", "KerasTensor", "Layer", "Model", "Sequential",
    "Variable",
    "__version__", "activations", "callbacks", "compare", "datasets", "initializers", "layers",
    "losses", "metrics", "ops", "optimizers", "utils",
]
