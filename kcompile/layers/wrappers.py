"""TimeDistributed: a layer applied to every step of a (batch, steps, ...) input."""

from __future__ import annotations

from typing import Any

from kcompile.ir.core import format_shape
from kcompile.layers.base import InputSpec, Layer
from kcompile.layers.core import Activation, Dense, Dropout

# Layers that act on the last axis only, so applying them to (batch, steps, ...) at once is applying
# them to each step. Others would need the steps folded into the batch, which the IR's single
# symbolic dim cannot express yet.
_PER_STEP = (Dense, Activation, Dropout)


class TimeDistributed(Layer):
    """The wrapped layer's weights are the only weights (Keras's order and file layout)."""

    def __init__(self, layer: Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, Layer):
            raise ValueError("Please initialize `TimeDistributed` layer with a `keras.layers.Layer` "
                             f"instance. Received: {layer}")
        if not isinstance(layer, _PER_STEP):
            raise NotImplementedError(
                f"TimeDistributed '{self.name}': wrapping {type(layer).__name__} is not supported "
                f"yet (supported: {', '.join(c.__name__ for c in _PER_STEP)})")
        self.layer = layer
        self.input_spec = InputSpec(min_ndim=3)
        self.supports_masking = True  # Keras: the input mask passes through

    @property
    def _saveable_children(self) -> list[tuple[str, Layer]]:
        """Where Keras stores the wrapped layer's variables: `<this layer>/layer/vars`."""
        return [("layer", self.layer)]

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) < 3:
            raise ValueError("`TimeDistributed` Layer should be passed an `input_shape` with at "
                             f"least 3 dimensions, received: {format_shape(input_shape)}")
        if not self.layer.built:  # Keras builds the child for one step: (batch, *rest)
            self.layer._maybe_build((input_shape[0], *input_shape[2:]))
        self.built = True

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.layer(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        from kcompile.layers import serialize

        return {**super().get_config(), "layer": serialize(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> TimeDistributed:
        from kcompile.layers import deserialize

        config = dict(config)
        layer = deserialize(config.pop("layer"), custom_objects)
        return cls(layer, **config)
