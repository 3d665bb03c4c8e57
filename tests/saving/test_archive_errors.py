"""Bad `.keras` files and failed saves: every case gives one clear error naming the file (and the
layer where there is one), no model is returned, and the file on disk is left as it was."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import h5py
import numpy as np
import pytest

import kcompile as keras
from kcompile import layers, saving
from kcompile.saving import saving_lib


def _model():
    return keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="relu", name="hidden"),
                             layers.Dense(2, name="out")], name="small")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.keras"
    _model().save(path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite(src, dst, replace: dict[str, bytes | None]) -> None:
    """Copy a zip, replacing (or, with None, dropping) members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in replace:
                if replace[name] is not None:
                    zout.writestr(name, replace[name])
            else:
                zout.writestr(name, zin.read(name))


def _load_fails(path, match: str, exc=ValueError) -> None:
    before = _digest(path)
    with pytest.raises(exc, match=match) as info:
        saving.load_model(path)
    assert str(path.name) in str(info.value)
    assert _digest(path) == before  # the file is never touched


def test_truncated(saved, tmp_path):
    bad = tmp_path / "truncated.keras"
    bad.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    _load_fails(bad, "not a readable .keras archive")


def test_flipped_bytes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo(saving_lib.WEIGHTS)
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    for k in range(16):
        data[middle + k] ^= 0xFF
    bad = tmp_path / "flipped.keras"
    bad.write_bytes(bytes(data))
    _load_fails(bad, "corrupted")


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_missing_member(saved, tmp_path, member):
    bad = tmp_path / f"no_{member.split('.')[0]}.keras"
    _rewrite(saved, bad, {member: None})
    _load_fails(bad, "not a .keras model" if member == "config.json" else "has no model.weights.h5")


def test_zip_that_is_not_a_model(tmp_path):
    bad = tmp_path / "photos.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("cat.jpg", b"\xff\xd8")
    _load_fails(bad, "not a .keras model")


def test_not_a_zip_and_missing_file(tmp_path):
    bad = tmp_path / "text.keras"
    bad.write_text("hello")
    _load_fails(bad, "not a readable .keras archive")
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        saving.load_model(tmp_path / "nope.keras")
    with pytest.raises(ValueError, match=r"only `\.keras` files"):
        saving.load_model(tmp_path / "m.h5")


def test_bad_json(saved, tmp_path):
    bad = tmp_path / "json.keras"
    _rewrite(saved, bad, {"config.json": b"{not json"})
    _load_fails(bad, "not valid JSON")


def _with_weights(saved, dst, edit) -> None:
    with zipfile.ZipFile(saved) as zf:
        buf = io.BytesIO(zf.read(saving_lib.WEIGHTS))
    with h5py.File(buf, "a") as h5:
        edit(h5)
    _rewrite(saved, dst, {saving_lib.WEIGHTS: buf.getvalue()})


def test_weights_with_wrong_shape(saved, tmp_path):
    bad = tmp_path / "shape.keras"

    def edit(h5):
        del h5["layers/dense_1/vars/0"]
        h5["layers/dense_1/vars"].create_dataset("0", data=np.zeros((5, 2), np.float32))

    _with_weights(saved, bad, edit)
    _load_fails(bad, r"layer 'out' \(Dense\): weight 'out/kernel' has shape \(3, 2\) in the model "
                     r"but \(5, 2\) in the file")


def test_weights_missing_for_a_layer(saved, tmp_path):
    bad = tmp_path / "missing.keras"
    _with_weights(saved, bad, lambda h5: h5.__delitem__("layers/dense"))
    _load_fails(bad, r"layer 'hidden' \(Dense\): no weights at 'layers/dense/vars'")


def test_weights_count_mismatch(saved, tmp_path):
    bad = tmp_path / "count.keras"
    _with_weights(saved, bad, lambda h5: h5["layers/dense/vars"].__delitem__("1"))
    _load_fails(bad, r"layer 'hidden' \(Dense\): the file has 1 weight\(s\)")


def test_weights_not_hdf5(saved, tmp_path):
    bad = tmp_path / "h5.keras"
    _rewrite(saved, bad, {saving_lib.WEIGHTS: b"garbage" * 10})
    _load_fails(bad, "not a readable HDF5 file")


def test_config_from_a_newer_keras(saved, tmp_path):
    """An unknown field in a layer config names the layer and the field."""
    with zipfile.ZipFile(saved) as zf:
        config = json.loads(zf.read("config.json"))
    config["config"]["layers"][1]["config"]["flux_capacitor"] = True
    bad = tmp_path / "newer.keras"
    _rewrite(saved, bad, {"config.json": json.dumps(config).encode()})
    _load_fails(bad, r"hidden.*flux_capacitor", (ValueError, TypeError))


def test_failed_save_leaves_the_old_file(saved, monkeypatch):
    before = _digest(saved)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(saving_lib, "_weights_h5_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        _model().save(saved)
    assert _digest(saved) == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary left


def test_save_refuses(tmp_path, saved):
    with pytest.raises(ValueError, match=r"must end in `\.keras`"):
        _model().save(tmp_path / "m.h5")
    with pytest.raises(FileExistsError, match="overwrite=False"):
        _model().save(saved, overwrite=False)


def test_weights_h5_shape_mismatch_changes_nothing(tmp_path):
    model = _model()
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    other = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="hidden"),
                              layers.Dense(5, name="out")], name="small")
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(ValueError, match=r"layer 'out' \(Dense\)"):
        other.load_weights(path)
    for a, b in zip(other.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
