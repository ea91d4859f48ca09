"""TensorFlow/Keras in: a tiny Keras model trained here, saved as a .keras file and as a SavedModel directory,
converted with tf2onnx, parity-checked against TensorFlow, and served by fastml's engine.

TensorFlow is the optional ``[tensorflow]`` extra (about 1.4 GB): scripts/test.sh installs it, and without it
these tests skip saying how to install it. Importing TensorFlow takes seconds, hence the slow mark."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from fastml.errors import InvalidInput

pytest.importorskip("tf2onnx", reason="TensorFlow conversion is the [tensorflow] extra: pip install -e '.[tensorflow]'")
tf = pytest.importorskip("tensorflow", reason="the [tensorflow] extra: pip install -e '.[tensorflow]'")

pytestmark = pytest.mark.slow
FEATURES = 5


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """``(model, .keras path, SavedModel dir)`` of a two-layer classifier fitted on a rule it can learn."""
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(256, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    model = keras.Sequential(
        [keras.Input(shape=(FEATURES,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, "sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "clf.keras")
    model.export(str(d / "saved_model"), verbose=False)
    return model, d / "clf.keras", d / "saved_model"


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


@pytest.mark.parametrize("source", ["keras", "saved_model"])
def test_conversion_passes_parity_and_matches_tensorflow(keras_model, tmp_path, source):
    from fastml.convert.frameworks import convert_file

    model, keras_file, saved_model = keras_model
    path = keras_file if source == "keras" else saved_model
    report = convert_file(path, tmp_path / "model.onnx")
    assert report.format == "tensorflow" and report.parity_rows == 256
    assert report.model_class == ("Sequential" if source == "keras" else "SavedModel")
    assert report.inputs == ["input"] and report.outputs == ["output"]
    assert report.max_abs_diff < 1e-5
    x = rows(100, seed=7)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_keras_file_is_served_converted_on_load(keras_model, fastml_home):
    import fastml

    model, keras_file, _ = keras_model
    x = rows(40, seed=9)
    served = fastml.load_model(keras_file)
    try:
        out = served.predict({"input": x})
    finally:
        served.close()
    np.testing.assert_allclose(out["output"], model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert len(list((fastml_home / "converted").glob("*.onnx"))) == 1  # cached by content hash


def test_saved_model_directory_is_a_serve_target(keras_model):
    # What `fastml serve DIR` does with a SavedModel directory: one model named after it, converted on load.
    from fastml.serving.manager import ModelManager

    model, _, saved_model = keras_model
    manager = ModelManager([str(saved_model)])
    try:
        assert manager.load_all() == []
        entry = manager.get("saved_model")
        x = rows(25, seed=11)
        out = entry.model.predict({"input": x})
    finally:
        manager.close()
    np.testing.assert_allclose(out["output"], model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_fastml_convert_command_on_a_saved_model_directory(keras_model, tmp_path, capsys):
    from fastml.cli import main

    _, _, saved_model = keras_model
    out = tmp_path / "sm.onnx"
    assert main(["convert", str(saved_model), "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["format"] == "tensorflow" and report["parity_rows"] == 256 and out.is_file()


def test_a_directory_that_is_not_a_saved_model_is_refused(tmp_path):
    from fastml.convert.frameworks import convert_file

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(InvalidInput, match=r"notes.* is a directory but not a TensorFlow SavedModel"):
        convert_file(tmp_path / "notes", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
