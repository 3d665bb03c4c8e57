"""Keras layers (`kcompile.layers`), with Keras 3 names, defaults and weight order."""

from kcompile.layers.base import InputSpec, KerasTensor, Layer
from kcompile.layers.conv import Conv2D
from kcompile.layers.core import Activation, Dense, Dropout, Flatten, Reshape
from kcompile.layers.input_layer import Input, InputLayer
from kcompile.layers.merge import Add, Concatenate
from kcompile.layers.normalization import BatchNormalization
from kcompile.layers.pooling import (
    AveragePooling2D,
    AvgPool2D,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    MaxPool2D,
    MaxPooling2D,
)

Convolution2D = Conv2D

__all__ = [
    "Activation", "Add", "AveragePooling2D", "AvgPool2D", "BatchNormalization", "Concatenate",
    "Conv2D", "Convolution2D", "Dense", "Dropout", "Flatten", "GlobalAveragePooling2D",
    "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D", "Input", "InputLayer", "InputSpec",
    "KerasTensor", "Layer", "MaxPool2D", "MaxPooling2D", "Reshape",
]


def _registry() -> dict[str, type]:
    """Class name -> class, for `from_config` of serialized layers."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and issubclass(obj, Layer)}


def deserialize(config: dict) -> Layer:
    from kcompile.serialization import lookup

    cls = lookup("layer", config["class_name"], _registry())
    layer = cls.from_config(dict(config["config"]))
    if config.get("build_config"):
        layer.build_from_config(config["build_config"])
    return layer


def serialize(layer: Layer) -> dict:
    out = {"module": "keras.layers", "class_name": type(layer).__name__,
           "config": layer.get_config(), "registered_name": None}
    build = layer.get_build_config()
    if build is not None:
        out["build_config"] = build
    return out
