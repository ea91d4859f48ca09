"""Distributed work: tuning workers sharing one Optuna study, and DDP training with torchrun/gloo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_data import cls_config, make_classification_frame

from fastml.pipeline import train


def test_two_workers_share_one_study(cls_csv):
    result = train(
        cls_config(cls_csv, tune={"n_trials": 6, "sampler": "random"}, register={"enabled": False}), workers=2
    )
    run_dir = result.run_dir
    tune = json.loads((run_dir / "05_tune/tune.json").read_text())
    workers = tune["workers"]
    assert len(workers) == 2
    assert len({w["pid"] for w in workers}) == 2  # two processes
    assert [w["trials"] for w in workers] == [3, 3]
    assert sum(w["trials"] for w in workers) == tune["total"] == 6  # the trial count adds up
    numbers = sorted(n for w in workers for n in w["numbers"])
    assert numbers == list(range(6))  # each trial of the study ran in exactly one worker
    assert result.state["status"] == "completed"

    # The same study (same config -> same study name) joined by another process adds to the count.
    import optuna

    from fastml.pipeline.tune import make_storage

    class _C:
        class tune:
            storage = None

    study = optuna.load_study(study_name=tune["study_name"], storage=make_storage(_C, run_dir / "05_tune"))
    assert len(study.trials) == 6


def test_cli_workers_and_runs_commands(cls_csv, capsys):
    from fastml.cli import main

    toml = cls_csv.parent / "p.toml"
    toml.write_text(
        f'name = "w"\ntask = "classification"\nfolds = 2\n[data]\npath = "{cls_csv}"\ntarget = "label"\n'
        '[model]\nfamily = "logistic_regression"\n[tune]\nn_trials = 4\n'
    )
    assert main(["train", str(toml), "--workers", "2", "--run-id", "cli-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "run cli-run (w): completed" in out and "registered w:1.0.0" in out
    for stage in ("ingest", "tune", "export", "register"):
        assert stage in out
    assert main(["runs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["status"], r["model_ref"], r["last_stage"]) for r in rows] == [
        ("cli-run", "completed", "w:1.0.0", "register")
    ]
    assert main(["runs", "show", "cli-run", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["stages"][4]["summary"]["trials"] == 4
    assert state["attempts"][0]["workers"] == 2
    assert main(["runs", "show", "missing"]) == 2


@pytest.mark.slow
def test_ddp_two_processes_trains_and_exports(tmp_path):
    df = make_classification_frame(n=200).drop(columns=["colour"])
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    cfg = cls_config(
        p,
        folds=2,
        features={"derived": []},
        model={
            "family": "torch_mlp",
            "ddp_processes": 2,
            "params": {"epochs": 20, "batch_size": 16, "hidden_units": 16},
        },
        tune={"n_trials": 1, "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.02}}},
    )
    result = train(cfg)
    ddp = json.loads((result.run_dir / "06_train/ddp.json").read_text())
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and "torchrun_exit_code" in ddp
    # each rank trained on its half of every epoch: 160 training rows, 20 epochs
    assert [r["rank"] for r in ddp["ranks"]] == [0, 1]
    assert [r["rows_seen"] for r in ddp["ranks"]] == [1600, 1600]
    assert result.state["stages"][5]["summary"]["ddp_world_size"] == 2
    parity = json.loads((result.run_dir / "09_export/parity.json").read_text())
    assert parity["optimized"]["ok"] and parity["onnx"]["ok"]  # within 1e-4 + 1e-3 * |p|
    assert result.metrics["accuracy"] > 0.6
    import onnxruntime as ort

    sess = ort.InferenceSession(str(result.onnx_path))
    X = df.drop(columns=["label"]).to_numpy(np.float32)[:10]
    label, proba = sess.run(None, {"input": X})
    assert label.dtype == np.int64 and proba.shape == (10, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert result.model_ref == "clf:1.0.0"


def test_same_command_elsewhere_joins_the_study(cls_csv, tmp_path):
    # Two independent `fastml train` processes (as on two machines) with a shared storage URL work on
    # one study: together they run the configured number of trials, not twice as many.
    import os
    import subprocess
    import sys

    journal = tmp_path / "shared" / "study.journal"
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'name = "joined"\ntask = "classification"\nfolds = 2\n[data]\npath = "{cls_csv}"\ntarget = "label"\n'
        f'[model]\nfamily = "logistic_regression"\n[tune]\nn_trials = 12\nsampler = "random"\n'
        f'storage = "journal://{journal}"\n[register]\nenabled = false\n'
    )
    procs = []
    for i in range(2):
        env = dict(os.environ, FASTML_HOME=str(tmp_path / f"machine{i}"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fastml.cli", "train", str(toml), "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    states = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        states.append(json.loads(out))
    import optuna

    study = optuna.load_study(
        study_name=states[0]["stages"][4]["summary"]["study"],
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    assert 12 <= len(study.trials) <= 13  # at most one extra trial per additional process
    assert all(s["status"] == "completed" for s in states)
    assert {s["stages"][4]["summary"]["study"] for s in states} == {study.study_name}
