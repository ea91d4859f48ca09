"""Every framework in, ONNX out: scikit-learn, XGBoost, LightGBM and PyTorch files converted with a parity
check against the source model, served and registered directly (converted on load, cached by content)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest

from fastml.convert.frameworks import convert_file, converted_path, load_source
from fastml.errors import InvalidInput


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import make_classification, make_regression

    X, y = make_classification(n_samples=300, n_features=6, random_state=0)
    Xr, yr = make_regression(n_samples=300, n_features=6, noise=0.1, random_state=0)
    return X.astype(np.float32), y, Xr.astype(np.float32), yr


def run(path, x) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def _sklearn_models(data):
    import lightgbm
    import xgboost
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, Xr, yr = data
    return {
        "pipeline": (
            make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=5, random_state=0)).fit(X, y),
            X,
        ),
        "ridge": (Ridge().fit(Xr, yr), Xr),
        "xgb_classifier": (xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(X, y), X),
        "xgb_regressor": (xgboost.XGBRegressor(n_estimators=8, max_depth=3).fit(Xr, yr), Xr),
        "lgbm_classifier": (lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(X, y), X),
        "lgbm_regressor": (lightgbm.LGBMRegressor(n_estimators=8, verbose=-1).fit(Xr, yr), Xr),
    }


@pytest.mark.parametrize(
    "kind", ["pipeline", "ridge", "xgb_classifier", "xgb_regressor", "lgbm_classifier", "lgbm_regressor"]
)
@pytest.mark.parametrize("writer", ["pickle", "joblib"])
def test_scikit_learn_api_models_convert_with_parity(data, tmp_path, kind, writer):
    from sklearn.base import is_classifier

    model, x = _sklearn_models(data)[kind]
    src = tmp_path / "model.bin"
    if writer == "pickle":
        src.write_bytes(pickle.dumps(model))
    else:
        joblib.dump(model, src)
    report = convert_file(src, tmp_path / "model.onnx", sample=x)
    assert report.format == "sklearn" and report.parity_rows == len(x)
    got = run(tmp_path / "model.onnx", x)
    if is_classifier(model):
        # Tensors, not ZipMap's list of dicts.
        assert got["probabilities"].shape == (len(x), 2)
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), atol=1e-4)
        assert np.array_equal(got["label"], model.predict(x))
    else:
        np.testing.assert_allclose(got["variable"].reshape(-1), model.predict(x), rtol=1e-3, atol=1e-3)


def test_native_boosters_convert_with_parity(data, tmp_path):
    import lightgbm
    import xgboost

    X, y, _, _ = data
    xgb = xgboost.train({"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(X, y), 6)
    xgb.save_model(tmp_path / "xgb.json")
    lgb = lightgbm.train({"objective": "binary", "verbose": -1}, lightgbm.Dataset(X, y), 6)
    lgb.save_model(tmp_path / "lgb.txt")
    r1 = convert_file(tmp_path / "xgb.json", tmp_path / "xgb.onnx", sample=X)
    r2 = convert_file(tmp_path / "lgb.txt", tmp_path / "lgb.onnx", sample=X)
    assert (r1.format, r2.format) == ("xgboost", "lightgbm")
    np.testing.assert_allclose(
        run(tmp_path / "xgb.onnx", X)["probabilities"][:, 1], xgb.predict(xgboost.DMatrix(X)), atol=1e-5
    )
    np.testing.assert_allclose(run(tmp_path / "lgb.onnx", X)["probabilities"][:, 1], lgb.predict(X), atol=1e-5)


@pytest.mark.parametrize("form", ["torch.save", "torchscript"])
def test_torch_modules_convert_with_parity(data, tmp_path, form):
    import torch

    X = data[0]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1))
    src = tmp_path / "net.pt"
    if form == "torch.save":
        torch.save(net, src)
    else:
        torch.jit.script(net).save(str(src))
    np.save(tmp_path / "sample.npy", X[:50])
    report = convert_file(src, tmp_path / "net.onnx", sample=tmp_path / "sample.npy")
    assert report.format == "torch" and report.outputs == ["output"]
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(run(tmp_path / "net.onnx", X)["output"], want, atol=1e-5)  # batch size is dynamic


def test_unsupported_file_names_the_file_and_writes_nothing(tmp_path):
    tmp_path = tmp_path / "work"  # the test's FASTML_HOME is a sibling
    tmp_path.mkdir()
    bad = tmp_path / "notes.pkl"
    bad.write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(InvalidInput, match=r"notes\.pkl.*dict.*not a supported model"):
        convert_file(bad, tmp_path / "out.onnx")
    text = tmp_path / "readme.bin"
    text.write_text("hello")
    with pytest.raises(InvalidInput, match=r"readme\.bin.* is not a supported model file"):
        load_source(text)
    assert not (tmp_path / "out.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pkl", "readme.bin"]


def test_an_output_that_is_the_source_file_is_refused(data, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(LogisticRegression().fit(X, y)))
    before = src.read_bytes()
    # The ONNX was renamed over its path: the pickle was gone, replaced by its conversion.
    for out in (src, tmp_path / "." / "model.pkl"):
        with pytest.raises(InvalidInput, match=r"is the source model file: the ONNX would replace it"):
            convert_file(src, out)
    assert src.read_bytes() == before


def test_parity_failure_names_the_max_abs_difference_and_writes_nothing(data, tmp_path):
    from sklearn.linear_model import LinearRegression

    _, _, Xr, yr = data
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    # Huge targets, fitted in float64: the float32 graph cannot match float64 scikit-learn to a zero tolerance.
    # (Fitted on the float32 rows, scikit-learn keeps float32 coefficients and predicts in float32, which ONNX
    # Runtime's LinearRegressor matched exactly on one machine.)
    model = LinearRegression().fit(Xr.astype(np.float64), yr * 1e6 + 1e9)
    src = tmp_path / "lr.pkl"
    src.write_bytes(pickle.dumps(model))
    with pytest.raises(
        InvalidInput,
        match=r"parity check failed: output 'variable' differs from the source model by up to [0-9.e+-]+ \(max abs difference",
    ):
        convert_file(src, tmp_path / "lr.onnx", sample=Xr, atol=0.0, rtol=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.pkl"]


def test_load_model_and_register_accept_a_pickle(data, tmp_path, fastml_home):
    from sklearn.linear_model import LogisticRegression

    import fastml
    from fastml.registry import Registry

    X, y, _, _ = data
    model = LogisticRegression().fit(X, y)
    src = tmp_path / "clf.joblib"
    joblib.dump(model, src)
    with fastml.load_model(src) as served:
        got = served.predict(X[:20])
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X[:20]), atol=1e-5)
    cached = list((fastml_home / "converted").glob("*.onnx"))
    assert len(cached) == 1 and converted_path(src) == cached[0]  # converted once, by content hash
    mv = Registry().register("clf", src)
    with fastml.load_model(f"clf:{mv.version}") as served:
        assert np.array_equal(served.predict(X[:20])["label"], model.predict(X[:20]))
    assert Registry().source_artifact_path(f"clf:{mv.version}").read_bytes() == src.read_bytes()


def test_cli_convert(data, tmp_path, fastml_home):
    from sklearn.tree import DecisionTreeClassifier

    X, y, _, _ = data
    src = tmp_path / "tree.pkl"
    src.write_bytes(pickle.dumps(DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)))
    out = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "convert", str(src), "--output", str(tmp_path / "t.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "converted sklearn DecisionTreeClassifier" in out.stdout and "max abs difference" in out.stdout
    assert Path(tmp_path / "t.onnx").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "convert", str(tmp_path / "t.onnx.nope"), "-o", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "t.onnx.nope" in bad.stderr


def _coded_rows(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Two integer-coded categorical columns (0..3 and 10..12) and one numeric column, float32; a label."""
    rng = np.random.default_rng(7)
    x = np.column_stack([rng.integers(0, 4, n), rng.integers(10, 13, n), rng.normal(size=n)]).astype(np.float32)
    return x, ((x[:, 0] == 2) ^ (x[:, 2] > 0)).astype(int)


def _encoded_pipelines():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    return {
        "onehot_then_logistic": (make_pipeline(OneHotEncoder(), LogisticRegression()), [0, 1]),
        "column_transformer": (
            make_pipeline(
                ColumnTransformer([("cat", OneHotEncoder(), [0, 1]), ("num", StandardScaler(), [2])]),
                RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
            ),
            [0, 1, 2],
        ),
        "ordinal_in_a_pipeline_step": (
            make_pipeline(
                ColumnTransformer([("cat", make_pipeline(OrdinalEncoder()), slice(0, 2))], remainder="passthrough"),
                LogisticRegression(),
            ),
            [0, 1, 2],
        ),
    }


@pytest.mark.parametrize("name", ["onehot_then_logistic", "column_transformer", "ordinal_in_a_pipeline_step"])
def test_pipelines_that_encode_integer_categories_convert_with_the_default_sample(tmp_path, name):
    # Before: the default parity rows were random normal values, which a one-hot encoder with
    # handle_unknown="error" refuses ("Unknown Category"), so neither `fastml convert` without --sample nor
    # convert-on-load could convert such a pipeline. The sample now draws those columns from the categories.
    model, cols = _encoded_pipelines()[name]
    x, y = _coded_rows()
    model.fit(x[:, cols], y)
    src = tmp_path / f"{name}.pkl"
    src.write_bytes(pickle.dumps(model))
    report = convert_file(src, tmp_path / f"{name}.onnx")
    assert report.parity_rows > 0 and report.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x[:, cols])})
    np.testing.assert_array_equal(got[0], model.predict(x[:, cols]))
    np.testing.assert_allclose(got[1], model.predict_proba(x[:, cols]), atol=1e-5)


def test_edge_rows_leave_encoded_columns_alone():
    from fastml.convert.frameworks import _with_edge_rows

    x = np.full((70, 3), 5.0, np.float32)
    plain = _with_edge_rows(x, nan=True)
    assert (plain[70] == 0).all() and np.isnan(plain[70 + 1 + 64]).all()  # the all-zero and all-NaN rows
    kept = _with_edge_rows(x, nan=True, keep=[1])
    assert (kept[:, 1] == 5.0).all()  # column 1 keeps its (category) values in every edge row
    np.testing.assert_array_equal(np.delete(kept, 1, axis=1), np.delete(plain, 1, axis=1))


def test_a_column_transformer_picking_columns_by_name_is_refused_in_words(tmp_path):
    # Before: skl2onnx's "Unable to find column name 'city' among names ['input']", naming neither the cause
    # (the ONNX model takes one float matrix) nor the fix.
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = pd.DataFrame({"city": ["a", "b", "c", "a"] * 25, "x": np.arange(100, dtype=float)})
    model = make_pipeline(
        ColumnTransformer([("cat", OneHotEncoder(), ["city"]), ("num", StandardScaler(), ["x"])]),
        LogisticRegression(),
    ).fit(df, (df.x % 3 == 0).astype(int))
    src = tmp_path / "named.pkl"
    src.write_bytes(pickle.dumps(model))
    with pytest.raises(InvalidInput, match=r"selects columns by name \('city'\).*select columns by position"):
        convert_file(src, tmp_path / "named.onnx")
    assert not (tmp_path / "named.onnx").exists()
