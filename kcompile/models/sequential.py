"""`Sequential`: a linear stack of layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile import layers as layers_module
from kcompile.layers.base import KerasTensor, Layer, set_keras_mask
from kcompile.layers.input_layer import InputLayer
from kcompile.models.lowering import InputSig
from kcompile.models.model import Model
from kcompile.serialization import dtype_policy


class Sequential(Model):
    def __init__(self, layers: Sequence[Layer] | None = None, trainable: bool = True,
                 name: str | None = None) -> None:
        super().__init__(trainable=trainable, name=name)
        self._seq_layers: list[Layer] = []
        self._input_layer: InputLayer | None = None
        self._outputs: list[KerasTensor] = []  # symbolic output of each layer, once built
        for layer in layers or []:
            self.add(layer, rebuild=False)
        self._rebuild()

    @property
    def _layers(self) -> list[Layer]:
        return self.__dict__.get("_seq_layers", [])

    @property
    def layers(self) -> list[Layer]:
        return list(self._seq_layers)

    def add(self, layer: Layer | KerasTensor, rebuild: bool = True) -> None:
        """Append a layer; with a known input the new layer is connected (and checked) at once."""
        if isinstance(layer, KerasTensor) and isinstance(layer._keras_history[0], InputLayer):
            layer = layer._keras_history[0]
        if not isinstance(layer, Layer):
            raise TypeError(f"Only instances of `keras.Layer` can be added to a Sequential model. "
                            f"Received: {layer!r} (of type {type(layer).__name__})")
        if isinstance(layer, InputLayer):
            if self._input_layer is not None or self._seq_layers:
                raise ValueError(f"Sequential '{self.name}': an InputLayer can only be the first "
                                 "layer")
            self._input_layer = layer
        else:
            if any(layer is other for other in self._seq_layers):
                raise ValueError(f"Sequential '{self.name}': layer '{layer.name}' is already in "
                                 "the model")
            shape = getattr(layer, "_batch_input_shape", None)
            if not self._seq_layers and self._input_layer is None and shape is not None:
                self._input_layer = InputLayer(batch_shape=shape)
            self._seq_layers.append(layer)
            if rebuild and self._outputs:
                self._outputs.append(layer(self._outputs[-1]))
                self._invalidate()
                return
        if rebuild:
            self._rebuild()

    def pop(self) -> Layer:
        if not self._seq_layers:
            raise IndexError("There are no layers in the model.")
        layer = self._seq_layers.pop()
        self._rebuild()
        return layer

    def _rebuild(self) -> None:
        self._invalidate()
        self._outputs = []
        if self._input_layer is None:
            return
        x = self._input_layer.output_tensor
        for layer in self._seq_layers:
            x = layer(x)
            self._outputs.append(x)
        self.built = True

    def build(self, input_shape: Any = None) -> None:
        if self._input_layer is None:
            if input_shape is None:
                raise ValueError(f"Sequential '{self.name}': build() needs an input_shape")
            self._input_layer = InputLayer(batch_shape=tuple(input_shape))
        self._rebuild()

    def _maybe_build(self, input_shapes: Any) -> None:
        if self._input_layer is None and isinstance(input_shapes, tuple):
            self.build(input_shapes)
        self.built = True

    @property
    def inputs(self) -> list[KerasTensor]:
        return [self._input_layer.output_tensor] if self._input_layer else []

    @property
    def outputs(self) -> list[KerasTensor]:
        return self._outputs[-1:] if self._outputs else self.inputs

    def input_signature(self, x: Any = None) -> tuple[list[InputSig], Any]:
        if self._input_layer is None:
            if x is None:
                raise ValueError(f"Sequential '{self.name}' has not been built: give it an Input, "
                                 "call it on data or call build(input_shape)")
            arr = x if isinstance(x, np.ndarray) else np.asarray(x)
            if arr.ndim < 1:
                raise ValueError(f"Sequential '{self.name}': input must have a batch dimension, "
                                 f"got a scalar")
            dtype = "float32" if arr.dtype.kind in "fiub" else arr.dtype.name
            self._input_layer = InputLayer(batch_shape=(None, *arr.shape[1:]), dtype=dtype)
            self._rebuild()
        t = self._input_layer.output_tensor
        return [InputSig(self._input_layer.name, t.shape, t.dtype)], 0

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if mask is not None:  # Keras: the input carries the given mask into the stack
            set_keras_mask(inputs, mask)
        x = inputs
        for layer in self._seq_layers:
            x = layer(x)
        return x

    def get_config(self) -> dict[str, Any]:
        entries = [layers_module.serialize(layer) for layer in self._seq_layers]
        if self._input_layer is not None:
            entries.insert(0, layers_module.serialize(self._input_layer))
        config = {"name": self.name, "trainable": self.trainable,
                  "dtype": dtype_policy(self.dtype), "layers": entries}
        if self._input_layer is not None:
            config["build_input_shape"] = self._input_layer.batch_shape
        return config

    def get_build_config(self) -> dict[str, Any] | None:
        if self._input_layer is None:
            return None
        return {"input_shape": self._input_layer.batch_shape}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> Sequential:
        """Rebuild from `get_config()` (kcompile's or real Keras 3's); nested models included.
        Every layer is checked first: one ValueError lists all the unknown or unsupported ones."""
        entries = config.get("layers")
        name = config.get("name") or "sequential"
        if not isinstance(entries, list):
            raise ValueError(f"Sequential '{name}': the config needs a 'layers' list")
        layers_module.check_supported(entries, custom_objects)
        trainable = config.get("trainable")
        model = cls(name=config.get("name"), trainable=True if trainable is None else trainable)
        for entry in entries:
            entry = {k: v for k, v in entry.items() if k != "build_config"}
            layer = layers_module.deserialize_entry(entry, custom_objects)
            try:
                model.add(layer)
            except (ValueError, TypeError) as err:
                raise type(err)(f"Sequential '{name}': adding layer '{layer.name}' "
                                f"({type(layer).__name__}): {err}") from err
        if model._input_layer is None and config.get("build_input_shape"):
            model.build(config["build_input_shape"])
        return model
