"""ONNX export of models with sequence layers (Conv1D incl. causal, 1-D pooling, LayerNormalization,
TimeDistributed(Dense), Embedding): onnxruntime == compiled predict at batch 1 and 7, and three
training steps in onnxruntime (TrainingSession) == three compiled steps from the same state."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from onnx_testing import export_and_compare, op_types, randomize_weights, session

import kcompile as keras
from kcompile import layers as L
from kcompile.onnx import TrainingSession


@pytest.fixture(autouse=True)
def _cache(module_cache_dir):
    yield


def _conv_model():
    return keras.Sequential([keras.Input((12, 3), name="signal"),
                             L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
                             L.LayerNormalization(), L.MaxPooling1D(2),
                             L.Conv1D(4, 3, strides=2, padding="same"), L.AveragePooling1D(2, padding="same"),
                             L.TimeDistributed(L.Dense(5, activation="tanh")),
                             L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")], name="conv")


def _embedding_model():
    return keras.Sequential([keras.Input((7,), dtype="int32", name="ids"), L.Embedding(20, 6),
                             L.Conv1D(4, 2, padding="causal"), L.LayerNormalization(axis=[1, 2]),
                             L.GlobalMaxPooling1D(), L.Dense(3, activation="softmax")], name="emb")


def _ids(rng, batch):
    return rng.integers(0, 20, (batch, 7)).astype(np.int32)


def test_conv_model_inference(tmp_path):
    model = _conv_model()
    randomize_weights(model, np.random.default_rng(0))
    proto = export_and_compare(model, tmp_path / "conv.onnx", np.random.default_rng(1), batches=(1, 7))
    assert "Pad" in op_types(proto) and "Conv" in op_types(proto)


def test_embedding_model_inference_and_bad_ids(tmp_path):
    model = _embedding_model()
    randomize_weights(model, np.random.default_rng(0))
    path = tmp_path / "emb.onnx"
    model.export(path)
    sess = session(path)
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        x = _ids(rng, batch)
        got = sess.run(None, {"ids": x})[0]
        assert got.shape == (batch, 3)
        assert_close(got, model.predict(x, verbose=0))
    for bad in (20, -1):  # Gather would wrap -1; the export maps it past the end, so both fail
        x = _ids(rng, 2)
        x[1, 4] = bad
        with pytest.raises(Exception, match="out of data bounds"):
            sess.run(None, {"ids": x})


@pytest.mark.parametrize("build", [_conv_model, _embedding_model], ids=["conv", "embedding"])
def test_training_export_matches_compiled_steps(build, tmp_path):
    model = build()
    randomize_weights(model, np.random.default_rng(2))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    path = tmp_path / "train.onnx"
    model.export(path, training=True)
    ts = TrainingSession(path)
    rng = np.random.default_rng(3)
    for batch in (16, 7, 16):
        x = rng.standard_normal((batch, 12, 3)).astype(np.float32) if build is _conv_model \
            else _ids(rng, batch)
        y = rng.integers(0, 3, batch)
        assert_close(ts.train_on_batch(x, y), model.train_on_batch(x, y))
    for got, want in zip(ts.get_weights(), model.get_weights(), strict=True):
        assert_close(got, want)
    assert ts.iterations == 3
