"""Live quality: predictions joined with later outcomes equal scikit-learn on the joined rows; a planted
accuracy drop trips the concept-drift detectors at the indices river finds on the same stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from fastml.errors import InvalidInput
from fastml.monitoring import quality
from fastml.monitoring.log import PredictionLogger, record_feedback
from fastml.monitoring.store import MonitoringStore
from fastml.serving import feedback

ROWS_PER_REQUEST = 4


def serve_and_label(logdir, model, preds, probs, labels, *, label_every=1, values=False):
    """Log requests of ROWS_PER_REQUEST rows (ids r-00000...), then send outcomes for every label_every-th one."""
    with PredictionLogger(logdir, sample_rate=1.0) as lg:
        for i in range(0, len(preds), ROWS_PER_REQUEST):
            sl = slice(i, i + ROWS_PER_REQUEST)
            outputs = {"variable": preds[sl]} if values else {"label": preds[sl], "probabilities": probs[sl]}
            lg.log(
                model=model,
                version="1",
                inputs={"input": np.zeros((len(preds[sl]), 2), np.float32)},
                outputs=outputs,
                latency_us=100.0,
                request_id=f"r-{i // ROWS_PER_REQUEST:05d}",
            )
    ids, rows, labs = [], [], []
    for i in range(len(preds)):
        if (i // ROWS_PER_REQUEST) % label_every == 0:
            ids.append(f"r-{i // ROWS_PER_REQUEST:05d}")
            rows.append(i % ROWS_PER_REQUEST)
            labs.append(labels[i])
    record_feedback(ids, np.array(labs, np.float64), rows=rows, directory=logdir)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """800 binary predictions; the model is right 90% of the time for the first 400 and 55% after."""
    rng = np.random.default_rng(0)
    n = 800
    labels = rng.integers(0, 2, n)
    wrong = np.concatenate([rng.random(400) < 0.1, rng.random(400) < 0.45])
    preds = np.where(wrong, 1 - labels, labels).astype(np.int64)
    p1 = np.clip(np.where(preds == 1, 0.5 + rng.random(n) / 2, rng.random(n) / 2), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    logdir = tmp_path_factory.mktemp("quality") / "logs"
    serve_and_label(logdir, "clf", preds, probs, labels, label_every=1)
    return {"logdir": logdir, "labels": labels, "preds": preds, "p1": p1}


def test_accuracy_auc_f1_from_feedback_equal_sklearn(classified):
    j = quality.joined_rows("clf", directory=classified["logdir"])
    assert len(j) == 800 and j.task == "classification"
    # Joined in serving order: the stream is the one we planted.
    assert np.array_equal(j.label, classified["labels"]) and np.array_equal(j.prediction, classified["preds"])
    s = quality.summary(j)
    y, p = classified["labels"], classified["preds"]
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert s["f1"] == pytest.approx(skm.f1_score(y, p), abs=1e-12)
    assert s["precision"] == pytest.approx(skm.precision_score(y, p), abs=1e-12)
    assert s["roc_auc"] == pytest.approx(skm.roc_auc_score(y, classified["p1"].astype(np.float32)), abs=1e-9)


def test_windows_by_rows_equal_sklearn_per_window(classified):
    j = quality.joined_rows("clf", directory=classified["logdir"])
    wins = quality.quality_windows(j, window_s=None, window_rows=200)
    assert [w["n_labelled"] for w in wins] == [200] * 4
    y, p = classified["labels"], classified["preds"]
    for k, w in enumerate(wins):
        sl = slice(200 * k, 200 * (k + 1))
        assert w["accuracy"] == pytest.approx(skm.accuracy_score(y[sl], p[sl]), abs=1e-12)
        assert w["f1"] == pytest.approx(skm.f1_score(y[sl], p[sl]), abs=1e-12)
    assert wins[0]["accuracy"] > 0.8 > wins[-1]["accuracy"]


def test_planted_accuracy_drop_trips_detectors_where_river_does(classified):
    river_drift = pytest.importorskip("river.drift")
    from river.drift import binary as rb

    j = quality.joined_rows("clf", directory=classified["logdir"])
    found = quality.concept_drift(j)
    stream = (classified["preds"] != classified["labels"]).astype(float).tolist()  # the planted error stream
    theirs = {
        "ddm": rb.DDM(),
        "eddm": rb.EDDM(),
        "hddm_a": rb.HDDMA(),
        "adwin": river_drift.ADWIN(),
        "page_hinkley": river_drift.PageHinkley(),
        "kswin": river_drift.KSWIN(seed=0),
    }
    for name, det in theirs.items():
        idx = []
        for i, x in enumerate(stream):
            det.update(x)
            if det.drift_detected:
                idx.append(i)
        assert found[name] == idx, name
    assert any(ix and ix[0] >= 400 for ix in (found["ddm"], found["hddm_a"], found["adwin"]))
    wins = quality.quality_windows(j, window_s=None, window_rows=400, detections=found)
    assert wins[1]["concept_drift"] >= 1  # the drop is reported in the window it happened in


def test_regression_mae_rmse_equal_sklearn_and_partial_feedback(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(10, 3, 80)
    pred = y + rng.normal(0, 1, 80)
    logdir = tmp_path / "logs"
    serve_and_label(logdir, "reg", pred.astype(np.float32), None, y, label_every=2, values=True)
    j = quality.joined_rows("reg", directory=logdir)
    assert j.task == "regression" and len(j) == 40 and j.logged_rows == 80
    labelled = np.array([(i // ROWS_PER_REQUEST) % 2 == 0 for i in range(80)])
    s = quality.summary(j)
    assert s["mae"] == pytest.approx(skm.mean_absolute_error(y[labelled], pred.astype(np.float32)[labelled]))
    assert s["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y[labelled], pred.astype(np.float32)[labelled])))
    assert "ddm" not in quality.concept_drift(j)  # binary detectors do not watch real-valued errors


def test_refresh_stores_windows_and_no_data_is_empty(classified, tmp_path):
    store = MonitoringStore(tmp_path / "monitoring.db")
    wins = quality.refresh("clf", store, directory=classified["logdir"], window_s=3600.0)
    stored = store.quality("clf")
    assert [w["n_labelled"] for w in stored] == [w["n_labelled"] for w in wins] and sum(
        w["n_labelled"] for w in stored
    ) == 800
    quality.refresh("clf", store, directory=classified["logdir"], window_s=3600.0)
    assert len(store.quality("clf")) == len(stored)  # recomputed windows replace, not duplicate
    assert quality.refresh("nobody", store, directory=classified["logdir"]) == []
    assert len(quality.joined_rows("nobody", directory=classified["logdir"])) == 0


def test_bad_feedback_is_refused_or_reported(classified):
    with pytest.raises(InvalidInput, match=r"feedback\.label: must be a number"):
        feedback.parse({"id": "r-00001", "label": "yes"})
    same = int(classified["labels"][ROWS_PER_REQUEST])  # the outcome already recorded: shared data unchanged
    res = feedback.record(["r-00001", "never-served"], [same, 0], model="clf", directory=classified["logdir"])
    assert res.recorded == 1 and res.unknown == 1 and res.unknown_ids == ["never-served"]
    with pytest.raises(InvalidInput, match="output 'nope' is not logged"):
        quality.joined_rows("clf", directory=classified["logdir"], output="nope")
    with pytest.raises(InvalidInput, match="task"):
        quality.joined_rows("clf", directory=classified["logdir"], task="ranking")


def test_feedback_through_the_endpoint_is_judged_off_the_request_path(tmp_path):
    """fastml serve --monitor: POSTed outcomes reach the live-quality thread, which stores the window, hands
    the metrics to the live monitor and fires low_accuracy (critical) once."""
    from types import SimpleNamespace

    from fastml.monitoring.alerts import AlertRule, live_alerts
    from fastml.monitoring.live import LiveMonitor

    logdir = tmp_path / "logs"
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    pred = np.where(rng.random(120) < 0.4, 1 - y, y)  # 60% right
    with PredictionLogger(logdir, sample_rate=1.0) as lg:
        for i in range(120):
            lg.log(
                model="clf",
                version="1",
                inputs={"x": np.zeros((1, 1), np.float32)},
                outputs={"label": pred[i : i + 1]},
                latency_us=10.0,
                request_id=f"s{i:03d}",
            )
    monitor = LiveMonitor(MonitoringStore(tmp_path / "monitoring.db"))
    listener = live_alerts(monitor, [AlertRule("low_accuracy", "accuracy", "<", 0.7, severity="critical")])
    entry = SimpleNamespace(
        name="clf", model=SimpleNamespace(prediction_logger=SimpleNamespace(directory=logdir, flush=lambda t: True))
    )
    plane = SimpleNamespace(deployments=None, resolve=lambda name: entry, monitor=SimpleNamespace(alerts=listener))
    body = json.dumps([{"id": f"s{i:03d}", "label": int(y[i])} for i in range(120)]).encode()
    assert feedback.handle_http(plane, "clf", body)["recorded"] == 120
    assert listener.quality.flush(30)
    acc = float(np.mean(pred == y))
    assert listener.quality.latest["clf"]["accuracy"] == pytest.approx(acc)
    assert monitor._quality[("clf", "")]["accuracy"] == pytest.approx(acc)  # the next window carries it
    feedback.handle_http(plane, "clf", body[: body.index(b"}") + 1] + b"]")  # more feedback: still firing
    assert listener.quality.flush(30)
    fired = [a for a in monitor.store.alerts("clf") if a["status"] == "firing"]
    assert [(a["rule"], a["severity"]) for a in fired] == [("low_accuracy", "critical")]
    assert listener.quality.failures == 0
    monitor.close()
