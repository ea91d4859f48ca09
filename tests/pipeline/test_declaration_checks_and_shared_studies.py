"""Edges of the training declaration and data: features that leak the target, feature lists that
contradict each other, a typo in data.drop, class labels a family cannot take, and the CV / holdout
numbers checked against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_data import cls_config, make_classification_frame

from fastml.errors import InvalidInput
from fastml.pipeline import train
from fastml.pipeline.config import from_dict
from fastml.pipeline.run import list_runs


def _csv(tmp_path, frame, name="data.csv"):
    p = tmp_path / name
    frame.to_csv(p, index=False)
    return p


@pytest.mark.parametrize(
    "features, line",
    [
        ({"numeric": ["x0", "x1", "label"]}, "features.numeric: lists the target column 'label'"),
        ({"categorical": ["colour", "label"]}, "features.categorical: lists the target column 'label'"),
        (
            {"numeric": ["x0", "x1"], "categorical": ["x1", "colour"]},
            "features: column(s) ['x1'] are declared both numeric and categorical",
        ),
        ({"numeric": ["x0", "x0"]}, "features.numeric: lists column(s) ['x0'] more than once"),
    ],
)
def test_contradictory_feature_lists_are_refused_before_a_run(tmp_path, features, line):
    # The target as a declared feature used to be trained on (holdout accuracy 1.0) before the export
    # failed; a column in both lists made every trial fail. Both are refused before any run exists.
    p = _csv(tmp_path, make_classification_frame(120))
    cfg = cls_config(p, features={**features, "derived": []}, register={"enabled": False})
    with pytest.raises(InvalidInput) as info:
        train(cfg)
    assert line in str(info.value)
    assert list_runs() == []


def test_feature_dropped_by_data_drop_is_refused(tmp_path):
    p = _csv(tmp_path, make_classification_frame(120))
    cfg = cls_config(p, data={"drop": ["x4"]}, features={"numeric": ["x0", "x4"], "derived": []})
    with pytest.raises(InvalidInput, match=r"features.numeric: lists column\(s\) \['x4'\] that data.drop removes"):
        from_dict(cfg)


def test_declaring_only_numeric_does_not_one_hot_the_other_numeric_columns(tmp_path):
    from fastml.pipeline.features import infer_spec

    frame = make_classification_frame(120)
    cfg = from_dict(cls_config(_csv(tmp_path, frame), features={"numeric": ["x0", "x1"], "derived": []}))
    spec = infer_spec(frame, cfg)
    assert spec.numeric == ("x0", "x1")
    # Categorical columns default to the non-numeric ones: not x2..x4, whose float values would each
    # become a one-hot column.
    assert spec.categorical == ("colour",)


def test_unknown_column_in_data_drop_is_refused_at_ingest(tmp_path, fastml_home):
    p = _csv(tmp_path, make_classification_frame(120))
    cfg = cls_config(p, data={"drop": ["x3", "colur"]}, features={"derived": []}, register={"enabled": False})
    with pytest.raises(InvalidInput, match=r"data.drop: column\(s\) \['colur'\] are not in the data"):
        train(cfg)
    (run,) = list_runs()
    assert run["stages"][0]["status"] == "failed"
    assert not (fastml_home / "runs" / run["run_id"] / "01_ingest" / "data.parquet").exists()


@pytest.mark.parametrize("labels", [(3, 7), ("no", "yes")])
def test_xgboost_with_labels_not_0_to_k_minus_1_fails_validation(tmp_path, labels):
    pytest.importorskip("xgboost")
    frame = make_classification_frame(120)
    frame["label"] = np.where(frame["label"] == 1, labels[1], labels[0])
    cfg = cls_config(
        _csv(tmp_path, frame),
        model={"family": "xgboost"},
        features={"derived": []},
        tune={"n_trials": 1, "search_space": {"n_estimators": {"type": "int", "low": 5, "high": 6}}},
        register={"enabled": False},
    )
    with pytest.raises(InvalidInput) as info:
        train(cfg)
    msg = str(info.value)
    assert "class_labels [label]: model.family 'xgboost' needs class labels 0..1" in msg
    assert repr(labels[0]) in msg and repr(labels[1]) in msg
    (run,) = list_runs()
    assert [s["status"] for s in run["stages"][:3]] == ["completed", "failed", "pending"]


def test_xgboost_accepts_0_to_k_minus_1_labels_in_validation(tmp_path):
    from fastml.pipeline.stages import validation_checks

    frame = make_classification_frame(120)
    cfg = from_dict(cls_config(_csv(tmp_path, frame), model={"family": "xgboost"}, features={"derived": []}))
    checks = [c for c in validation_checks(frame, cfg) if c["check"] == "class_labels"]
    assert len(checks) == 1 and checks[0]["passed"]


def test_torch_mlp_with_string_labels_fails_validation(tmp_path):
    # The MLP's ONNX export carries the labels as INT64: the run used to train, cross-validate and
    # evaluate, then fail at export.
    from fastml.pipeline.stages import validation_checks

    frame = make_classification_frame(120)
    frame["label"] = np.where(frame["label"] == 1, "yes", "no")
    cfg = from_dict(cls_config(_csv(tmp_path, frame), model={"family": "torch_mlp"}, features={"derived": []}))
    failed = [c for c in validation_checks(frame, cfg) if not c["passed"]]
    assert [(c["check"], c["column"]) for c in failed] == [("class_labels", "label")]
    assert "needs integer class labels; the target has dtype" in failed[0]["detail"]
    frame["label"] = (frame["label"] == "yes").astype(int)
    assert all(c["passed"] for c in validation_checks(frame, cfg))


def test_cli_bad_config_with_run_id_reports_the_config_error(tmp_path, capsys):
    from fastml.cli import main

    p = tmp_path / "p.toml"
    p.write_text(
        'name = "x"\ntask = "classification"\n[data]\npath = "missing.csv"\ntarget = "y"\n[model]\nfamily = "svm"\n'
    )
    assert main(["train", str(p), "--run-id", "myrun", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "InvalidInput" in err and "model.family:" in err
    assert "NotFound" not in err


def test_cv_and_holdout_metrics_match_sklearn_with_string_labels(tmp_path):
    from sklearn import metrics as m
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from fastml.pipeline.features import build_model_pipeline
    from fastml.pipeline.run import open_run
    from fastml.pipeline.stages import Context

    frame = make_classification_frame(200)
    frame["label"] = np.where(frame["label"] == 1, "yes", "no")
    cfg = cls_config(_csv(tmp_path, frame), metric="f1", tune={"n_trials": 3}, register={"enabled": False})
    result = train(cfg)
    run = open_run(result.run_id)
    ctx = Context(run, from_dict(cfg), None)
    X, y = ctx.xy("train")
    best = json.loads((result.run_dir / "05_tune" / "best_params.json").read_text())
    model = build_model_pipeline(ctx.cfg, ctx.spec, best)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=7)
    expected = cross_val_score(model, X, y, cv=folds, scoring=m.make_scorer(m.f1_score, pos_label="yes"))
    cv = json.loads((result.run_dir / "07_cross_validate" / "cv.json").read_text())
    assert cv["summary"]["f1"]["mean"] == pytest.approx(expected.mean(), abs=1e-12)
    # The tuned value of the best trial is that same mean (same folds, same estimator).
    tune = json.loads((result.run_dir / "05_tune" / "tune.json").read_text())
    assert tune["best_value"] == pytest.approx(expected.mean(), abs=1e-12)

    Xh, yh = ctx.xy("holdout")
    fitted = build_model_pipeline(ctx.cfg, ctx.spec, best).fit(X, y)
    proba = fitted.predict_proba(Xh)
    pred = fitted.predict(Xh)
    assert result.metrics["f1"] == pytest.approx(m.f1_score(yh, pred, pos_label="yes"), abs=1e-12)
    assert result.metrics["accuracy"] == pytest.approx(m.accuracy_score(yh, pred), abs=1e-12)
    assert result.metrics["roc_auc"] == pytest.approx(m.roc_auc_score(yh == "yes", proba[:, 1]), abs=1e-12)
    assert result.metrics["log_loss"] == pytest.approx(m.log_loss(yh, proba), abs=1e-12)


def test_regression_with_more_folds_than_training_rows_fails_validation(tmp_path):
    from pipeline_data import make_regression_frame, reg_config

    p = tmp_path / "r.parquet"
    make_regression_frame(30).to_parquet(p, index=False)
    # 30 rows, holdout ceil(0.2 * 30) = 6: 24 training rows for 30 folds (used to fail inside tuning).
    with pytest.raises(
        InvalidInput, match=r"rows: 24 training row\(s\) after the holdout \(need at least folds = 30\)"
    ):
        train(reg_config(p, folds=30, register={"enabled": False}))
    (run,) = list_runs()
    assert [s["status"] for s in run["stages"][:3]] == ["completed", "failed", "pending"]


def test_reused_study_name_for_another_metric_is_refused(tmp_path):
    # The second config used to load the first study, run no trial and report the best *accuracy* as its
    # best log loss (picked by the study's maximize direction).
    p = _csv(tmp_path, make_classification_frame(120))
    storage = f"journal://{tmp_path / 'shared.journal'}"
    tune = {"n_trials": 2, "storage": storage, "study_name": "shared"}
    first = train(cls_config(p, metric="accuracy", tune=tune, register={"enabled": False}))
    assert first.state["stages"][4]["summary"]["complete"] == 2
    with pytest.raises(InvalidInput, match="tune.study_name: study 'shared' in the tune storage was made for") as info:
        train(cls_config(p, metric="log_loss", tune=tune, register={"enabled": False}))
    assert "'metric': 'accuracy'" in str(info.value) and "'metric': 'log_loss'" in str(info.value)
    # The same config joins the same study (the documented sharing): all its trials already exist.
    again = train(cls_config(p, metric="accuracy", tune=tune, register={"enabled": False}))
    assert again.state["stages"][4]["summary"]["trials"] == 2
    assert again.state["stages"][4]["summary"]["best_value"] == first.state["stages"][4]["summary"]["best_value"]


@pytest.mark.parametrize(
    "over, line",
    [
        ({"name": "Tumour classifier v2"}, "name: invalid model name 'Tumour classifier v2'"),
        ({"register": {"model_name": "team:model"}}, "register.model_name: invalid model name 'team:model'"),
    ],
)
def test_name_the_registry_refuses_is_refused_before_a_run(tmp_path, over, line):
    # The registry used to refuse it in stage 10, after all the training; resume reloads the same config,
    # so the run could never finish.
    p = _csv(tmp_path, make_classification_frame(120))
    with pytest.raises(InvalidInput) as info:
        train(cls_config(p, **over))
    assert line in str(info.value)
    assert list_runs() == []
    # Without registration the run name is only a label.
    assert from_dict(cls_config(p, name="Tumour classifier v2", register={"enabled": False})).name


def test_range_check_on_values_that_are_not_numbers_fails(tmp_path):
    from fastml.pipeline.stages import validation_checks

    frame = make_classification_frame(120)
    frame["grade"] = np.where(frame["x0"] > 0, "3", "high")  # a text value among numbers
    cfg = from_dict(cls_config(_csv(tmp_path, frame), validate={"ranges": {"grade": [0, 5], "colour": [0, 1]}}))
    checks = {c["column"]: c for c in validation_checks(frame, cfg) if c["check"] == "range"}
    n_high = int((frame["x0"] <= 0).sum())
    assert not checks["grade"]["passed"] and checks["grade"]["detail"] == f"{n_high} value(s) are not numbers"
    assert not checks["colour"]["passed"] and checks["colour"]["detail"] == "120 value(s) are not numbers"
    frame["grade"] = 3.0
    frame.loc[1:4, "grade"] = 9.0
    frame.loc[0, "grade"] = np.nan  # a missing value is the null check's business, not the range's
    checks = {c["column"]: c for c in validation_checks(frame, cfg) if c["check"] == "range"}
    assert checks["grade"]["detail"] == "4 value(s) outside [0, 5]"
