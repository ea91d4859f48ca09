"""Edge cases of /metrics and of the snapshots it is made from: workers that exit (their counters folded into
the retired file), label values that need escaping, histogram invariants, and counts against a live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastml.server import workers
from fastml.server.metrics import make_registry, merge_snapshots


def _samples(snapshot_fn) -> dict:
    """``{(name, sorted labels): value}`` of one scrape; asserts that no label set appears twice."""
    out: dict = {}
    text = generate_latest(make_registry(snapshot_fn)).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"{key} exported twice"
            out[key] = s.value
    return out


def _model(name: str, requests: int) -> dict:
    return {
        "name": name,
        "version": "1",
        "ready": True,
        "stats": {"requests": requests, "rows": 2 * requests, "batches": requests, "pending": 0},
        "batch_size_histogram": {"2": requests},
        "batch_stats": {},
        "server_failures": {},
        "inflight": 0,
        "feature_lookups": {},
    }


def _worker_snapshot(wid: int, requests: int, firing: float, windows: int) -> dict:
    return {
        "wid": wid,
        "models": [_model("fraud", requests)],
        "server": {"inflight": 0, "connections": 1, "responses": {"200": requests}},
        "deployments": [],
        "monitoring": {
            "drift": [],
            "health": [],
            "alerts": [{"model": "fraud", "rule": "accuracy_low", "severity": "critical", "firing": firing}],
            "counters": {"windows_closed": windows},
        },
    }


def _write(snapshot_dir: Path, snap: dict) -> None:
    (snapshot_dir / f"worker-{snap['wid']}.json").write_text(json.dumps(snap))


ALERT = ("fastml_alerts_firing", (("model", "fraud"), ("rule", "accuracy_low"), ("severity", "critical")))
SUCCESS = ("fastml_inference_request_success_total", (("model", "fraud"), ("version", "1")))
WINDOWS = ("fastml_monitor_windows_total", ())


def test_alert_of_an_exited_worker_does_not_stay_firing(tmp_path):
    # Worker 1 saw the rule fire on its share of the traffic and then exited (scaled down, or died); worker 2
    # serves on with the rule resolved. The supervisor folds worker 1's counters into the retired file.
    _write(tmp_path, _worker_snapshot(1, requests=5, firing=1.0, windows=3))
    _write(tmp_path, _worker_snapshot(2, requests=7, firing=0.0, windows=4))
    before = _samples(lambda: merge_snapshots(workers.read_snapshots(tmp_path)))
    assert before[ALERT] == 1.0  # while worker 1 lives, its firing rule shows (any worker firing makes it 1)
    workers.fold_retired(tmp_path, 1)
    after = _samples(lambda: merge_snapshots(workers.read_snapshots(tmp_path)))
    # The process that fired is gone: the series stays, with the live workers' state.
    assert after[ALERT] == 0.0
    # Its counters are kept: still the sum over every worker that ever served.
    assert after[SUCCESS] == before[SUCCESS] == 12
    assert after[WINDOWS] == before[WINDOWS] == 7
    # A live worker that fires still makes it 1, whatever the retired file says.
    _write(tmp_path, _worker_snapshot(2, requests=8, firing=1.0, windows=5))
    assert _samples(lambda: merge_snapshots(workers.read_snapshots(tmp_path)))[ALERT] == 1.0


def test_alert_series_kept_when_every_worker_that_saw_it_exited(tmp_path):
    _write(tmp_path, _worker_snapshot(1, requests=2, firing=1.0, windows=1))
    workers.fold_retired(tmp_path, 1)
    _write(tmp_path, _worker_snapshot(3, requests=1, firing=0.0, windows=0) | {"monitoring": {}})
    samples = _samples(lambda: merge_snapshots(workers.read_snapshots(tmp_path)))
    assert samples[ALERT] == 0.0
    assert samples[SUCCESS] == 3


def test_label_values_escaped_and_histograms_consistent():
    # Names a Prometheus parser must get back intact: a quote, a backslash, a newline, non-ASCII.
    name = 'r\u00e9c"o\\m\nx\u2603'
    model = _model(name, 3) | {
        "batch_size_histogram": {"1": 1, "3": 1, "300": 1},
        "feature_lookups": {'f"\n': {"hit": 2, "stale": 1}},
    }
    deployment = {
        "deployment": name,
        "variant": name,
        "kind": "variant",
        "requests": 4,
        "errors": 1,
        "buckets": [1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "latency_sum_us": 600.0,
        "weight_bp": 10000,
        "routed": 4,
        "pinned": 0,
    }
    snap = {
        "models": [model],
        "server": {"inflight": 0, "connections": 0, "responses": {"200": 3}},
        "deployments": [deployment],
        "monitoring": {},
    }
    two = merge_snapshots([snap, json.loads(json.dumps(snap))])  # two workers, same model and deployment
    s = _samples(lambda: two)
    lv = (("model", name), ("version", "1"))
    assert s[("fastml_inference_request_success_total", lv)] == 6
    assert s[("fastml_feature_lookups_total", (("feature", 'f"\n'), *lv[:1], ("outcome", "hit"), lv[1]))] == 4
    # fastml_batch_size: cumulative, +Inf == _count == executions, _sum == rows.
    le = [s[("fastml_batch_size_bucket", (("le", b), *lv))] for b in ("1", "2", "4", "256", "+Inf")]
    assert le == [2, 2, 4, 4, 6]
    assert s[("fastml_batch_size_count", lv)] == 6
    assert s[("fastml_batch_size_sum", lv)] == 2 * (1 + 3 + 300)
    dv = (("deployment", name), ("kind", "variant"), ("variant", name))
    assert s[("fastml_deployment_requests_total", dv)] == 8
    buckets = [
        s[("fastml_deployment_request_duration_us_bucket", (*dv[:2], ("le", b), dv[2]))]
        for b in ("100", "250", "500", "1000000", "+Inf")
    ]
    assert buckets == [2, 2, 6, 6, 6]
    assert s[("fastml_deployment_request_duration_us_count", dv)] == 6
    assert s[("fastml_deployment_request_duration_us_sum", dv)] == 1200.0


def test_live_counts_match_requests_sent(server):
    """N requests, some refused and one split over max_batch_size (16 for mlp), against /stats and /metrics."""
    import numpy as np

    def infer(rows: int, width: int = 32):
        x = np.ones((rows, width), np.float32)
        body = {"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32", "data": x.ravel().tolist()}]}
        return server.post("/v2/models/mlp/infer", body)[0]

    codes = [infer(3) for _ in range(5)] + [infer(40)] + [infer(3, width=5) for _ in range(2)]
    assert codes == [200] * 6 + [400] * 2
    st = server.get("/v2/models/mlp/stats")[1]["model_stats"]
    assert [(m["name"], m["version"]) for m in st] == [("mlp", "1")]
    inf = st[0]["inference_stats"]
    assert (inf["success"]["count"], inf["fail"]["count"], inf["queue"]["count"]) == (6, 2, 6)
    assert inf["compute_infer"]["count"] == 6
    assert st[0]["inference_count"] == 5 * 3 + 40
    assert st[0]["execution_count"] == 5 + 3  # the 40 rows ran as 16 + 16 + 8
    text = server.metrics()
    got: dict = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            key = (smp.name, tuple(sorted(smp.labels.items())))
            assert key not in got, f"{key} exported twice"
            got[key] = smp.value
    lv = (("model", "mlp"), ("version", "1"))
    assert got[("fastml_inference_request_success_total", lv)] == 6
    assert got[("fastml_inference_request_failure_total", (lv[0], ("reason", "OTHER"), lv[1]))] == 2
    assert got[("fastml_inference_count_total", lv)] == 55
    assert got[("fastml_inference_exec_count_total", lv)] == 8
    assert got[("fastml_batch_size_bucket", (("le", "+Inf"), *lv))] == got[("fastml_batch_size_count", lv)] == 8
    assert got[("fastml_batch_size_sum", lv)] == 55
    # The Triton statistics and the Prometheus counters agree (ns vs us).
    assert got[("fastml_inference_request_duration_us_total", lv)] == pytest.approx(inf["success"]["ns"] / 1000)
