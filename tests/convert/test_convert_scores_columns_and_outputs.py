"""Conversions that answered wrongly or refused their input badly: a binary SVC's scores in reversed columns
(their arg-max the other class on every row); ColumnTransformer positions given as masks, numpy arrays or
negative numbers, and LightGBM categorical features, refused though they convert exactly; output paths that
failed after the conversion (or wrote a file where a directory was meant); a parity failure that must leave
nothing behind; Keras models whose sample rows, named outputs or file suffix ended in an error; and converted
files left readable by their owner alone."""

from __future__ import annotations

import pickle

import numpy as np
import onnxruntime as ort
import pytest

from fastml.convert import frameworks
from fastml.convert.frameworks import convert_file, converted_path
from fastml.errors import InvalidInput


def run(path, x) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.where(X[:, 0] - 0.5 * X[:, 1] > 0, 7, 3)  # class labels that are not 0..K-1
    return X, y


def _svms():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, NuSVC

    return {
        "svc": lambda: SVC(),
        "linear_svc_kernel": lambda: SVC(kernel="linear"),
        "nu_svc": lambda: NuSVC(),
        "scaled_svc": lambda: make_pipeline(StandardScaler(), SVC()),
    }


@pytest.mark.parametrize("kind", list(_svms()))
def test_binary_svm_scores_are_in_class_order(rows, tmp_path, kind):
    # skl2onnx gives a binary SVC's scores as [d, -d]: column 0 (classes_[0]'s, here 3) rose with class 7, so
    # the arg-max of the served scores (how deployments and monitoring read a list of class scores) named the
    # other class on every row, and the parity check accepted it. Perceptron, SGDClassifier... give [-d, d].
    X, y = rows
    model = _svms()[kind]().fit(X, y)
    src = tmp_path / "svm.pkl"
    src.write_bytes(pickle.dumps(model))
    xs = np.random.default_rng(7).normal(size=(400, 4)).astype(np.float32)
    d = model.decision_function(xs)
    for onnx_path in (convert_file(src, tmp_path / "svm.onnx").output, converted_path(src)):
        got = run(onnx_path, xs)
        np.testing.assert_array_equal(got["label"], model.predict(xs))
        assert got["scores"].shape == (400, 2)
        np.testing.assert_allclose(got["scores"][:, 1], d, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(got["scores"][:, 0], -d, atol=1e-4, rtol=1e-3)
        np.testing.assert_array_equal(model.classes_[np.argmax(got["scores"], axis=1)], model.predict(xs))


def _column_selections():
    return {
        "boolean_mask": (np.array([False, True, True, True, False]), np.array([True, False, False, False, True])),
        "negative_positions": ([-4, -3, -2], [0, -1]),
        "numpy_positions": (np.arange(1, 4), np.array([0, 4])),
        "open_and_negative_slices": (slice(1, -1), slice(-1, None)),
    }


@pytest.mark.parametrize("selection", list(_column_selections()))
def test_column_transformer_positions_in_any_form_convert(tmp_path, selection):
    # scikit-learn reads all of these as column positions; skl2onnx took a boolean or a numpy integer for a
    # column name ("Unable to find column name np.True_ among names ['input']") and refused a negative one
    # ("Input 1 (i=-1, end=5) is not available"), so the pipeline could not be converted at all.
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)

    def table(n):
        return np.c_[rng.integers(0, 4, n), rng.normal(50, 10, (n, 3)), rng.integers(0, 3, n)].astype(np.float32)

    X = table(500)
    y = np.where((X[:, 0] == 2) ^ (X[:, 1] > 50) ^ (X[:, 4] == 1), 7, 3)
    numeric, categorical = _column_selections()[selection]
    pre = ColumnTransformer([("num", StandardScaler(), numeric), ("cat", OneHotEncoder(), categorical)])
    model = make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(X, y)
    src = tmp_path / "ct.pkl"
    src.write_bytes(pickle.dumps(model))
    convert_file(src, tmp_path / "ct.onnx")
    xs = table(400)
    got = run(tmp_path / "ct.onnx", xs)
    np.testing.assert_array_equal(got["label"], model.predict(xs))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(xs), atol=1e-5)


@pytest.mark.parametrize("form", ["classifier_pickle", "booster_text"])
def test_lightgbm_categorical_features_convert(tmp_path, form):
    # LightGBM reads a categorical column's value as an integer category and the graph compares it with each
    # category for equality: they agree on categories, but the parity rows held random reals there (2.37 is
    # category 2 to LightGBM, no category to the graph), so every such model failed the parity check.
    lightgbm = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)

    def table(n):
        return np.c_[rng.normal(0, 100, n), rng.integers(0, 8, n), rng.integers(0, 3, n)].astype(np.float32)

    X = table(3000)
    y = (X[:, 1].astype(int) % 3 + (X[:, 0] > 20) + (X[:, 2] == 1)) % 3
    xs = table(500)
    if form == "classifier_pickle":
        model = lightgbm.LGBMClassifier(n_estimators=15, verbose=-1).fit(X, y, categorical_feature=[1, 2])
        src = tmp_path / "model.pkl"
        src.write_bytes(pickle.dumps(model))
        want_p, want_label = model.predict_proba(xs), model.predict(xs)
    else:
        params = {"objective": "multiclass", "num_class": 3, "verbose": -1}
        booster = lightgbm.train(params, lightgbm.Dataset(X, label=y, categorical_feature=[1, 2]), 15)
        src = tmp_path / "model.txt"
        booster.save_model(src)
        want_p = booster.predict(xs)
        want_label = want_p.argmax(axis=1)
    convert_file(src, tmp_path / "model.onnx")
    got = run(tmp_path / "model.onnx", xs)
    np.testing.assert_allclose(got["probabilities"], want_p, atol=1e-5)
    np.testing.assert_array_equal(got["label"], want_label)


def test_a_graph_that_disagrees_with_the_source_fails_parity_and_writes_nothing(
    rows, tmp_path, monkeypatch, fastml_home
):
    # A converter that hands back another model's graph (here: the same pipeline fitted on the other rule):
    # the parity check must refuse it, and neither the output nor a temporary file may be left.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = rows
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    other = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, np.where(y == 7, 3, 7))
    real = frameworks._tree_to_onnx
    monkeypatch.setattr(frameworks, "_tree_to_onnx", lambda obj, *a, **k: real(other, *a, **k))
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(model))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InvalidInput, match=r"model\.pkl.*parity check failed"):
        convert_file(src, out_dir / "model.onnx")
    assert list(out_dir.iterdir()) == []
    with pytest.raises(InvalidInput, match="parity check failed"):
        converted_path(src)
    assert not list((fastml_home / "converted").glob("*.onnx"))


def test_output_paths_that_cannot_be_the_onnx_file_exit_2_before_converting(rows, tmp_path, monkeypatch, capsys):
    # "model.pkl/x.onnx" and "notes.txt/" ended, after the whole conversion, in FileExistsError or
    # NotADirectoryError (exit status 1); "new/" was written as a file named "new".
    from sklearn.linear_model import LogisticRegression

    from fastml.cli import main

    X, y = rows
    work = tmp_path / "work"  # FASTML_HOME is in tmp_path too
    work.mkdir()
    src = work / "model.pkl"
    src.write_bytes(pickle.dumps(LogisticRegression().fit(X, y)))
    before = src.read_bytes()
    (work / "notes.txt").write_text("notes\n")
    converted = []
    real = frameworks._convert
    monkeypatch.setattr(frameworks, "_convert", lambda *a, **k: converted.append(a) or real(*a, **k))
    cases = {
        f"{src}/x.onnx": f"{str(src)!r} is not a directory",
        f"{work}/notes.txt/a/b.onnx": f"{str(work / 'notes.txt')!r} is not a directory",
        f"{src}/": "names a directory (trailing slash)",
        f"{work}/new/": "names a directory (trailing slash)",
    }
    for output, message in cases.items():
        capsys.readouterr()
        assert main(["convert", str(src), "--output", output]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fastml: error: InvalidInput: output {output!r}") and message in err, err
    assert converted == []
    assert sorted(p.name for p in work.iterdir()) == ["model.pkl", "notes.txt"]
    assert src.read_bytes() == before and (work / "notes.txt").read_text() == "notes\n"


def test_xgboost_dart_model_is_refused_naming_its_booster(rows, tmp_path):
    # The hint said "an XGBoost booster='gblinear' model" for a dart model, a tree booster.
    xgboost = pytest.importorskip("xgboost")
    X, y = rows
    model = xgboost.XGBClassifier(n_estimators=5, booster="dart").fit(X, (y == 7).astype(int))
    src = tmp_path / "dart.pkl"
    src.write_bytes(pickle.dumps(model))
    with pytest.raises(InvalidInput, match="booster='dart'"):
        convert_file(src, tmp_path / "dart.onnx")
    assert not (tmp_path / "dart.onnx").exists()


# ----- Keras (the [tensorflow] extra) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    pytest.importorskip("tf2onnx", reason="the [tensorflow] extra: pip install -e '.[tensorflow]'")
    pytest.importorskip("tensorflow", reason="the [tensorflow] extra: pip install -e '.[tensorflow]'")
    import keras

    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("keras")
    seq = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)])
    seq.save(d / "seq.keras")
    inp = keras.Input(shape=(4,))
    named = keras.Model(inp, {"zeta": keras.layers.Dense(2)(inp), "alpha": keras.layers.Dense(1)(inp)})
    named.save(d / "named.keras")
    return d, seq, named


@pytest.mark.slow
def test_keras_sample_rows_that_do_not_fit_are_refused_in_words(keras_files, tmp_path):
    # They were tracebacks (FileNotFoundError, ValueError: exit status 1) or ONNX Runtime's message about an
    # invalid dimension, not an error naming the sample.
    d, _, _ = keras_files
    np.save(tmp_path / "narrow.npy", np.zeros((5, 3), np.float32))
    np.save(tmp_path / "words.npy", np.array([["a"] * 4] * 3))
    (tmp_path / "notes.txt").write_text("not an array\n")
    cases = {
        "missing.npy": r"sample '.*missing\.npy' is not a readable \.npy array",
        "notes.txt": r"sample '.*notes\.txt' is not a readable \.npy array",
        "narrow.npy": r"input shape \['rows', 4\]; got shape \[5, 3\]",
        "words.npy": "sample rows must be float32 values",
    }
    for name, message in cases.items():
        with pytest.raises(InvalidInput, match=message):
            convert_file(d / "seq.keras", tmp_path / "seq.onnx", sample=tmp_path / name)
        assert not (tmp_path / "seq.onnx").exists()
    with pytest.raises(InvalidInput, match=r"got shape \[0, 4\]"):
        convert_file(d / "seq.keras", tmp_path / "seq.onnx", sample=np.zeros((0, 4), np.float32))


@pytest.mark.slow
def test_keras_model_with_named_outputs_converts_in_key_order(keras_files, tmp_path):
    # A functional model returning a dict of outputs failed the parity check ("output 'output_0' has 256 values,
    # the source model 1"): the dict was taken as one output. Its outputs come in key order, as a SavedModel's.
    d, _, named = keras_files
    report = convert_file(d / "named.keras", tmp_path / "named.onnx")
    assert report.outputs == ["output_0", "output_1"]
    xs = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    got = run(tmp_path / "named.onnx", xs)
    want = named(xs)
    np.testing.assert_allclose(got["output_0"], np.asarray(want["alpha"]), atol=1e-5)
    np.testing.assert_allclose(got["output_1"], np.asarray(want["zeta"]), atol=1e-5)


@pytest.mark.slow
def test_keras_file_without_its_suffix_converts_and_loads(keras_files, tmp_path):
    # The format is told from the contents, but Keras loads only a ".keras"/".h5" path: a renamed file (or one
    # without a suffix) was "a Keras model file that Keras cannot load: File format not supported".
    import shutil

    import fastml

    d, seq, _ = keras_files
    renamed = tmp_path / "model.bin"
    shutil.copyfile(d / "seq.keras", renamed)
    bare = tmp_path / "model"
    shutil.copyfile(d / "seq.keras", bare)
    seq.save(tmp_path / "legacy.h5")
    shutil.copyfile(tmp_path / "legacy.h5", tmp_path / "legacy.weights")
    xs = np.random.default_rng(4).normal(size=(20, 4)).astype(np.float32)
    want = np.asarray(seq(xs))
    for src in (renamed, tmp_path / "legacy.weights"):
        convert_file(src, tmp_path / "out.onnx")
        np.testing.assert_allclose(run(tmp_path / "out.onnx", xs)["output"], want, atol=1e-5)
    with fastml.load_model(str(bare)) as served:
        np.testing.assert_allclose(served.predict(xs)["output"], want, atol=1e-5)


def test_a_converted_model_and_its_cache_entry_get_the_mode_the_umask_gives(rows, tmp_path):
    import os
    import stat

    from sklearn.linear_model import LogisticRegression

    X, y = rows
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(LogisticRegression().fit(X, y)))
    old = os.umask(0o022)
    try:
        convert_file(tmp_path / "m.pkl", tmp_path / "m.onnx")
        cached = converted_path(tmp_path / "m.pkl", home=tmp_path / "home")
    finally:
        os.umask(old)
    # mkstemp's 0600 left them unreadable to a server running as another user
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".m.onnx.*"))  # no temporary file left beside the output
