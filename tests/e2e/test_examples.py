"""The three use-case examples end to end (quick sizes), each asserting its planted outcome."""

from __future__ import annotations

import pytest

from .example_runner import PNG, explain, run_example, steps_by_name


def _run(name, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"{name}_home")
    out = tmp_path_factory.mktemp(f"{name}_out")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTML_HOME", str(home))
    try:
        proc, summary = run_example(name, out)
    finally:
        mp.undo()
    return proc, summary, out


@pytest.fixture(scope="module")
def recommender(tmp_path_factory):
    return _run("recommender", tmp_path_factory)


def test_recommender_ab_finds_winner_and_canary_rolls_back(recommender):
    proc, summary, out = recommender
    assert proc.returncode == 0, explain(proc)
    assert summary["passed"] and all(s["outcome"] == "passed" for s in summary["steps"])
    steps = steps_by_name(summary)
    ab = steps["A/B 90/10 with sticky users"]["figures"]
    assert 0.06 < ab["candidate_user_share"] < 0.14
    compare = steps["per-variant comparison"]["figures"]
    assert compare["verdict"] == "winner"
    assert compare["accuracy_candidate"] > compare["accuracy_incumbent"]
    assert steps["promote the winner through the registry"]["figures"]["production"] == "recsys:1.0.1"
    canary = steps["canary of the next version"]["figures"]
    assert canary["state"] == "rolled_back" and "quality" in canary["rollback_guards"]
    assert canary["final_weights_bp"] == {"stable": 10000, "next": 0}
    assert "canary.rollback" in canary["audit_actions"]
    assert (out / "reports" / "ab.html").stat().st_size > 1000
    assert (out / "reports" / "ab_and_canary.png").read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def healthcare(tmp_path_factory):
    return _run("healthcare", tmp_path_factory)


def test_healthcare_bar_hipaa_explanations_review_audit(healthcare):
    proc, summary, out = healthcare
    assert proc.returncode == 0, explain(proc)
    assert summary["passed"] and all(s["outcome"] == "passed" for s in summary["steps"])
    steps = {s["number"]: s["figures"] for s in summary["steps"]}
    assert {"mrn", "patient_name", "ssn", "date_of_birth", "zip_code", "phone"} <= set(steps[2]["phi_columns"])
    assert steps[2]["verdict_raw_extract"] == "fail" and steps[2]["verdict_model_input"] == "pass"
    # degraded data: the pipeline refused to register below the 0.95 bar
    assert "below the bar 0.95" in steps[3]["refusal"]
    assert steps[4]["holdout_accuracy"] >= 0.95 and steps[4]["model"] == "diagnosis:1.0.0"
    assert steps[5]["max_abs_diff_vs_kernel_shap"] < 1e-3 and steps[5]["model"] == "diagnosis:1.0.1"
    assert 0 < steps[6]["queued_for_review"] == steps[7]["resolved"]
    assert steps[7]["overridden"] == 1
    actions = steps[8]["actions"]
    assert actions["review.enqueue"] == actions["review.resolve"] == steps[6]["queued_for_review"]
    assert actions["pipeline.register.refused"] == 1
    assert (out / "reports" / "audit.jsonl").is_file()
    assert (out / "reports" / "explanation.png").read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    return _run("fraud", tmp_path_factory)


def test_fraud_features_approvals_join_and_drift_alert(fraud):
    proc, summary, out = fraud
    assert proc.returncode == 0, explain(proc)
    assert summary["passed"] and all(s["outcome"] == "passed" for s in summary["steps"])
    steps = {s["number"]: s["figures"] for s in summary["steps"]}
    assert steps[2]["rows_equal_to_latest_snapshot"] < 0.9  # point in time, not the latest values
    assert steps[3]["roc_auc"] > 0.8 and steps[3]["trials"] == 2
    assert steps[4]["failures"] == [] and steps[5]["gdpr_verdict"] == "pass"
    assert steps[6]["reviewers"] == ["risk-lead", "compliance-officer"] and steps[6]["production"] == "fraud:1.0.0"
    assert steps[7]["request_inputs"] == ["amount", "card_id", "hour"]  # features joined in the server
    # the planted card-testing burst: the alert fires on its window, naming the shifted features
    assert "data_drift:firing" in steps[8]["alerts"]
    assert {"amount", "hour"} <= set(steps[8]["drifted_features"])
    assert steps[8]["alert_window"] > 2
    assert "governance.gate.allow" in steps[9]["audit_actions"]
    assert (out / "reports" / "live_drift.png").read_bytes()[:8] == PNG
