"""The ten-step workflow end to end (quick sizes): every step passes and reports the planted outcomes."""

from __future__ import annotations

import json

import pytest

from .example_runner import PNG, explain, run_example, steps_by_name

STEPS = [
    "generate a synthetic 10,000-row dataset",
    "train: tuning and 5-fold CV",
    "register",
    "fairness and compliance",
    "deploy behind fastml serve",
    "set up live monitoring",
    "serve predictions through a client",
    "check for data drift",
    "A/B experiment with outcomes fed back",
    "performance, drift, fairness, compliance reports",
]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("workflow_home")
    out = tmp_path_factory.mktemp("workflow_out")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTML_HOME", str(home))
    try:
        proc, summary = run_example("workflow", out)
    finally:
        mp.undo()
    return proc, summary, out


def test_all_ten_steps_pass_in_order(workflow):
    proc, summary, _ = workflow
    assert proc.returncode == 0, explain(proc)
    assert summary["passed"] is True and summary["quick"] is True
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert all(s["outcome"] == "passed" and s["checks"] for s in summary["steps"])


def test_training_and_registration_figures(workflow):
    _, summary, _ = workflow
    steps = steps_by_name(summary)
    train = steps["train: tuning and 5-fold CV"]["figures"]
    assert train["accuracy_1.0.1"] > 0.8
    assert train["accuracy_1.0.1"] - train["accuracy_1.0.0"] > 0.05
    assert 0.8 < train["cv_accuracy_1.0.1"] <= 1.0
    assert steps["register"]["figures"]["versions"] == ["1.0.0", "1.0.1"]
    gov = steps["fairness and compliance"]["figures"]
    assert gov["compliance"] == "pass" and gov["demographic_parity_difference"] < 0.1


def test_the_servers_live_monitor_watches_the_deployment(workflow):
    _, summary, _ = workflow
    steps = steps_by_name(summary)
    serve = steps["serve predictions through a client"]["figures"]
    assert serve["predictions"] >= 100
    assert serve["monitor_state"] == "ok"
    assert serve["monitor_reference"] == "registry:churn:1.0.0"  # the training rows stored with the version
    drift = steps["check for data drift"]["figures"]
    assert drift["server_clean_drifted"] == []
    assert drift["server_drifted_columns"] == ["f2", "f5", "f6", "f7"]
    assert drift["server_alerts"].count("data_drift:firing") == 1
    assert 0 <= drift["server_health_score"] < 100


def test_library_cross_check_of_drift_and_alert(workflow):
    _, summary, out = workflow
    steps = steps_by_name(summary)
    drift = steps["check for data drift"]["figures"]
    assert {"f2", "f5", "f6", "f7"} <= set(drift["drifted_columns"])
    assert drift["clean_share_drifted"] < 0.5 <= drift["share_drifted"]
    assert "data-drift:firing" in drift["alerts"]
    alerts = [json.loads(line) for line in (out / "monitoring" / "alerts.jsonl").read_text().splitlines()]
    assert any(a["rule"] == "data-drift" and a["status"] == "firing" for a in alerts)


def test_ab_experiment_finds_the_planted_better_version(workflow):
    _, summary, _ = workflow
    ab = steps_by_name(summary)["A/B experiment with outcomes fed back"]["figures"]
    assert ab["verdict"] == "winner"
    assert ab["quality_candidate"] > ab["quality_incumbent"]
    assert 0.4 < ab["candidate_share"] < 0.6


def test_reports_are_written_and_linked(workflow):
    proc, summary, out = workflow
    files = steps_by_name(summary)["performance, drift, fairness, compliance reports"]["files"]
    assert set(files) == {"performance report", "drift report", "fairness and compliance report", "experiment report"}
    for path in files.values():
        assert path.startswith(str(out)) and path in proc.stdout  # the printed summary links every report
    drift = json.loads((out / "reports" / "drift" / "report.json").read_text())
    assert drift  # the JSON twin of the drift page
    assert (out / "reports" / "drift.png").read_bytes()[:8] == PNG
    assert f"summary: {out / 'summary.json'}" in proc.stdout
