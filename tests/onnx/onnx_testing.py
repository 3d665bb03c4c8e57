"""Helpers shared by the ONNX export tests: export once, run the file in onnxruntime (and optionally
onnx.reference) at several batch sizes, and compare with kcompile's compiled `predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from conftest import assert_close
from onnx.reference import ReferenceEvaluator

from kcompile import tree

BATCHES = (1, 7, 64)


def session(model: str | Path | bytes) -> ort.InferenceSession:
    """A CPU session on one thread (the test machine has two cores, shared)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def feeds_for(model, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    sigs, _ = model.input_signature()
    return [rng.standard_normal((batch, *s.shape[1:])).astype(s.dtype) for s in sigs]


def predict_flat(model, arrays: list[np.ndarray]) -> list[np.ndarray]:
    out = model.predict(arrays if len(arrays) > 1 else arrays[0], batch_size=64, verbose=0)
    return [np.asarray(o) for o in tree.flatten(out)]


def export_and_compare(model, path: Path, rng: np.random.Generator, batches=BATCHES,
                       reference: bool | int = False, opset_version: int | None = None,
                       rtol: float = 1e-4, atol: float = 1e-5) -> onnx.ModelProto:
    """Export `model` once to `path`; onnxruntime on that one file == model.predict at every batch
    size, and onnx.reference too when `reference` (an int: only at batch sizes up to it -- the
    reference evaluator is slow on convolutions)."""
    model.export(path, opset_version=opset_version)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    assert names == [s.name for s in model.input_signature()[0]]
    evaluator = ReferenceEvaluator(proto) if reference else None
    for batch in batches:
        arrays = feeds_for(model, batch, rng)
        want = predict_flat(model, arrays)
        got = sess.run(None, dict(zip(names, arrays, strict=True)))
        assert len(got) == len(want)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.shape == w.shape and g.dtype == w.dtype, f"output {k} at batch {batch}"
            assert_close(g, w, rtol, atol)
        if evaluator is not None and (reference is True or batch <= reference):
            ref = evaluator.run(None, dict(zip(names, arrays, strict=True)))
            for r, w in zip(ref, want, strict=True):
                assert_close(r, w, rtol, atol)
    return proto


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def randomize_weights(model, rng: np.random.Generator) -> None:
    """Non-trivial weights everywhere (biases, BatchNorm statistics) so every term matters;
    variances stay positive."""
    new = []
    for var in model.weights:
        arr = (rng.standard_normal(var.shape) * 0.5).astype(var.dtype)
        new.append(np.abs(arr) + 0.5 if var.path.endswith("moving_variance") else arr)
    model.set_weights(new)
