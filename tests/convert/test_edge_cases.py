"""Edge cases of ``fastml convert`` where a wrong ONNX graph used to pass the parity check, or a bad input
ended in a traceback: missing values in scikit-learn trees, exact zeros for LightGBM's zero_as_missing,
an infinite tolerance, PyTorch modules with structured outputs or the wrong input, unusable sample rows."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fastml.convert.frameworks import EDGE_ROWS, PARITY_ROWS, SPLIT_RANGE_ROWS, convert_file
from fastml.errors import InvalidInput


def run(path, x) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    y_reg = (3 * X[:, 0] - 2 * X[:, 2] + X[:, 3] * X[:, 4]).astype(np.float64)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < 0.3] = np.nan
    return X, y, y_reg, X_missing


def _tree_models(rows):
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    X, y, y_reg, X_missing = rows
    return {
        "forest_fitted_clean": (RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y), True),
        "forest_fitted_with_nan": (RandomForestClassifier(n_estimators=10, random_state=0).fit(X_missing, y), True),
        "tree_classifier": (DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y), True),
        "tree_regressor": (DecisionTreeRegressor(max_depth=6, random_state=0).fit(X_missing, y_reg), False),
        "extra_trees": (ExtraTreesRegressor(n_estimators=10, max_depth=6, random_state=0).fit(X, y_reg), False),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "forest_fitted_clean",
        "forest_fitted_with_nan",
        "tree_classifier",
        "tree_regressor",
        "extra_trees",
    ],
)
def test_scikit_learn_trees_send_missing_values_where_scikit_learn_does(rows, tmp_path, kind):
    # The old graphs sent every NaN to the right child; scikit-learn follows tree_.missing_go_to_left.
    X, _, _, X_missing = rows
    model, classifier = _tree_models(rows)[kind]
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(model))
    report = convert_file(src, tmp_path / "model.onnx")
    # The default parity sample now carries rows with zeros and NaNs for models that accept NaN.
    # ... and, for trees, rows within their split ranges.
    assert report.parity_rows == PARITY_ROWS + 2 * (EDGE_ROWS + 1) + SPLIT_RANGE_ROWS
    got = run(tmp_path / "model.onnx", X_missing)
    if classifier:
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(X_missing), atol=1e-5)
        assert np.array_equal(got["label"], model.predict(X_missing))
    else:
        np.testing.assert_allclose(got["variable"].reshape(-1), model.predict(X_missing), rtol=1e-4, atol=1e-4)


def test_lightgbm_zero_as_missing_is_caught_by_the_default_parity_sample(rows, tmp_path):
    # onnxmltools treats an exact 0 as a value, LightGBM (zero_as_missing) as missing. Random normal rows
    # never hold an exact 0, so this wrong graph used to pass parity and be written (and served on load).
    import lightgbm

    X, _, y_reg, _ = rows
    X_zeros = X.copy()
    X_zeros[np.random.default_rng(1).random(X.shape) < 0.3] = 0.0
    model = lightgbm.LGBMRegressor(n_estimators=10, zero_as_missing=True, verbose=-1).fit(X_zeros, y_reg)
    src = tmp_path / "lgbm.pkl"
    src.write_bytes(pickle.dumps(model))
    with pytest.raises(InvalidInput, match="parity check failed: output 'variable'") as info:
        convert_file(src, tmp_path / "lgbm.onnx")
    assert not (tmp_path / "lgbm.onnx").exists()
    # The refusal is real: the graph the converter makes is off on rows with zeros.
    onx = _convert_unchecked(model, X.shape[1])
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    got_off = np.abs(sess.run(None, {"input": X_zeros})[0].reshape(-1) - model.predict(X_zeros)).max()
    assert got_off > 1.0
    assert "differs from the source model by up to" in str(info.value)


def _convert_unchecked(model, n_features):
    from fastml.convert.frameworks import _tree_to_onnx

    return _tree_to_onnx(model, "sklearn", n_features, 17)


def test_a_model_refusing_nan_gets_only_zero_rows(rows, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = rows
    src = tmp_path / "lr.pkl"
    src.write_bytes(pickle.dumps(LogisticRegression().fit(X, y)))
    report = convert_file(src, tmp_path / "lr.onnx")
    assert report.parity_rows == PARITY_ROWS + EDGE_ROWS + 1


@pytest.mark.parametrize("tol", ["atol", "rtol"])
def test_an_infinite_tolerance_is_refused(rows, tmp_path, tol):
    # inf >= 0, so it used to be taken, and it lets every difference through: no parity check at all.
    from sklearn.linear_model import Ridge

    X, _, y_reg, _ = rows
    src = tmp_path / "ridge.pkl"
    src.write_bytes(pickle.dumps(Ridge().fit(X, y_reg)))
    with pytest.raises(InvalidInput, match=f"{tol} must be a finite number >= 0; got inf"):
        convert_file(src, tmp_path / "ridge.onnx", **{tol: float("inf")})
    assert not (tmp_path / "ridge.onnx").exists()


def test_cli_refuses_infinite_atol_in_one_line(rows, tmp_path, capsys):
    from sklearn.linear_model import Ridge

    from fastml.cli import main

    X, _, y_reg, _ = rows
    src = tmp_path / "ridge.pkl"
    src.write_bytes(pickle.dumps(Ridge().fit(X, y_reg)))
    assert main(["convert", str(src), "-o", str(tmp_path / "r.onnx"), "--atol", "inf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastml: error: InvalidInput: parity tolerance atol must be a finite number >= 0; got inf"]


# ----- PyTorch ------------------------------------------------------------------------------------------
class DictOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)

    def forward(self, x):
        y = self.lin(x)
        return {"logits": y, "proba": torch.softmax(y, dim=1)}


class NestedOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)

    def forward(self, x):
        y = self.lin(x)
        return y, (2 * y, y.sum(dim=1))


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3)

    def forward(self, x, z):
        return self.lin(x) + z


@pytest.mark.parametrize("which", [0, 1])
def test_torch_dict_and_nested_outputs_convert_with_parity(rows, tmp_path, which):
    # A dict used to end in AttributeError ('dict' object has no attribute 'detach'), a nested tuple too.
    X = rows[0][:32]
    module = (DictOut, NestedOut)[which]().eval()
    torch.save(module, tmp_path / "m.pt")
    report = convert_file(tmp_path / "m.pt", tmp_path / "m.onnx", sample=X)
    with torch.no_grad():
        out = module(torch.from_numpy(X))
    want = list(out.values()) if which == 0 else [out[0], out[1][0], out[1][1]]
    assert report.outputs == [f"output_{i}" for i in range(len(want))]
    got = run(tmp_path / "m.onnx", X)
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"output_{i}"], w.numpy(), rtol=1e-5, atol=1e-5)


def test_torch_module_with_two_inputs_is_a_clear_error(rows, tmp_path, capsys):
    from fastml.cli import main

    torch.save(TwoInputs().eval(), tmp_path / "two.pt")
    assert main(["convert", str(tmp_path / "two.pt"), "-o", str(tmp_path / "two.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastml: error: InvalidInput: TwoInputs does not run on the sample rows")
    assert "several inputs" in err[0] and not (tmp_path / "two.onnx").exists()


def test_torch_sample_of_the_wrong_width_is_a_clear_error(rows, tmp_path):
    torch.save(NestedOut().eval(), tmp_path / "m.pt")
    np.save(tmp_path / "wide.npy", np.zeros((4, 7), np.float32))
    with pytest.raises(InvalidInput, match=r"does not run on the sample rows .*shape \[4, 7\]"):
        convert_file(tmp_path / "m.pt", tmp_path / "m.onnx", sample=tmp_path / "wide.npy")


# ----- sample rows ------------------------------------------------------------------------------------
def test_sample_rows_the_source_model_refuses_are_a_clear_error(rows, tmp_path):
    from sklearn.linear_model import Ridge

    X, _, y_reg, _ = rows
    src = tmp_path / "ridge.pkl"
    src.write_bytes(pickle.dumps(Ridge().fit(X, y_reg)))
    # 1e300 is inf in float32; scikit-learn raises ValueError on it (a traceback before).
    np.save(tmp_path / "huge.npy", np.full((3, X.shape[1]), 1e300))
    with pytest.raises(InvalidInput, match="the source model does not predict on the sample rows"):
        convert_file(src, tmp_path / "r.onnx", sample=tmp_path / "huge.npy")


def test_complex_sample_rows_are_refused(rows, tmp_path):
    from sklearn.linear_model import Ridge

    X, _, y_reg, _ = rows
    src = tmp_path / "ridge.pkl"
    src.write_bytes(pickle.dumps(Ridge().fit(X, y_reg)))
    # The imaginary parts used to be dropped with only a warning, and parity ran on other numbers.
    np.save(tmp_path / "c.npy", X[:4].astype(np.complex64) * (1 + 1j))
    with pytest.raises(InvalidInput, match="sample rows must be real numbers; got complex64"):
        convert_file(src, tmp_path / "r.onnx", sample=tmp_path / "c.npy")


def test_trees_on_another_scale_are_checked_within_their_split_ranges(tmp_path, monkeypatch):
    """Incomes of 20,000-120,000: random normal rows (and the zero and NaN rows) take the left branch of every
    split, so a graph whose thresholds are all 5 % off passed parity. Rows drawn within the split ranges catch it."""
    from sklearn.tree import DecisionTreeRegressor

    from fastml.convert import frameworks

    rng = np.random.default_rng(0)
    X = rng.uniform(20_000, 120_000, size=(600, 3)).astype(np.float32)
    y = (X[:, 0] > 60_000) + X[:, 1] / 1e5
    src = tmp_path / "income.pkl"
    src.write_bytes(pickle.dumps(DecisionTreeRegressor(max_depth=4, random_state=0).fit(X, y)))
    real = frameworks._tree_to_onnx

    def thresholds_off(*args, **kwargs):
        onx = real(*args, **kwargs)
        for node in onx.graph.node:
            for attr in node.attribute if node.op_type.startswith("TreeEnsemble") else []:
                if attr.name == "nodes_values":
                    values = [v * 1.05 for v in attr.floats]
                    del attr.floats[:]
                    attr.floats.extend(values)
        return onx

    monkeypatch.setattr(frameworks, "_tree_to_onnx", thresholds_off)
    with pytest.raises(InvalidInput, match="parity check failed"):
        convert_file(src, tmp_path / "off.onnx")
    assert not (tmp_path / "off.onnx").exists()
    monkeypatch.undo()
    report = convert_file(src, tmp_path / "income.onnx")
    assert report.parity_rows == PARITY_ROWS + 2 * (EDGE_ROWS + 1) + SPLIT_RANGE_ROWS
    thresholds = frameworks._split_thresholds(onnx.load(tmp_path / "income.onnx"), 3)
    assert all(len(t) for t in thresholds[:2]) and thresholds[0].min() > 20_000
