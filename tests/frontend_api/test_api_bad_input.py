"""Bad input gets a clear ValueError/TypeError naming the layer or model and the shapes."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile
from kcompile import layers as kl


def _mlp():
    return kcompile.Sequential([kcompile.Input((4,)), kl.Dense(3, name="d1")], name="m")


@pytest.mark.parametrize("jit", [True, False])
def test_predict_wrong_rank_shape_dtype(jit):
    m = _mlp()
    m.compile(jit_compile=jit)
    with pytest.raises(ValueError, match=r"model 'm'.*wrong rank.*\(None, 4\).*\(2, 4, 1\)"):
        m.predict(np.zeros((2, 4, 1), np.float32))
    with pytest.raises(ValueError, match=r"model 'm'.*incompatible.*\(None, 4\).*\(2, 5\)"):
        m.predict(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match=r"model 'm'.*dtype"):
        m.predict(np.array([["a", "b", "c", "d"]]))
    # float64 and int inputs are converted, as in Keras
    np.testing.assert_allclose(m.predict(np.ones((2, 4))), m.predict(np.ones((2, 4), np.float32)))


def test_wrong_number_of_inputs():
    a, b = kcompile.Input((2,)), kcompile.Input((2,))
    m = kcompile.Model([a, b], kl.Add()([a, b]), name="two")
    with pytest.raises(ValueError, match=r"'two' expects 2 input"):
        m.predict([np.zeros((1, 2), np.float32)] * 3)


def test_unknown_activation_and_initializer():
    with pytest.raises(ValueError, match="nope"):
        kl.Dense(3, activation="nope")
    with pytest.raises(ValueError, match="nope"):
        kl.Dense(3, kernel_initializer="nope")


def test_incompatible_connections():
    with pytest.raises(ValueError, match=r"conv"):
        kcompile.Sequential([kcompile.Input((5,)), kl.Conv2D(2, 3)])
    a, b = kcompile.Input((3,)), kcompile.Input((4,))
    with pytest.raises(ValueError, match=r"add"):
        kl.Add()([a, b])
    c, d = kcompile.Input((3, 2)), kcompile.Input((4, 5))
    with pytest.raises(ValueError, match=r"concat"):
        kl.Concatenate()([c, d])


def test_graph_disconnected():
    a, b = kcompile.Input((3,), name="a"), kcompile.Input((3,), name="b")
    out = kl.Dense(2)(b)
    with pytest.raises(ValueError, match=r"(?i)disconnected"):
        kcompile.Model(a, out)


def test_set_weights_wrong_count_and_shape():
    m = _mlp()
    with pytest.raises(ValueError, match=r"d1|expected|weights"):
        m.layers[0].set_weights([np.zeros((4, 3), np.float32)])
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)|\(3, 4\).*\(4, 3\)"):
        m.set_weights([np.zeros((3, 4), np.float32), np.zeros(3, np.float32)])
    before = m.get_weights()
    with pytest.raises(ValueError):
        m.set_weights([np.zeros((4, 3), np.float32), np.zeros(5, np.float32)])
    for x, y in zip(before, m.get_weights(), strict=True):  # no partial update
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("make", [
    lambda: kl.Dense(0), lambda: kl.Dense(-1), lambda: kl.Conv2D(2, 3, padding="full"),
    lambda: kl.Conv2D(2, 3, strides=0), lambda: kl.Dropout(1.5), lambda: kl.MaxPooling2D(0),
])
def test_invalid_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()
