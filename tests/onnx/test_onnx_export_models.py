"""Whole models through `model.export(format="onnx")`: the benchmark MLP and convnet and a functional
multi-input/multi-output model; every supported opset; the file's metadata; bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_close
from onnx_testing import export_and_compare, feeds_for, op_types, predict_flat, randomize_weights, session

import kcompile as keras
from kcompile import layers
from kcompile.codegen.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, SUPPORTED_OPSETS
from kcompile.ir.opdef import get_op

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import models as bench_models  # noqa: E402


@pytest.fixture(scope="module")
def mlp(module_cache_dir):
    model = bench_models.mlp()
    randomize_weights(model, np.random.default_rng(1))
    model.set_weights([w * 0.1 for w in model.get_weights()])  # keep the softmax away from one-hot
    return model


@pytest.fixture(scope="module")
def convnet(module_cache_dir):
    model = bench_models.convnet()
    randomize_weights(model, np.random.default_rng(2))
    model.set_weights([w * 0.3 for w in model.get_weights()])
    return model


def multi_io_model():
    """Two named inputs (an image and a vector), three outputs: class probabilities, a regression
    value and a feature map (an NHWC conv output returned as is)."""
    image = keras.Input((10, 10, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = layers.BatchNormalization()(x)
    features = layers.Conv2D(6, 3, strides=2, activation="relu")(x)
    pooled = layers.GlobalAveragePooling2D()(layers.MaxPooling2D(2, padding="same")(features))
    m = layers.Dense(8, activation="gelu")(meta)
    joined = layers.Concatenate()([pooled, m])
    joined = layers.Dropout(0.4)(joined)
    probs = layers.Dense(5, activation="softmax", name="probs")(joined)
    value = layers.Dense(1, name="value")(layers.Add()([layers.Dense(7)(joined), layers.Dense(7)(m)]))
    return keras.Model([image, meta], [probs, value, features])


def test_mlp_matches_compiled_and_reference(mlp, tmp_path):
    proto = export_and_compare(mlp, tmp_path / "mlp.onnx", np.random.default_rng(3), reference=True)
    assert op_types(proto) == ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"]


def test_convnet_matches_compiled(convnet, tmp_path):
    proto = export_and_compare(convnet, tmp_path / "convnet.onnx", np.random.default_rng(4))
    ops = op_types(proto)
    assert ops.count("Conv") == 4 and ops.count("Transpose") == 1 and "Dropout" not in ops


def test_convnet_matches_reference_evaluator(convnet, tmp_path):
    export_and_compare(convnet, tmp_path / "convnet.onnx", np.random.default_rng(5), batches=(2,),
                       reference=True)


def test_multi_input_multi_output_model(tmp_path):
    model = multi_io_model()
    randomize_weights(model, np.random.default_rng(6))
    proto = export_and_compare(model, tmp_path / "multi.onnx", np.random.default_rng(7), reference=7)
    assert [i.name for i in proto.graph.input] == ["image", "meta"]
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1", "output_2"]


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_file_metadata(mlp, tmp_path):
    """Dynamic batch, default domain only, the default opset, weights as initializers named by
    their variable paths, an IR version onnxruntime accepts."""
    path = tmp_path / "mlp.onnx"
    mlp.export(path)
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", DEFAULT_OPSET)]
    assert DEFAULT_OPSET == MAX_OPSET and list(SUPPORTED_OPSETS) == list(range(MIN_OPSET, MAX_OPSET + 1))
    assert all(n.domain == "" for n in proto.graph.node)
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(proto.opset_import)
    assert [_dims(i) for i in proto.graph.input] == [["batch", 784]]
    assert [_dims(o) for o in proto.graph.output] == [["batch", 10]]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for var in mlp.weights:
        np.testing.assert_array_equal(inits[var.path], var.value)
    assert set(inits) == {v.path for v in mlp.weights}
    session(path)  # onnxruntime loads this IR version and opset


@pytest.mark.parametrize("opset", list(SUPPORTED_OPSETS))
def test_every_supported_opset(mlp, convnet, tmp_path, opset):
    rng = np.random.default_rng(opset)
    for model in (mlp, convnet):
        path = tmp_path / f"{model.name}.onnx"
        model.export(path, opset_version=opset)
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version == opset
        onnx.checker.check_model(proto, full_check=True)
        sess = session(path)
        x = feeds_for(model, 7, rng)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x[0]})
        assert_close(got, predict_flat(model, x)[0])


def test_subclassed_model_needs_and_takes_an_input_signature(tmp_path):
    class TwoLayer(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = layers.Dense(6, activation="tanh")
            self.out = layers.Dense(2)

        def call(self, x, training=False):
            return self.out(self.hidden(x))

    model = TwoLayer()
    with pytest.raises(ValueError, match="input_signature"):
        model.export(tmp_path / "sub.onnx")
    model.export(tmp_path / "sub.onnx", input_signature=[keras.KerasTensor((None, 3), name="x")])
    sess = session(tmp_path / "sub.onnx")
    x = np.random.default_rng(8).standard_normal((7, 3)).astype(np.float32)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    assert_close(sess.run(None, {"x": x})[0], model.predict(x, verbose=0))


# -- bad input ------------------------------------------------------------------------------------------
def test_unknown_format_is_rejected(mlp, tmp_path):
    with pytest.raises(ValueError, match=r"format='tf_saved_model'.*'onnx'"):
        mlp.export(tmp_path / "m", format="tf_saved_model")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("opset", [16, MAX_OPSET + 1, 7, "18", 17.0, True])
def test_unsupported_opset_lists_the_range(mlp, tmp_path, opset):
    with pytest.raises(ValueError, match=rf"supported opsets are {MIN_OPSET} to {MAX_OPSET}"):
        mlp.export(tmp_path / "m.onnx", opset_version=opset)
    assert not (tmp_path / "m.onnx").exists()


def test_op_without_rule_names_op_and_layer(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4, activation="relu", name="hidden"),
                              layers.Dense(2)], name="seq")
    monkeypatch.setattr(get_op("relu"), "onnx", None)
    with pytest.raises(NotImplementedError, match=r"op 'relu' \(layer 'seq/hidden'\) has no ONNX rule"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
