"""Performance metrics (vs scikit-learn), alerts (fire, de-duplicate, resolve; log, signed webhook,
Prometheus), and the health score's documented properties."""

from __future__ import annotations

import http.server
import json
import logging
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastml.errors import InvalidInput, NotFound
from fastml.monitoring.alerts import (
    AlertManager,
    AlertRule,
    LogSink,
    PrometheusSink,
    WebhookSink,
    sign,
    verify_signature,
)
from fastml.monitoring.health import HealthInputs, baseline_from_registry, health_score
from fastml.monitoring.performance import (
    PerformanceTracker,
    classification_metrics,
    latency_metrics,
    regression_metrics,
    windows_from_log,
)


# ------------------------------------------------------------------------------------ performance
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_metrics_equal_sklearn(seed):
    from sklearn import metrics as M

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1).round(2)  # rounding makes ties
    p = (s > 0.5).astype(int)
    got = classification_metrics(y, p, s)
    assert got["accuracy"] == pytest.approx(M.accuracy_score(y, p))
    assert got["precision"] == pytest.approx(M.precision_score(y, p))
    assert got["recall"] == pytest.approx(M.recall_score(y, p))
    assert got["f1"] == pytest.approx(M.f1_score(y, p))
    assert got["roc_auc"] == pytest.approx(M.roc_auc_score(y, s), rel=1e-12)


def test_multiclass_macro_and_regression_equal_sklearn():
    from sklearn import metrics as M

    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    got = classification_metrics(y, p)
    assert got["precision"] == pytest.approx(M.precision_score(y, p, average="macro", zero_division=0))
    assert got["recall"] == pytest.approx(M.recall_score(y, p, average="macro", zero_division=0))
    assert got["f1"] == pytest.approx(M.f1_score(y, p, average="macro", zero_division=0))
    assert got["roc_auc"] is None
    yt, yp = rng.normal(size=200), rng.normal(size=200)
    r = regression_metrics(yt, yp)
    assert r["rmse"] == pytest.approx(np.sqrt(M.mean_squared_error(yt, yp)))
    assert r["mae"] == pytest.approx(M.mean_absolute_error(yt, yp))


def test_latency_metrics():
    lat = np.arange(1, 101) * 1000.0  # 1..100 ms
    m = latency_metrics(lat, np.linspace(0, 9.9, 100), [False] * 95 + [True] * 5)
    assert m["latency_p50_ms"] == pytest.approx(50.5) and m["latency_p99_ms"] == pytest.approx(99.01)
    assert m["throughput_rps"] == pytest.approx(10.0) and m["error_rate"] == pytest.approx(0.05)


def test_tracker_sliding_windows_by_count_and_age():
    tr = PerformanceTracker(window=4)
    tr.add_outcomes([1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], timestamps_s=0.0)
    m = tr.metrics()
    assert m["labelled"] == 4 and m["accuracy"] == 1.0  # only the last 4 remain
    tr = PerformanceTracker(window=100, window_s=10.0)
    tr.add_outcomes([1, 0], [0, 0], timestamps_s=[0.0, 0.0])
    tr.add_outcomes([1, 1], [1, 1], timestamps_s=[20.0, 21.0])
    tr.add_requests([1000, 3000], errors=[False, True], timestamps_s=[20.0, 21.0])
    m = tr.metrics(now=25.0)
    assert m["labelled"] == 2 and m["accuracy"] == 1.0 and m["error_rate"] == 0.5
    assert m["latency_p50_ms"] == pytest.approx(2.0)
    reg = PerformanceTracker("regression")
    reg.add_outcomes([1.0, 2.0], [1.5, 2.5])
    assert reg.metrics()["mae"] == pytest.approx(0.5)
    with pytest.raises(InvalidInput):
        PerformanceTracker("ranking")


def test_windows_from_logged_predictions(tmp_path):
    from fastml.monitoring import PredictionLogger
    from fastml.monitoring.log import read_log

    lg = PredictionLogger(tmp_path)
    for i in range(6):
        lg.log(
            model="m",
            version=1,
            inputs={"x": np.ones((1, 2))},
            outputs={"label": np.array([i % 2])},
            latency_us=1000.0 * (i + 1),
            request_id=f"r{i}",
        )
    lg.close()
    lg.feedback([f"r{i}" for i in range(6)], [0, 1, 0, 0, 0, 1])
    w = windows_from_log(read_log(tmp_path), window_s=1e9)  # one window whatever the clock says
    assert len(w) == 1 and w[0]["requests"] == 6
    assert w[0]["accuracy"] == pytest.approx(5 / 6) and w[0]["latency_p50_ms"] == pytest.approx(3.5)


# ----------------------------------------------------------------------------------------- alerts
def test_alert_fires_once_deduplicates_and_resolves(tmp_path, caplog):
    sink = LogSink(tmp_path / "alerts.jsonl")
    mgr = AlertManager([AlertRule("low-acc", "accuracy", "<", 0.8, severity="critical")], [sink])
    with caplog.at_level(logging.INFO, logger="fastml.monitoring.alerts"):
        assert mgr.evaluate({"accuracy": 0.9}, now=0) == []
        ev = mgr.evaluate({"accuracy": 0.7}, now=1)
        assert [(e.rule, e.status, e.value) for e in ev] == [("low-acc", "firing", 0.7)]
        assert mgr.evaluate({"accuracy": 0.6}, now=2) == [] and mgr.firing == ["low-acc"]
        assert mgr.evaluate({"accuracy": None}, now=3) == []  # unknown value: state kept
        ev = mgr.evaluate({"accuracy": 0.85}, now=4)
        assert [(e.status, e.started_at, e.at) for e in ev] == [("resolved", 1, 4)]
        assert mgr.firing == []
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["firing", "resolved"]
    assert any("low-acc firing" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_alert_window_requires_sustained_breach():
    mgr = AlertManager([AlertRule("slow", "latency_p99_ms", ">", 50, window_s=10)])
    assert mgr.evaluate({"latency_p99_ms": 80}, now=0) == []
    assert mgr.evaluate({"latency_p99_ms": 80}, now=5) == []
    assert mgr.evaluate({"latency_p99_ms": 40}, now=6) == []  # recovered before the window: no alert
    assert mgr.evaluate({"latency_p99_ms": 90}, now=7) == []
    assert [e.status for e in mgr.evaluate({"latency_p99_ms": 90}, now=17)] == ["firing"]


def test_rule_validation():
    with pytest.raises(InvalidInput, match="comparison"):
        AlertRule("x", "m", "=>", 1)
    with pytest.raises(InvalidInput, match="severity"):
        AlertRule("x", "m", ">", 1, severity="meh")
    with pytest.raises(InvalidInput, match="unique"):
        AlertManager([AlertRule("x", "m", ">", 1), AlertRule("x", "n", ">", 1)])


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers, body))  # case-insensitive lookup
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_webhook_sink_posts_hmac_signed_events():
    _Receiver.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        hook = WebhookSink(f"http://127.0.0.1:{server.server_port}/alerts", "s3cret")
        mgr = AlertManager([AlertRule("drift", "drift_share", ">=", 0.5, severity="warning")], [hook])
        mgr.evaluate({"drift_share": 0.6}, now=1)
        mgr.evaluate({"drift_share": 0.7}, now=2)
        mgr.evaluate({"drift_share": 0.1}, now=3)
    finally:
        server.shutdown()
        server.server_close()
    assert hook.delivered == 2 and hook.failures == 0
    statuses = []
    for headers, body in _Receiver.received:
        assert verify_signature(body, headers["X-FastML-Signature"], "s3cret")
        assert not verify_signature(body, headers["X-FastML-Signature"], "wrong")
        statuses.append(json.loads(body)["status"])
    assert statuses == ["firing", "resolved"]
    assert not verify_signature(b"{}", sign(b"{}", "k", timestamp=1000), "k", now=2000.0)  # stale
    assert verify_signature(b"{}", sign(b"{}", "k", timestamp=1000), "k", now=1100.0)


def test_webhook_failure_is_counted_not_raised():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_port
    server.server_close()  # nothing listens there now
    hook = WebhookSink(f"http://127.0.0.1:{port}/", "k", timeout_s=2)
    mgr = AlertManager([AlertRule("r", "m", ">", 0)], [hook])
    assert [e.status for e in mgr.evaluate({"m": 1})] == ["firing"]
    assert hook.failures == 1 and hook.delivered == 0


def test_prometheus_sink_gauges_in_private_registry():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    mgr = AlertManager(
        [AlertRule("err", "error_rate", ">", 0.01, severity="critical")], [PrometheusSink(reg, model="clf")]
    )
    mgr.evaluate({"error_rate": 0.05, "accuracy": 0.9})
    labels = {"model": "clf", "rule": "err", "severity": "critical"}
    assert reg.get_sample_value("fastml_alerts_firing", labels) == 1.0
    assert reg.get_sample_value("fastml_monitor_metric", {"model": "clf", "metric": "accuracy"}) == 0.9
    mgr.evaluate({"error_rate": 0.0})
    assert reg.get_sample_value("fastml_alerts_firing", labels) == 0.0
    assert reg.get_sample_value("fastml_monitor_metric", {"model": "clf", "metric": "error_rate"}) == 0.0


# ----------------------------------------------------------------------------------------- health
def test_health_is_100_on_data_identical_to_reference():
    from fastml.monitoring.drift import detect_drift

    rng = np.random.default_rng(0)
    data = {f"x{i}": rng.normal(size=500) for i in range(5)}
    share = detect_drift(data, data).share_drifted
    h = health_score(
        HealthInputs(
            drift_share=share, performance=0.9, baseline=0.9, latency_p99_ms=10, latency_slo_ms=50, error_rate=0.0
        )
    )
    assert h.score == 100.0 and set(h.penalties.values()) == {0.0}


def test_health_formula_values():
    h = health_score(
        HealthInputs(
            drift_share=0.5, performance=0.81, baseline=0.9, latency_p99_ms=75, latency_slo_ms=50, error_rate=0.01
        )
    )
    # penalties: drift 0.5, performance (0.09/0.9)/0.2 = 0.5, latency 0.5, errors 0.2
    assert h.penalties == pytest.approx({"drift": 0.5, "performance": 0.5, "latency": 0.5, "errors": 0.2})
    assert h.score == pytest.approx(100 * (1 - (0.35 * 0.5 + 0.35 * 0.5 + 0.15 * 0.5 + 0.15 * 0.2)))
    rmse = health_score(HealthInputs(performance=1.1, baseline=1.0, higher_is_better=False))
    assert rmse.score == pytest.approx(50.0)
    with pytest.raises(InvalidInput):
        health_score(HealthInputs())
    with pytest.raises(InvalidInput):
        health_score(HealthInputs(performance=0.5))


inputs = st.builds(
    dict,
    drift_share=st.floats(0, 1),
    performance=st.floats(0, 1),
    latency=st.floats(0, 500),
    error_rate=st.floats(0, 1),
)
deltas = st.floats(0, 1)


@settings(max_examples=300, deadline=None)
@given(base=inputs, which=st.sampled_from(["drift_share", "performance", "latency", "error_rate"]), delta=deltas)
def test_health_never_rises_when_an_input_worsens(base, which, delta):
    def score(d):
        return health_score(
            HealthInputs(
                drift_share=d["drift_share"],
                performance=d["performance"],
                baseline=0.9,
                latency_p99_ms=d["latency"],
                latency_slo_ms=50,
                error_rate=d["error_rate"],
            )
        ).score

    worse = dict(base)
    if which == "performance":
        worse[which] = max(0.0, base[which] - delta)  # lower accuracy is worse
    elif which == "latency":
        worse[which] = base[which] + 500 * delta
    else:
        worse[which] = min(1.0, base[which] + delta)
    s0, s1 = score(base), score(worse)
    assert 0.0 <= s1 <= s0 <= 100.0


def test_baseline_from_registry(tmp_path, small_models):
    from fastml.registry import Registry

    reg = Registry()
    reg.register("clf", str(small_models["logreg_onnx"]), metrics={"accuracy": 0.93})
    assert baseline_from_registry("clf@latest", "accuracy", reg) == 0.93
    with pytest.raises(NotFound, match="no metric"):
        baseline_from_registry("clf@latest", "auc", reg)
