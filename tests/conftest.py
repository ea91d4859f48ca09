"""Fixtures every test directory shares: a private FASTML_HOME and small ONNX models."""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import os
import shutil
import tempfile
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


# Built models are kept here between runs (git-ignored, beside the other set-up caches): training the MLP is
# most of the fixture's ~12 s of CPU. The key covers the recipe and the library versions that shape the models.
MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test_models"


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """Small versions of shared/bench's models: input ``input`` FP32 [-1, 32]; outputs ``label`` INT64
    [-1] and ``probabilities`` FP32 [-1, 2]. Keys: ``mlp``, ``gbt``; plus ``data`` (an .npy of X)."""
    out = tmp_path_factory.mktemp("onnx_models")
    files = {"mlp": "mlp.onnx", "gbt": "gbt.onnx", "data": "X.npy"}
    cached = MODEL_CACHE / _recipe_key()
    # Under a lock: scripts/test.sh runs two pytest-xdist workers, and on a fresh checkout the second waits for
    # the first's models instead of training its own copy on the same two cores.
    with open(_mkdirs(MODEL_CACHE) / ".lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((cached / f).is_file() for f in files.values()):
            staging = Path(tempfile.mkdtemp(prefix="staging-", dir=MODEL_CACHE))
            _build_models(staging)
            try:
                os.rename(staging, cached)  # atomic: a concurrent session's copy may win, with the same bytes
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
    # Each session gets its own copies, so a test cannot change the cached models.
    return {name: Path(shutil.copy(cached / f, out / f)) for name, f in files.items()}


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _recipe_key() -> str:
    from importlib.metadata import version  # not the imports themselves: skl2onnx takes seconds to import

    versions = " ".join(version(d) for d in ("numpy", "scikit-learn", "skl2onnx", "onnx"))
    return hashlib.sha256((inspect.getsource(_build_models) + versions).encode()).hexdigest()[:16]


def _build_models(out: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    X = X.astype(np.float32)
    models = {
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=60, random_state=0).fit(X, y),
        "gbt": GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, y),
    }
    for name, est in models.items():
        onx = convert_sklearn(
            est,
            initial_types=[("input", FloatTensorType([None, 32]))],
            target_opset=17,
            options={id(est): {"zipmap": False}},
        )
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
    np.save(out / "X.npy", X)
