"""Bad input fails early with a ValueError/TypeError that names the layer or model and says what was
expected and what was given (never a crash deep in the executor, never a silent wrong answer)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kcompile as keras
from kcompile import layers as kl


def _mlp(name: str = "mlp") -> keras.Sequential:
    return keras.Sequential([keras.Input((4,), name=f"{name}_in"), kl.Dense(3, name=f"{name}_d")],
                            name=name)


def _two_input_model() -> keras.Model:
    a, b = keras.Input((2,), name="left"), keras.Input((3,), name="right")
    out = kl.Concatenate(name="two_cat")([a, b])
    return keras.Model([a, b], out, name="two_in")


# -- predict / call on wrong data -----------------------------------------------------------------

@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize("shape", [(2, 4, 1), (4,), (1, 1, 1, 4)])
def test_predict_wrong_rank_names_model_and_shapes(jit, shape):
    m = _mlp("rank_m")
    m.compile(jit_compile=jit)
    expected = re.escape("(None, 4)")
    given = re.escape(str(shape))
    with pytest.raises(ValueError, match=rf"model 'rank_m'.*rank.*{expected}.*{given}"):
        m.predict(np.zeros(shape, np.float32))


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "eager"])
def test_predict_wrong_feature_shape(jit):
    m = _mlp("feat_m")
    m.compile(jit_compile=jit)
    with pytest.raises(ValueError, match=r"'feat_m_in'.*model 'feat_m'.*\(None, 4\).*\(3, 5\)"):
        m.predict(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"model 'feat_m'.*\(None, 4\).*\(3, 5\)"):
        m(np.zeros((3, 5), np.float32))


def test_conv_model_wrong_spatial_and_channel_dims():
    m = keras.Sequential([keras.Input((6, 6, 3)), kl.Conv2D(2, 3)], name="convm")
    with pytest.raises(ValueError, match=r"model 'convm'.*\(None, 6, 6, 3\).*\(1, 6, 6, 4\)"):
        m.predict(np.zeros((1, 6, 6, 4), np.float32))
    with pytest.raises(ValueError, match=r"model 'convm'.*\(None, 6, 6, 3\).*\(1, 5, 6, 3\)"):
        m.predict(np.zeros((1, 5, 6, 3), np.float32))


@pytest.mark.parametrize("data,dtype", [
    (np.array([["a", "b", "c", "d"]]), "<U1"),
    (np.zeros((2, 4), np.complex64), "complex64"),
    (np.array([[1.0, 2.0, 3.0, None]], dtype=object), "object"),
    (np.array([[b"a", b"b", b"c", b"d"]]), "S1"),
], ids=["str", "complex", "object", "bytes"])
def test_predict_non_numeric_dtype_is_type_error(data, dtype):
    m = _mlp("dtype_m")
    with pytest.raises(TypeError, match=rf"model 'dtype_m'.*float32.*{dtype}"):
        m.predict(data)
    with pytest.raises(TypeError, match=rf"model 'dtype_m'.*{dtype}"):
        m(data)


def test_predict_ragged_list_is_type_error():
    m = _mlp("ragged_m")
    with pytest.raises(TypeError, match=r"model 'ragged_m'.*cannot convert"):
        m.predict([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])


def test_numeric_non_float_inputs_are_converted():
    m = _mlp("conv_ok")
    ref = m.predict(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(m.predict(np.ones((2, 4), np.int64)), ref)
    np.testing.assert_array_equal(m.predict(np.ones((2, 4), bool)), ref)
    np.testing.assert_allclose(m.predict(np.ones((2, 4), np.float64)), ref, rtol=1e-6)


def test_layer_called_eagerly_on_bad_data():
    d = kl.Dense(2, name="eager_d")
    with pytest.raises(TypeError, match=r"'eager_d'.*<U1"):
        d(np.array([["a", "b"]]))
    d(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"'eager_d'.*axis -1.*3.*\(1, 5\)"):
        d(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"'rank1_d'.*min_ndim=2.*ndim=1.*\(5,\)"):
        kl.Dense(2, name="rank1_d")(np.zeros((5,), np.float32))


@pytest.mark.parametrize("n", [1, 3])
def test_wrong_number_of_inputs_for_multi_input_model(n):
    m = _two_input_model()
    data = [np.zeros((1, 2), np.float32)] * n
    with pytest.raises(ValueError, match=rf"'two_in' expects 2 input.*left.*right.*received {n}"):
        m.predict(data)
    with pytest.raises(ValueError, match=rf"'two_in' expects 2 input.*received {n}"):
        m(data)


def test_single_array_for_multi_input_model():
    m = _two_input_model()
    with pytest.raises(ValueError, match=r"'two_in' expects 2 input.*received 1"):
        m.predict(np.zeros((1, 2), np.float32))


def test_multi_input_model_bad_parts():
    m = _two_input_model()
    with pytest.raises(ValueError, match=r"'two_in'.*missing.*right"):
        m.predict({"left": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match=r"Input 1 \('right'\) of model 'two_in'.*\(None, 3\).*\(1, 2\)"):
        m.predict([np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32)])
    with pytest.raises(ValueError, match=r"'right'.*'two_in'.*batch size 2.*1"):
        m.predict([np.zeros((1, 2), np.float32), np.zeros((2, 3), np.float32)])
    # the right data, in order or by name, works
    out = m.predict({"left": np.ones((1, 2), np.float32), "right": np.zeros((1, 3), np.float32)})
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 0]])


# -- unknown names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: kl.Dense(3, activation="nope"),
    lambda: kl.Conv2D(3, 3, activation="nope"),
    lambda: kl.Activation("nope"),
], ids=["dense", "conv", "activation"])
def test_unknown_activation(make):
    with pytest.raises(ValueError, match=r"Unknown activation 'nope'.*known activations:.*relu"):
        make()


@pytest.mark.parametrize("make", [
    lambda: kl.Dense(3, kernel_initializer="nope"),
    lambda: kl.Dense(3, bias_initializer="nope"),
    lambda: kl.Conv2D(3, 3, kernel_initializer="nope"),
    lambda: kl.BatchNormalization(gamma_initializer="nope"),
    lambda: kl.Dense(3, kernel_initializer={"class_name": "Nope", "config": {}}),
], ids=["dense_kernel", "dense_bias", "conv", "batchnorm", "dict"])
def test_unknown_initializer(make):
    with pytest.raises(ValueError, match=r"(?i)Unknown initializer 'nope'.*glorot_?uniform"):
        make()


def test_unrecognized_keyword():
    with pytest.raises(TypeError, match=r"Dense.*unrecognized keyword.*'kernel_size'"):
        kl.Dense(3, kernel_size=3)


# -- incompatible connections -----------------------------------------------------------------------

def test_dense_on_4d_then_layer_needing_rank_4():
    x = keras.Input((6, 6, 3))
    y = kl.Dense(5, name="d4")(x)
    assert y.shape == (None, 6, 6, 5)  # Dense acts on the last axis, as Keras
    y = kl.GlobalMaxPooling2D(name="gmp")(y)
    assert y.shape == (None, 5)
    with pytest.raises(ValueError, match=r"layer 'mp_after'.*expected ndim=4, found ndim=2.*\(None, 5\)"):
        kl.MaxPooling2D(name="mp_after")(y)


def test_dense_on_3d_then_pooling_in_sequential():
    with pytest.raises(ValueError, match=r"'seq_mp'.*expected ndim=4, found ndim=3.*\(None, 3, 5\)"):
        keras.Sequential([keras.Input((3, 4)), kl.Dense(5), kl.MaxPooling2D(name="seq_mp")])


def test_dense_reused_on_different_feature_size():
    d = kl.Dense(2, name="reused")
    d(keras.Input((3,)))
    with pytest.raises(ValueError, match=r"'reused'.*axis -1.*value 3.*\(None, 4\)"):
        d(keras.Input((4,)))


def test_add_mismatched_shapes():
    with pytest.raises(ValueError, match=r"'bad_add'.*incompatible shapes.*\(None, 3\).*\(None, 4\)"):
        kl.Add(name="bad_add")([keras.Input((3,)), keras.Input((4,))])
    with pytest.raises(ValueError, match=r"'bad_add3'.*\(None, 2, 3\).*\(None, 3, 3\)"):
        kl.Add(name="bad_add3")([keras.Input((2, 3)), keras.Input((3, 3))])


def test_merge_needs_a_list():
    with pytest.raises(ValueError, match=r"list of inputs.*'lonely_add'.*\(None, 3\)"):
        kl.Add(name="lonely_add")(keras.Input((3,)))


def test_concatenate_mismatched_shapes():
    with pytest.raises(ValueError,
                       match=r"'bad_cat'.*Concatenate.*axis \(-1\).*\(None, 3, 2\).*\(None, 4, 5\)"):
        kl.Concatenate(name="bad_cat")([keras.Input((3, 2)), keras.Input((4, 5))])
    with pytest.raises(ValueError, match=r"'bad_cat1'.*axis \(1\).*\(None, 3, 2\).*\(None, 4, 5\)"):
        kl.Concatenate(axis=1, name="bad_cat1")([keras.Input((3, 2)), keras.Input((4, 5))])
    # mismatch only along the concatenation axis is fine
    assert kl.Concatenate(axis=1)([keras.Input((3, 2)), keras.Input((4, 2))]).shape == (None, 7, 2)


def test_conv2d_on_rank_2_input():
    with pytest.raises(ValueError, match=r"layer 'conv_r2'.*expected ndim=4, found ndim=2.*\(None, 5\)"):
        kl.Conv2D(2, 3, name="conv_r2")(keras.Input((5,)))
    with pytest.raises(ValueError, match=r"layer 'conv_seq'.*ndim=4.*ndim=2"):
        keras.Sequential([keras.Input((5,)), kl.Conv2D(2, 3, name="conv_seq")])


def test_conv2d_kernel_larger_than_input():
    with pytest.raises(ValueError, match=r"'conv_big'.*kernel 5x5.*\(None, 3, 3, 1\)"):
        kl.Conv2D(2, 5, name="conv_big")(keras.Input((3, 3, 1)))


def test_reshape_size_mismatch():
    with pytest.raises(ValueError, match=r"'bad_reshape'.*\(2, 3\).*\(4,\)"):
        kl.Reshape((4,), name="bad_reshape")(keras.Input((2, 3)))


def test_batchnorm_axis_out_of_range():
    with pytest.raises(ValueError, match=r"'bn_axis'.*axis 5.*\(None, 3\)"):
        kl.BatchNormalization(axis=5, name="bn_axis")(keras.Input((3,)))


def test_sequential_add_incompatible_layer_after_build():
    m = keras.Sequential([keras.Input((4,)), kl.Dense(3)], name="grow")
    with pytest.raises(ValueError, match=r"'late_conv'.*ndim=4.*\(None, 3\)"):
        m.add(kl.Conv2D(1, 1, name="late_conv"))


# -- functional graph errors ------------------------------------------------------------------------

def test_graph_disconnected():
    a, b = keras.Input((3,), name="in_a"), keras.Input((3,), name="in_b")
    out = kl.Dense(2, name="uses_b")(b)
    with pytest.raises(ValueError, match=r"Graph disconnected.*'in_b'.*'uses_b'.*\['in_a'\]"):
        keras.Model(a, out)


def test_graph_disconnected_deep():
    a, b = keras.Input((3,), name="deep_a"), keras.Input((3,), name="deep_b")
    h = kl.Dense(3, name="deep_h")(a)
    out = kl.Add(name="deep_add")([h, b])
    with pytest.raises(ValueError, match=r"Graph disconnected.*'deep_b'.*'deep_add'"):
        keras.Model(a, out)
    assert keras.Model([a, b], out).count_params() == 12  # with both inputs it is fine


def test_model_outputs_and_inputs_must_be_symbolic():
    a = keras.Input((3,))
    with pytest.raises(ValueError, match=r"outputs must be tensors"):
        keras.Model(a, np.zeros(3))
    with pytest.raises(ValueError, match=r"'not_sym'.*inputs must be keras.Input"):
        keras.Model(np.zeros(3), kl.Dense(2)(a), name="not_sym")


def test_symbolic_tensor_has_no_value():
    with pytest.raises(TypeError, match=r"symbolic KerasTensor"):
        np.asarray(keras.Input((3,)))


# -- set_weights ------------------------------------------------------------------------------------

def _built_dense(name: str) -> kl.Dense:
    d = kl.Dense(3, name=name)
    d.build((None, 4))
    return d


def test_layer_set_weights_wrong_count():
    d = _built_dense("sw_count")
    with pytest.raises(ValueError, match=r"'sw_count'.*expected 2 arrays.*\(4, 3\).*\(3,\).*got 1"):
        d.set_weights([np.zeros((4, 3))])
    with pytest.raises(ValueError, match=r"'sw_count'.*expected 2.*got 3"):
        d.set_weights([np.zeros((4, 3)), np.zeros(3), np.zeros(3)])


def test_layer_set_weights_wrong_shape_changes_nothing():
    d = _built_dense("sw_shape")
    before = d.get_weights()
    with pytest.raises(ValueError, match=r"'sw_shape'.*'sw_shape/bias'.*\(3,\).*\(4,\)"):
        d.set_weights([np.ones((4, 3)), np.ones(4)])
    for old, new in zip(before, d.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(TypeError, match=r"'sw_shape'.*'sw_shape/kernel'.*object"):
        d.set_weights([np.zeros((4, 3), dtype=object), np.zeros(3)])


def test_unbuilt_layer_set_weights():
    with pytest.raises(ValueError, match=r"'sw_unbuilt'.*expected 0 arrays.*got 2"):
        kl.Dense(3, name="sw_unbuilt").set_weights([np.zeros((4, 3)), np.zeros(3)])


def test_model_set_weights_wrong_count_and_shape():
    m = keras.Sequential([keras.Input((4,)), kl.Dense(3, name="swm_d1"), kl.Dense(2, name="swm_d2")],
                         name="swm")
    with pytest.raises(ValueError, match=r"'swm'.*expected 4 arrays.*got 2"):
        m.set_weights([np.zeros((4, 3)), np.zeros(3)])
    before = m.get_weights()
    bad = [np.ones((4, 3)), np.ones(3), np.ones((2, 3)), np.ones(2)]
    with pytest.raises(ValueError, match=r"'swm'.*'swm_d2/kernel'.*\(3, 2\).*\(2, 3\)"):
        m.set_weights(bad)
    for old, new in zip(before, m.get_weights(), strict=True):  # nothing partially assigned
        np.testing.assert_array_equal(old, new)


def test_variable_assign_wrong_shape():
    d = _built_dense("var_assign")
    with pytest.raises(ValueError, match=r"'var_assign/kernel'.*\(4, 3\).*\(3, 4\)"):
        d.kernel.assign(np.zeros((3, 4)))


# -- invalid constructor arguments ------------------------------------------------------------------

@pytest.mark.parametrize("make,pattern", [
    (lambda: kl.Dense(0), r"Dense.*units.*positive.*0"),
    (lambda: kl.Dense(-1), r"Dense.*units.*positive.*-1"),
    (lambda: kl.Dense(2.5), r"Dense.*units.*2\.5"),
    (lambda: kl.Dense(None), r"Dense.*units.*None"),
    (lambda: kl.Conv2D(0, 3), r"Conv2D.*filters.*0"),
    (lambda: kl.Conv2D(2, 3, padding="full"), r"Conv2D.*padding.*'valid' or 'same'.*'full'"),
    (lambda: kl.Conv2D(2, 3, padding="causal"), r"Conv2D.*padding.*'causal'"),
    (lambda: kl.Conv2D(2, 3, strides=0), r"Conv2D.*strides.*positive.*got 0"),
    (lambda: kl.Conv2D(2, 3, strides=(1, 0)), r"Conv2D.*strides.*\(1, 0\)"),
    (lambda: kl.Conv2D(2, 3, strides=(1, 1, 1)), r"Conv2D.*strides.*tuple of 2.*\(1, 1, 1\)"),
    (lambda: kl.Conv2D(2, 0), r"Conv2D.*kernel_size.*got 0"),
    (lambda: kl.Conv2D(2, 2.5), r"Conv2D.*kernel_size.*2\.5"),
    (lambda: kl.Conv2D(2, "3"), r"Conv2D.*kernel_size.*'3'"),
    (lambda: kl.Conv2D(2, 3, strides=2, dilation_rate=2), r"Conv2D.*strides > 1.*dilation_rate > 1"),
    (lambda: kl.Conv2D(2, 3, data_format="channels_first"), r"Conv2D.*channels_first"),
    (lambda: kl.Dropout(1.5), r"Dropout.*rate.*\[0, 1\].*1\.5"),
    (lambda: kl.Dropout(-0.1), r"Dropout.*rate.*-0\.1"),
    (lambda: kl.Dropout(float("nan")), r"Dropout.*rate.*nan"),
    (lambda: kl.Dropout("a"), r"Dropout.*rate.*'a'"),
    (lambda: kl.MaxPooling2D(0), r"MaxPooling2D.*pool_size.*got 0"),
    (lambda: kl.AveragePooling2D((2, 0)), r"AveragePooling2D.*pool_size.*\(2, 0\)"),
    (lambda: kl.MaxPooling2D(2, strides=0), r"MaxPooling2D.*strides.*got 0"),
    (lambda: kl.MaxPooling2D(2, padding="full"), r"MaxPooling2D.*padding.*'full'"),
    (lambda: kl.Reshape((0, 3)), r"Reshape.*target_shape.*\(0, 3\)"),
    (lambda: kl.Reshape((-1, -1)), r"Reshape.*target_shape.*\(-1, -1\)"),
    (lambda: kl.BatchNormalization(axis=[1, 2]), r"BatchNormalization.*axis.*single int"),
    (lambda: keras.Input((-2,)), r"InputLayer.*negative.*\(None, -2\)"),
    (lambda: keras.Input(), r"shape"),
])
def test_invalid_constructor_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_constructor_error_names_the_layer():
    with pytest.raises(ValueError, match=r"Dense 'my_dense'"):
        kl.Dense(0, name="my_dense")
    with pytest.raises(ValueError, match=r"Conv2D 'my_conv'"):
        kl.Conv2D(2, 3, strides=0, name="my_conv")
    with pytest.raises(ValueError, match=r"MaxPooling2D 'my_pool'"):
        kl.MaxPooling2D(0, name="my_pool")
    with pytest.raises(ValueError, match=r"Dropout 'my_drop'"):
        kl.Dropout(2.0, name="my_drop")


def test_valid_boundary_arguments_are_accepted():
    assert kl.Dropout(0).rate == 0.0 and kl.Dropout(1).rate == 1.0
    assert kl.Conv2D(2, np.int64(3)).kernel_size == (3, 3)
    assert kl.Conv2D(2, [3, 1], strides=[2, 1]).strides == (2, 1)
    assert kl.MaxPooling2D(3).strides == (3, 3)  # strides default to pool_size
    assert kl.Conv2D(2, 3, padding="SAME").padding == "same"
