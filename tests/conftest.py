"""Fixtures every test directory shares: a private FASTML_HOME and small ONNX models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Servers started by tests (module-scoped ones too, set up before any function fixture) keep their admin
# endpoints open on loopback, as with --allow-unauthenticated-admin; tests/security starts its servers with
# an explicit environment to test the default (admin disabled without a token) and the token checks.
os.environ["FASTML_ALLOW_UNAUTHENTICATED_ADMIN"] = "1"
for _name in ("FASTML_ADMIN_TOKEN", "FASTML_ADMIN_TOKEN_FILE", "FASTML_REQUIRE_TOKEN_FOR_INFERENCE"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def fastml_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own FASTML_HOME, so no state leaks between tests."""
    home = tmp_path / "fastml_home"
    home.mkdir()
    monkeypatch.setenv("FASTML_HOME", str(home))
    monkeypatch.delenv("FASTML_CONFIG", raising=False)
    monkeypatch.delenv("FASTML_REGISTRY_URL", raising=False)
    from fastml.config import reset_settings

    reset_settings()
    yield home
    reset_settings()


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """Small versions of shared/bench's models: input ``input`` FP32 [-1, 32]; outputs ``label`` INT64
    [-1] and ``probabilities`` FP32 [-1, 2]. Keys: ``mlp``, ``gbt``; plus ``data`` (an .npy of X)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    out = tmp_path_factory.mktemp("onnx_models")
    X, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    X = X.astype(np.float32)
    models = {
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=60, random_state=0).fit(X, y),
        "gbt": GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, y),
    }
    paths: dict[str, Path] = {}
    for name, est in models.items():
        onx = convert_sklearn(
            est,
            initial_types=[("input", FloatTensorType([None, 32]))],
            target_opset=17,
            options={id(est): {"zipmap": False}},
        )
        p = out / f"{name}.onnx"
        p.write_bytes(onx.SerializeToString())
        paths[name] = p
    np.save(out / "X.npy", X)
    paths["data"] = out / "X.npy"
    return paths
