"""Bidirectional: a recurrent layer run forwards and backwards over the sequence, outputs merged.

Keras 3's wrapper, semantics and file layout: the forward layer is a copy of the given layer (from its
config, named "forward_<name>"), the backward one a copy with go_backwards=True ("backward_<name>")
unless a `backward_layer` is given. Weights are the forward layer's then the backward layer's, with
Keras's paths ("bidirectional/forward_lstm/lstm_cell/kernel"), stored in `.keras`/`.weights.h5`
files at `layers/bidirectional/forward_layer/cell/vars/...` and `.../backward_layer/...`.
"""

from __future__ import annotations

import inspect
from typing import Any

from kcompile import ops
from kcompile.ir.core import format_shape
from kcompile.layers.base import Layer

MERGE_MODES = ("sum", "mul", "ave", "concat", None)
_RNN_ATTRIBUTES = ("go_backwards", "return_sequences", "return_state")


def _remove_prefix(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _copy_layer(layer: Layer, **overrides: Any) -> Layer:
    """A fresh layer from `layer`'s config (with `overrides`), built like the original when that was
    built (Keras's serialize / deserialize round trip: no weights are shared)."""
    from kcompile.layers import serialize

    entry = serialize(layer)
    config = {**entry["config"], **overrides}
    cls = type(layer)
    try:
        copy = cls.from_config(config)
    except TypeError as err:
        raise ValueError(f"Bidirectional: cannot recreate layer '{layer.name}' "
                         f"({cls.__name__}) from its config with {overrides}: {err}") from err
    if entry.get("build_config"):
        copy.build_from_config(entry["build_config"])
    return copy


class Bidirectional(Layer):
    """Bidirectional wrapper for recurrent layers (SimpleRNN, LSTM, GRU, or any layer with
    `go_backwards`, `return_sequences` and `return_state` attributes and a config)."""

    def __init__(self, layer: Layer, merge_mode: str | None = "concat", weights: Any = None,
                 backward_layer: Layer | None = None, **kwargs: Any) -> None:
        if not isinstance(layer, Layer):
            raise ValueError("Please initialize `Bidirectional` layer with a `keras.layers.Layer` "
                             f"instance. Received: {layer}")
        if backward_layer is not None and not isinstance(backward_layer, Layer):
            raise ValueError("`backward_layer` need to be a `keras.layers.Layer` instance. "
                             f"Received: {backward_layer}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"Invalid merge mode. Received: {merge_mode}. Merge mode should be one "
                             'of {"sum", "mul", "ave", "concat", None}')
        super().__init__(**kwargs)
        for what, given in (("layer", layer), ("backward_layer", backward_layer)):
            missing = [a for a in _RNN_ATTRIBUTES if given is not None and not hasattr(given, a)]
            if missing:
                raise ValueError(f"Bidirectional '{self.name}': `{what}` must be a recurrent layer "
                                 "(SimpleRNN, LSTM, GRU, or a layer with `go_backwards`, "
                                 "`return_sequences` and `return_state` attributes); "
                                 f"{type(given).__name__} '{given.name}' has no "
                                 f"{', '.join(f'`{a}`' for a in missing)}")
        # Fresh copies from the config, so nothing (weights, calls) is shared with `layer`
        self.forward_layer = _copy_layer(
            layer, name=f"forward_{_remove_prefix(layer.name, 'forward_')}")
        if backward_layer is None:
            backward_layer = _copy_layer(
                layer, go_backwards=True, name=f"backward_{_remove_prefix(layer.name, 'backward_')}")
        self.backward_layer = backward_layer
        self._verify_layer_config()
        for child in (self.forward_layer, self.backward_layer):
            # Keras: the sequence output at a masked step is zero when returning sequences
            if getattr(child, "zero_output_for_mask", None) is not None:
                child.zero_output_for_mask = child.return_sequences
        self.merge_mode = merge_mode
        self._initial_weights = list(weights) if weights else None
        self.stateful = bool(getattr(layer, "stateful", False))
        self.return_sequences = bool(layer.return_sequences)
        self.return_state = bool(layer.return_state)
        self.supports_masking = True
        self.input_spec = layer.input_spec

    def _verify_layer_config(self) -> None:
        forward, backward = self.forward_layer, self.backward_layer
        if forward.go_backwards == backward.go_backwards:
            raise ValueError("Forward layer and backward layer should have different `go_backwards` "
                             f"value. Received: forward_layer.go_backwards {forward.go_backwards}, "
                             f"backward_layer.go_backwards={backward.go_backwards}")
        for attr in ("stateful", "return_sequences", "return_state"):
            fv, bv = getattr(forward, attr, False), getattr(backward, attr, False)
            if fv != bv:
                raise ValueError("Forward layer and backward layer are expected to have the same "
                                 f'value for attribute "{attr}", got "{fv}" for forward layer and '
                                 f'"{bv}" for backward layer')

    @property
    def _saveable_children(self) -> list[tuple[str, Layer]]:
        """Where Keras stores the weights: `<this layer>/forward_layer/...`, `.../backward_layer/...`
        (kcompile/saving/keras_h5.py)."""
        return [("forward_layer", self.forward_layer), ("backward_layer", self.backward_layer)]

    @property
    def states(self) -> None:
        return None  # stateful recurrent layers are not supported

    def reset_state(self) -> None:
        raise AttributeError("Layer must be stateful.")

    reset_states = reset_state

    def build(self, sequences_shape: tuple, initial_state_shape: Any = None) -> None:
        for child in (self.forward_layer, self.backward_layer):
            if not child.built:
                child._maybe_build(tuple(sequences_shape))
                for var in child.weights:  # built in this layer's scope, as Keras names them
                    var.path = f"{self.name}/{var.path}"
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None
        self.built = True

    def call(self, sequences: Any, initial_state: Any = None, mask: Any = None,
             training: bool = False) -> Any:
        forward_state = backward_state = None
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, list | tuple) \
                else [initial_state]
            if len(states) % 2:
                raise ValueError(f"Bidirectional '{self.name}': `initial_state` must list the "
                                 "forward layer's states then the backward layer's (an even "
                                 f"number of tensors), got {len(states)}: "
                                 f"{[format_shape(tuple(s.shape)) for s in states]}")
            half = len(states) // 2
            forward_state, backward_state = states[:half], states[half:]
        extra: dict[str, Any] = {"training": training}
        y = self._run(self.forward_layer, sequences, forward_state, mask, extra)
        y_rev = self._run(self.backward_layer, sequences, backward_state, mask, extra)
        states_out: list[Any] = []
        if self.return_state:
            states_out = [*y[1:], *y_rev[1:]]
            y, y_rev = y[0], y_rev[0]
        if y.dtype != self.dtype:
            y = ops.cast(y, self.dtype)
        if y_rev.dtype != self.dtype:
            y_rev = ops.cast(y_rev, self.dtype)
        if self.return_sequences:  # the backward layer's sequence is in processing order
            y_rev = ops.flip(y_rev, axis=1)
        if self.merge_mode == "concat":
            merged: Any = (ops.concatenate([y, y_rev], axis=-1),)
        elif self.merge_mode == "sum":
            merged = (ops.add(y, y_rev),)
        elif self.merge_mode == "ave":
            merged = (ops.divide(ops.add(y, y_rev), 2.0),)
        elif self.merge_mode == "mul":
            merged = (ops.multiply(y, y_rev),)
        else:
            merged = (y, y_rev)
        if self.return_state or self.merge_mode is None:
            return (*merged, *states_out)
        return merged[0]

    @staticmethod
    def _run(child: Layer, sequences: Any, state: Any, mask: Any, extra: dict[str, Any]) -> Any:
        kwargs = dict(extra)
        if state is not None:
            kwargs["initial_state"] = state
        if mask is not None and "mask" in inspect.signature(child.call).parameters:
            kwargs["mask"] = mask
        return child(sequences, **kwargs)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """Keras's output masks: the input mask on the sequence output(s) when returning sequences,
        else none; none on the states."""
        if isinstance(mask, list | tuple):
            mask = mask[0]
        if self.return_sequences:
            output_mask: Any = mask if self.merge_mode else (mask, mask)
        else:
            output_mask = None if self.merge_mode else (None, None)
        if self.return_state:
            heads = list(output_mask) if isinstance(output_mask, tuple) else [output_mask]
            n_states = len(self.compute_output_shape((None, None, 1))) - len(heads)
            return [*heads, *[None] * n_states]
        return output_mask

    def compute_output_shape(self, sequences_shape: Any, initial_state_shape: Any = None) -> Any:
        output_shape = self.forward_layer.compute_output_shape(tuple(sequences_shape))
        state_shapes: tuple = ()
        if self.return_state:
            output_shape, state_shapes = output_shape[0], tuple(output_shape[1:])
        if self.merge_mode == "concat":
            output_shape = (*output_shape[:-1],
                            None if output_shape[-1] is None else 2 * output_shape[-1])
        if self.merge_mode is None:
            heads: tuple = (tuple(output_shape), tuple(output_shape))
        else:
            heads = (tuple(output_shape),)
        if self.return_state:
            return (*heads, *state_shapes, *state_shapes)
        return heads if self.merge_mode is None else heads[0]

    def get_config(self) -> dict[str, Any]:
        from kcompile.layers import serialize

        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": serialize(self.forward_layer),
                "backward_layer": serialize(self.backward_layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
                    ) -> Bidirectional:
        from kcompile.layers import deserialize_entry

        config = dict(config)
        config["layer"] = deserialize_entry(config["layer"], custom_objects)
        backward = config.pop("backward_layer", None)
        if backward is not None:
            config["backward_layer"] = deserialize_entry(backward, custom_objects)
        return cls(**config)
