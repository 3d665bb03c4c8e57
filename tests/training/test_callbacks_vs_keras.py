"""Built-in callbacks against Keras 3: the same model, data and initial weights, fit unshuffled in
kcompile and in Keras, must make the same decisions (stopping epoch, checkpoint files, learning
rates, CSV rows) and print the same messages.

The data is a linear regression whose validation targets differ from the training ones, so with
SGD(0.05) the validation loss falls for two epochs and then rises: 0.8345, 0.7833, 0.8017, 0.8658,
0.9593, ... (every decision below is far from a tie).
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from conftest import assert_close, keras_module

import kcompile
from kcompile import callbacks as kc
from kcompile import layers as kl

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 3)).astype(np.float32)
Y = (X @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
XV = RNG.standard_normal((8, 3)).astype(np.float32)
YV = (XV @ np.array([[1.0], [0.0], [0.5]], np.float32)).astype(np.float32)
W0 = [np.array([[0.3], [-0.2], [0.1]], np.float32), np.zeros(1, np.float32)]
LR = 0.05


def _ours(lr=LR, jit=False):
    """Eager by default (no LLVM compile per model: the callbacks do not care); the learning-rate
    tests run the compiled step, whose learning rate is a graph input."""
    m = kcompile.Sequential([kcompile.Input((3,)), kl.Dense(1)])
    m.compile(kcompile.optimizers.SGD(lr), "mse", jit_compile=jit)
    m.set_weights(W0)
    return m


def _theirs(lr=LR):
    keras = keras_module()
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(lr), "mse", jit_compile=False)  # no XLA compile: faster here
    m.set_weights(W0)
    return m


def _fit(model, callbacks, epochs, validation=True, x=X, y=Y, batch_size=8):
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=callbacks, validation_data=(XV, YV) if validation else None)


def _weights_equal(a, b, rtol=1e-4):
    """Within rtol (kcompile vs Keras), or bit-exact with rtol=0 (a saved/restored copy)."""
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        if rtol == 0:
            np.testing.assert_array_equal(u, np.asarray(v))
        else:
            assert_close(u, np.asarray(v), rtol=rtol, atol=1e-6)


class _Recorder:
    """Weights at the end of every epoch (a mixin for both libraries' Callback)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def test_unshuffled_history_matches_keras_and_val_loss_turns():
    h1 = _fit(_ours(), [], 6)
    h2 = _fit(_theirs(), [], 6)
    h3 = _fit(_ours(jit=True), [], 6)
    np.testing.assert_allclose(h3.history["val_loss"], h2.history["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-5)
    vl = h1.history["val_loss"]
    assert vl[1] < vl[0] and vl[2] > vl[1] and vl[3] > vl[2] + 0.05  # the shape the tests rely on


# -- EarlyStopping -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,epochs,stopped", [
    ({}, 8, 2),
    ({"patience": 2}, 8, 3),
    ({"min_delta": 0.06}, 8, 1),  # 0.7833 is not 0.06 below 0.8345
    ({"mode": "max", "patience": 1}, 8, 1),
    ({"baseline": 0.7, "patience": 2}, 8, 2),  # improvements that miss the baseline keep counting
    ({"start_from_epoch": 3}, 8, 4),
    ({"monitor": "loss"}, 5, 0),  # the training loss keeps falling: never stops
])
def test_early_stopping_stops_where_keras_does(kwargs, epochs, stopped):
    keras = keras_module()
    ours, theirs = kc.EarlyStopping(**kwargs), keras.callbacks.EarlyStopping(**kwargs)
    h1 = _fit(_ours(), [ours], epochs)
    h2 = _fit(_theirs(), [theirs], epochs)
    assert ours.stopped_epoch == theirs.stopped_epoch == stopped
    assert h1.epoch == h2.epoch == list(range(stopped + 1 if stopped else epochs))
    assert ours.wait == theirs.wait
    np.testing.assert_allclose(ours.best, theirs.best, rtol=1e-5)


@pytest.mark.parametrize("patience,epochs", [(2, 8), (20, 5)])  # stops early / runs to the end
def test_early_stopping_restores_best_weights_like_keras(patience, epochs, capsys):
    keras = keras_module()
    kw = {"patience": patience, "restore_best_weights": True, "verbose": 1}
    ours, theirs = _ours(), _theirs()
    rec = type("Rec", (_Recorder, kc.Callback), {})()
    _fit(ours, [kc.EarlyStopping(**kw), rec], epochs)
    out1 = capsys.readouterr().out
    _fit(theirs, [keras.callbacks.EarlyStopping(**kw)], epochs)
    out2 = capsys.readouterr().out
    assert out1 == out2 and "best epoch: 2." in out1
    assert ("early stopping" in out1) == (patience == 2)
    assert not np.array_equal(ours.get_weights()[0], rec.weights[-1][0])  # not the last epoch's
    _weights_equal(ours.get_weights(), rec.weights[1], rtol=0)  # epoch 2's weights, exactly
    _weights_equal(ours.get_weights(), theirs.get_weights())


def test_early_stopping_bad_mode_and_missing_monitor_like_keras():
    keras = keras_module()
    with pytest.warns(UserWarning, match="mode 'bogus' is unknown, fallback to auto mode"):
        ours = kc.EarlyStopping(mode="bogus")
    with pytest.warns(UserWarning, match="mode 'bogus' is unknown"):
        theirs = keras.callbacks.EarlyStopping(mode="bogus")
    assert ours.mode == theirs.mode == "auto"
    # mode "auto" cannot tell the direction of an unknown quantity: an error at the first epoch end
    with pytest.raises(ValueError, match="mode='max'"):
        _fit(_ours(), [kc.EarlyStopping(monitor="val_nope")], 2)
    with pytest.raises(ValueError, match="mode='max'"):
        _fit(_theirs(), [keras.callbacks.EarlyStopping(monitor="val_nope")], 2)
    # with a mode, a missing quantity only warns, and training runs on
    with pytest.warns(UserWarning, match="`val_nope` which is not available"):
        h = _fit(_ours(), [kc.EarlyStopping(monitor="val_nope", mode="min")], 2)
    assert h.epoch == [0, 1]


def test_auto_mode_follows_metric_direction_like_keras():
    keras = keras_module()
    yc = (Y > 0).astype(np.float32)
    pairs = []
    for mod, model in ((kcompile, _ours()), (keras, _theirs())):
        model.compile(mod.optimizers.SGD(LR), "mse", metrics=["accuracy", "mae"], jit_compile=False)
        cbs = [mod.callbacks.EarlyStopping(monitor=m, patience=5, min_delta=0.5)
               for m in ("val_accuracy", "mae", "val_loss")]
        model.fit(X, yc, epochs=1, verbose=0, validation_data=(XV, (YV > 0).astype(np.float32)),
                  callbacks=cbs)
        pairs.append(cbs)
    for ours, theirs in zip(*pairs, strict=True):
        assert ours.min_delta == theirs.min_delta  # negated for "down" quantities, as Keras
    assert [c.min_delta for c in pairs[0]] == [0.5, -0.5, -0.5]


# -- ModelCheckpoint ---------------------------------------------------------------------------

def _checkpoint_run(tmp_path, pattern, epochs=4, **kwargs):
    """Fit both with the same checkpoint pattern; return (our files, Keras's files mapped to our
    suffix, our recorder, our model, their directory)."""
    keras = keras_module()
    d1, d2 = tmp_path / "ours", tmp_path / "keras"
    d1.mkdir()
    d2.mkdir()
    rec = type("Rec", (_Recorder, kc.Callback), {})()
    ours = _ours()
    _fit(ours, [kc.ModelCheckpoint(str(d1 / (pattern + ".weights.npz")), **kwargs), rec], epochs)
    _fit(_theirs(), [keras.callbacks.ModelCheckpoint(str(d2 / (pattern + ".weights.h5")),
                                                     save_weights_only=True, **kwargs)], epochs)
    mine = sorted(os.listdir(d1))
    theirs = sorted(n.removesuffix(".weights.h5") + ".weights.npz" for n in os.listdir(d2))
    return mine, theirs, rec, d1, d2


@pytest.mark.parametrize("save_best_only,expected", [
    (False, ["01", "02", "03", "04"]),
    (True, ["01", "02"]),
])
def test_checkpoint_writes_the_files_keras_writes(tmp_path, save_best_only, expected):
    mine, theirs, rec, d1, _ = _checkpoint_run(tmp_path, "ck-{epoch:02d}-{val_loss:.4f}",
                                               save_best_only=save_best_only)
    assert mine == theirs
    assert [n[3:5] for n in mine] == expected
    for name in mine:  # each file holds the weights at the end of its epoch
        m = _ours()
        m.load_weights(str(d1 / name))
        _weights_equal(m.get_weights(), rec.weights[int(name[3:5]) - 1], rtol=0)


def test_checkpoint_best_only_fixed_name_keeps_best_epoch(tmp_path, capsys):
    mine, theirs, rec, d1, d2 = _checkpoint_run(tmp_path, "best", save_best_only=True, verbose=1)
    out = capsys.readouterr().out
    assert mine == theirs == ["best.weights.npz"]
    m = _ours()
    m.load_weights(str(d1 / "best.weights.npz"))
    _weights_equal(m.get_weights(), rec.weights[1], rtol=0)
    k = _theirs()
    k.load_weights(str(d2 / "best.weights.h5"))
    _weights_equal(m.get_weights(), k.get_weights())
    ours_out, keras_out = out.split("\nEpoch 1: val_loss improved from None")[1:]
    assert ours_out.replace(str(d1), "D").replace(".npz", "") == \
        keras_out.replace(str(d2), "D").replace(".h5", "")
    assert "val_loss did not improve from 0.78" in ours_out


def test_checkpoint_every_n_batches_like_keras(tmp_path):
    # 2 batches an epoch, every 3 batches: after epoch 2's first batch and epoch 3's second
    mine, theirs, *_ = _checkpoint_run(tmp_path, "b-{epoch}-{batch}", epochs=3, save_freq=3)
    assert mine == theirs == ["b-2-1.weights.npz", "b-3-2.weights.npz"]


def test_checkpoint_best_only_without_monitor_warns_and_saves_like_keras(tmp_path):
    with pytest.warns(UserWarning, match="Can save best model only with val_nope available"):
        mine, theirs, *_ = _checkpoint_run(tmp_path, "e{epoch}", epochs=2, monitor="val_nope",
                                           mode="min", save_best_only=True)
    assert mine == theirs == ["e1.weights.npz", "e2.weights.npz"]


@pytest.mark.parametrize("path", ["m.weights.h5", "m.h5", "ckpt"])
def test_checkpoint_rejects_other_formats(path):
    with pytest.raises(ValueError, match=r"must end in `\.keras`"):
        kc.ModelCheckpoint(path)


@pytest.mark.parametrize("path", ["m.keras", "m.h5", "ckpt"])
def test_checkpoint_weights_only_rejects_other_formats(path):
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        kc.ModelCheckpoint(path, save_weights_only=True)


@pytest.mark.parametrize("freq", ["batch", 0, 2.5])
def test_checkpoint_rejects_bad_save_freq(freq):
    with pytest.raises(ValueError, match="save_freq"):
        kc.ModelCheckpoint("x.weights.npz", save_freq=freq)


# -- learning rates ----------------------------------------------------------------------------

def test_learning_rate_scheduler_like_keras(capsys):
    keras = keras_module()

    def schedule(epoch, lr):
        return lr if epoch < 2 else lr * 0.5

    ours, theirs = _ours(jit=True), _theirs()
    h1 = _fit(ours, [kc.LearningRateScheduler(schedule, verbose=1)], 4)
    out1 = capsys.readouterr().out
    h2 = _fit(theirs, [keras.callbacks.LearningRateScheduler(schedule, verbose=1)], 4)
    out2 = capsys.readouterr().out
    assert h1.history["learning_rate"] == h2.history["learning_rate"]
    np.testing.assert_allclose(h1.history["learning_rate"], [0.05, 0.05, 0.025, 0.0125])
    assert out1 == out2 and "setting learning rate to 0.0125" in out1
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    _weights_equal(ours.get_weights(), theirs.get_weights())
    assert ours.optimizer.learning_rate == pytest.approx(0.0125)


def test_learning_rate_scheduler_one_argument_and_bad_output():
    h = _fit(_ours(), [kc.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))], 2)
    np.testing.assert_allclose(h.history["learning_rate"], [0.01, 0.02], rtol=1e-6)
    with pytest.raises(ValueError, match="should be a float"):
        _fit(_ours(), [kc.LearningRateScheduler(lambda epoch, lr: 1)], 1)


def test_learning_rate_scheduler_refuses_a_scheduled_optimizer():
    m = _ours()
    m.compile(kcompile.optimizers.SGD(lambda step: 0.01), "mse", jit_compile=False)
    with pytest.raises(TypeError, match="not settable"):
        _fit(m, [kc.LearningRateScheduler(lambda epoch, lr: lr)], 1)


def test_reduce_lr_on_plateau_like_keras(capsys):
    keras = keras_module()
    kw = {"factor": 0.5, "patience": 1, "min_lr": 0.02, "cooldown": 2, "verbose": 1}
    ours, theirs = _ours(jit=True), _theirs()
    h1 = _fit(ours, [kc.ReduceLROnPlateau(**kw)], 9)
    out1 = capsys.readouterr().out
    h2 = _fit(theirs, [keras.callbacks.ReduceLROnPlateau(**kw)], 9)
    out2 = capsys.readouterr().out
    assert h1.history["learning_rate"] == h2.history["learning_rate"]
    lrs = np.round(h1.history["learning_rate"], 6).tolist()
    assert lrs[:3] == [0.05, 0.05, 0.05] and lrs[-1] == 0.02 and len(set(lrs)) == 3
    assert out1 == out2 and out1.count("ReduceLROnPlateau reducing") == 2
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-5)
    _weights_equal(ours.get_weights(), theirs.get_weights())


def test_reduce_lr_on_plateau_rejects_factor_one():
    with pytest.raises(ValueError, match="factor >= 1.0"):
        kc.ReduceLROnPlateau(factor=1.0)


# -- TerminateOnNaN, CSVLogger, hook order -----------------------------------------------------

def _batch_spy(base, begin=False):
    """Records batch ends (and begins) through the old `on_batch_*` names, which Keras's
    `on_train_batch_*` defaults forward to."""
    class Spy(base):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_batch_begin(self, batch, logs=None):
            if begin:
                self.calls.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            self.calls.append(("end", batch))

    return Spy()


def test_terminate_on_nan_stops_at_the_nan_batch_like_keras(capsys):
    keras = keras_module()
    y = Y.copy()
    y[10:] = np.nan  # batch_size 4: batch 2 (samples 8..11) is the first with a NaN loss
    results = []
    for mod, model in ((kc, _ours()), (keras.callbacks, _theirs())):
        spy = _batch_spy(mod.Callback)
        h = _fit(model, [mod.TerminateOnNaN(), spy], 3, validation=False, y=y, batch_size=4)
        results.append((h.epoch, [b for _, b in spy.calls], capsys.readouterr().out))
        if mod is kc:
            assert all(np.isfinite(w).all() for w in model.get_weights())
    assert results[0] == results[1] == ([0], [0, 1, 2], "Batch 2: Invalid loss, terminating training\n")


def _read_csv(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def _assert_same_csv(a, b):
    assert len(a) == len(b) and a[0] == b[0]
    for ra, rb in zip(a[1:], b[1:], strict=True):
        assert len(ra) == len(rb) and ra[0] == rb[0]
        for ca, cb in zip(ra[1:], rb[1:], strict=True):
            if cb == "NA":
                assert ca == "NA"
            else:
                np.testing.assert_allclose(float(ca), float(cb), rtol=1e-4)


@pytest.mark.parametrize("validation,sep", [(True, ","), (False, ";")])
def test_csv_logger_like_keras(tmp_path, validation, sep):
    keras = keras_module()
    p1, p2 = tmp_path / "ours.csv", tmp_path / "keras.csv"
    _fit(_ours(), [kc.CSVLogger(str(p1), separator=sep)], 3, validation=validation)
    _fit(_theirs(), [keras.callbacks.CSVLogger(str(p2), separator=sep)], 3, validation=validation)
    assert p1.read_bytes().count(b"\r\n") == p2.read_bytes().count(b"\r\n") == 4
    a, b = _read_csv(p1, sep), _read_csv(p2, sep)
    _assert_same_csv(a, b)
    assert a[0] == ["epoch", "loss", "val_loss"]  # without validation: Keras's NA column
    assert [r[0] for r in a[1:]] == ["0", "1", "2"]
    assert all((r[2] == "NA") != validation for r in a[1:])


def test_csv_logger_append_like_keras(tmp_path):
    keras = keras_module()
    p1, p2 = tmp_path / "ours.csv", tmp_path / "keras.csv"
    ours, theirs = _ours(), _theirs()
    for _ in range(2):
        _fit(ours, [kc.CSVLogger(str(p1), append=True)], 2)
        _fit(theirs, [keras.callbacks.CSVLogger(str(p2), append=True)], 2)
    a = _read_csv(p1)
    _assert_same_csv(a, _read_csv(p2))
    assert [r[0] for r in a] == ["epoch", "0", "1", "0", "1"]


def test_csv_logger_with_learning_rate_scheduler(tmp_path):
    p = tmp_path / "lr.csv"
    _fit(_ours(), [kc.LearningRateScheduler(lambda e, lr: lr * 0.5), kc.CSVLogger(str(p))], 2)
    rows = _read_csv(p)
    assert rows[0] == ["epoch", "learning_rate", "loss", "val_loss"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], [0.025, 0.0125], rtol=1e-6)


def _hook_recorder(base):
    class Order(base):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_begin(self, logs=None):
            self.calls.append(("train_begin",))

        def on_train_end(self, logs=None):
            self.calls.append(("train_end",))

        def on_epoch_begin(self, epoch, logs=None):
            self.calls.append(("epoch_begin", epoch))

        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(("epoch_end", epoch, sorted(logs)))

        def on_train_batch_begin(self, batch, logs=None):
            self.calls.append(("batch_begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(("batch_end", batch, sorted(logs)))

    return Order()


def test_callback_hook_order_like_keras():
    keras = keras_module()
    ours, theirs = _hook_recorder(kc.Callback), _hook_recorder(keras.callbacks.Callback)
    _fit(_ours(), [ours], 2, validation=False, batch_size=6)  # 16 rows: 3 batches
    _fit(_theirs(), [theirs], 2, validation=False, batch_size=6)
    assert ours.calls == theirs.calls
    assert len(ours.calls) == 2 + 2 * (2 + 2 * 3)


def test_old_batch_hook_names_are_called_like_keras():
    keras = keras_module()
    got = []
    for base in (kc.Callback, keras.callbacks.Callback):
        cb = _batch_spy(base, begin=True)  # overrides the old names only
        _fit(_ours() if base is kc.Callback else _theirs(), [cb], 1, validation=False, batch_size=6)
        got.append(cb.calls)
    assert got[0] == got[1] == [(k, b) for b in range(3) for k in ("begin", "end")]
    for hook in ("on_predict_begin", "on_predict_end", "on_predict_batch_begin",
                 "on_predict_batch_end", "on_test_begin", "on_test_batch_end"):
        assert callable(getattr(kc.Callback(), hook))
