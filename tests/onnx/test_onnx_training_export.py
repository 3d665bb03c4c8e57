"""Training-step export: N steps in onnxruntime (kcompile.onnx.TrainingSession) give the same
weights, optimizer slots and losses as N compiled steps of the same model from the same state.

Tolerance: rtol 1e-4 / atol 1e-5 (the fp32 contract); onnxruntime and the compiled kernels sum in
different orders, so the two drift apart by float32 rounding only.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import assert_close
from onnx_testing import session

import kcompile as keras
from kcompile import layers, optimizers
from kcompile.codegen.onnx import MAX_OPSET, MIN_OPSET
from kcompile.codegen.onnx.training import METADATA_KEY
from kcompile.onnx import TrainingSession

STEPS = 5


@pytest.fixture(autouse=True)
def _cache(module_cache_dir):
    yield


def _mlp(name: str = "mlp", out: int = 3, activation: str | None = "softmax"):
    return keras.Sequential([keras.Input((6,), name="features"),
                             layers.Dense(8, activation="relu", name="hidden"),
                             layers.Dense(out, activation=activation, name="out")], name=name)


def _batches(rng, n: int, shape, labels, sizes=(16, 7, 16, 1, 16)):
    """(x, y) per step; batch sizes vary, so one file serves every size."""
    out = []
    for k in range(n):
        b = sizes[k % len(sizes)]
        x = rng.standard_normal((b, *shape)).astype("float32")
        y = rng.integers(0, labels, b) if isinstance(labels, int) else \
            rng.standard_normal((b, *labels)).astype("float32")
        out.append((x, y))
    return out


def _slots(model):
    return [s for group in model.optimizer.slots for s in group]


def _train_both(model, path, batches, **session_args):
    """Export (the state now), then the same steps compiled and in onnxruntime."""
    model.export(path, training=True)
    ts = TrainingSession(path, **session_args)
    for x, y in batches:
        want = model.train_on_batch(x, y)
        got = ts.train_on_batch(x, y)
        assert_close(got, want)
    for g, w in zip(ts.get_weights(), model.get_weights(), strict=True):
        assert g.shape == w.shape
        assert_close(g, w)
    slots = [ts.state[n] for n in ts.meta["slots"]]
    assert len(slots) == len(_slots(model))
    for g, w in zip(slots, _slots(model), strict=True):
        assert_close(g, w)
    assert ts.iterations == model.optimizer.iterations
    return ts


OPTIMIZERS = {
    "sgd_momentum": lambda: optimizers.SGD(0.05, momentum=0.9),
    "sgd_nesterov": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.05),
    "rmsprop": lambda: optimizers.RMSprop(0.01),
    "adagrad": lambda: optimizers.Adagrad(0.05),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_optimizers_sparse_ce(opt, tmp_path, rng):
    keras.utils.set_random_seed(3)
    model = _mlp()
    model.compile(optimizer=OPTIMIZERS[opt](), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    _train_both(model, tmp_path / "step.onnx", _batches(rng, STEPS, (6,), 3))


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_mse_with_clipping(opt, tmp_path, rng):
    keras.utils.set_random_seed(4)
    model = _mlp(out=2, activation=None)
    optimizer = OPTIMIZERS[opt]()
    optimizer.global_clipnorm = 0.5
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    _train_both(model, tmp_path / "step.onnx", _batches(rng, STEPS, (6,), (2,)))


def test_batchnorm_and_dropout(tmp_path, rng):
    """Dropout masks in onnxruntime are kcompile's (same rng key: seed and step counter), and the
    BatchNorm moving statistics come out as `.new` outputs. The Dense before BatchNorm has no bias,
    as usual: that bias's true gradient is zero, and Adam would blow its float32 rounding noise
    (~1e-9, summed in different orders by the two runtimes) up to updates of ~1e-5."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6,)), layers.Dense(16, use_bias=False),
                              layers.BatchNormalization(name="bn"),
                              layers.Activation("relu"), layers.Dropout(0.4),
                              layers.Dense(3, activation="softmax")], name="bn_drop")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.train_on_batch(*_batches(rng, 1, (6,), 3)[0])  # export mid-training: slots are non-zero
    ts = _train_both(model, tmp_path / "step.onnx", _batches(rng, STEPS, (6,), 3))
    assert ts.meta["rng_key"] == "rng_key"
    assert [n for n in ts.meta["state"]] == ["bn/moving_mean", "bn/moving_variance"]


def test_convnet(tmp_path, rng):
    """Conv, pooling, gelu and Dropout gradients (ConvTranspose, MaxPool indices, the uint32 hash)."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((11, 11, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.AveragePooling2D(2, strides=1, padding="same"),
        layers.Conv2D(6, 3, strides=2, activation="gelu"),
        layers.Flatten(), layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ], name="convnet")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _train_both(model, tmp_path / "step.onnx", _batches(rng, STEPS, (11, 11, 1), 10, (8, 3)))


def test_functional_two_inputs(tmp_path, rng):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = layers.Concatenate()([layers.Dense(5, activation="tanh")(a), b])
    model = keras.Model([a, b], layers.Dense(1)(h), name="two_in")
    model.compile(optimizer=optimizers.RMSprop(0.01, momentum=0.5, centered=True), loss="mse")
    model.export(tmp_path / "step.onnx", training=True)
    ts = TrainingSession(tmp_path / "step.onnx")
    for _ in range(STEPS):
        xa, xb = rng.standard_normal((9, 4)).astype("f4"), rng.standard_normal((9, 3)).astype("f4")
        y = rng.standard_normal((9, 1)).astype("f4")
        assert_close(ts.train_on_batch([xa, xb], y), model.train_on_batch([xa, xb], y))
    for g, w in zip(ts.get_weights(), model.get_weights(), strict=True):
        assert_close(g, w)


def test_schedule_and_sample_weight(tmp_path, rng):
    """A kcompile schedule is stored by class and config; sample weights reach the loss."""
    keras.utils.set_random_seed(7)
    model = _mlp()
    lr = optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    model.compile(optimizer=optimizers.SGD(lr), loss="sparse_categorical_crossentropy")
    model.export(tmp_path / "step.onnx", training=True)
    ts = TrainingSession(tmp_path / "step.onnx")
    assert ts.meta["learning_rate"]["schedule"] == "ExponentialDecay"
    for x, y in _batches(rng, STEPS, (6,), 3):
        w = rng.uniform(0, 2, len(x)).astype("float32")
        assert_close(ts.train_on_batch(x, y, sample_weight=w), model.train_on_batch(x, y, w))
    for g, w in zip(ts.get_weights(), model.get_weights(), strict=True):
        assert_close(g, w)


def test_set_weights_back_into_the_model(tmp_path, rng):
    keras.utils.set_random_seed(8)
    model = _mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.export(tmp_path / "step.onnx", training=True)
    ts = TrainingSession(tmp_path / "step.onnx")
    x, y = _batches(rng, 1, (6,), 3)[0]
    before = model.predict(x, verbose=0)
    for _ in range(3):
        ts.train_on_batch(x, y)
    model.set_weights(ts.get_weights())
    after = model.predict(x, verbose=0)
    assert not np.allclose(before, after)
    assert ts.get_weights()[0] is not ts.state[ts.meta["weights"][0]]  # copies, not the state


def test_interface_names_and_plain_onnxruntime(tmp_path, rng):
    """The documented names; a stock session needs only x, y and sample_weight (the state inputs
    default to the stored training state), and its first step equals TrainingSession's."""
    keras.utils.set_random_seed(9)
    model = _mlp(name="seq")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path / "step.onnx"
    model.export(path, training=True, opset_version=MIN_OPSET)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert not {"Gradient", "Dropout"} & {n.op_type for n in proto.graph.node}
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    kernel = "hidden/kernel"
    assert inputs[0] == "features" and kernel in inputs and "optimizer/hidden/kernel/velocity" in inputs
    assert {"y_true", "sample_weight", "learning_rate", "iterations"} <= set(inputs)
    assert outputs[:2] == ["loss", "accuracy"] and f"{kernel}.new" in outputs
    assert "iterations.new" in outputs and "optimizer/hidden/kernel/momentum.new" in outputs
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert meta["weights"] == [w.path for w in model.weights]

    x, y = _batches(rng, 1, (6,), 3)[0]
    sess = session(path)
    required = [i.name for i in sess.get_inputs()]
    label = proto.graph.input[inputs.index("y_true")].type.tensor_type.elem_type
    y_feed = y.astype(onnx.helper.tensor_dtype_to_np_dtype(label))
    feeds = {"features": x, "y_true": y_feed, "sample_weight": np.ones(len(x), "f4")}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    assert set(required) >= {"features", "y_true", "sample_weight"}
    ts = TrainingSession(path)
    loss, acc = ts.train_on_batch(x, y)
    assert_close(got["loss"], loss)
    assert_close(got[f"{kernel}.new"], ts.state[kernel])
    assert float(got["iterations.new"]) == 1.0 == ts.iterations


def test_non_finite_loss_leaves_the_state(tmp_path, rng):
    keras.utils.set_random_seed(10)
    model = _mlp(out=1, activation=None)
    model.compile(optimizer="sgd", loss="mse")
    model.export(tmp_path / "step.onnx", training=True)
    ts = TrainingSession(tmp_path / "step.onnx")
    before = ts.get_weights()
    x = np.full((4, 6), np.inf, "float32")
    assert not np.isfinite(ts.train_on_batch(x, np.zeros((4, 1), "f4")))
    for g, w in zip(ts.get_weights(), before, strict=True):
        np.testing.assert_array_equal(g, w)
    assert ts.iterations == 0


def test_needs_compile(tmp_path):
    model = _mlp()
    with pytest.raises(ValueError, match=r"model 'mlp' has no optimizer and loss; call "
                                         r"model.compile"):
        model.export(tmp_path / "step.onnx", training=True)
    assert not (tmp_path / "step.onnx").exists()


def test_bad_opset(tmp_path):
    model = _mlp()
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match=f"supported opsets are {MIN_OPSET} to {MAX_OPSET}"):
        model.export(tmp_path / "step.onnx", training=True, opset_version=12)


def test_dropout_needs_opset_18(tmp_path):
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4), layers.Dropout(0.5, name="drop"),
                              layers.Dense(2)], name="seq")
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(NotImplementedError, match=r"op 'dropout' \(layer 'seq/drop'\).*opset"):
        model.export(tmp_path / "step.onnx", training=True, opset_version=17)


def test_session_bad_input(tmp_path, rng):
    model = _mlp()
    model.export(tmp_path / "infer.onnx")
    with pytest.raises(ValueError, match="not a kcompile training-step export"):
        TrainingSession(tmp_path / "infer.onnx")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.export(tmp_path / "step.onnx", training=True)
    ts = TrainingSession(tmp_path / "step.onnx")
    x = rng.standard_normal((4, 6)).astype("float32")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ts.train_on_batch(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels y have shape \(3,\)"):
        ts.train_on_batch(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"expected shape \(None, 6\), got \(4, 5\)"):
        ts.train_on_batch(x[:, :5], np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        ts.train_on_batch(x, np.array([0, 1, 2, 1]), sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="expected 4 arrays"):
        ts.set_weights([np.zeros(1)])
    assert ts.iterations == 0


def test_lazy_module():
    assert keras.onnx.TrainingSession is TrainingSession
