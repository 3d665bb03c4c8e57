"""`kcompile.datasets`: MNIST from a cache (never the network in tests), the offline error, and the
digits split. The download itself is exercised with a fake `urlopen`."""

from __future__ import annotations

import io
import urllib.error

import numpy as np
import pytest

from kcompile.datasets import digits, mnist


def _fake_npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60000, dtype=np.uint8),
             x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 10000, dtype=np.uint8))
    return buf.getvalue()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_DATA_DIR", str(tmp_path / "kc"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path


def test_cached_copy_from_keras_is_used(dirs, monkeypatch):
    (dirs / "keras" / "datasets").mkdir(parents=True)
    (dirs / "keras" / "datasets" / "mnist.npz").write_bytes(_fake_npz())
    monkeypatch.setattr(mnist.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)


def test_offline_error_says_where_to_put_the_file(dirs, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mnist.urllib.request, "urlopen", offline)
    with pytest.raises(OSError, match="Offline") as info:
        mnist.load_data()
    assert str(dirs / "kc" / "mnist.npz") in str(info.value) and mnist.URL in str(info.value)
    assert not list((dirs / "kc").glob("*"))  # no partial file left behind


def test_download_checks_the_hash_and_caches(dirs, monkeypatch):
    data = _fake_npz()
    monkeypatch.setattr(mnist.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(data))
    with pytest.raises(OSError, match="expected SHA-256"):
        mnist.load_data()
    assert not (dirs / "kc" / "mnist.npz").exists()
    monkeypatch.setattr(mnist, "SHA256", mnist.hashlib.sha256(data).hexdigest())
    (x_train, _), _ = mnist.load_data()
    assert x_train.shape == (60000, 28, 28) and (dirs / "kc" / "mnist.npz").is_file()


def test_wrong_cached_file(dirs):
    (dirs / "kc").mkdir()
    np.savez(dirs / "kc" / "mnist.npz", x_train=np.zeros((3, 28, 28), np.uint8),
             y_train=np.zeros(3), x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1))
    with pytest.raises(ValueError, match="x_train has shape"):
        mnist.load_data()
    (dirs / "kc" / "mnist.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not the MNIST npz file"):
        mnist.load_data()


def test_digits_form():
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    assert x_train.shape[1:] == (8, 8) and x_train.dtype == np.uint8
    assert len(x_train) + len(x_test) == 1797 and len(y_train) == len(x_train)
    assert set(np.unique(y_test)) <= set(range(10))
