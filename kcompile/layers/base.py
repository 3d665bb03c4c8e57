"""`Layer`, `KerasTensor` and `InputSpec`: the Keras layer contract.

A layer's `call()` uses `kcompile.ops` only, so `Layer.__call__` can dispatch on what it is given:
- NumPy arrays: eager, each op's NumPy rule runs at once;
- `Tracer`s (a model being lowered): ops record IR nodes;
- `KerasTensor`s (Functional API construction): the call is traced once on scratch symbols to infer
  output shapes, and a `CallNode` records the connection for the model graph.

Masks follow Keras 3: a tensor may carry a mask (`_keras_mask`; NumPy arrays keep theirs in a table
keyed by identity, as Keras does for tensors that take no attributes). `__call__` passes the mask of
the only tensor argument to a `call` that takes `mask`, and a layer that `supports_masking` sets
`compute_mask(inputs, previous_mask)` on its outputs; other layers drop the mask with Keras's
warning. kcompile's masks are float tensors, 1.0 where a step is real and 0.0 where it is padding
(Keras's are bool), so they are ordinary IR values in traced graphs.
"""

from __future__ import annotations

import inspect
import re
import threading
import warnings
import weakref
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from kcompile import initializers, ops, tree
from kcompile.ir.core import canonical_dtype, format_shape
from kcompile.serialization import dtype_name, dtype_policy
from kcompile.tracing import GraphBuilder, Tracer, current_builder, not_tracing, tracing
from kcompile.variables import Variable

_name_counts: dict[str, int] = defaultdict(int)
_context = threading.local()


def to_snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base: str) -> str:
    """Keras's naming: 'dense', 'dense_1', ... unique within the session."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


class KerasTensor:
    """A symbolic tensor of the Functional API: a shape (batch `None`), a dtype and its history."""

    def __init__(self, shape: Sequence[int | None], dtype: str = "float32",
                 name: str | None = None) -> None:
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = canonical_dtype(dtype)
        self.name = name
        self._keras_history: tuple[Layer, int, int] | None = None
        self._keras_mask: KerasTensor | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={format_shape(self.shape)}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("A symbolic KerasTensor has no value; it only describes a model's "
                        "inputs/outputs. Build a Model and call it on data instead.")


# -- masks ------------------------------------------------------------------------------------------
_array_masks: dict[int, Any] = {}  # id(ndarray) -> mask, for arrays (which take no attributes)


def get_keras_mask(x: Any) -> Any:
    """The mask `x` carries (Keras's `_keras_mask`), or None."""
    if isinstance(x, np.ndarray):
        return _array_masks.get(id(x))
    if isinstance(x, KerasTensor | Tracer):
        return getattr(x, "_keras_mask", None)
    return None


def set_keras_mask(x: Any, mask: Any) -> None:
    """Attach `mask` to `x` (None clears it); values other than tensors are left alone."""
    if isinstance(x, KerasTensor | Tracer):
        x._keras_mask = mask
    elif isinstance(x, np.ndarray):
        key = id(x)
        if mask is None:
            _array_masks.pop(key, None)
            return
        if key not in _array_masks:
            weakref.finalize(x, _array_masks.pop, key, None)
        _array_masks[key] = mask


def float_mask(mask: Any, dtype: str = "float32") -> Any:
    """A mask as 0/1 values of `dtype` (Keras's bool masks, or kcompile's float ones)."""
    if isinstance(mask, Tracer):
        return mask if mask.dtype == dtype else ops.cast(mask, dtype)
    return (np.asarray(mask) != 0).astype(dtype)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, np.ndarray | Tracer | KerasTensor)


def _is_tensor_argument(value: Any) -> bool:
    """Keras's rule: a tensor, or a non-empty structure of tensors (and Nones)."""
    if _is_tensor(value):
        return True
    if tree.is_nested(value) and len(value) > 0:
        flat = tree.flatten(value)
        return all(x is None or _is_tensor(x) for x in flat)
    return False


class CallNode:
    """One call of a layer on KerasTensors: the edges of a Functional model's graph."""

    def __init__(self, layer: Layer, args: tuple, kwargs: dict, outputs: Any) -> None:
        self.layer = layer
        self.args = args
        self.kwargs = kwargs
        self.outputs = outputs
        self.input_tensors = [x for x in tree.flatten((list(args), kwargs))
                              if isinstance(x, KerasTensor)]
        self.is_input = not self.input_tensors and not args

    @property
    def output_tensors(self) -> list[KerasTensor]:
        return tree.flatten(self.outputs)

    @property
    def parent_nodes(self) -> list[CallNode]:
        parents = []
        for t in self.input_tensors:
            layer, index, _ = t._keras_history
            parents.append(layer._inbound_nodes[index])
        return parents


class InputSpec:
    """Rank and fixed-axis constraints checked before a layer is called (Keras's messages)."""

    def __init__(self, ndim: int | None = None, min_ndim: int | None = None,
                 axes: dict[int, int] | None = None) -> None:
        self.ndim, self.min_ndim, self.axes = ndim, min_ndim, dict(axes or {})

    def check(self, layer: Layer, index: int, shape: tuple) -> None:
        head = f"Input {index} of layer '{layer.name}' is incompatible with the layer: "
        if self.ndim is not None and len(shape) != self.ndim:
            raise ValueError(f"{head}expected ndim={self.ndim}, found ndim={len(shape)}. "
                             f"Full shape received: {format_shape(shape)}")
        if self.min_ndim is not None and len(shape) < self.min_ndim:
            raise ValueError(f"{head}expected min_ndim={self.min_ndim}, found ndim={len(shape)}. "
                             f"Full shape received: {format_shape(shape)}")
        for axis, value in self.axes.items():
            if -len(shape) <= axis < len(shape) and shape[axis] not in (value, None):
                raise ValueError(f"{head}expected axis {axis} of input shape to have value "
                                 f"{value}, but received input with shape {format_shape(shape)}")


def training_context() -> bool:
    return bool(getattr(_context, "training", False))


class Layer:
    """Base class of every layer (and of `Model`)."""

    def __init__(self, activity_regularizer: Any = None, trainable: bool = True,
                 dtype: Any = None, autocast: bool = True, name: str | None = None,
                 **kwargs: Any) -> None:
        input_shape = kwargs.pop("input_shape", None)
        input_dim = kwargs.pop("input_dim", None)
        batch_size = kwargs.pop("batch_size", None)
        batch_input_shape = kwargs.pop("batch_input_shape", None)
        kwargs.pop("input_axes", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unrecognized keyword argument(s) "
                            f"{sorted(kwargs)}")
        if activity_regularizer is not None:
            raise ValueError(f"{type(self).__name__}: activity_regularizer is not supported yet")
        self._layers_list: list[Layer] = []
        self.name = name or unique_name(to_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.dtype = dtype_name(dtype)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"Layer '{self.name}': dtype {self.dtype!r} is not supported "
                             "(float32 or float64)")
        self.built = False
        self.input_spec: InputSpec | list[InputSpec] | None = None
        self._trainable_variables: list[Variable] = []
        self._non_trainable_variables: list[Variable] = []
        self._inbound_nodes: list[CallNode] = []
        self._build_shapes_arg: Any = None
        # Keras: a layer that defines its own compute_mask supports masking; others may set it
        self._supports_masking = type(self).compute_mask is not Layer.compute_mask
        if batch_input_shape is not None:
            self._batch_input_shape = tuple(batch_input_shape)
        elif input_shape is not None or input_dim is not None:
            shape = tuple(input_shape) if input_shape is not None else (int(input_dim),)
            self._batch_input_shape = (batch_size, *shape)
        else:
            self._batch_input_shape = None

    # -- sublayer tracking (subclassed layers/models) --------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") or name == "_layers":
            if "_layers_list" not in self.__dict__ and _holds_layers(value):
                raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                                   "assigning sublayers")
            for sub in _layers_in(value):
                if sub is not self and all(sub is not s for s in self._layers_list):
                    self._layers_list.append(sub)
        object.__setattr__(self, name, value)

    @property
    def _layers(self) -> list[Layer]:
        return self._layers_list

    # -- weights -------------------------------------------------------------------------------
    def add_weight(self, shape: Sequence[int] = (), initializer: Any = None,
                   dtype: Any = None, trainable: bool = True, name: str | None = None,
                   **kwargs: Any) -> Variable:
        for key in ("regularizer", "constraint"):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f"Layer '{self.name}': {key}s are not supported yet")
        kwargs.pop("autocast", None)
        kwargs.pop("aggregation", None)
        if kwargs:
            raise TypeError(f"add_weight: unrecognized keyword argument(s) {sorted(kwargs)}")
        dtype = canonical_dtype(dtype or self.dtype)
        if initializer is None:
            initializer = "glorot_uniform" if np.dtype(dtype).kind == "f" else "zeros"
        init = initializers.get(initializer)
        shape = tuple(int(d) for d in shape)
        name = name or f"variable_{len(self._trainable_variables) + len(self._non_trainable_variables)}"
        value = np.asarray(init(shape, dtype=dtype), dtype=dtype)
        var = Variable(value, name=name, trainable=trainable, dtype=dtype, path=f"{self.name}/{name}")
        (self._trainable_variables if trainable else self._non_trainable_variables).append(var)
        return var

    @property
    def weights(self) -> list[Variable]:
        return _dedupe(self._trainable_variables + self._non_trainable_variables
                       + [w for layer in self._layers for w in layer.weights])

    @property
    def trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return []
        return _dedupe(self._trainable_variables
                       + [w for layer in self._layers for w in layer.trainable_weights])

    @property
    def non_trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return self.weights
        return _dedupe(self._non_trainable_variables
                       + [w for layer in self._layers for w in layer.non_trainable_weights])

    variables = weights
    trainable_variables = trainable_weights
    non_trainable_variables = non_trainable_weights

    def get_weights(self) -> list[np.ndarray]:
        return [w.numpy() for w in self.weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign all weights at once; shapes are checked before anything changes."""
        own = self.weights
        if len(weights) != len(own):
            raise ValueError(f"Layer '{self.name}': set_weights expected {len(own)} arrays "
                             f"(shapes {[format_shape(w.shape) for w in own]}), got {len(weights)}")
        arrays = [np.asarray(w) for w in weights]
        for var, arr in zip(own, arrays, strict=True):
            if arr.shape != var.shape:
                raise ValueError(f"Layer '{self.name}': weight '{var.path}' has shape "
                                 f"{format_shape(var.shape)}, but the value given has shape "
                                 f"{format_shape(arr.shape)}")
            if arr.dtype.kind not in "fiub":
                raise TypeError(f"Layer '{self.name}': weight '{var.path}' cannot take "
                                f"values of dtype {arr.dtype}")
        for var, arr in zip(own, arrays, strict=True):
            var.assign(arr)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"You tried to call `count_params` on layer '{self.name}', but the "
                             "layer isn't built. Call it on data or call `build()` first.")
        return int(sum(int(np.prod(w.shape)) for w in self.weights))

    # -- building ------------------------------------------------------------------------------
    def build(self, input_shape: Any = None) -> None:
        self.built = True

    def _maybe_build(self, input_shapes: Any) -> None:
        if self.built:
            return
        self._build_shapes_arg = input_shapes
        with not_tracing():
            self.build(input_shapes)
        self.built = True

    def _check_input_spec(self, inputs: Any) -> None:
        if self.input_spec is None:
            return
        flat = tree.flatten(inputs)
        specs = self.input_spec if isinstance(self.input_spec, list) else [self.input_spec]
        for i, (spec, x) in enumerate(zip(specs, flat, strict=False)):
            if spec is not None:
                spec.check(self, i, tuple(x.shape))

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Shapes by tracing `call` on symbols (works for any layer written with kcompile.ops)."""
        spec = tree.map_structure(lambda s: KerasTensor(s), input_shape,) \
            if not _is_shape(input_shape) else KerasTensor(input_shape)
        out = self.compute_output_spec(spec)
        return tree.map_structure(lambda t: t.shape, out)

    def compute_output_spec(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        b = GraphBuilder(f"{self.name}_spec")
        with tracing(b):
            targs = tree.map_structure(lambda x: _to_tracer(b, x), (inputs, args, kwargs))
            out = self._traced_call(targs[0], *targs[1], **targs[2])
        return tree.map_structure(_to_spec, out)

    # -- masking -------------------------------------------------------------------------------
    @property
    def supports_masking(self) -> bool:
        """Whether this layer sets `compute_mask(inputs, previous_mask)` on its outputs (otherwise
        a mask reaching it is dropped, with Keras's warning)."""
        return self.__dict__.get("_supports_masking", False)

    @supports_masking.setter
    def supports_masking(self, value: bool) -> None:
        self._supports_masking = bool(value)

    def compute_mask(self, inputs: Any, previous_mask: Any) -> Any:
        return previous_mask

    def _fill_masks(self, params: Any, inputs: Any, args: tuple, kwargs: dict) -> Any:
        """Keras's step "populate mask argument(s)": a `call` taking `mask` gets the mask of the
        only tensor argument (with several tensor arguments, `<name>_mask` arguments get theirs).
        Returns the previous mask: the mask argument, else the mask of the first input."""
        if "mask" in params or any(name.endswith("_mask") for name in params):
            try:
                bound = self._call_signature().bind(inputs, *args, **kwargs)
            except TypeError:
                bound = None
            if bound is not None:
                bound.apply_defaults()
                arguments = bound.arguments
                tensors = {k: v for k, v in arguments.items() if _is_tensor_argument(v)}
                if len(tensors) == 1:
                    if "mask" in arguments and arguments["mask"] is None:
                        kwargs["mask"] = tree.map_structure(get_keras_mask,
                                                            next(iter(tensors.values())))
                else:
                    for name, value in tensors.items():
                        if arguments.get(f"{name}_mask", 0) is None:
                            kwargs[f"{name}_mask"] = tree.map_structure(get_keras_mask, value)
        if kwargs.get("mask") is not None:
            return kwargs["mask"]
        return tree.map_structure(get_keras_mask, inputs)

    def _set_output_masks(self, inputs: Any, outputs: Any, previous_mask: Any) -> None:
        """Keras: outputs of a layer that supports masking get `compute_mask` (where they have no
        mask yet); any other layer drops the mask, with a warning."""
        if not self.supports_masking:
            if any(m is not None for m in tree.flatten(previous_mask)):
                warnings.warn(f"Layer '{self.name}' (of type {type(self).__name__}) was passed an "
                              "input with a mask attached to it. However, this layer does not "
                              "support masking and will therefore destroy the mask information. "
                              "Downstream layers will not see the mask.", stacklevel=4)
            return
        flat = tree.flatten(outputs)
        if all(get_keras_mask(x) is not None for x in flat):
            return
        masks = self.compute_mask(inputs, previous_mask)
        if masks is None:
            return
        for x, mask in zip(flat, tree.flatten(masks), strict=False):
            if mask is not None and get_keras_mask(x) is None:
                set_keras_mask(x, mask)

    # -- calling -------------------------------------------------------------------------------
    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"Layer {type(self).__name__} does not implement call()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            if "inputs" not in kwargs:
                raise TypeError(f"Layer '{self.name}' was called without inputs")
            args = (kwargs.pop("inputs"),)
        if any(isinstance(x, KerasTensor) for x in tree.flatten((list(args), kwargs))):
            return self._symbolic_call(args, kwargs)
        if current_builder() is not None:
            return self._traced_call(*args, **kwargs)
        inputs = tree.map_structure(self._to_array, args[0])
        return self._traced_call(inputs, *args[1:], **kwargs)

    def _to_array(self, x: Any) -> Any:
        if isinstance(x, Variable | Tracer) or x is None:
            return x
        arr = np.asarray(x)
        if arr.dtype.kind in "fiub" and arr.dtype.name != self.dtype and arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        elif arr.dtype.kind not in "fiub":
            raise TypeError(f"Layer '{self.name}': cannot take input of dtype {arr.dtype}")
        mask = get_keras_mask(x)
        if mask is not None and arr is not x:  # a converted input keeps its mask, as in Keras
            set_keras_mask(arr, mask)
        return arr

    def _call_signature(self) -> inspect.Signature:
        return inspect.signature(self.call)

    def _traced_call(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Build if needed, check the input spec, then run `call` (eager or tracing)."""
        self._maybe_build(tree.map_structure(lambda x: tuple(x.shape), inputs))
        self._check_input_spec(inputs)
        params = self._call_signature().parameters
        training = kwargs.pop("training", None)
        if training is None:
            training = training_context()
        if "training" in params:
            kwargs["training"] = bool(training)
        previous_mask = self._fill_masks(params, inputs, args, kwargs)
        previous = training_context()
        _context.training = bool(training)
        b = current_builder()
        try:
            if b is not None:
                with b.scope(self.name):
                    outputs = self.call(inputs, *args, **kwargs)
                    self._set_output_masks(inputs, outputs, previous_mask)
            else:
                outputs = self.call(inputs, *args, **kwargs)
                self._set_output_masks(inputs, outputs, previous_mask)
            return outputs
        except (ValueError, TypeError) as err:
            if getattr(err, "_kc_named", False):
                raise
            new = type(err)(f"Exception in layer '{self.name}' ({type(self).__name__}): {err}")
            new._kc_named = True  # type: ignore[attr-defined]
            raise new from err
        finally:
            _context.training = previous

    def _symbolic_call(self, args: tuple, kwargs: dict) -> Any:
        inputs = args[0]
        self._maybe_build(tree.map_structure(lambda x: tuple(x.shape), inputs))
        outputs = self.compute_output_spec(inputs, *args[1:], **kwargs)
        node = CallNode(self, args, kwargs, outputs)
        index = len(self._inbound_nodes)
        self._inbound_nodes.append(node)
        for i, t in enumerate(tree.flatten(outputs)):
            t._keras_history = (self, index, i)
            t.name = f"{self.name}" if i == 0 else f"{self.name}_{i}"
        return outputs

    # -- introspection -------------------------------------------------------------------------
    @property
    def input(self) -> Any:
        return self._single_node("input").args[0]

    @property
    def output(self) -> Any:
        return self._single_node("output").outputs

    def _single_node(self, what: str) -> CallNode:
        if not self._inbound_nodes:
            raise AttributeError(f"Layer '{self.name}' has never been called and thus has no "
                                 f"defined {what}.")
        return self._inbound_nodes[0]

    # -- config --------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, "dtype": dtype_policy(self.dtype)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def get_build_config(self) -> dict[str, Any] | None:
        if self._build_shapes_arg is None:
            return None
        return {"input_shape": self._build_shapes_arg}

    def build_from_config(self, config: dict[str, Any] | None) -> None:
        if config and config.get("input_shape") is not None:
            self._maybe_build(config["input_shape"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple | list) and all(d is None or isinstance(d, int) for d in x)


def _to_tracer(b: GraphBuilder, x: Any) -> Any:
    """A scratch symbol for a KerasTensor (and for its mask, which the symbol carries)."""
    if not isinstance(x, KerasTensor):
        return x
    t = b.input(x.shape, x.dtype, x.name or "input")
    mask = get_keras_mask(x)
    if mask is not None:
        set_keras_mask(t, tree.map_structure(lambda m: _to_tracer(b, m), mask))
    return t


def _to_spec(t: Any) -> Any:
    """The KerasTensor of a traced output (with its mask's, if it has one)."""
    spec = KerasTensor(t.shape, t.dtype)
    mask = get_keras_mask(t)
    if mask is not None:
        spec._keras_mask = tree.map_structure(
            lambda m: None if m is None else KerasTensor(np.shape(m) if isinstance(m, np.ndarray)
                                                         else m.shape, _dtype_of(m)), mask)
    return spec


def _dtype_of(x: Any) -> str:
    return x.dtype.name if isinstance(x, np.ndarray) else x.dtype


def _holds_layers(value: Any) -> bool:
    return bool(_layers_in(value))


def _layers_in(value: Any) -> list[Layer]:
    if isinstance(value, Layer):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, Layer)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, Layer)]
    return []


def _dedupe(variables: list[Variable]) -> list[Variable]:
    seen: set[int] = set()
    out = []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out
