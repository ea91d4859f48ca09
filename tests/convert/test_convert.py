"""fastml.convert: one ONNX graph per pipeline, ORT-optimised copy, parity within tolerance."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from fastml.convert import InputSpec, check_parity, compile_onnx, onnx_feed, run_onnx, to_onnx
from fastml.errors import InvalidInput

# Documented parity tolerance of the pipeline's export stage: |onnx - source| <= ATOL + RTOL * |source|.
ATOL, RTOL = 1e-4, 1e-3


def _frame(n=300, seed=0, categorical=True):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=4, n_informative=3, n_redundant=0, random_state=seed)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    if categorical:
        df["kind"] = np.where(X[:, 0] > 0, "hi", "lo")
    df.loc[::13, "c"] = np.nan
    return df, y, X[:, 0] * 2.0 + X[:, 1] ** 2


def _pipeline(spec, est, *, scaled=True, derived=()):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from fastml.convert import DerivedFeatures

    num_steps = ([("derived", DerivedFeatures(derived))] if derived else []) + [("impute", SimpleImputer())]
    if scaled:
        num_steps.append(("scale", StandardScaler()))
    cols = list(range(len(spec.numeric))) if spec.layout == "matrix" else list(spec.numeric)
    parts = [("num", Pipeline(num_steps), cols)]
    if spec.categorical:
        parts.append(
            (
                "cat",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32),
                list(spec.categorical),
            )
        )
    return Pipeline([("pre", ColumnTransformer(parts, sparse_threshold=0.0)), ("model", est)])


def _families(task):
    from lightgbm import LGBMClassifier, LGBMRegressor
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from xgboost import XGBClassifier, XGBRegressor

    if task == "classification":
        return {
            "logreg": (LogisticRegression(), True),
            "rf": (RandomForestClassifier(n_estimators=10, random_state=0), False),
            "hgb": (HistGradientBoostingClassifier(max_iter=15), False),
            "xgb": (XGBClassifier(n_estimators=15, n_jobs=1), False),
            "lgbm": (LGBMClassifier(n_estimators=15, verbose=-1, n_jobs=1), False),
        }
    return {
        "ridge": (Ridge(), True),
        "rf": (RandomForestRegressor(n_estimators=10, random_state=0), False),
        "hgb": (HistGradientBoostingRegressor(max_iter=15), False),
        "xgb": (XGBRegressor(n_estimators=15, n_jobs=1), False),
        "lgbm": (LGBMRegressor(n_estimators=15, verbose=-1, n_jobs=1), False),
    }


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("layout", ["matrix", "columns"])
def test_every_family_converts_within_tolerance(task, layout, tmp_path):
    df, y_cls, y_reg = _frame(categorical=layout == "columns")
    spec = InputSpec(("a", "b", "c", "d"), ("kind",) if layout == "columns" else ())
    X = spec.model_input(df)
    y = y_cls if task == "classification" else y_reg
    for name, (est, scaled) in _families(task).items():
        pipe = _pipeline(spec, est, scaled=scaled, derived=(("div", 0, 1), ("log1p", 3, -1))).fit(X, y)
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(to_onnx(pipe, spec).SerializeToString())
        report = check_parity(pipe, path, X, spec, task=task, atol=ATOL, rtol=RTOL)
        assert report.ok, (name, report.failures)
        assert report.rows == len(X) and report.max_abs_diff <= 1e-4, name
        sess = ort.InferenceSession(str(path))
        outs = [o.name for o in sess.get_outputs()]
        assert outs == (["label", "probabilities"] if task == "classification" else ["variable"]), name
        if layout == "matrix":
            assert [(i.name, i.shape) for i in sess.get_inputs()] == [("input", [None, 4])]
        else:
            assert [i.name for i in sess.get_inputs()] == ["a", "b", "c", "d", "kind"]


def test_derived_features_match_numpy():
    from sklearn.pipeline import Pipeline

    from fastml.convert import DerivedFeatures
    from fastml.convert.sklearn_export import sklearn_to_onnx

    X = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, -0.5], [0.0, 8.0, 1.0]], dtype=np.float32)
    ops = (("add", 0, 1), ("sub", 0, 2), ("mul", 1, 2), ("div", 0, 1), ("log1p", 1, -1), ("square", 2, -1))
    t = DerivedFeatures(ops).fit(X)
    got = t.transform(X)
    a, b, c = X.T
    expected = np.column_stack([X, a + b, a - c, b * c, a / b, np.log1p(b), c * c])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    from sklearn.linear_model import LinearRegression

    pipe = Pipeline([("pre", t), ("model", LinearRegression().fit(got, np.arange(3.0)))])
    spec = InputSpec(("a", "b", "c"))
    onx = sklearn_to_onnx(pipe, spec)
    sess = ort.InferenceSession(onx.SerializeToString())
    np.testing.assert_allclose(sess.run(None, {"input": X})[0].ravel(), pipe.predict(X), rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidInput, match="column index 7 out of range"):
        DerivedFeatures((("add", 0, 7),)).fit(X)


def test_compiled_copy_same_outputs_and_parity_detects_mismatch(tmp_path):
    from sklearn.linear_model import LogisticRegression

    df, y, _ = _frame(categorical=False)
    spec = InputSpec(("a", "b", "c", "d"))
    X = spec.model_input(df)
    pipe = _pipeline(spec, LogisticRegression()).fit(X, y)
    raw = tmp_path / "m.onnx"
    raw.write_bytes(to_onnx(pipe, spec).SerializeToString())
    opt = compile_onnx(raw, tmp_path / "m.opt.onnx")
    assert opt.is_file() and not (tmp_path / "m.opt.onnx.tmp").exists()
    a, b = run_onnx(raw, X, spec), run_onnx(opt, X, spec)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    with pytest.raises(InvalidInput, match="compile level 'all'"):
        compile_onnx(raw, tmp_path / "x.onnx", level="all")

    other = _pipeline(spec, LogisticRegression(C=1e-4)).fit(X, y)  # a different source model
    report = check_parity(other, opt, X, spec, task="classification", atol=ATOL, rtol=RTOL)
    assert not report.ok
    assert "probabilities off by up to" in report.failures[0]
    assert report.max_abs_diff > 0.01


def test_torch_mlp_pipeline_exports_as_one_graph(tmp_path):
    from fastml.pipeline.torch_mlp import TorchMLPClassifier, TorchMLPRegressor

    df, y, y_reg = _frame(n=200)
    spec = InputSpec(("a", "b", "c", "d"), ("kind",))
    X = spec.model_input(df)
    for est, task, target in (
        (TorchMLPClassifier(epochs=5, hidden_units=8), "classification", y),
        (TorchMLPRegressor(epochs=5, hidden_units=8), "regression", y_reg),
    ):
        pipe = _pipeline(spec, est).fit(X, target)
        path = tmp_path / f"{task}.onnx"
        path.write_bytes(to_onnx(pipe, spec).SerializeToString())
        report = check_parity(pipe, path, X, spec, task=task, atol=ATOL, rtol=RTOL)
        assert report.ok, report.failures
        out = run_onnx(path, X, spec)
        if task == "classification":
            assert out["label"].dtype == np.int64 and set(np.unique(out["label"])) <= {0, 1}
        else:
            assert out["variable"].shape == (200, 1)


def test_onnx_feed_layouts():
    df, _, _ = _frame(n=5)
    spec = InputSpec(("a", "b"), ("kind",))
    feed = onnx_feed(spec.model_input(df), spec)
    assert set(feed) == {"a", "b", "kind"} and feed["a"].shape == (5, 1) and feed["kind"].dtype.kind in "UO"
    m = InputSpec(("a", "b"))
    assert onnx_feed(m.model_input(df), m)["input"].shape == (5, 2)
    with pytest.raises(InvalidInput, match=r"input table lacks columns \['zz'\]"):
        InputSpec(("zz",)).model_input(df)


def test_import_stays_light():
    code = (
        "import sys, fastml, fastml.convert, fastml.pipeline, fastml.pipeline.cli;"
        "print(sorted(m for m in ('torch','optuna','skl2onnx','sklearn','onnx','pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _nan_regressor_graph(path):
    """A regression graph whose every prediction is NaN (0 / 0 per row)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Sub", ["input", "input"], ["zero"]),
        helper.make_node("Div", ["zero", "zero"], ["nan"]),
        helper.make_node("ReduceSum", ["nan", "axes"], ["variable"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


class _Constant:
    def __init__(self, value):
        self.value = value

    def predict(self, x):
        return np.full(len(x), self.value)


def test_parity_fails_when_the_graph_answers_nan(tmp_path):
    """NaN predictions against finite ones are off (a NaN compares False with any tolerance); NaN on both sides
    is agreement."""
    path = tmp_path / "nan.onnx"
    _nan_regressor_graph(path)
    spec = InputSpec(numeric=("a", "b"))
    x = np.ones((5, 2), np.float32)
    report = check_parity(_Constant(1.0), path, x, spec, task="regression", atol=ATOL, rtol=RTOL)
    assert not report.ok
    assert report.failures == [f"5 of 5 predictions off by up to inf (tolerance {ATOL:g} + {RTOL:g}*|y|)"]
    assert report.max_abs_diff == float("inf")
    agree = check_parity(_Constant(np.nan), path, x, spec, task="regression", atol=ATOL, rtol=RTOL)
    assert agree.ok and agree.max_abs_diff == 0.0
