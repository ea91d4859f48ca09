"""fastml monitor watch / alerts / report over the monitoring store: alerts fire once across runs, critical
ones reach the audit log, and the report (drift, quality, alerts, health; small windows flagged) renders in
a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest

from fastml.monitoring.alerts import AlertManager, StoreSink, load_rules
from fastml.monitoring.alerts_cli import Watcher, parse_time
from fastml.monitoring.log import PredictionLogger, record_feedback
from fastml.monitoring.store import FeatureDrift, MonitoringStore, WindowResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T0 = time.time() - 3600


def _window(i: int, rows: int, drifted: bool) -> WindowResult:
    drift = [
        FeatureDrift("a", "ks", 0.001 if drifted else 0.4, 0.05, drifted),
        FeatureDrift("b", "ks", 0.3, 0.05, False),
    ]
    return WindowResult(
        model="fraud",
        start_ts=T0 + 60 * i,
        end_ts=T0 + 60 * i + 59,
        n_rows=rows,
        reference_rows=5000,
        small_window=rows < 1000,
        drift=drift,
        drift_share=0.5 if drifted else 0.0,
        health_score=50.0 if drifted else 100.0,
        extra={"latency_p99_ms": 3.0},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A FASTML_HOME with 3 full windows, then 2 drifted 100-row windows; a prediction log whose feedback
    shows accuracy falling; then `fastml monitor watch --once` twice, `alerts` and `report`."""
    from fastml.cli import main

    home = tmp_path_factory.mktemp("report_live")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTML_HOME", str(home))
        from fastml.config import reset_settings

        reset_settings()
        with MonitoringStore(home / "monitoring.db") as store:
            for i in range(3):
                store.add_window(_window(i, 5000, False))
            for i in range(3, 5):
                store.add_window(_window(i, 100, True))
        # 40 served predictions of fraud, all right, with their outcomes: quality for the report, no alert.
        with PredictionLogger(home / "logs", sample_rate=1.0) as lg:
            for i in range(40):
                lg.log(
                    model="fraud",
                    version="1",
                    inputs={"x": np.zeros((1, 2), np.float32)},
                    outputs={"label": np.array([i % 2])},
                    latency_us=50.0,
                    request_id=f"f{i:03d}",
                )
        record_feedback([f"f{i:03d}" for i in range(40)], np.arange(40) % 2, directory=home / "logs")
        rules = home / "rules.toml"
        rules.write_text(
            '[[rules]]\nname = "data_drift"\nmetric = "drift_share"\ncomparison = ">="\nthreshold = 0.5\n'
            'severity = "critical"\ncooldown_s = 600\n'
        )
        out = {"home": home, "rules": rules}

        def cli(*argv):
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(list(argv))
            return code, buf.getvalue()

        out["watch1"] = cli("monitor", "watch", "--once", "--rules", str(rules), "--json")
        out["watch2"] = cli("monitor", "watch", "--once", "--rules", str(rules), "--json")
        out["alerts"] = cli("monitor", "alerts", "--json")
        out["firing"] = cli("monitor", "alerts", "--firing")
        out["report"] = cli("monitor", "report", "--model", "fraud", "--out", str(home / "rep"), "--json")
        out["report_empty"] = cli(
            "monitor",
            "report",
            "--model",
            "fraud",
            "--since",
            "1d",
            "--until",
            str(T0),
            "--out",
            str(home / "empty"),
            "--json",
        )
        from fastml.governance.audit import AuditLog

        out["audit"] = [e for e in AuditLog(home / "audit").entries() if e["action"].startswith("monitoring.")]
        reset_settings()
    return out


def test_watch_fires_once_across_runs(run):
    code, text = run["watch1"]
    assert code == 0
    events = [json.loads(x) for x in text.splitlines()]
    assert [(e["rule"], e["status"], e["model"]) for e in events] == [("data_drift", "firing", "fraud")]
    assert events[0]["details"]["small_window"] is True and events[0]["details"]["drifted_features"] == ["a"]
    assert run["watch2"] == (0, "")  # the second run knows the alert fires already: nothing announced twice


def test_alerts_command_lists_store_events(run):
    code, text = run["alerts"]
    doc = json.loads(text)
    assert code == 0 and [(a["rule"], a["status"]) for a in doc["alerts"]] == [("data_drift", "firing")]
    code, text = run["firing"]
    assert code == 0 and "data_drift" in text and "critical" in text


def test_critical_alert_from_watch_lands_in_audit_log(run):
    assert [(e["action"], e["target"], e["details"]["rule"]) for e in run["audit"]] == [
        ("monitoring.alert.firing", "fraud", "data_drift")
    ]


def test_report_json_covers_drift_alerts_health_and_flags_small_windows(run):
    code, text = run["report"]
    summary = json.loads(text)
    assert code == 0 and summary["state"] == "ok" and summary["windows"] == 5 and summary["small_windows"] == 2
    data = json.loads(open(summary["json"]).read())
    assert data["drift"]["drifted_windows_per_feature"] == {"a": 2}
    assert "100 rows against a 5,000-row reference" in data["drift"]["small_window_note"]
    assert "fire on noise" in data["drift"]["small_window_note"]
    assert [a["rule"] for a in data["alerts"]] == ["data_drift"]
    assert sum(q["n_labelled"] for q in data["quality"]) == 40 and {q["accuracy"] for q in data["quality"]} == {1.0}
    assert data["health"] == {"latest": 50.0, "min": 50.0, "mean": 80.0}
    code, text = run["report_empty"]
    assert code == 0 and json.loads(text)["state"] == "no data"


def test_quality_windows_from_feedback_raise_the_accuracy_alert(tmp_path):
    logs = tmp_path / "logs"
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    wrong = np.concatenate([rng.random(200) < 0.05, rng.random(200) < 0.7])
    pred = np.where(wrong, 1 - y, y)
    with PredictionLogger(logs, sample_rate=1.0) as lg:
        for i in range(400):
            lg.log(
                model="churn",
                version="1",
                inputs={"x": np.zeros((1, 2), np.float32)},
                outputs={"label": pred[i : i + 1]},
                latency_us=50.0,
                request_id=f"q{i:04d}",
            )
    record_feedback([f"q{i:04d}" for i in range(400)], y.astype(float), directory=logs)
    with MonitoringStore(tmp_path / "m.db") as store:
        # One quality window holding every row (1e9 s, aligned): judged once "now" is past its end.
        w = Watcher(
            store,
            AlertManager(load_rules(None), [StoreSink(store)]),
            log_dir=logs,
            quality_window_s=1e9,
            lookback_s=3e9,
        )
        events = w.run_once(now=2e9 + 1)
        assert sorted((e.rule, e.severity, e.status) for e in events) == [
            ("concept_drift", "warning", "firing"),
            ("low_accuracy", "critical", "firing"),
        ]
        acc = next(e for e in events if e.rule == "low_accuracy")
        assert acc.value == pytest.approx(float(np.mean(pred == y)))
        assert len(store.quality("churn")) >= 1
        assert w.run_once(now=2e9 + 2) == []


def test_times_parse():
    assert parse_time("2026-12-05T14:00:00Z") == 1796479200.0
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("30m", now=10_000.0) == 8200.0
    from fastml.errors import InvalidInput

    with pytest.raises(InvalidInput, match="age"):
        parse_time("yesterday")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium binary not installed (apt-get install chromium)")
def test_store_report_renders_in_headless_chromium(run, tmp_path):
    html_path = json.loads(run["report"][1])["html"]
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"file://{html_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for section in ('id="health"', 'id="drift"', 'id="quality"', 'id="alerts"', 'id="small-windows"'):
        assert section in dom
    assert "fire on noise" in dom and "data_drift" in dom and "<svg" in dom
    assert "50.0 / 100" in dom
    assert "1.0000" in dom  # the live accuracy from feedback, in the quality table
