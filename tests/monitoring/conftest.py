"""Small models for the monitoring tests (6 features: fast to train and to explain exactly)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_models(tmp_path_factory) -> dict:
    """``{"X", "y", "gbt", "logreg", "gbt_onnx", "logreg_onnx"}``: a GradientBoostingClassifier and a
    LogisticRegression on 6 features, with ONNX conversions (input ``input`` FP32 [-1, 6]; outputs
    ``label`` and ``probabilities`` [-1, 2])."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=600, n_features=6, n_informative=3, n_redundant=1, random_state=0)
    X = X.astype(np.float32)
    out = tmp_path_factory.mktemp("monitoring_models")
    res = {"X": X, "y": y}
    for name, est in {
        "gbt": GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0),
        "logreg": LogisticRegression(max_iter=500),
    }.items():
        est.fit(X, y)
        onx = convert_sklearn(
            est,
            initial_types=[("input", FloatTensorType([None, 6]))],
            target_opset=17,
            options={id(est): {"zipmap": False}},
        )
        p = out / f"{name}.onnx"
        p.write_bytes(onx.SerializeToString())
        res[name] = est
        res[f"{name}_onnx"] = p
    return res
