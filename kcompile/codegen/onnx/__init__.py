"""ONNX export: kcompile IR graphs written as default-domain ONNX through each op's `onnx` rule."""

from kcompile.codegen.onnx.context import EmitContext
from kcompile.codegen.onnx.exporter import (
    BATCH_DIM,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    SUPPORTED_OPSETS,
    export_model,
    graph_to_onnx,
    resolve_opset,
)

__all__ = ["BATCH_DIM", "DEFAULT_OPSET", "EmitContext", "MAX_OPSET", "MIN_OPSET", "SUPPORTED_OPSETS",
           "export_model", "graph_to_onnx", "resolve_opset"]
