"""Resume after a forced failure in stage 6 gives the same model as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from pipeline_data import cls_config, make_classification_frame

from fastml.errors import InternalError
from fastml.pipeline import resume, train
from fastml.pipeline.run import load_run_config, open_run


def _predict(path, X):
    sess = ort.InferenceSession(str(path))
    return sess.run(None, {"input": X})


def test_resume_after_stage6_failure_matches_uninterrupted(tmp_path, monkeypatch):
    df = make_classification_frame(n=240).drop(columns=["colour"])
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    cfg = cls_config(
        p,
        model={"family": "random_forest", "params": {"n_estimators": 15}},
        tune={"n_trials": 3, "search_space": {"max_depth": {"type": "int", "low": 2, "high": 6}}},
        register={"enabled": False},
    )

    reference = train(cfg, run_id="uninterrupted")

    from fastml.pipeline import stages

    calls = []

    def crash(ctx):
        calls.append(1)
        raise RuntimeError("machine lost power during training")

    monkeypatch.setattr(stages, "stage_train", crash)
    with pytest.raises(InternalError, match="stage train failed: RuntimeError: machine lost power"):
        train(cfg, run_id="crashed")
    state = open_run("crashed").state
    assert state["status"] == "failed"
    assert [s["status"] for s in state["stages"]] == ["completed"] * 5 + ["failed"] + ["pending"] * 4
    tune_finished_at = state["stages"][4]["finished_at"]

    monkeypatch.undo()
    result = resume("crashed")
    assert calls == [1]
    state = result.state
    assert state["status"] == "completed"
    assert state["stages"][4]["finished_at"] == tune_finished_at  # tuning was not redone
    assert [a["resumed_from"] for a in state["attempts"]] == [None, "train"]

    # Same seed and data: identical tuned parameters, identical ONNX graph, identical predictions.
    assert state["stages"][4]["summary"]["best_params"] == reference.state["stages"][4]["summary"]["best_params"]
    raw_ref = (reference.run_dir / "09_export/model.onnx").read_bytes()
    raw_res = (result.run_dir / "09_export/model.onnx").read_bytes()
    assert raw_ref == raw_res
    X = make_classification_frame(n=40, seed=5).drop(columns=["colour", "label"]).to_numpy(np.float32)
    for a, b in zip(_predict(reference.onnx_path, X), _predict(result.onnx_path, X)):
        np.testing.assert_array_equal(a, b)
    assert result.metrics == reference.metrics

    # Resuming a completed run is a no-op that returns the result.
    again = resume("crashed")
    assert again.state["attempts"] == state["attempts"]


def test_cli_resume(tmp_path, monkeypatch, capsys):
    from fastml.cli import main
    from fastml.pipeline import stages

    p = tmp_path / "d.csv"
    make_classification_frame(n=150).to_csv(p, index=False)
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'name = "c"\ntask = "classification"\nfolds = 2\n[data]\npath = "{p}"\ntarget = "label"\n'
        '[model]\nfamily = "logistic_regression"\n[tune]\nn_trials = 2\n[register]\nenabled = false\n'
    )

    def crash(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(stages, "stage_cross_validate", crash)
    assert main(["train", str(toml), "--run-id", "r1", "--no-progress"]) == 1
    assert "stage cross_validate failed" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--resume", "r1", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "completed" and out["attempts"][-1]["resumed_from"] == "cross_validate"


def test_resume_inside_tuning_keeps_finished_trials(cls_csv, monkeypatch):
    """A crash in the middle of the study: resume keeps the finished trials and runs only the rest."""
    import optuna

    from fastml.pipeline import tune

    real = tune.make_objective
    calls = {"n": 0}

    def crashing_objective(*args, **kwargs):
        inner = real(*args, **kwargs)

        def objective(trial):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the process is interrupted during trial 3
            return inner(trial)

        return objective

    cfg = cls_config(cls_csv, tune={"n_trials": 5, "sampler": "random", "pruner": "none"}, register={"enabled": False})
    monkeypatch.setattr(tune, "make_objective", crashing_objective)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_id="mid-tune")
    run = open_run("mid-tune")
    assert run.state["stages"][4]["status"] == "failed"
    load_cfg = load_run_config(run)
    study = tune.open_study(load_cfg, tune.make_storage(load_cfg, run.dir / "05_tune"))
    before = [(t.number, t.params, t.state.name) for t in study.get_trials()]
    assert [s for _, _, s in before] == ["COMPLETE", "COMPLETE", "FAIL"]
    study.ask()  # a trial a hard-killed process left RUNNING
    monkeypatch.undo()
    result = resume("mid-tune")
    study = tune.open_study(load_cfg, tune.make_storage(load_cfg, run.dir / "05_tune"))
    trials = study.get_trials()
    assert [(t.number, t.params, t.state.name) for t in trials[:3]] == before  # kept, not re-run
    assert trials[3].state == optuna.trial.TrialState.FAIL  # the stale RUNNING trial
    assert len(trials) == 5 and trials[4].state == optuna.trial.TrialState.COMPLETE
    assert result.state["status"] == "completed"
