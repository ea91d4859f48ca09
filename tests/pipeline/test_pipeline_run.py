"""Full runs: classification and regression through all ten stages into the registry."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from pipeline_data import cls_config, make_classification_frame, reg_config

from fastml.pipeline import STAGES, train
from fastml.pipeline.run import list_runs


def test_classification_run_all_stages_registered(cls_csv, fastml_home):
    result = train(cls_config(cls_csv))
    state = result.state
    assert state["status"] == "completed"
    assert [s["name"] for s in state["stages"]] == list(STAGES)
    assert all(s["status"] == "completed" and s["duration_s"] >= 0 for s in state["stages"])
    run_dir = fastml_home / "runs" / result.run_id
    assert result.run_dir == run_dir
    for rel in [
        "01_ingest/data.parquet",
        "02_validate/report.json",
        "03_features/spec.json",
        "04_split/split.npz",
        "05_tune/tune.json",
        "05_tune/optuna.journal",
        "06_train/model.joblib",
        "07_cross_validate/cv.json",
        "08_evaluate/metrics.json",
        "09_export/model.onnx",
        "09_export/model.optimized.onnx",
        "09_export/parity.json",
        "10_register/registration.json",
        "run.log",
    ]:
        assert (run_dir / rel).is_file(), rel
    # metrics: all six, sane values
    assert set(result.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert 0.6 < result.metrics["accuracy"] <= 1.0
    assert 0.6 < result.metrics["roc_auc"] <= 1.0
    cv = json.loads((run_dir / "07_cross_validate/cv.json").read_text())
    assert len(cv["folds"]) == 3
    acc = [f["accuracy"] for f in cv["folds"]]
    assert cv["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert cv["summary"]["accuracy"]["std"] == pytest.approx(np.std(acc))
    tune = json.loads((run_dir / "05_tune/tune.json").read_text())
    assert tune["total"] == 4 and tune["counts"]["complete"] >= 1

    # Registered with metrics, params, config hash, dataset fingerprint and run id.
    from fastml.registry import Registry

    reg = Registry()
    mv = reg.resolve(result.model_ref)
    assert (mv.name, mv.version) == ("clf", "1.0.0")
    assert mv.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert "cv_accuracy_mean" in mv.metrics
    assert mv.params["C"] == pytest.approx(tune["best_params"]["C"])
    assert mv.tags["config_hash"] == state["config_hash"]
    assert mv.dataset_fingerprint == state["stages"][0]["summary"]["dataset_fingerprint"]
    assert mv.run_id == result.run_id
    assert mv.parent is None
    assert [i["name"] for i in mv.signature["inputs"]] == ["x0", "x1", "x2", "x3", "x4", "colour"]

    # The registered artifact predicts like the source model on new rows.
    import joblib

    from fastml.convert import InputSpec, onnx_feed

    spec = InputSpec.from_dict(json.loads((run_dir / "03_features/spec.json").read_text()))
    source = joblib.load(run_dir / "06_train/model.joblib")
    new = make_classification_frame(n=50, seed=11)
    X = spec.model_input(new)
    sess = ort.InferenceSession(str(reg.artifact_path(result.model_ref)))
    label, proba = sess.run(["label", "probabilities"], onnx_feed(X, spec))
    np.testing.assert_allclose(proba, source.predict_proba(X), atol=1e-4)
    assert (label == source.predict(X)).mean() >= 0.98

    # A second run of the same pipeline registers the next version with the first as parent.
    second = train(cls_config(cls_csv))
    mv2 = reg.resolve(second.model_ref)
    assert mv2.version == "1.0.1" and mv2.parent == "clf:1.0.0"
    assert [r["run_id"] for r in list_runs()] == [second.run_id, result.run_id]


def test_regression_run_parity_within_tolerance(reg_parquet):
    result = train(reg_config(reg_parquet))
    assert result.state["status"] == "completed"
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.metrics["r2"] > 0.5
    parity = json.loads((result.run_dir / "09_export/parity.json").read_text())
    for rep in parity.values():
        assert rep["ok"] and rep["rows"] == 60
        # documented tolerance: |onnx - source| <= 1e-4 + 1e-3 * |source|
        assert (rep["atol"], rep["rtol"]) == (1e-4, 1e-3)
    sess = ort.InferenceSession(str(result.onnx_path))
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert sess.get_inputs()[0].shape == [None, 4]
    # per-example results are absolute errors: the registry must treat lower as better
    from fastml.registry import Registry

    stored = Registry().get_eval_results(result.model_ref)
    assert stored["higher_is_better"] is False and len(stored["scores"]) == 60
    assert min(stored["scores"]) >= 0.0


def test_parity_failure_fails_the_run(cls_csv, monkeypatch):
    # A graph that disagrees with the source model must stop the run at export.
    import fastml.convert
    from fastml.errors import IntegrityError

    real_to_onnx = fastml.convert.to_onnx

    def tampered_to_onnx(model, spec, opset=17):
        import copy

        bad = copy.deepcopy(model)  # export a model whose coefficients moved
        bad.named_steps["model"].coef_ = bad.named_steps["model"].coef_ + 0.5
        return real_to_onnx(bad, spec, opset=opset)

    monkeypatch.setattr("fastml.convert.to_onnx", tampered_to_onnx)
    with pytest.raises(IntegrityError, match="parity"):
        train(cls_config(cls_csv, register={"enabled": False}))
    run = list_runs()[0]
    assert run["status"] == "failed"
    export = next(s for s in run["stages"] if s["name"] == "export")
    assert export["status"] == "failed" and "parity" in export["error"]
