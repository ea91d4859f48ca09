"""Tuning: samplers, per-fold pruning reports, failing trials recorded while the study goes on."""

from __future__ import annotations

import json

import pytest
from pipeline_data import cls_config

from fastml.pipeline import train


def _tune(result) -> dict:
    return json.loads((result.run_dir / "05_tune/tune.json").read_text())


def _study(result):
    import optuna

    from fastml.pipeline.tune import make_storage

    storage = make_storage(type("C", (), {"tune": type("T", (), {"storage": None})})(), result.run_dir / "05_tune")
    return optuna.load_study(study_name=_tune(result)["study_name"], storage=storage)


def test_failing_trials_recorded_and_study_goes_on(cls_csv):
    # solver "newton-cholesky" with l1 raises inside scikit-learn; such trials must be FAIL, not fatal.
    space = {
        "C": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        "l1_ratio": {"type": "categorical", "choices": [0.0, 1.0]},
        "solver": {"type": "categorical", "choices": ["lbfgs", "newton-cholesky"]},
    }
    result = train(
        cls_config(
            cls_csv, tune={"n_trials": 8, "sampler": "random", "search_space": space}, register={"enabled": False}
        )
    )
    t = _tune(result)
    assert t["total"] == 8
    assert t["counts"]["fail"] >= 1 and t["counts"]["complete"] >= 1
    assert t["counts"]["fail"] + t["counts"]["complete"] + t["counts"]["pruned"] == 8
    assert all(f["params"]["l1_ratio"] == 1.0 for f in t["failed"])
    assert all(f["error"] for f in t["failed"])
    assert not (t["best_params"]["l1_ratio"] == 1.0 and t["best_params"]["solver"] != "saga")
    tune_stage = result.state["stages"][4]["summary"]
    assert tune_stage["failed"] == t["counts"]["fail"]


def test_grid_sampler_covers_grid_and_per_fold_reports(cls_csv):
    space = {
        "C": {"type": "categorical", "choices": [0.01, 1.0]},
        "fit_intercept": {"type": "categorical", "choices": [True, False]},
    }
    result = train(
        cls_config(
            cls_csv,
            tune={"n_trials": 50, "sampler": "grid", "pruner": "none", "search_space": space},
            register={"enabled": False},
        )
    )
    t = _tune(result)
    assert t["total"] == 4  # n_trials capped at the grid size
    study = _study(result)
    seen = sorted((tr.params["C"], tr.params["fit_intercept"]) for tr in study.trials)
    assert seen == [(0.01, False), (0.01, True), (1.0, False), (1.0, True)]
    for tr in study.trials:  # one intermediate value per fold: the running mean the pruner compares
        assert sorted(tr.intermediate_values) == [0, 1, 2]
        folds = tr.user_attrs["fold_scores"]
        assert tr.intermediate_values[2] == pytest.approx(sum(folds) / 3)
        assert tr.value == pytest.approx(sum(folds) / 3)


def test_median_pruner_prunes_bad_trials(cls_csv):
    # Mostly good values of C and one hopeless one: after 5 finished trials, hopeless trials fall
    # below the median of the running fold means and stop before the last fold.
    space = {"C": {"type": "categorical", "choices": [0.3, 1.0, 3.0, 1e-6]}}
    result = train(
        cls_config(
            cls_csv,
            folds=4,
            tune={"n_trials": 11, "sampler": "random", "search_space": space},
            register={"enabled": False},
        )
    )
    study = _study(result)
    trials = study.trials
    pruned = [tr for tr in trials if tr.state.name == "PRUNED"]
    assert any(tr.params["C"] == 1e-6 for tr in pruned), [(tr.params, tr.state.name) for tr in trials]
    assert all(len(tr.intermediate_values) < 4 for tr in pruned)
    # once the pruner is active (5 finished trials), no hopeless trial runs to completion
    n_done, late_hopeless = 0, []
    for tr in trials:
        if n_done >= 5 and tr.params["C"] == 1e-6:
            late_hopeless.append(tr.state.name)
        n_done += tr.state.name in ("COMPLETE", "PRUNED")
    assert late_hopeless and set(late_hopeless) == {"PRUNED"}
    assert _tune(result)["best_params"]["C"] != 1e-6


def test_storage_url_and_study_name(cls_csv, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = cls_config(cls_csv, tune={"n_trials": 2, "storage": url, "study_name": "shared"}, register={"enabled": False})
    train(cfg)
    train(cfg)  # same study: the second run finds 2 finished trials and adds none
    import optuna

    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 2
