"""The command-line verbs that act on a model: summary, bench, compare, export.

MODEL is a `.keras` file (`kcompile.saving.load_model`) or `module:function` -- a function, called
with no arguments, that returns a model (`module` importable from the current directory, or a path
to a `.py` file).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np


def load(ref: str) -> Any:
    """The model named by MODEL."""
    from kcompile.models.model import Model

    if ref.endswith(".keras"):
        from kcompile.saving import load_model

        return load_model(ref)
    if ":" not in ref:
        raise ValueError(f"{ref!r}: expected a .keras file or 'module:function' (a function "
                         "returning a model)")
    module_name, func_name = ref.rsplit(":", 1)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"{ref}: no such file {module_name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{ref}: cannot import module {module_name!r}: {err}") from err
        finally:
            sys.path.pop(0)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{ref}: module {module_name!r} has no function {func_name!r}")
    model = func()
    if not isinstance(model, Model):
        raise TypeError(f"{ref}: {func_name}() returned {type(model).__name__}, not a kcompile Model")
    return model


def example_inputs(model: Any, batch: int, seed: int = 0) -> Any:
    """Random input of the model's signature: uniform [0, 1) floats, zeros for integer inputs."""
    sigs, _ = model.input_signature()
    rng = np.random.default_rng(seed)
    arrays = []
    for s in sigs:
        shape = (batch, *s.shape[1:])
        if np.dtype(s.dtype).kind == "f":
            arrays.append(rng.random(shape).astype(s.dtype))
        else:
            arrays.append(np.zeros(shape, s.dtype))
    return arrays[0] if len(arrays) == 1 else arrays


def summary(ref: str) -> int:
    load(ref).summary()
    return 0


def bench(model: Any, batch: int, repeats: int) -> int:
    """Cold and cached compile time; compiled vs eager vs onnxruntime time on one batch."""
    import kcompile as keras
    from kcompile.codegen.llvm.compiler import compile_graph
    from kcompile.codegen.llvm.jit import temporary_cache_dir

    x = example_inputs(model, batch)
    graph = model._lowered_for(*model.input_signature(x), False).graph
    with temporary_cache_dir():
        cold = compile_graph(graph).stats
        cached = compile_graph(graph).stats
    print(f"{model.name}: compile {cold.seconds * 1e3:.0f} ms cold (LLVM {cold.llvm_seconds * 1e3:.0f} "
          f"ms), {cached.seconds * 1e3:.1f} ms from the on-disk cache")
    keras.compare(model, x, repeats=repeats, onnxruntime=True)
    return 0


def compare(ref: str, batch: int, repeats: int) -> int:
    import kcompile as keras

    model = load(ref)
    report = keras.compare(model, example_inputs(model, batch), repeats=repeats, onnxruntime=True)
    ok = report.ok()
    print("parity: OK (within rtol 1e-4 / atol 1e-5)" if ok else
          "parity: FAILED (an output is beyond rtol 1e-4 / atol 1e-5)")
    return 0 if ok else 1


def export(ref: str, out: str, training: bool, opset: int | None) -> int:
    """Write a model's inference graph (or its training step) as ONNX."""
    import onnx

    model = load(ref)
    model.export(out, format="onnx", training=training, opset_version=opset)
    proto = onnx.load(out)
    what = "training step" if training else "inference graph"
    inputs = [i.name for i in proto.graph.input]
    print(f"wrote {out}: {model.name} {what}, opset {proto.opset_import[0].version}, "
          f"{len(proto.graph.node)} nodes, inputs {inputs[:4]}{' ...' if len(inputs) > 4 else ''}")
    return 0
