"""Odd and bad inputs to compiled models: empty and huge batches, sizes that are not multiples of the
vector width or register tile, wrong rank/shape/dtype, non-contiguous and unaligned arrays. Compiled
results must equal the eager ones; bad inputs must raise (ValueError/TypeError), never crash."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile as keras
from kcompile import layers
from kcompile.codegen.llvm.compiler import compile_graph
from kcompile.ir.interpret import run as interpret

RTOL, ATOL = 1e-4, 1e-5


pytestmark = pytest.mark.usefixtures("module_cache_dir")


@pytest.fixture(scope="module")
def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((37,)), layers.Dense(70, activation="relu"),
                             layers.Dense(19, activation="softmax")])


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((9, 7, 3)), layers.Conv2D(13, (3, 2), padding="same"),
                              layers.BatchNormalization(), layers.Activation("relu"),
                              layers.MaxPooling2D(), layers.Conv2D(7, 3, padding="same",
                                                                   activation="tanh"),
                              layers.GlobalAveragePooling2D(), layers.Dense(5)])
    bn = model.layers[1]
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 13).astype(np.float32) for _ in range(4)])
    return model


@pytest.fixture(scope="module")
def two_io():
    keras.utils.set_random_seed(2)
    a, b = keras.Input((6, 5, 3)), keras.Input((11,))
    g = layers.GlobalMaxPooling2D()(layers.Conv2D(4, 3, activation="relu")(a))
    h = layers.Dense(4, activation="sigmoid")(b)
    return keras.Model([a, b], [layers.Add()([g, h]), layers.Flatten()(a)])


def _eager(model, x):
    """The eager reference, leaving the model compiled (jit on) afterwards."""
    model.compile(jit_compile=False)
    try:
        return model.predict(x, batch_size=4096)
    finally:
        model.compile(jit_compile=True)


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _flat(out):
    return list(out) if isinstance(out, list | tuple) else [out]


def _assert_same(got, want):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g = np.asarray(g)
        assert g.shape == w.shape and g.dtype == np.float32, (g.shape, w.shape, g.dtype)
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


# -- batch sizes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture,out_shape", [("mlp", (19,)), ("cnn", (5,))])
def test_batch_zero_returns_empty_output_of_the_right_shape(request, fixture, out_shape) -> None:
    model = request.getfixturevalue(fixture)
    in_shape = tuple(model.inputs[0].shape[1:])
    model.compile(jit_compile=True)
    x = np.zeros((0, *in_shape), np.float32)
    for out in (model.predict(x), model(x), model.predict_on_batch(x)):
        assert isinstance(out, np.ndarray)
        assert out.shape == (0, *out_shape) and out.dtype == np.float32
    assert _eager(model, x).shape == (0, *out_shape)


def test_batch_zero_multi_io(two_io) -> None:
    two_io.compile(jit_compile=True)
    xs = [np.zeros((0, 6, 5, 3), np.float32), np.zeros((0, 11), np.float32)]
    for outs in (two_io.predict(xs), two_io(xs)):
        assert [o.shape for o in outs] == [(0, 4), (0, 90)]


@pytest.mark.parametrize("batch", [1, 2, 5, 6, 7, 13, 17, 31, 33, 1030])
def test_batch_sizes_mlp(mlp, batch) -> None:
    x = _rand((batch, 37), batch)
    want = _eager(mlp, x)
    _assert_same(mlp(x), want)
    _assert_same(mlp.predict(x, batch_size=batch), want)
    _assert_same(mlp.predict(x), want)  # chunks of 32 with a ragged tail


@pytest.mark.parametrize("batch", [1, 3, 1030])
def test_batch_sizes_cnn(cnn, batch) -> None:
    x = _rand((batch, 9, 7, 3), batch)
    want = _eager(cnn, x)
    _assert_same(cnn(x), want)
    _assert_same(cnn.predict(x, batch_size=1030), want)


def test_growing_and_shrinking_batches_reuse_one_compile(mlp) -> None:
    batches = (1030, 1, 64, 3, 1030, 0, 2)
    data = [_rand((batch, 37), 100 + batch) for batch in batches]
    want = [_eager(mlp, x) for x in data]
    mlp.compile(jit_compile=True)
    for x, expected in zip(data, want, strict=True):
        out = mlp(x)
        assert out.shape == (x.shape[0], 19)
        _assert_same(out, expected)
    assert len(mlp._executors) == 1


@pytest.mark.parametrize("features,units", [(1, 1), (5, 7), (13, 6), (17, 16), (33, 97), (250, 3)])
def test_dense_sizes_not_multiples_of_the_tile(features, units) -> None:
    keras.utils.set_random_seed(features)
    model = keras.Sequential([keras.Input((features,)), layers.Dense(units, activation="gelu"),
                              layers.Dense(units + 1)])
    for batch in (1, 6, 7, 23):
        x = _rand((batch, features), batch)
        _assert_same(model(x), _eager(model, x))


@pytest.mark.parametrize("h,w,c,filters", [(1, 1, 1, 1), (5, 11, 7, 13), (13, 3, 13, 17), (2, 9, 2, 33)])
def test_conv_sizes_not_multiples_of_the_tile(h, w, c, filters) -> None:
    keras.utils.set_random_seed(h * w * c)
    model = keras.Sequential([keras.Input((h, w, c)), layers.Conv2D(filters, 3, padding="same",
                                                                    activation="relu"),
                              layers.AveragePooling2D(2, padding="same"),
                              layers.Conv2D(5, (2, 1), padding="same"), layers.Flatten()])
    for batch in (1, 7):
        x = _rand((batch, h, w, c), batch)
        _assert_same(model(x), _eager(model, x))


# -- wrong rank / shape / dtype --------------------------------------------------------------------
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("bad_shape,match", [((4,), "rank"), ((4, 37, 1), "rank"), ((4, 36), "incompatible"),
                                             ((4, 38), "incompatible"), ((), "rank")])
def test_wrong_rank_or_feature_shape_raises(mlp, jit, bad_shape, match) -> None:
    mlp.compile(jit_compile=jit)
    mlp(np.zeros((2, 37), np.float32))  # warm the fast path first
    x = np.zeros(bad_shape, np.float32)
    for fn in (mlp, mlp.predict, mlp.predict_on_batch):
        with pytest.raises(ValueError, match=match):
            fn(x)


def test_wrong_image_shape_raises(cnn) -> None:
    cnn.compile(jit_compile=True)
    for shape in [(2, 9, 7), (2, 7, 9, 3), (2, 9, 7, 4), (2, 9, 7, 3, 1)]:
        with pytest.raises(ValueError):
            cnn(np.zeros(shape, np.float32))
        with pytest.raises(ValueError):
            cnn.predict(np.zeros(shape, np.float32))


def test_multi_input_batch_mismatch_and_count_raise(two_io) -> None:
    two_io.compile(jit_compile=True)
    with pytest.raises(ValueError, match="batch size"):
        two_io([np.zeros((3, 6, 5, 3), np.float32), np.zeros((2, 11), np.float32)])
    with pytest.raises(ValueError, match="input"):
        two_io.predict([np.zeros((3, 6, 5, 3), np.float32)])
    with pytest.raises(ValueError):
        two_io([np.zeros((3, 11), np.float32), np.zeros((3, 6, 5, 3), np.float32)])


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_])
def test_other_numeric_dtypes_are_converted(mlp, dtype) -> None:
    x = (_rand((7, 37), 3) * 4).astype(dtype)
    want = _eager(mlp, x.astype(np.float32))
    for fn in (mlp, mlp.predict, mlp.predict_on_batch):
        _assert_same(fn(x), want)


def test_python_lists_are_converted(mlp) -> None:
    x = _rand((3, 37), 4)
    _assert_same(mlp(x.tolist()), _eager(mlp, x))


@pytest.mark.parametrize("bad", [
    np.array([["a"] * 37] * 2),
    np.full((2, 37), "1.0", dtype=object),
    np.empty((2, 37), dtype=object),
    np.zeros((2, 37), np.complex64),
    np.zeros((2, 37), "datetime64[s]"),
], ids=["str", "object-str", "object-none", "complex", "datetime"])
def test_non_numeric_dtypes_raise_type_error(mlp, bad) -> None:
    for jit in (True, False):
        mlp.compile(jit_compile=jit)
        mlp(np.zeros((2, 37), np.float32))
        for fn in (mlp, mlp.predict, mlp.predict_on_batch):
            with pytest.raises(TypeError):
                fn(bad)
    mlp.compile(jit_compile=True)


def test_ragged_list_raises(mlp) -> None:
    with pytest.raises((TypeError, ValueError)):
        mlp([[0.0] * 37, [0.0] * 36])


# -- memory layout ---------------------------------------------------------------------------------
def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """Views of the same values with other memory layouts."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1], *x.shape[2:]), x.dtype)
    wide[:, ::2] = x
    rows = np.zeros((2 * x.shape[0], *x.shape[1:]), x.dtype)
    rows[::2] = x
    buf = bytearray(x.nbytes + 1)
    unaligned = np.ndarray(x.shape, x.dtype, buffer=buf, offset=1)
    unaligned[...] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    return {"strided-columns": wide[:, ::2], "strided-rows": rows[::2],
            "fortran": np.asfortranarray(x), "reversed": x[::-1].copy()[::-1],
            "unaligned": unaligned, "readonly": readonly,
            "broadcast": np.broadcast_to(x[:1], x.shape)}


@pytest.mark.parametrize("layout", ["strided-columns", "strided-rows", "fortran", "reversed",
                                    "unaligned", "readonly", "broadcast"])
def test_non_contiguous_and_odd_layouts_are_converted(mlp, cnn, layout) -> None:
    for model, shape in ((mlp, (7, 37)), (cnn, (7, 9, 7, 3))):
        x = _rand(shape, 5)
        view = _layouts(x)[layout]
        expected_input = np.ascontiguousarray(view)
        if layout != "broadcast":
            np.testing.assert_array_equal(expected_input, x)
        else:
            assert view.strides[0] == 0
        want = _eager(model, expected_input)
        before = view.copy()
        for fn in (model, model.predict, model.predict_on_batch):
            _assert_same(fn(view), want)
        np.testing.assert_array_equal(view, before)  # the input is not written to


def test_non_contiguous_multi_input(two_io) -> None:
    xa = np.asfortranarray(_rand((5, 6, 5, 3), 6))
    wide = _rand((5, 22), 7)
    xb = wide[:, 1::2]
    want = _eager(two_io, [np.ascontiguousarray(xa), np.ascontiguousarray(xb)])
    _assert_same(two_io([xa, xb]), want)
    _assert_same(two_io.predict([xa, xb]), want)


def test_non_finite_values_stay_in_their_sample(mlp) -> None:
    x = _rand((7, 37), 8)
    x[0, 3] = np.nan
    x[1, :] = np.inf
    x[2, 5] = -np.inf
    mlp.compile(jit_compile=True)
    got = mlp(x)
    with np.errstate(all="ignore"):
        want = _eager(mlp, x)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    _assert_same(got[3:], _eager(mlp, x[3:]))


# -- the low-level CompiledGraph -------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_two_io(two_io):
    probe = [np.zeros((1, 6, 5, 3), np.float32), np.zeros((1, 11), np.float32)]
    sigs, st = two_io.input_signature(probe)
    lw = two_io._lowered_for(sigs, st, False)
    cg = compile_graph(lw.graph)
    params = [v.value for v in lw.variables]
    return lw, cg, params


def test_low_level_run_before_set_params_raises(compiled_two_io) -> None:
    lw, _, _ = compiled_two_io
    fresh = compile_graph(lw.graph)
    xs = [np.zeros((1, 6, 5, 3), np.float32), np.zeros((1, 11), np.float32)]
    with pytest.raises(RuntimeError, match="set_params"):
        fresh.run(xs)
    with pytest.raises(RuntimeError, match="set_params"):
        fresh(xs)


def _good(batch=3):
    return [_rand((batch, 6, 5, 3), 9), _rand((batch, 11), 10)]


def _bad_feeds():
    a, b = _good()
    buf = bytearray(b.nbytes + 1)
    unaligned = np.ndarray(b.shape, b.dtype, buffer=buf, offset=1)
    unaligned[...] = b
    return {
        "too-few": ([a], ValueError),
        "too-many": ([a, b, b], ValueError),
        "float64": ([a.astype(np.float64), b], ValueError),
        "int32": ([a, b.astype(np.int32)], ValueError),
        "wrong-feature": ([a, b[:, :10].copy()], ValueError),
        "wrong-rank": ([a[..., 0].copy(), b], ValueError),
        "extra-dim": ([a[..., None].copy(), b], ValueError),
        "batch-mismatch": ([a, b[:2].copy()], ValueError),
        "non-contiguous": ([a, np.zeros((3, 22), np.float32)[:, ::2]], ValueError),
        "fortran": ([np.asfortranarray(a), b], ValueError),
        "broadcast": ([a, np.broadcast_to(b[:1], b.shape)], ValueError),
        "reversed": ([a[::-1], b], ValueError),
        "unaligned": ([a, unaligned], ValueError),
        "list": ([a, b.tolist()], TypeError),
        "none": ([a, None], TypeError),
        "scalar": ([a, 1.0], TypeError),
    }


@pytest.mark.parametrize("case", list(_bad_feeds()))
def test_low_level_run_rejects_bad_feeds(compiled_two_io, case) -> None:
    lw, cg, params = compiled_two_io
    cg.set_params(params)
    feeds, err = _bad_feeds()[case]
    with pytest.raises(err):
        cg.run(feeds)
    if case == "unaligned":
        # the __call__ fast path does not check alignment (kernels only need 4-byte loads, which
        # x86 does unaligned): it may raise, but if it runs the result must be right
        try:
            outs = cg(feeds)
        except ValueError:
            pass
        else:
            for got, want in zip(outs, interpret(lw.graph, [np.ascontiguousarray(f) for f in feeds],
                                                 params), strict=True):
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    else:
        with pytest.raises(err):
            cg(feeds)
    # still healthy afterwards
    good = _good()
    for got, want in zip(cg.run(good), interpret(lw.graph, good, params), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_low_level_run_batch_zero_and_large(compiled_two_io) -> None:
    lw, cg, params = compiled_two_io
    cg.set_params(params)
    outs = cg.run(_good(0))
    assert [o.shape for o in outs] == [(0, 4), (0, 90)]
    assert [o.shape for o in cg(_good(0))] == [(0, 4), (0, 90)]
    big = _good(1030)
    for got, want in zip(cg(big), interpret(lw.graph, big, params), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_low_level_rng_key_is_checked() -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((10,)), layers.Dense(8), layers.Dropout(0.5)])
    x = _rand((4, 10), 11)
    sigs, st = model.input_signature(x)
    lw = model._lowered_for(sigs, st, True)
    assert lw.needs_rng_key
    cg = compile_graph(lw.graph)
    params = [v.value for v in lw.variables]
    cg.set_params(params)
    key = np.array([1, 2], np.uint32)
    np.testing.assert_allclose(cg.run([x, key])[0], interpret(lw.graph, [x, key], params)[0],
                               rtol=RTOL, atol=ATOL)
    for bad in (np.array([1, 2], np.int64), np.array([1, 2, 3], np.uint32),
                np.array([[1, 2]], np.uint32), np.array([1.0, 2.0], np.float32)):
        with pytest.raises(ValueError):
            cg.run([x, bad])
    with pytest.raises(ValueError):
        cg.run([x])
