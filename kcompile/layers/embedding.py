"""Embedding: rows of a (input_dim, output_dim) table by integer id."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from kcompile import initializers, ops
from kcompile.layers._args import unsupported
from kcompile.layers.base import KerasTensor, Layer


class Embedding(Layer):
    """out[..., :] = embeddings[ids[...], :]. Ids that are not int32/int64 are cast to int32 (as
    Keras does); an id outside [0, input_dim) raises a ValueError naming the layer on every executor.
    `mask_zero=True` is kept in the config (files round-trip) but calling such a layer raises
    NotImplementedError until masks propagate to the layers that consume them."""

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
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) and len(weights) == 1
                             else [weights])

    def build(self, input_shape: Any = None) -> None:
        if getattr(self, "embeddings", None) is None:
            self.embeddings = self.add_weight((self.input_dim, self.output_dim),
                                              self.embeddings_initializer, name="embeddings")
        self.built = True

    def compute_output_spec(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if self.mask_zero:  # building a model (or loading a file) works; running it does not
            return KerasTensor((*inputs.shape, self.output_dim), self.dtype)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def call(self, inputs: Any) -> Any:
        if self.mask_zero:
            raise NotImplementedError(f"Embedding(mask_zero=True) '{self.name}': masking is not "
                                      "supported yet")
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
