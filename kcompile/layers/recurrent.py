"""Recurrent layers: SimpleRNN, LSTM, GRU (Keras 3 signatures, defaults, weights and configs).

Each layer holds its weights in a cell sublayer named as Keras names it ("lstm_cell"), so weight
paths ("lstm/lstm_cell/kernel"), order (kernel, recurrent_kernel, bias) and the `.keras` layout
(`layers/lstm/cell/vars/0..2`) match Keras. The whole sequence is one IR op (`simple_rnn`, `lstm`,
`gru`: kcompile/ir/ops/rnn.py) taking those weights as they are.

Masks (Keras's: Embedding(mask_zero=True), Masking, or `mask=`) go to the op as its last input
(`masked=True`): a masked step carries the states and repeats the output; zero_output_for_mask zeroes
the outputs of masked steps here. The sequence output keeps the input's mask (return_sequences).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile import activations, initializers, ops, tree
from kcompile.ir.core import format_shape
from kcompile.ir.ops.rnn import ACTIVATIONS
from kcompile.layers._args import unsupported
from kcompile.layers.base import InputSpec, Layer, float_mask


def _activation_name(value: Any, what: str, where: str) -> tuple[Any, str]:
    fn = activations.get(value)
    try:
        name = activations.serialize(fn)
    except ValueError:
        name = None
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: {what}={value!r} is not supported yet; recurrent layers take "
                         f"{', '.join(ACTIVATIONS)} (or None)")
    return fn, name


class _UnitForgetBias(initializers.Initializer):
    """LSTM's bias with unit_forget_bias: the forget gate's quarter starts at one."""

    def __init__(self, base: Any, units: int) -> None:
        self.base, self.units = base, units

    def __call__(self, shape, dtype="float32"):
        u = self.units
        return np.concatenate([np.asarray(self.base((u,), dtype=dtype)), np.ones((u,), dtype),
                               np.asarray(self.base((2 * u,), dtype=dtype))]).astype(dtype)


class _Cell(Layer):
    """The weights of one recurrent layer (Keras's *Cell): kernel (F, G*U), recurrent_kernel
    (U, G*U), bias. Internal: the layer runs the whole sequence itself."""

    def __init__(self, owner: _RNN, name: str) -> None:
        super().__init__(name=name, dtype=owner.dtype, trainable=owner.trainable)
        self._owner = owner

    def build(self, input_shape: tuple) -> None:
        rnn = self._owner
        gates_units = rnn._gates * rnn.units
        self.kernel = self.add_weight((input_shape[-1], gates_units), rnn.kernel_initializer,
                                      name="kernel")
        self.recurrent_kernel = self.add_weight((rnn.units, gates_units), rnn.recurrent_initializer,
                                                name="recurrent_kernel")
        self.bias = None
        if rnn.use_bias:
            init = rnn.bias_initializer
            if getattr(rnn, "unit_forget_bias", False):
                init = _UnitForgetBias(init, rnn.units)
            self.bias = self.add_weight(rnn._bias_shape(), init, name="bias")
        for var in self.weights:  # Keras's paths: "lstm/lstm_cell/kernel"
            var.path = f"{rnn.name}/{self.name}/{var.name}"
        self.built = True


class _RNN(Layer):
    """What SimpleRNN, LSTM and GRU share: options, validation, call and the config's head."""

    _op = ""
    _gates = 1
    _states = 1
    _cell_name = ""

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, recurrent_constraint: Any = None,
                 bias_constraint: Any = None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 seed: int | None = None, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False,
                 zero_output_for_mask: bool = False, **kwargs: Any) -> None:
        kwargs.pop("implementation", None)  # Keras's kernel choice; one implementation here
        use_cudnn = kwargs.pop("use_cudnn", "auto")
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        where = f"{type(self).__name__} '{self.name}'"
        if isinstance(units, bool) or not isinstance(units, int | np.integer) or units <= 0:
            raise ValueError(f"{where}: Received an invalid value for argument `units`, expected a "
                             f"positive integer, got {units}.")
        if use_cudnn not in ("auto", True, False):
            raise ValueError(f"{where}: Invalid value received for argument `use_cudnn`. Expected "
                             f"one of {{'auto', True, False}}. Received: use_cudnn={use_cudnn}")
        unsupported(where, kernel_regularizer=kernel_regularizer,
                    recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
                    kernel_constraint=kernel_constraint, recurrent_constraint=recurrent_constraint,
                    bias_constraint=bias_constraint)
        for option, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{where}: `{option}` must be a float in [0, 1], got {value!r}")
            if float(value) != 0.0:
                raise ValueError(f"{where}: `{option}`={value} is not supported yet (only 0.0); "
                                 "put a Dropout layer before or after the recurrent layer instead")
        if stateful:
            raise ValueError(f"{where}: `stateful=True` is not supported yet")
        self.units = int(units)
        self.activation, self._activation = _activation_name(activation, "activation", where)
        if self._gates > 1:
            self.recurrent_activation, self._recurrent_activation = _activation_name(
                recurrent_activation, "recurrent_activation", where)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.dropout = self.recurrent_dropout = 0.0
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)  # accepted; the op's time loop is the same either way
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.input_spec = InputSpec(ndim=3)
        self.supports_masking = True
        self.cell = _Cell(self, self._cell_name)

    @property
    def _saveable_children(self) -> list[tuple[str, Layer]]:
        """Where Keras stores the weights: `<this layer>/cell/vars` (kcompile/saving/keras_h5.py)."""
        return [("cell", self.cell)]

    def _bias_shape(self) -> tuple[int, ...]:
        return (self._gates * self.units,)

    def _op_attrs(self) -> dict[str, Any]:
        attrs = {"activation": self._activation, "go_backwards": self.go_backwards}
        if self._gates > 1:
            attrs["recurrent_activation"] = self._recurrent_activation
        return attrs

    def build(self, sequences_shape: tuple, initial_state_shape: Any = None) -> None:
        if len(sequences_shape) != 3:
            raise ValueError(f"Input 0 of layer '{self.name}' is incompatible with the layer: "
                             f"expected ndim=3, found ndim={len(sequences_shape)}. Full shape "
                             f"received: {format_shape(sequences_shape)}")
        if sequences_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': the feature (last) dim of the "
                             f"input must be known, got {format_shape(sequences_shape)}")
        self.cell.build((sequences_shape[0], sequences_shape[-1]))
        self.cell._build_shapes_arg = (sequences_shape[0], sequences_shape[-1])
        self.built = True

    def call(self, sequences: Any, initial_state: Any = None, mask: Any = None,
             training: bool = False) -> Any:
        where = f"{type(self).__name__} '{self.name}'"
        if isinstance(mask, list | tuple):  # Keras takes the first of nested masks
            mask = mask[0] if mask else None
        if mask is not None:
            mask = self._check_mask(mask, sequences, where)
        states: list[Any] = []
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, list | tuple) \
                else [initial_state]
            if len(states) != self._states:
                raise ValueError(f"{where}: expected {self._states} initial state tensor(s) "
                                 f"({'h, c' if self._states == 2 else 'h'}), got {len(states)}")
            for s in states:
                if tuple(s.shape[1:]) != (self.units,) or len(s.shape) != 2:
                    raise ValueError(f"{where}: an initial state must have shape (batch, "
                                     f"{self.units}), got {format_shape(tuple(s.shape))}")
        cell = self.cell
        bias = cell.bias if cell.bias is not None else np.zeros(self._bias_shape(), self.dtype)
        attrs = self._op_attrs()
        extra = []
        if mask is not None:
            attrs["masked"] = True
            extra = [mask]
        if training and self._gates > 1:  # the training step's gradient reads the tape (rnn.py)
            attrs["tape"] = True
        outs = ops.apply(self._op, [sequences, cell.kernel, cell.recurrent_kernel, bias, *states,
                                    *extra], **attrs)
        sequence, finals = outs[0], list(outs[1:1 + self._states])
        last = finals[0]
        if mask is not None and self.zero_output_for_mask:
            # Keras: the output of a masked step is zero (the states are still carried); the
            # sequence is in processing order, so is the mask it is multiplied with
            steps = ops.flip(mask, axis=1) if self.go_backwards else mask
            if self.return_sequences:
                sequence = ops.multiply(sequence, ops.reshape(
                    steps, tuple(-1 if d is None else d for d in (*steps.shape, 1))))
            else:  # the last output is the last processed step's
                first = ops.apply("slice", [ops.flip(steps, axis=1)], axis=1, start=0, stop=1)
                last = ops.multiply(last, first)
        output = sequence if self.return_sequences else last
        return (output, *finals) if self.return_state else output

    def _check_mask(self, mask: Any, sequences: Any, where: str) -> Any:
        """The mask as the op takes it: (batch, timesteps), 0/1 in the input's dtype."""
        shape = tuple(mask.shape)
        want = tuple(sequences.shape[:2])
        if len(shape) == 3 and shape[-1] == 1:  # Keras reads (batch, timesteps, 1) masks too
            mask = ops.reshape(mask, tuple(-1 if d is None else d for d in shape[:2]))
            shape = shape[:2]
        if len(shape) != 2 or any(a is not None and b is not None and a != b
                                  for a, b in zip(shape, want, strict=True)):
            raise ValueError(f"{where}: the mask must have shape (batch, timesteps) = "
                             f"{format_shape(want)} like the input {format_shape(sequences.shape)}"
                             f", got a mask of shape {format_shape(shape)}")
        return float_mask(mask, sequences.dtype)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """Keras: the input mask on the sequence output when returning sequences; the states
        carry no mask."""
        mask = tree.flatten(mask)[0]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * self._states
        return output_mask

    def compute_output_shape(self, sequences_shape: Any, initial_state_shape: Any = None) -> Any:
        n, t = sequences_shape[0], sequences_shape[1]
        out = (n, t, self.units) if self.return_sequences else (n, self.units)
        if self.return_state:
            return (out, *[(n, self.units)] * self._states)
        return out

    def _rnn_config(self) -> dict[str, Any]:
        return {**super().get_config(), "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "stateful": self.stateful, "unroll": self.unroll,
                "zero_output_for_mask": self.zero_output_for_mask, "units": self.units,
                "activation": self._activation}

    def _weights_config(self) -> dict[str, Any]:
        return {"use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize_initializer(self.kernel_initializer),
                "recurrent_initializer":
                    initializers.serialize_initializer(self.recurrent_initializer),
                "bias_initializer": initializers.serialize_initializer(self.bias_initializer)}

    @staticmethod
    def _tail_config() -> dict[str, Any]:
        return {"kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None,
                "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
                "recurrent_dropout": 0.0}


class SimpleRNN(_RNN):
    """Fully-connected RNN: h' = activation(x W + b + h R)."""

    _op, _gates, _states, _cell_name = "simple_rnn", 1, 1, "simple_rnn_cell"

    def __init__(self, units: int, activation: Any = "tanh", use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, recurrent_constraint: Any = None,
                 bias_constraint: Any = None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False,
                 seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(units, activation, None, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                         stateful, unroll, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**self._rnn_config(), **self._weights_config(), **self._tail_config()}


class LSTM(_RNN):
    """Long Short-Term Memory (Hochreiter 1997), Keras's gates i, f, c, o; states [h, c]."""

    _op, _gates, _states, _cell_name = "lstm", 4, 2, "lstm_cell"

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 unit_forget_bias: bool = True, kernel_regularizer: Any = None,
                 recurrent_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 recurrent_constraint: Any = None, bias_constraint: Any = None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: int | None = None,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False,
                 use_cudnn: Any = "auto", **kwargs: Any) -> None:
        self.unit_forget_bias = bool(unit_forget_bias)
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                         stateful, unroll, use_cudnn=use_cudnn, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**self._rnn_config(), "recurrent_activation": self._recurrent_activation,
                **self._weights_config(), "unit_forget_bias": self.unit_forget_bias,
                **self._tail_config(), "seed": self.seed}


class GRU(_RNN):
    """Gated Recurrent Unit (Cho 2014), Keras's gates z, r, h; reset_after=True (the default,
    cuDNN's form) applies the reset gate after the recurrent GEMM and has a (2, 3U) bias."""

    _op, _gates, _states, _cell_name = "gru", 3, 1, "gru_cell"

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, activity_regularizer: Any = None,
                 kernel_constraint: Any = None, recurrent_constraint: Any = None,
                 bias_constraint: Any = None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 seed: int | None = None, return_sequences: bool = False,
                 return_state: bool = False, go_backwards: bool = False, stateful: bool = False,
                 unroll: bool = False, reset_after: bool = True, use_cudnn: Any = "auto",
                 **kwargs: Any) -> None:
        self.reset_after = bool(reset_after)
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                         stateful, unroll, use_cudnn=use_cudnn, **kwargs)

    def _bias_shape(self) -> tuple[int, ...]:
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _op_attrs(self) -> dict[str, Any]:
        return {**super()._op_attrs(), "reset_after": self.reset_after}

    def get_config(self) -> dict[str, Any]:
        return {**self._rnn_config(), "recurrent_activation": self._recurrent_activation,
                **self._weights_config(), **self._tail_config(), "reset_after": self.reset_after,
                "seed": self.seed}
