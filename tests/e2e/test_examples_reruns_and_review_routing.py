"""Examples run a second time on the same FASTML_HOME: each run reports and checks its own outcomes, not the
ones an earlier run left in the registry, the review queue, the audit log or the monitoring store."""

from __future__ import annotations

import time

import pytest

from .example_runner import explain, run_example, steps_by_name


def _twice(name, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"{name}_rerun_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTML_HOME", str(home))
    try:
        first = run_example(name, tmp_path_factory.mktemp(f"{name}_first"))
        between = time.time()  # everything the second run stores happens after this
        second = run_example(name, tmp_path_factory.mktemp(f"{name}_second"))
    finally:
        mp.undo()
    return home, between, first, second


@pytest.fixture(scope="module")
def fraud_twice(tmp_path_factory):
    return _twice("fraud", tmp_path_factory)


@pytest.fixture(scope="module")
def healthcare_twice(tmp_path_factory):
    return _twice("healthcare", tmp_path_factory)


def test_fraud_second_run_reports_its_own_drift_alert(fraud_twice):
    from fastml.monitoring.store import MonitoringStore

    home, between, (proc1, summary1), (proc2, summary2) = fraud_twice
    assert proc1.returncode == 0, explain(proc1)
    assert proc2.returncode == 0, explain(proc2)
    first = steps_by_name(summary1)["live monitoring: drift alert"]["figures"]
    second = steps_by_name(summary2)["live monitoring: drift alert"]["figures"]
    with MonitoringStore(home / "monitoring.db") as store:
        windows = store.windows("fraud")
        alerts = [a for a in store.alerts("fraud") if a["rule"] == "data_drift" and a["status"] == "firing"]
    # Independently, from the monitoring store both runs wrote: the second run's windows are those whose
    # traffic came after the first run ended, and its alert is the one stored after the first run's.
    mine = [w for w in windows if w.start_ts >= between]
    before = [w for w in windows if w.start_ts < between]
    alert1 = [a for a in alerts if a["at"] < between]
    alert2 = [a for a in alerts if a["at"] >= between]
    assert len(alert1) == 1 and len(alert2) == 1, alerts
    number1 = [w.id for w in before].index(alert1[0]["details"]["window_id"]) + 1
    number2 = [w.id for w in mine].index(alert2[0]["details"]["window_id"]) + 1
    # 2 normal windows, then the card-testing burst: the alert is on each run's third window
    assert first["alert_window"] == number1 == 3
    assert second["alert_window"] == number2 == 3
    shares = [w.drift_share or 0.0 for w in mine]
    assert len(second["window_drift_shares"]) >= 3
    assert second["window_drift_shares"] == pytest.approx(shares[: len(second["window_drift_shares"])])
    assert max(second["window_drift_shares"][:2]) < 0.3 <= second["window_drift_shares"][2]
    assert second["alerts"] == ["data_drift:firing"]


def test_healthcare_second_run_passes_and_counts_only_its_own_reviews(healthcare_twice):
    from fastml.governance.audit import AuditLog
    from fastml.governance.review import ReviewQueue

    home, _, (proc1, summary1), (proc2, summary2) = healthcare_twice
    assert proc1.returncode == 0, explain(proc1)
    assert proc2.returncode == 0, explain(proc2)
    assert summary2["passed"] is True
    queued = {}
    for summary, version in ((summary1, "1.0.0"), (summary2, "1.0.2")):
        steps = steps_by_name(summary)
        assert steps["train and register over the 0.95 bar"]["figures"]["model"] == f"diagnosis:{version}"
        n = steps["serve with explanations; route low confidence"]["figures"]["queued_for_review"]
        queued[version] = n
        review = steps["a person resolves the review queue (CLI)"]["figures"]
        assert review["resolved"] == n and review["overridden"] == 1
        actions = steps["audit trail verified"]["figures"]["actions"]
        assert actions["pipeline.register.refused"] == 1
        assert actions["review.enqueue"] == actions["review.resolve"] == n
    # Independently, from the audit log and the review queue both runs wrote.
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTML_HOME", str(home))
    try:
        entries = [e["action"] for e in AuditLog().entries()]
        with ReviewQueue() as queue:
            items = queue.list(status=None, model="diagnosis")
    finally:
        mp.undo()
    total = sum(queued.values())
    assert entries.count("pipeline.register.refused") == 2
    assert entries.count("review.enqueue") == entries.count("review.resolve") == total == len(items)
    assert sum(i.status == "overridden" for i in items) == 2
    assert not [i for i in items if i.status == "open"]


def test_healthcare_first_prediction_is_routed_on_its_confidence_too(tmp_path, monkeypatch, capsys):
    """The first request asks for the prediction only (no explanation): a low confidence must still send it to
    review. Today's patients are reordered so the most uncertain one is served first."""
    import numpy as np
    import onnxruntime as ort

    from fastml import config
    from fastml.examples import healthcare
    from fastml.governance.review import ReviewQueue
    from fastml.registry.registry import Registry

    monkeypatch.setenv("FASTML_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "_settings", None)  # restored (and so re-read) after the test
    original = healthcare.make_extract

    def uncertain_first(n, seed, mistranscribed=0.0):
        frame = original(n, seed, mistranscribed)
        if seed != 11:  # only today's patients
            return frame
        z = {c: (frame[c] - frame[c].mean()) / frame[c].std() for c in ("hba1c", "glucose", "bmi", "age")}
        risk = 2.0 * z["hba1c"] + 1.5 * z["glucose"] + 0.6 * z["bmi"] + 0.4 * z["age"]
        j = int(np.argmin(np.abs(risk.to_numpy() - 0.5)))
        return frame.iloc[[j] + [k for k in range(n) if k != j]].reset_index(drop=True)

    monkeypatch.setattr(healthcare, "make_extract", uncertain_first)
    summary = healthcare.run(tmp_path / "out", quick=True)
    capsys.readouterr()
    assert summary["passed"], [s["error"] for s in summary["steps"] if s["error"]]
    steps = steps_by_name(summary)
    queued = steps["serve with explanations; route low confidence"]["figures"]["queued_for_review"]
    # Independently: the registered model's confidence on every served patient, with ONNX Runtime.
    patients = uncertain_first(healthcare.QUICK.served, seed=11)
    X = patients[healthcare.CLINICAL].to_numpy(np.float32)
    with Registry() as reg:
        path = reg.artifact_path(steps["train and register over the 0.95 bar"]["figures"]["model"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    confidence = sess.run(["probabilities"], {"input": X})[0].max(axis=1)
    assert confidence[0] < healthcare.CONFIDENCE_THRESHOLD  # the first patient is an uncertain one
    assert queued == int((confidence < healthcare.CONFIDENCE_THRESHOLD).sum())
    with ReviewQueue() as queue:
        items = queue.list(status=None, model="diagnosis")
    assert len(items) == queued
    first = [i for i in items if i.request_id.startswith("patient-0-")]
    assert len(first) == 1 and first[0].reason.startswith(f"confidence {confidence[0]:.2f} <")


def test_server_process_stop_releases_its_pipe_and_log(tmp_path, monkeypatch):
    """An example's server, once stopped, leaves no process and no open pipe or log file behind."""
    import os

    import onnx
    from onnx import TensorProto, helper

    from fastml.examples.server import ServerProcess

    monkeypatch.setenv("FASTML_HOME", str(tmp_path / "home"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 2])],
    )
    model = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    server = ServerProcess([str(model)], tmp_path / "serve.log")
    pid = server.proc.pid
    assert server.url.startswith("127.0.0.1:")
    assert server.stop() == 0
    assert server.proc.poll() == 0
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    assert server.proc.stdout is not None and server.proc.stdout.closed
    assert server._log.closed
    assert "fastml serve: http://" in (tmp_path / "serve.log").read_text()
