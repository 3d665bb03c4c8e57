"""`kcompile demo`, `kcompile export` and the digits data set."""

import subprocess
import sys

import numpy as np
import pytest

from kcompile.cli import build_convnet, build_mlp, main
from kcompile.datasets import digits


def test_digits_split_is_seeded_and_disjoint() -> None:
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    assert x_train.shape[1:] == (8, 8) and x_train.dtype == np.uint8
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 359
    assert set(np.unique(y_train)) == set(range(10))
    (x2, _), _ = digits.load_data()
    np.testing.assert_array_equal(x_train, x2)


def test_demo_models_have_keras_param_counts() -> None:
    # 8x8 'same' convnet: conv 3*3*1*32+32, conv 3*3*32*64+64, dense 2*2*64*10+10
    assert build_convnet().count_params() == 320 + 18496 + 2570
    assert build_mlp().count_params() == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_demo_trains_the_convnet(capsys) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert 'Model: "digits_convnet"' in out and 'Model: "seed_mlp"' in out
    assert "Total params: 21,386" in out
    acc = float(out.split("test accuracy ")[1].split(",")[0])
    assert acc >= 0.97, f"the demo's convnet reached only {acc:.4f} test accuracy"
    assert "ms per epoch" in out and "eager (NumPy) training" in out
    assert out.count("Epoch ") == 14  # verbose=2 lines after the first (timed-apart) epoch
    assert "rows sum to 1: True" in out
    assert "= matmul(" in out  # the traced IR is printed
    assert out.count("kcompile.compare:") == 2
    assert "same class for 100.0%" in out  # onnxruntime on the exported convnet
    assert "ONNX training-step export: weights after 3 steps differ by at most" in out
    assert 'Model: "adding_lstm"' in out  # the sequence task comes last and meets its threshold
    mse = float(out.split("test MSE ")[1].split()[0])
    assert mse < 0.01, f"the demo's LSTM reached only {mse:.4f} test MSE on the adding problem"


def test_bench_reports_cold_and_cached_compile(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    assert main(["bench", "--model", "seed-mlp", "--batch", "3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "ms cold" in out and "from the on-disk cache" in out and "max abs err" in out


def test_console_script_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "kcompile.cli", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "demo" in result.stdout


MODEL_FILE = """
import kcompile as keras
from kcompile import layers


def make():
    model = keras.Sequential([keras.Input((4,), name="x"), layers.Dense(3, activation="softmax")],
                             name="tiny")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def not_a_model():
    return 42
"""


def test_export_command(tmp_path, capsys) -> None:
    import onnx

    from kcompile.onnx import TrainingSession

    src = tmp_path / "models_for_cli.py"
    src.write_text(MODEL_FILE)
    out = tmp_path / "tiny.onnx"
    assert main(["export", f"{src}:make", "-o", str(out)]) == 0
    assert "tiny inference graph" in capsys.readouterr().out
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["x"]
    assert main(["export", f"{src}:make", "-o", str(out), "--training", "--opset", "18"]) == 0
    assert "tiny training step, opset 18" in capsys.readouterr().out
    ts = TrainingSession(out)
    assert isinstance(ts.train_on_batch(np.ones((2, 4), "float32"), np.array([0, 2])), float)


@pytest.mark.parametrize(("ref", "message"), [
    ("nocolon", "expected a .keras file or 'module:function'"),
    ("m.keras", "no such file"),
    ("missing_file.py:make", "no such file missing_file.py"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("{src}:absent", "has no function 'absent'"),
    ("{src}:not_a_model", "not_a_model() returned int, not a kcompile Model"),
])
def test_export_command_bad_model(tmp_path, capsys, ref, message) -> None:
    src = tmp_path / "models_for_cli.py"
    src.write_text(MODEL_FILE)
    assert main(["export", ref.format(src=src), "-o", str(tmp_path / "o.onnx")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_export_command_bad_opset(tmp_path, capsys) -> None:
    src = tmp_path / "models_for_cli.py"
    src.write_text(MODEL_FILE)
    assert main(["export", f"{src}:make", "-o", str(tmp_path / "o.onnx"), "--opset", "9"]) == 2
    assert "supported opsets are 17 to" in capsys.readouterr().err


def test_commands_on_a_keras_file(tmp_path, capsys) -> None:
    import onnx

    import kcompile as keras
    from kcompile import layers

    model = keras.Sequential([keras.Input((6,), name="x"), layers.Dense(4, activation="relu"),
                              layers.Dense(3, activation="softmax")], name="saved_mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert main(["summary", path]) == 0
    assert 'Model: "saved_mlp"' in capsys.readouterr().out
    assert main(["compare", path, "--batch", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "parity: OK" in out and "onnxruntime" in out
    assert main(["bench", path, "--batch", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms cold" in out and "onnxruntime" in out
    onnx_path = str(tmp_path / "m.onnx")
    assert main(["export", path, "-o", onnx_path, "--training"]) == 0
    assert "saved_mlp training step" in capsys.readouterr().out
    assert "iterations.new" in [o.name for o in onnx.load(onnx_path).graph.output]


def test_command_help_texts(capsys) -> None:
    for command in ("summary", "bench", "compare", "export"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "MODEL" in out and ".keras" in out
