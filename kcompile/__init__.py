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
    saving,
    utils,
)
from kcompile.compare import CompareReport, compare
from kcompile.layers import Input, InputSpec, KerasTensor, Layer
from kcompile.models import Functional, Model, Sequential
from kcompile.variables import Variable

__version__ = "0.1.0"


def __getattr__(name: str):
    """`kcompile.onnx` (onnxruntime training sessions) is imported on first use: importing
    kcompile never loads onnx or onnxruntime."""
    if name == "onnx":
        import importlib

        return importlib.import_module("kcompile.onnx")
    raise AttributeError(f"module 'kcompile' has no attribute {name!r}")


__all__ = [
    "CompareReport", "Functional", "Input", "InputSpec", "KerasTensor", "Layer", "Model", "Sequential",
    "Variable",
    "__version__", "activations", "callbacks", "compare", "datasets", "initializers", "layers",
    "losses", "metrics", "onnx", "ops", "optimizers", "saving", "utils",
]
