"""Framework files (scikit-learn pickles) registered and served: the version a stage or alias named when the
serve target was scanned is the one served under that version's number, and a missing framework file is named as
a missing file."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fastml.errors import NotFound


@pytest.fixture
def two_models(tmp_path):
    """Two logistic regressions on the same rows with different answers, pickled: (rows, m1, m2, path1, path2)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    m1 = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    m2 = LogisticRegression().fit(x, (x[:, 1] > 0).astype(int))
    p1, p2 = tmp_path / "first.pkl", tmp_path / "second.pkl"
    p1.write_bytes(pickle.dumps(m1))
    p2.write_bytes(pickle.dumps(m2))
    # The two models must disagree, or serving the wrong one could not be told from the right one.
    assert np.abs(m1.predict_proba(x) - m2.predict_proba(x)).max() > 0.5
    return x, m1, m2, p1, p2


@pytest.fixture
def churn(two_models):
    """churn:1.0.0 (first.pkl) and churn:1.0.1 (second.pkl), converted on register; alias champion -> 1.0.0."""
    from fastml.registry import Registry

    _, _, _, p1, p2 = two_models
    with Registry() as reg:
        assert reg.register("churn", p1).version == "1.0.0"
        assert reg.register("churn", p2).version == "1.0.1"
        reg.set_alias("churn", "champion", "1.0.0")
    return two_models


def _move_champion(version: str) -> None:
    from fastml.registry import Registry

    with Registry() as reg:
        reg.set_alias("churn", "champion", version)


def test_an_alias_moved_between_scan_and_load_serves_the_scanned_version(churn):
    from fastml.serving.manager import _load_entry
    from fastml.serving.repository import scan_target

    x, m1, _m2, _, _ = churn
    source = scan_target("churn@champion")["churn"][0]
    assert source.version == "1.0.0"
    _move_champion("1.0.1")  # promoted while the server loads its models
    entry = _load_entry(source)
    try:
        out = entry.model.predict(x)
        # Served as 1.0.0, so it must answer as 1.0.0 (first.pkl), never as 1.0.1.
        assert entry.version == "1.0.0"
        np.testing.assert_allclose(out["probabilities"], m1.predict_proba(x), atol=1e-5)
        np.testing.assert_array_equal(out["label"], m1.predict(x))
    finally:
        entry.model.close()


def test_a_reload_still_follows_the_alias(churn):
    from fastml.serving.manager import ModelManager

    x, m1, m2, _, _ = churn

    async def run():
        mgr = ModelManager(["churn@champion"])
        try:
            assert mgr.load_all() == []
            entry = mgr.get("churn")
            assert entry.version == "1.0.0"
            np.testing.assert_allclose(entry.model.predict(x)["probabilities"], m1.predict_proba(x), atol=1e-5)
            _move_champion("1.0.1")
            await mgr.load("churn")
            entry = mgr.get("churn")
            assert entry.version == "1.0.1"
            np.testing.assert_allclose(entry.model.predict(x)["probabilities"], m2.predict_proba(x), atol=1e-5)
        finally:
            mgr.close()

    asyncio.run(run())


def test_a_missing_pickle_is_reported_as_a_missing_file(tmp_path, monkeypatch):
    import fastml
    from fastml.serving.repository import scan_target

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound, match=r"'churn\.pkl' is not an existing file \(looked in .*\)"):
        fastml.load_model("churn.pkl")
    with pytest.raises(NotFound, match=r"'model\.joblib' is not an existing file"):
        scan_target("model.joblib")


def test_a_registered_model_named_like_a_file_still_resolves(two_models, tmp_path, monkeypatch):
    import fastml
    from fastml.registry import Registry

    x, m1, _, p1, _ = two_models
    with Registry() as reg:
        reg.register("scorer.pkl", p1)
    monkeypatch.chdir(tmp_path / "..")  # no file of that name here
    with fastml.load_model("scorer.pkl") as served:
        np.testing.assert_allclose(served.predict(x)["probabilities"], m1.predict_proba(x), atol=1e-5)


def test_an_onnx_file_with_an_upper_case_suffix_is_served(two_models, tmp_path):
    from fastml.convert.frameworks import converted_path
    from fastml.serving.manager import _load_entry
    from fastml.serving.repository import scan_target

    x, m1, _, p1, _ = two_models
    upper = tmp_path / "SCORER.ONNX"
    upper.write_bytes(converted_path(p1).read_bytes())
    found = scan_target(str(upper))
    assert [(s.name, s.version) for s in found["SCORER"]] == [("SCORER", "1")]
    entry = _load_entry(found["SCORER"][0])
    try:
        np.testing.assert_allclose(entry.model.predict(x)["probabilities"], m1.predict_proba(x), atol=1e-5)
    finally:
        entry.model.close()


def test_a_pickle_that_cannot_be_converted_is_named_when_loaded(tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    import fastml
    from fastml.errors import InvalidInput

    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(40, 3)))
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(x, (x[:, 0] > 0.7).astype(int))
    path = tmp_path / "logged.pkl"
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(InvalidInput, match=r"logged\.pkl.*FunctionTransformer"):
        fastml.load_model(str(path))


def test_resolving_references_leaves_no_registry_connection_open(fastml_home, tmp_path):
    import gc
    import os
    import pickle

    from sklearn.linear_model import LogisticRegression

    from fastml.registry import Registry
    from fastml.serving.loader import resolve_ref

    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))))
    with Registry() as registry:
        registry.register("fdm", tmp_path / "m.pkl")
    resolve_ref("fdm@latest")
    was = gc.isenabled()
    gc.disable()  # a leaked registry is closed only when the collector finds it
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            resolve_ref("fdm@latest")
        grown = len(os.listdir("/proc/self/fd")) - before
    finally:
        if was:
            gc.enable()
    assert grown == 0  # two descriptors per call were left open before
