"""The benchmark models (DESIGN.md section 7, and issue 7's LSTM) and ONNX twins of them for
onnxruntime.

The MLP's and the convnet's ONNX graphs are written here from the models' weights with plain
Gemm/Conv/Relu/MaxPool/GlobalAveragePool/Softmax nodes (NCHW, as onnxruntime's CPU kernels prefer),
so those rows do not depend on kcompile's own exporter. The LSTM's is kcompile's own export
(`model.export(path, format="onnx")`), which uses ONNX's `LSTM` op: that op is what issue 7 compares
against.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp():
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input(shape=(784,)),
        layers.Dense(512, activation="relu"),
        layers.Dense(512, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="mlp_784_512_512_10")


def convnet():
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(64, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"),
        layers.Conv2D(128, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ], name="mnist_convnet")


def lstm():
    """Issue 7's benchmark: LSTM(128) over 50 steps of 32 features, then a softmax Dense(10)."""
    import kcompile as keras
    from kcompile import layers

    return keras.Sequential([
        keras.Input(shape=(50, 32), name="x"),
        layers.LSTM(128),
        layers.Dense(10, activation="softmax"),
    ], name="lstm_50x32_128")


def flops(model) -> int:
    """Multiply-adds x 2 of the dense, conv and LSTM layers (input and recurrent GEMMs) for one
    sample."""
    from kcompile import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.LSTM):
            kernel, recurrent = layer.get_weights()[:2]
            total += 2 * (kernel.size + recurrent.size) * model.inputs[0].shape[1]
        elif isinstance(layer, layers.Dense):
            k, n = layer.kernel.shape
            total += 2 * k * n
        elif isinstance(layer, layers.Conv2D):
            kh, kw, ci, co = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape if hasattr(layer, "output") else (0, 0, 0, 0)
            total += 2 * kh * kw * ci * co * oh * ow
    return total


def to_onnx(model) -> bytes:
    """An ONNX twin of `mlp()` or `convnet()` with the same weights (NHWC input, NCHW inside); for
    `lstm()`, kcompile's own export."""
    from kcompile import layers

    if any(isinstance(layer, layers.LSTM) for layer in model.layers):
        return exported_onnx(model)

    nodes, inits = [], []
    first = model.layers[0]
    in_shape = model.inputs[0].shape if hasattr(model, "inputs") else None
    rank = len(in_shape) if in_shape is not None else 2
    cur = "x"
    if rank == 4:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        cur = "x_nchw"
    for i, layer in enumerate(model.layers):
        out = f"t{i}"
        if isinstance(layer, layers.Conv2D):
            w, b = layer.get_weights()
            inits += [numpy_helper.from_array(np.transpose(w, (3, 2, 0, 1)).copy(), f"w{i}"),
                      numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [out],
                                          strides=list(layer.strides)))
            cur = _activation(nodes, layer.activation.__name__, out, i)
        elif isinstance(layer, layers.Dense):
            w, b = layer.get_weights()
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out]))
            cur = _activation(nodes, layer.activation.__name__, out, i)
        elif isinstance(layer, layers.MaxPooling2D):
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=list(layer.pool_size),
                                          strides=list(layer.strides)))
            cur = out
        elif isinstance(layer, layers.GlobalAveragePooling2D):
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [out + "_4d"]))
            nodes.append(helper.make_node("Flatten", [out + "_4d"], [out]))
            cur = out
        elif isinstance(layer, layers.Dropout):
            continue
        else:
            raise ValueError(f"benchmark ONNX twin: unsupported layer {type(layer).__name__}")
    del first
    shape = ["N", *[d for d in in_shape[1:]]]
    graph = helper.make_graph(nodes, model.name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", 10])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def exported_onnx(model) -> bytes:
    """`model.export(path, format="onnx")`'s bytes (the input keeps the model's name, "x")."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{model.name}.onnx"
        model.export(str(path), format="onnx")
        return path.read_bytes()


def _activation(nodes: list, name: str, cur: str, i: int) -> str:
    if name == "linear":
        return cur
    op = {"relu": "Relu", "softmax": "Softmax"}[name]
    nodes.append(helper.make_node(op, [cur], [f"a{i}"], **({"axis": -1} if op == "Softmax" else {})))
    return f"a{i}"
