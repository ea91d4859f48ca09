"""Explanations: SHAP over ONNX Runtime agrees with shap on the source model; TreeSHAP agrees in margin
space; LIME and global importance point at the features that matter."""

from __future__ import annotations

import numpy as np
import pytest

from fastml.errors import InvalidInput, NotFound
from fastml.monitoring.explain import OnnxExplainer


def test_onnx_kernel_shap_equals_shap_on_source_model(small_models):
    import shap

    X = small_models["X"]
    bg, rows = X[:40], X[100:106]
    ours = OnnxExplainer(small_models["gbt_onnx"], bg).shap_values(rows)
    assert ours.algorithm == "kernel" and ours.output == "probabilities[1]"
    f = lambda Z: small_models["gbt"].predict_proba(Z)[:, 1]  # noqa: E731
    ke = shap.KernelExplainer(f, bg.astype(np.float64))
    theirs = ke.shap_values(rows.astype(np.float64), nsamples=2**6, silent=True)
    np.testing.assert_allclose(ours.values, theirs, atol=1e-5)  # ORT computes in float32
    assert ours.base_value == pytest.approx(float(np.ravel(ke.expected_value)[0]), abs=1e-6)
    # local accuracy: contributions add up to the prediction
    np.testing.assert_allclose(ours.values.sum(1) + ours.base_value, f(rows.astype(np.float64)), atol=1e-5)


def test_tree_shap_on_source_model_equals_model_agnostic_in_margin_space(small_models):
    X = small_models["X"]
    bg, rows = X[:40], X[200:205]
    agnostic = OnnxExplainer(small_models["gbt_onnx"], bg, link="logit").shap_values(rows)
    tree = OnnxExplainer(small_models["gbt_onnx"], bg, link="logit", source_model=small_models["gbt"]).shap_values(rows)
    assert tree.algorithm == "tree"
    np.testing.assert_allclose(tree.values, agnostic.values, atol=1e-4)
    assert tree.base_value == pytest.approx(agnostic.base_value, abs=1e-4)
    prob_tree = OnnxExplainer(small_models["gbt_onnx"], bg, source_model=small_models["gbt"]).shap_values(rows)
    p = small_models["gbt"].predict_proba(rows.astype(np.float64))[:, 1]
    np.testing.assert_allclose(prob_tree.values.sum(1) + prob_tree.base_value, p, atol=1e-6)


def test_linear_model_shap_is_coefficient_times_centred_input(small_models):
    X = small_models["X"]
    bg, rows = X[:50], X[300:303]
    res = OnnxExplainer(small_models["logreg_onnx"], bg, link="logit").shap_values(rows)
    want = small_models["logreg"].coef_[0] * (rows - bg.mean(0))
    np.testing.assert_allclose(res.values, want, atol=1e-4)


def test_global_importance_is_mean_abs_shap_and_lime_finds_the_dominant_feature(small_models):
    X, lr = small_models["X"], small_models["logreg"]
    names = [f"x{j}" for j in range(6)]
    bg, rows = X[:50], X[:80]
    ex = OnnxExplainer(small_models["logreg_onnx"], bg, feature_names=names, link="logit")
    imp = ex.global_importance(rows)
    want = np.abs(lr.coef_[0] * (rows - bg.mean(0))).mean(0)  # linear model: closed form
    assert list(imp) == [names[j] for j in np.argsort(-want)]
    np.testing.assert_allclose([imp[n] for n in names], want, atol=1e-4)
    dominant = names[int(np.argmax(want))]
    ex_prob = OnnxExplainer(small_models["logreg_onnx"], bg, feature_names=names)
    lime = ex_prob.lime(X[150], num_features=3, num_samples=1500)
    assert len(lime) == 3 and dominant in lime[0][0]
    assert lime == ex_prob.lime(X[150], num_features=3, num_samples=1500)  # seeded: reproducible


def test_explainer_validation(small_models, tmp_path):
    X = small_models["X"]
    with pytest.raises(NotFound):
        OnnxExplainer(tmp_path / "missing.onnx", X[:5])
    ex = OnnxExplainer(small_models["gbt_onnx"], X[:5])
    with pytest.raises(InvalidInput, match="shape"):
        ex.shap_values(np.ones((2, 3)))
    with pytest.raises(InvalidInput, match="source tree model"):
        ex.shap_values(X[:1], algorithm="tree")
    with pytest.raises(InvalidInput, match="no output"):
        OnnxExplainer(small_models["gbt_onnx"], X[:5], output="nope")
    with pytest.raises(InvalidInput, match="feature names"):
        OnnxExplainer(small_models["gbt_onnx"], X[:5], feature_names=["a"])
