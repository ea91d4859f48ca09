"""`fastml serve --monitor`: a real server fed a stream whose second half is shifted on 2 of 5 features reports
drift on exactly those features, on /metrics and in the monitoring store; a model whose reference does not
fit is served unmonitored with its reason; a broken monitor never fails a request."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastml.monitoring.profile import ReferenceProfile
from fastml.monitoring.store import MonitoringStore

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"fastml serve: https?://([\d.]+):(\d+) \(models: .*\) metrics http://[\d.]+:(\d+)/metrics")
FEATURES = ["a", "b", "c", "d", "e"]
SHIFTED = {"b", "d"}
WINDOW_ROWS = 1000


def _sum_model(path: Path, width: int) -> None:
    """``input`` FP32 [-1, width] -> ``y`` FP32 [-1, 1] (row sums)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["y"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.status


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A repository with ``rowsum`` (5 features, reference fits) and ``wide`` (7 features, reference of 5
    columns: does not fit), served with --monitor; the stream is sent, then the server is stopped."""
    tmp = tmp_path_factory.mktemp("live")
    repo = tmp / "repo"
    _sum_model(repo / "rowsum" / "1" / "model.onnx", 5)
    _sum_model(repo / "wide" / "1" / "model.onnx", 7)
    rng = np.random.default_rng(7)
    ref = {f: rng.normal(size=5000) for f in FEATURES}
    ReferenceProfile.from_data(ref).save(tmp / "ref.arrow")
    home = tmp / "home"
    env = dict(os.environ, FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "fastml.cli",
        "serve",
        str(repo),
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        "--monitor",
        "--monitor-window-rows",
        str(WINDOW_ROWS),
        "--monitor-window-s",
        "600",
        "--monitor-max-rows-per-s",
        "0",  # every row: the windows below are checked row for row (sampling is tested in test_live.py)
        "--reference",
        f"rowsum={tmp / 'ref.arrow'}",
        "--reference",
        f"wide={tmp / 'ref.arrow'}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        m = _LINE.search(line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        port, mport = int(m.group(2)), int(m.group(3))
        X = rng.normal(size=(4 * WINDOW_ROWS, 5)).astype(np.float32)
        half = 2 * WINDOW_ROWS
        for j, f in enumerate(FEATURES):
            if f in SHIFTED:
                X[half:, j] += 1.5
        statuses = []
        for lo in range(0, X.shape[0], 250):
            part = X[lo : lo + 250]
            body = {
                "inputs": [
                    {"name": "input", "shape": list(part.shape), "datatype": "FP32", "data": part.ravel().tolist()}
                ]
            }
            statuses.append(_post(f"http://127.0.0.1:{port}/v2/models/rowsum/infer", body))
        wide = rng.normal(size=(10, 7)).astype(np.float32)
        statuses.append(
            _post(
                f"http://127.0.0.1:{port}/v2/models/wide/infer",
                {"inputs": [{"name": "input", "shape": [10, 7], "datatype": "FP32", "data": wide.ravel().tolist()}]},
            )
        )
        # The windows close on the monitor thread: wait (bounded) until the fourth has closed (the count also
        # holds the stored notice that ``wide`` is not monitored, hence 5).
        deadline = time.monotonic() + 60
        text = _metrics(mport)
        while (_value(text, "fastml_monitor_windows_total") or 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
            text = _metrics(mport)
        yield {"metrics": text, "statuses": statuses, "home": home, "X": X, "ref": ref}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()


def test_every_request_answered(served):
    assert served["statuses"] == [200] * len(served["statuses"])


def test_metrics_flag_exactly_the_shifted_features(served):
    text = served["metrics"]
    assert _value(text, "fastml_monitor_windows_total") == 5  # four windows and wide's notice
    assert _value(text, "fastml_monitor_dropped_total") == 0
    assert _value(text, "fastml_monitor_rows_total") == 4 * WINDOW_ROWS  # every row (sampling is off here)
    assert _value(text, "fastml_monitor_sampled_out_rows_total") == 0
    flags = {f: _value(text, f'fastml_drift_detected{{feature="{f}",model="rowsum",variant=""}}') for f in FEATURES}
    assert flags == {f: 1.0 if f in SHIFTED else 0.0 for f in FEATURES}
    score = _value(text, 'fastml_drift_score{feature="b",model="rowsum",stattest="wasserstein",variant=""}')
    assert score is not None and score > 1.0
    health = _value(text, 'fastml_health_score{model="rowsum",variant=""}')
    # 2 of 5 features and the prediction (a sum of them) drifted: drift share 3/6, penalty weight 1.
    assert health == pytest.approx(50.0)


def test_store_has_the_windows_in_order(served):
    with MonitoringStore(served["home"] / "monitoring.db") as store:
        wins = store.windows("rowsum")
    assert [w.n_rows for w in wins] == [WINDOW_ROWS] * 4
    # Features only: the prediction's reference is window 1 itself (1,000 rows, so KS at 5 %: noise may fire).
    assert [[f for f in w.drifted_features() if f in FEATURES] for w in wins[:2]] == [[], []]
    for w in wins[2:]:
        assert w.drifted_features() == ["b", "d", "prediction:y"]
        assert w.health_score == pytest.approx(50.0)
    assert wins[0].reference_rows == 5000 and not wins[0].small_window
    assert "prediction reference" in wins[0].note


def test_mismatched_reference_is_unmonitored_not_failed(served, tmp_path):
    env = dict(os.environ, FASTML_HOME=str(served["home"]))
    out = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "monitor", "status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["models"]["rowsum"]["last_window"]["drifted_features"] == ["b", "d", "prediction:y"]
    wide = doc["models"]["wide"]  # served (its request answered 200) but not monitored, and why
    assert wide["state"] == "not monitored" and wide["health_score"] is None
    assert "reference has 5 feature columns" in wide["last_window"]["note"]
    assert "[-1, 7]" in wide["last_window"]["note"]


def test_drift_alert_fires_once_and_is_exported(served):
    """The built-in data_drift rule (drift share >= 0.5) fires at the third window and stays firing through the
    fourth without a second event; /metrics carries it as fastml_alerts_firing."""
    series = 'fastml_alerts_firing{model="rowsum",rule="data_drift",severity="warning"}'
    assert _value(served["metrics"], series) == 1.0
    with MonitoringStore(served["home"] / "monitoring.db") as store:
        alerts = store.alerts("rowsum")
        third = store.windows("rowsum")[2]
    assert [(a["rule"], a["status"]) for a in alerts] == [("data_drift", "firing")]
    assert alerts[0]["details"]["window_id"] == third.id
    assert alerts[0]["details"]["drifted_features"] == ["b", "d", "prediction:y"]
