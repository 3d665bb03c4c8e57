"""BatchNormalization (Keras semantics: momentum 0.99, epsilon 1e-3, biased batch variance) and
LayerNormalization (per-sample statistics over `axis`, epsilon 1e-3)."""

from __future__ import annotations

from typing import Any

from kcompile import initializers, ops
from kcompile.ir.core import format_shape
from kcompile.layers._args import unsupported
from kcompile.layers.base import InputSpec, Layer, float_mask
from kcompile.tracing import current_builder


class BatchNormalization(Layer):
    """Normalizes with batch statistics in training and moving statistics at inference.

    Weights, in Keras's order: gamma (if scale), beta (if center), moving_mean, moving_variance.
    """

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer: Any = "zeros",
                 gamma_initializer: Any = "ones", moving_mean_initializer: Any = "zeros",
                 moving_variance_initializer: Any = "ones", beta_regularizer: Any = None,
                 gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, synchronized: bool = False,
                 renorm: bool = False, renorm_clipping: Any = None, renorm_momentum: float = 0.99,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        where = f"BatchNormalization '{self.name}'"
        unsupported(where, beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                    beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                    renorm_clipping=renorm_clipping)
        if renorm:
            raise ValueError(f"{where}: renorm is not supported yet")
        if not isinstance(axis, int):
            raise ValueError(f"{where}: axis must be a single int, got {axis!r}")
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.synchronized = bool(synchronized)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.gamma = self.beta = None
        self.supports_masking = True

    def build(self, input_shape: tuple) -> None:
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(f"BatchNormalization '{self.name}': axis {self.axis} is out of range "
                             f"for input shape {format_shape(input_shape)}")
        axis = self.axis % rank
        c = input_shape[axis]
        if c is None:
            raise ValueError(f"BatchNormalization '{self.name}': the normalized axis must be known")
        if self.scale:
            self.gamma = self.add_weight((c,), self.gamma_initializer, name="gamma")
        if self.center:
            self.beta = self.add_weight((c,), self.beta_initializer, name="beta")
        self.moving_mean = self.add_weight((c,), self.moving_mean_initializer,
                                           name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight((c,), self.moving_variance_initializer,
                                               name="moving_variance", trainable=False)
        self.input_spec = InputSpec(ndim=rank, axes={self.axis: c})
        self.built = True

    def call(self, inputs: Any, training: bool = False, mask: Any = None) -> Any:
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError("The mask provided should be one dimension less than the inputs. "
                             f"Received: mask.shape={format_shape(tuple(mask.shape))}, "
                             f"inputs.shape={format_shape(tuple(inputs.shape))}")
        axis = self.axis % len(inputs.shape)
        if not (training and self.trainable):
            return ops.batch_normalization(inputs, self.moving_mean, self.moving_variance, axis,
                                           offset=self.beta, scale=self.gamma,
                                           epsilon=self.epsilon)
        reduce_axes = tuple(i for i in range(len(inputs.shape)) if i != axis)
        if mask is not None:
            mean, variance = self._masked_moments(inputs, mask, axis, reduce_axes)
        else:
            mean = ops.mean(inputs, axis=reduce_axes)
            variance = ops.mean(ops.square(ops.subtract(inputs, _broadcast(mean, axis, inputs))),
                                axis=reduce_axes)
        self._update_moving_stats(mean, variance)
        return ops.batch_normalization(inputs, mean, variance, axis, offset=self.beta,
                                       scale=self.gamma, epsilon=self.epsilon)

    def _masked_moments(self, inputs: Any, mask: Any, axis: int, reduce_axes: tuple) -> tuple:
        """Keras's statistics over the unmasked positions only: sums over the weights (the mask
        broadcast over the last axis) plus epsilon 1e-7."""
        m = float_mask(mask, inputs.dtype)
        m = ops.reshape(m, tuple(-1 if d is None else d for d in (*m.shape, 1)))
        weights = ops.apply("broadcast_like", [m, inputs])
        count = ops.add(ops.sum(weights, axis=reduce_axes), 1e-7)
        mean = ops.divide(ops.sum(ops.multiply(inputs, weights), axis=reduce_axes), count)
        centered = ops.multiply(ops.subtract(inputs, _broadcast(mean, axis, inputs)), weights)
        variance = ops.divide(ops.sum(ops.square(centered), axis=reduce_axes), count)
        return mean, variance

    def _update_moving_stats(self, mean: Any, variance: Any) -> None:
        """moving = moving * momentum + batch * (1 - momentum); a state update when tracing."""
        m = self.momentum
        new_mean = ops.add(ops.multiply(self.moving_mean, m), ops.multiply(mean, 1 - m))
        new_var = ops.add(ops.multiply(self.moving_variance, m), ops.multiply(variance, 1 - m))
        b = current_builder()
        if b is not None:
            b.state_updates.append((self.moving_mean, new_mean))
            b.state_updates.append((self.moving_variance, new_var))
        else:
            self.moving_mean.assign(new_mean)
            self.moving_variance.assign(new_var)

    def get_config(self) -> dict[str, Any]:
        ser = initializers.serialize_initializer
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": ser(self.beta_initializer),
                "gamma_initializer": ser(self.gamma_initializer),
                "moving_mean_initializer": ser(self.moving_mean_initializer),
                "moving_variance_initializer": ser(self.moving_variance_initializer),
                "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None,
                "gamma_constraint": None, "synchronized": self.synchronized, "renorm": False,
                "renorm_clipping": None, "renorm_momentum": 0.99}


class LayerNormalization(Layer):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta, statistics over `axis` of each sample.

    Weights, in Keras's order: gamma (if scale), beta (if center), shaped like the normalized axes.
    """

    def __init__(self, axis: int | list[int] = -1, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 beta_regularizer: Any = None, gamma_regularizer: Any = None,
                 beta_constraint: Any = None, gamma_constraint: Any = None, **kwargs: Any) -> None:
        rms_scaling = kwargs.pop("rms_scaling", False)  # Keras's deprecated variant, kept in configs
        super().__init__(**kwargs)
        where = f"LayerNormalization '{self.name}'"
        unsupported(where, beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                    beta_constraint=beta_constraint, gamma_constraint=gamma_constraint)
        if isinstance(axis, list | tuple) and axis and \
                all(isinstance(a, int) and not isinstance(a, bool) for a in axis):
            self.axis: int | list[int] = list(axis)
        elif isinstance(axis, int) and not isinstance(axis, bool):
            self.axis = axis
        else:
            raise TypeError(f"{where}: Expected an int or a list/tuple of ints for the argument "
                            f"'axis', but received: {axis!r}")
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.rms_scaling = bool(rms_scaling)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.gamma = self.beta = None
        self.supports_masking = True

    def build(self, input_shape: tuple) -> None:
        rank = len(input_shape)
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
            raise ValueError(f"LayerNormalization '{self.name}': axis {self.axis} is invalid for "
                             f"input shape {format_shape(input_shape)}")
        self.axis = sorted(axes)
        shape = tuple(input_shape[a] for a in self.axis)
        if None in shape or 0 in [a % rank for a in self.axis]:
            raise ValueError(f"LayerNormalization '{self.name}': the normalized axes {self.axis} "
                             f"of input shape {format_shape(input_shape)} must be known non-batch "
                             "dims")
        if self.scale or self.rms_scaling:
            self.gamma = self.add_weight(shape, self.gamma_initializer, name="gamma")
        if self.center and not self.rms_scaling:
            self.beta = self.add_weight(shape, self.beta_initializer, name="beta")
        self.input_spec = InputSpec(ndim=rank, axes=dict(zip(self.axis, shape, strict=True)))
        self.built = True

    def call(self, inputs: Any) -> Any:
        return ops.layer_normalization(inputs, self.gamma, self.beta, self.axis, self.epsilon,
                                       rms_scaling=self.rms_scaling)

    def get_config(self) -> dict[str, Any]:
        ser = initializers.serialize_initializer
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale, "rms_scaling": self.rms_scaling,
                "beta_initializer": ser(self.beta_initializer),
                "gamma_initializer": ser(self.gamma_initializer), "beta_regularizer": None,
                "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}


def _broadcast(stat: Any, axis: int, like: Any) -> Any:
    shape = [1] * len(like.shape)
    shape[axis] = like.shape[axis]
    return ops.reshape(stat, tuple(shape))
