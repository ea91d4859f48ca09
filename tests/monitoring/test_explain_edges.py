"""Explanation edge cases: TreeSHAP must add up to the output it claims to explain (a forest's raw output is
its probability, not the logit), LIME explains the same linked output as SHAP, older shap's per-class lists
are sliced by class, and rows the kernel explainer cannot mix (NaN) or a background of the wrong width are
refused as InvalidInput."""

from __future__ import annotations

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring.explain import OnnxExplainer


@pytest.fixture(scope="module")
def forest(small_models, tmp_path_factory):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    X, y = small_models["X"], small_models["y"]
    rf = RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0).fit(X, y)
    onx = convert_sklearn(
        rf, initial_types=[("input", FloatTensorType([None, 6]))], target_opset=17, options={id(rf): {"zipmap": False}}
    )
    path = tmp_path_factory.mktemp("forest") / "rf.onnx"
    path.write_bytes(onx.SerializeToString())
    return rf, path


def _logit(p):
    return np.log(p / (1 - p))


def test_tree_shap_of_a_forest_in_logit_space_is_not_the_probability_under_a_logit_label(small_models, forest):
    rf, path = forest
    X = small_models["X"]
    bg, rows = X[:30], X[100:104]
    want = _logit(rf.predict_proba(rows.astype(np.float64))[:, 1])
    ex = OnnxExplainer(path, bg, link="logit", source_model=rf)
    # The forest's raw tree output is the probability: TreeSHAP values of it would sum to p, not logit(p).
    with pytest.raises(
        InvalidInput, match=r"TreeSHAP on RandomForestClassifier does not explain logit\(probabilities\[1\]\)"
    ):
        ex.shap_values(rows, algorithm="tree")
    res = ex.shap_values(rows)  # auto: the kernel explainer, which does explain the logit
    assert res.algorithm == "kernel" and res.output == "logit(probabilities[1])"
    np.testing.assert_allclose(res.values.sum(1) + res.base_value, want, atol=1e-5)
    # In probability space the forest's TreeSHAP is exact and kept.
    prob = OnnxExplainer(path, bg, source_model=rf).shap_values(rows)
    assert prob.algorithm == "tree"
    np.testing.assert_allclose(prob.values.sum(1) + prob.base_value, np.exp(want) / (1 + np.exp(want)), atol=1e-6)


def test_tree_shap_slices_older_shaps_per_class_list_by_class(small_models, forest, monkeypatch):
    import shap

    rf, path = forest
    X = small_models["X"]
    bg, rows = X[:30], X[200:203]
    expected = OnnxExplainer(path, bg, source_model=rf, class_index=0).shap_values(rows, algorithm="tree")

    real = shap.TreeExplainer

    class OldShapTreeExplainer(real):
        """shap before 0.45: shap_values is a list with one (rows, features) array per class."""

        def shap_values(self, *args, **kwargs):
            out = np.asarray(super().shap_values(*args, **kwargs))
            return [out[:, :, c] for c in range(out.shape[2])]

    monkeypatch.setattr(shap, "TreeExplainer", OldShapTreeExplainer)
    got = OnnxExplainer(path, bg, source_model=rf, class_index=0).shap_values(rows, algorithm="tree")
    assert got.values.shape == (3, 6)
    np.testing.assert_allclose(got.values, expected.values, atol=1e-12)
    assert got.base_value == pytest.approx(expected.base_value, abs=1e-12)


def test_lime_with_the_logit_link_explains_the_log_odds(small_models):
    from lime.lime_tabular import LimeTabularExplainer

    X, lr = small_models["X"], small_models["logreg"]
    bg, row = X[:50], X[150]
    ours = OnnxExplainer(small_models["logreg_onnx"], bg, link="logit").lime(row, num_features=3, num_samples=1500)
    ref = LimeTabularExplainer(
        bg.astype(np.float64),
        feature_names=[f"f{j}" for j in range(6)],
        mode="regression",
        random_state=0,
        discretize_continuous=True,
    ).explain_instance(
        row.astype(np.float64), lambda Z: _logit(lr.predict_proba(Z)[:, 1]), num_features=3, num_samples=1500
    )
    theirs = ref.as_list()
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    np.testing.assert_allclose([w for _, w in ours], [w for _, w in theirs], rtol=1e-3, atol=1e-4)
    with pytest.raises(InvalidInput, match="classification mode"):
        OnnxExplainer(small_models["logreg_onnx"], bg, link="logit").lime(row, mode="classification")


def test_nan_rows_and_background_are_refused_by_name_for_kernel_shap_and_lime(small_models):
    X = small_models["X"]
    rows = X[100:103].copy()
    rows[1, 2] = np.nan
    ex = OnnxExplainer(small_models["logreg_onnx"], X[:20])
    with pytest.raises(
        InvalidInput, match=r"^kernel SHAP needs finite values: rows row 1, feature 'f2' is nan \(1 rows"
    ):
        ex.shap_values(rows)
    with pytest.raises(InvalidInput, match=r"^LIME needs finite values: rows row 0, feature 'f2' is nan"):
        ex.lime(rows[1])
    bg = X[:20].copy()
    bg[4, 0] = np.inf
    with pytest.raises(InvalidInput, match=r"background row 4, feature 'f0' is inf"):
        OnnxExplainer(small_models["logreg_onnx"], bg).shap_values(X[100:101])


def test_a_background_of_another_width_than_the_model_is_invalid_input(small_models):
    with pytest.raises(InvalidInput, match=r"^background has 5 features but the model's input takes 6$"):
        OnnxExplainer(small_models["logreg_onnx"], small_models["X"][:10, :5])
