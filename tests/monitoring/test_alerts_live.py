"""Alerts that fire: a live stream whose second half is shifted fires the drift alert once (not once per
window while it keeps drifting); webhooks verify with the shared scheme; critical alerts reach the audit
log; rules come from TOML with built-in defaults; cool-down holds back a flapping rule."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest

from fastml.errors import InvalidInput, NotFound
from fastml.governance.audit import AuditLog
from fastml.monitoring.alerts import (
    DEFAULT_RULES,
    AlertManager,
    AlertRule,
    AuditSink,
    PrometheusSink,
    StoreSink,
    WebhookSink,
    WindowAlerts,
    load_rules,
)
from fastml.monitoring.live import LiveMonitor
from fastml.monitoring.profile import ReferenceProfile
from fastml.monitoring.store import MonitoringStore
from fastml.webhooks import verify_signature


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers, body))  # case-insensitive lookup
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def hook():
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Hook.received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory, hook):
    """Six windows of 500 rows of (a, b, c) against a 3,000-row reference; from the fourth window on, a and
    b are shifted by 1.5 standard deviations (c never moves)."""
    url, received = hook
    tmp = tmp_path_factory.mktemp("alerts_live")
    store = MonitoringStore(tmp / "monitoring.db")
    audit = AuditLog(tmp / "audit", anchor=False)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    rules = [
        AlertRule("data_drift", "drift_share", ">=", 0.5, severity="critical", cooldown_s=600),
        AlertRule("few_rows", "rows", "<", 10, severity="info"),
    ]
    manager = AlertManager(
        rules, [StoreSink(store), AuditSink(audit.append), WebhookSink(url, "s3cret"), PrometheusSink(registry)]
    )
    listener = WindowAlerts(manager)
    rng = np.random.default_rng(11)
    prof = ReferenceProfile.from_data({k: rng.normal(size=3000) for k in "abc"})
    mon = LiveMonitor(store, window_rows=500, window_s=3600, seed=1)
    mon.set_reference("fraud", prof, {"input": [-1, 3]})
    events = []
    mon.add_listener(lambda r: events.extend(listener(r)))
    for w in range(6):
        X = rng.normal(size=(500, 3))
        if w >= 3:
            X[:, :2] += 1.5
        for lo in range(0, 500, 100):
            mon.observe("fraud", None, {"input": X[lo : lo + 100]}, {})
        assert mon.flush()
    mon.close()  # closes its store too: read back through a fresh one
    return {
        "store": MonitoringStore(tmp / "monitoring.db"),
        "audit": audit,
        "events": events,
        "received": received,
        "registry": registry,
        "listener": listener,
    }


def test_shifted_half_fires_the_drift_alert_once_on_the_shifted_features(shifted_run):
    store = shifted_run["store"]
    wins = store.windows("fraud")
    assert len(wins) == 6
    assert [w.drifted_features() for w in wins[:3]] == [[], [], []]
    assert all(w.drifted_features() == ["a", "b"] for w in wins[3:])  # exactly the shifted features
    fired = [e for e in shifted_run["events"] if e.status == "firing"]
    assert [(e.rule, e.model) for e in fired] == [("data_drift", "fraud")]  # once, though 3 windows drifted
    assert fired[0].details["drifted_features"] == ["a", "b"] and fired[0].details["window_id"] == wins[3].id
    assert [a["rule"] for a in store.firing_alerts()] == ["data_drift"]
    assert (
        shifted_run["registry"].get_sample_value(
            "fastml_alerts_firing", {"model": "fraud", "rule": "data_drift", "severity": "critical"}
        )
        == 1.0
    )
    assert {"model": "fraud", "rule": "data_drift", "severity": "critical", "firing": 1.0} in shifted_run[
        "listener"
    ].metric_rows()


def test_webhook_delivery_verifies_with_the_shared_scheme(shifted_run):
    ((headers, body),) = shifted_run["received"]
    event = json.loads(body)
    assert event["rule"] == "data_drift" and event["status"] == "firing" and event["model"] == "fraud"
    assert verify_signature(body, headers["X-FastML-Signature"], "s3cret")
    assert not verify_signature(body, headers["X-FastML-Signature"], "other")
    assert not verify_signature(body.replace(b"fraud", b"frauD"), headers["X-FastML-Signature"], "s3cret")
    from fastml.registry import verify_signature as registry_verify

    assert registry_verify is verify_signature  # one scheme for registry events and alerts


def test_critical_alert_lands_in_the_audit_log(shifted_run):
    audit = shifted_run["audit"]
    entries = [e for e in audit.entries() if e["action"].startswith("monitoring.alert")]
    assert [(e["action"], e["target"]) for e in entries] == [("monitoring.alert.firing", "fraud")]
    assert entries[0]["details"]["rule"] == "data_drift"
    assert audit.verify().ok


def test_cooldown_holds_back_a_flapping_rule():
    mgr = AlertManager([AlertRule("lat", "latency_p99_ms", ">", 100, cooldown_s=60)])
    assert [e.status for e in mgr.evaluate({"latency_p99_ms": 150}, now=0, model="m")] == ["firing"]
    assert [e.status for e in mgr.evaluate({"latency_p99_ms": 50}, now=10, model="m")] == ["resolved"]
    assert mgr.evaluate({"latency_p99_ms": 150}, now=20, model="m") == []  # inside the cool-down
    assert mgr.suppressed == 1
    assert [e.model for e in mgr.evaluate({"latency_p99_ms": 150}, now=20, model="other")] == ["other"]
    assert [e.status for e in mgr.evaluate({"latency_p99_ms": 150}, now=61, model="m")] == ["firing"]


def test_rules_from_toml_override_defaults(tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text(
        '[[rules]]\nname = "low_accuracy"\nmetric = "accuracy"\ncomparison = "<"\nthreshold = 0.9\n'
        'severity = "critical"\nfor_s = 30\nmodels = ["fraud"]\n'
    )
    rules = {r.name: r for r in load_rules(f)}
    assert set(rules) == {r.name for r in DEFAULT_RULES}
    assert rules["low_accuracy"].threshold == 0.9 and rules["low_accuracy"].window_s == 30
    assert rules["low_accuracy"].applies_to("fraud") and not rules["low_accuracy"].applies_to("churn")
    f.write_text('defaults = false\n[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<"\nthreshold = 0.5\n')
    assert [r.name for r in load_rules(f)] == ["x"]


@pytest.mark.parametrize(
    "text,match",
    [
        ('[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<<"\nthreshold = 1\n', "comparison"),
        ('[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<"\nthreshold = "high"\n', "threshold"),
        ('[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<"\nthreshold = 1\nseverity = "page"\n', "severity"),
        ('[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<"\nthreshold = 1\nfor = 3\n', "unknown keys"),
        ("[[rules]\n", "not valid TOML"),
    ],
)
def test_bad_rule_files_are_refused_naming_the_problem(tmp_path, text, match):
    f = tmp_path / "rules.toml"
    f.write_text(text)
    with pytest.raises(InvalidInput, match=match):
        load_rules(f)


def test_missing_rules_file_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        load_rules(tmp_path / "absent.toml")


def test_serve_refuses_a_bad_rules_file_before_listening(tmp_path, fastml_home, capsys):
    from fastml.cli import main

    bad = tmp_path / "rules.toml"
    bad.write_text('[[rules]]\nname = "x"\nmetric = "f1"\ncomparison = "<"\nthreshold = 1\nseverity = "page"\n')
    assert main(["serve", str(tmp_path / "repo"), "--monitor", "--alert-rules", str(bad)]) == 2
    assert "severity must be one of" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "repo"), "--alert-rules", str(bad)]) == 2
    assert "--alert-rules needs --monitor" in capsys.readouterr().err


def test_rules_file_webhooks_deliver_from_the_background(tmp_path, hook, monkeypatch):
    from types import SimpleNamespace

    from fastml.monitoring.alerts import live_alerts, load_webhooks
    from fastml.monitoring.store import FeatureDrift, WindowResult

    url, received = hook
    f = tmp_path / "rules.toml"
    f.write_text(f'[[webhooks]]\nurl = "{url}"\nsecret_env = "ALERT_SECRET"\n')
    with pytest.raises(InvalidInput, match="ALERT_SECRET"):
        load_webhooks(f)
    monkeypatch.setenv("ALERT_SECRET", "from-env")
    listeners = []
    monitor = SimpleNamespace(store=None, add_listener=listeners.append, record_quality=lambda *a: None)
    listener = live_alerts(monitor, f)
    assert listeners == [listener]
    before = len(received)
    window = WindowResult(
        "wh",
        n_rows=2000,
        reference_rows=2000,
        drift=[FeatureDrift("a", "ks", 0.0, 0.05, True)],
        drift_share=1.0,
        end_ts=time.time(),
    )
    assert [e.rule for e in listener(window)] == ["data_drift"]  # built-in rules still apply
    (sink,) = [s for s in listener.manager.sinks if hasattr(s, "flush")]
    sink.flush()
    headers, body = received[before]
    assert json.loads(body)["model"] == "wh" and sink.delivered == 1
    assert verify_signature(body, headers["X-FastML-Signature"], "from-env")
    f.write_text('[[webhooks]]\nurl = "ftp://x"\nsecret = "s"\n')
    with pytest.raises(InvalidInput, match="http"):
        load_webhooks(f)
