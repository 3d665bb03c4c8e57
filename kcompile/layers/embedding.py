"""Embedding: rows of a (input_dim, output_dim) table by integer id."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from kcompile import initializers, ops
from kcompile.layers._args import unsupported
from kcompile.layers.base import Layer


class Embedding(Layer):
    """out[..., :] = embeddings[ids[...], :]. Ids that are not int32/int64 are cast to int32 (as
    Keras does); an id outside [0, input_dim) raises a ValueError naming the layer on every executor.
    With `mask_zero=True` the output carries the mask `ids != 0` (a float 0/1 tensor) for the layers
    downstream (recurrent layers skip padded steps; losses and metrics ignore them)."""

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer: Any = "uniform",
                 embeddings_regularizer: Any = None, embeddings_constraint: Any = None,
                 mask_zero: bool = False, weights: Any = None, lora_rank: int | None = None,
                 lora_alpha: float | None = None, quantization_config: Any = None,
                 **kwargs: Any) -> None:
        for what, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{what}` must be a positive integer. Received: {what}={value} "
                                 f"(of type {type(value).__name__}).")
        if kwargs.pop("input_length", None) is not None:
            warnings.warn("Argument `input_length` is deprecated. Just remove it.", stacklevel=2)
        super().__init__(**kwargs)
        where = f"Embedding '{self.name}'"
        unsupported(where, embeddings_regularizer=embeddings_regularizer,
                    embeddings_constraint=embeddings_constraint, lora_rank=lora_rank,
                    lora_alpha=lora_alpha, quantization_config=quantization_config)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) and len(weights) == 1
                             else [weights])

    def build(self, input_shape: Any = None) -> None:
        if getattr(self, "embeddings", None) is None:
            self.embeddings = self.add_weight((self.input_dim, self.output_dim),
                                              self.embeddings_initializer, name="embeddings")
        self.built = True

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if not self.mask_zero:
            return None
        ids = inputs
        if np.dtype(ids.dtype).kind != "f":  # every nonzero id is a nonzero float: exact
            ids = ops.cast(ids, "float32")  # (and the compiled backend compares floats)
        return ops.apply("compare", [ids, 0.0], predicate="ne")

    def call(self, inputs: Any) -> Any:
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        return ops.take(self.embeddings, inputs, axis=0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize_initializer(
                    self.embeddings_initializer),
                "embeddings_regularizer": None, "activity_regularizer": None,
                "embeddings_constraint": None, "mask_zero": self.mask_zero,
                "quantization_config": None}
