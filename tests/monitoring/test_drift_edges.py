"""Edge inputs of drift, profiles, the monitor's table reader and explanations: exact results or a clean
InvalidInput, never a false alarm or a traceback from a library underneath."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring import ReferenceProfile, detect_drift
from fastml.monitoring.cli import read_table
from fastml.monitoring.explain import OnnxExplainer


def test_whole_number_floats_are_the_integer_reference_categories():
    # A NaN turns an integer column float (pandas, Arrow nulls): 1.0 is still category 1.
    ref = {"k": np.array([1, 2, 3] * 30)}
    cur = {"k": np.array([1.0, 2.0, 3.0, np.nan] * 10)}
    col = detect_drift(ref, cur, kinds={"k": "categorical"})["k"]
    assert (col.method, col.score, col.statistic, col.drifted) == ("chisquare", 1.0, 0.0, False)
    assert (col.n_reference, col.n_current) == (90, 30)


def test_nan_threshold_is_refused():
    data = {"x": np.arange(50.0)}
    with pytest.raises(InvalidInput, match=r"^column 'x': threshold nan out of range for 'ks'$"):
        detect_drift(data, data, thresholds=float("nan"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.parquet", b"junk", "Parquet file size is 4 bytes"),
        ("ragged.csv", b"a,c\n1,x\n2\n", "CSV parse error: Expected 2 columns, got 1"),
        ("pickled.npy", None, "Object arrays cannot be loaded when allow_pickle=False"),
    ],
)
def test_unreadable_tables_are_invalid_input(tmp_path, name, content, message):
    p = tmp_path / name
    if content is None:
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        p.write_bytes(content)
    with pytest.raises(InvalidInput, match=rf"^{re.escape(str(p))}: cannot read: .*{re.escape(message)}"):
        read_table(str(p))


def test_a_file_that_is_not_a_profile_is_invalid_input(tmp_path):
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"junk")
    with pytest.raises(InvalidInput, match=rf"^reference profile {bad}: cannot read: "):
        ReferenceProfile.load(bad)
    other = tmp_path / "other.arrow"
    t = pa.table({"a": [1]})
    with pa.OSFile(str(other), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with pytest.raises(InvalidInput, match=rf"^{other} is not a reference profile \(columns \['a'\]\)$"):
        ReferenceProfile.load(other)


def _convert(est, n_features, path, **options):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        est,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=17,
        options={id(est): options} if options else None,
    )
    path.write_bytes(onx.SerializeToString())
    return path


def test_tree_shap_of_a_regressor_adds_up_to_its_prediction(tmp_path):
    from sklearn.datasets import make_regression
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = make_regression(n_samples=300, n_features=4, random_state=0)
    X = X.astype(np.float32)
    reg = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X, y)
    ex = OnnxExplainer(_convert(reg, 4, tmp_path / "reg.onnx"), X[:30], source_model=reg)
    rows = X[50:53]
    tree = ex.shap_values(rows, algorithm="tree")
    kernel = ex.shap_values(rows, algorithm="kernel")
    want = reg.predict(rows.astype(np.float64))
    np.testing.assert_allclose(tree.values.sum(1) + tree.base_value, want, rtol=1e-5)
    np.testing.assert_allclose(tree.values, kernel.values, rtol=1e-4, atol=1e-3)  # same game, exact both


def test_zipmap_output_is_refused_with_a_clear_message(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    rf = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, X[:, 0] > 0)
    path = _convert(rf, 3, tmp_path / "zip.onnx")  # skl2onnx's default: probabilities as a ZipMap
    with pytest.raises(InvalidInput, match=r"no floating-point tensor output .*zipmap=False"):
        OnnxExplainer(path, X)
    with pytest.raises(InvalidInput, match=r"^output 'output_probability' is seq\(map\(int64,tensor\(float\)\)\)"):
        OnnxExplainer(path, X, output="output_probability")


def test_chisquare_on_one_value_in_both_windows_is_no_drift():
    """scipy's chisquare with 0 degrees of freedom gives a NaN p-value, which the JSON report then held."""
    import dataclasses
    import json

    col = {"k": np.array(["a"] * 50)}
    res = detect_drift(col, {"k": np.array(["a"] * 20)}, kinds={"k": "categorical"}, methods="chisquare")["k"]
    assert (res.method, res.score, res.statistic, res.drifted) == ("chisquare", 1.0, 0.0, False)
    json.dumps(dataclasses.asdict(res), allow_nan=False)  # valid JSON: no NaN


def test_an_empty_column_selection_is_refused():
    """``columns=[]`` used to check every column (``columns or ...``)."""
    data = {"x": np.arange(20.0), "y": np.arange(20.0)}
    with pytest.raises(
        InvalidInput, match="^columns is empty: name at least one column, or give None for every column$"
    ):
        detect_drift(data, data, columns=[])
    assert [c.column for c in detect_drift(data, data, columns=["y"]).columns] == ["y"]
