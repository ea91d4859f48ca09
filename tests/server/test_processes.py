"""Process behaviour: SIGTERM drain, --workers 2 on one port, overload shed as 503 and recovery."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
from serverkit import ServerProcess, make_slow_model, raw_http, request


def _infer_json(name: str, x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow_repo")
    make_slow_model(repo / "slow" / "1" / "model.onnx", width=384, depth=120)
    (repo / "slow" / "config.toml").write_text("max_batch_size = 256\n")
    return repo


def _metric(srv: ServerProcess, name: str) -> float:
    for line in srv.metrics().splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_sigterm_finishes_inflight_then_exits_0(slow_repo, tmp_path):
    srv = ServerProcess([str(slow_repo), "--http-port", "0", "--metrics-port", "0", "--grace-period-s", "60"], tmp_path)
    try:
        x = np.ones((256, 384), np.float32)
        result = {}

        def send():
            result["r"] = raw_http(srv.host, srv.port, "POST", "/v2/models/slow/infer", _infer_json("x", x), {})

        t = threading.Thread(target=send)
        t.start()
        deadline = time.monotonic() + 30
        while _metric(srv, "fastml_server_inflight_requests") < 1:  # wait for the request to be in flight
            assert time.monotonic() < deadline and t.is_alive(), "request never became in flight"
        srv.proc.send_signal(signal.SIGTERM)
        t.join(60)
        status, body, headers = result["r"]
        assert status == 200
        n = int(headers["inference-header-content-length"])
        y = np.frombuffer(body[n:], np.float32).reshape(256, 384)
        assert np.isfinite(y).all() and abs(float(y[0, 0])) <= 1.0
        assert headers.get("connection") == "close"  # answered while draining
        with pytest.raises(OSError):
            socket.create_connection((srv.host, srv.port), timeout=5).close()
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()


def test_two_workers_share_one_port(onnx_models, model_repo, tmp_path):
    srv = ServerProcess([str(model_repo), "--http-port", "0", "--metrics-port", "0", "--workers", "2"], tmp_path)
    try:
        assert srv.workers == 2
        children = [
            c
            for task in os.listdir(f"/proc/{srv.pid}/task")
            for c in open(f"/proc/{srv.pid}/task/{task}/children").read().split()
        ]
        assert len(children) == 2
        x = np.load(onnx_models["data"])[:1]
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.tolist()}]}
        ).encode()
        for _ in range(40):  # a fresh connection each time: the kernel spreads them over both workers
            status, payload = request("POST", f"http://{srv.url}/v2/models/mlp/infer", body)
            assert status == 200 and payload["outputs"][0]["name"] == "label"
        meta = srv.get("/v2")[1]
        assert "statistics" in meta["extensions"]
        assert "model_repository" not in meta["extensions"] and "system_shared_memory" not in meta["extensions"]
        deadline = time.monotonic() + 10
        while True:  # statistics are the sum of the workers' snapshots, refreshed every 0.2 s
            st = srv.get("/v2/models/mlp/stats")[1]["model_stats"][0]
            if st["inference_count"] >= 40 or time.monotonic() > deadline:
                break
        assert st["inference_count"] == 40
        assert _metric(srv, "fastml_server_workers") == 2
        assert srv.post("/v2/repository/models/mlp/unload")[0] == 400
        assert srv.stop() == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        srv.stop()


def test_overload_sheds_503_then_recovers(tmp_path):
    repo = tmp_path / "repo"
    make_slow_model(repo / "slow" / "1" / "model.onnx", width=384, depth=60)
    srv = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0", "--max-batch-size", "1", "--max-queue-size", "2"],
        tmp_path / "home",
    )
    try:
        body = _infer_json("x", np.ones((1, 384), np.float32))
        statuses: list[int] = []
        lock = threading.Lock()
        gate = threading.Barrier(48)

        def client():
            gate.wait()
            status, payload = request("POST", f"http://{srv.url}/v2/models/slow/infer", body, timeout=60)
            with lock:
                statuses.append(status)
                if status == 503:
                    assert "queue" in payload["error"].lower() or "overload" in payload["error"].lower(), payload

        threads = [threading.Thread(target=client) for _ in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert len(statuses) == 48 and set(statuses) <= {200, 503}
        assert statuses.count(503) > 0 and statuses.count(200) >= 3
        # Recovered: the next request is served.
        assert request("POST", f"http://{srv.url}/v2/models/slow/infer", body)[0] == 200
        failures = [
            ln
            for ln in srv.metrics().splitlines()
            if ln.startswith("fastml_inference_request_failure_total") and 'reason="REJECTED"' in ln
        ]
        assert float(failures[0].split()[-1]) == statuses.count(503)
    finally:
        assert srv.stop() == 0


def test_serve_registry_reference(onnx_models, tmp_path, monkeypatch):
    from fastml.config import reset_settings
    from fastml.registry import Registry

    home = tmp_path / "home"
    monkeypatch.setenv("FASTML_HOME", str(home))
    reset_settings()
    with Registry() as reg:
        mv = reg.register("fraud", onnx_models["mlp"])
        reg.transition(mv.ref, "staging")
    srv = ServerProcess(["fraud@staging", "--http-port", "0", "--metrics-port", "0"], home)
    try:
        assert srv.models == f"fraud:{mv.version}"
        x = np.load(onnx_models["data"])[:1]
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.tolist()}]}
        ).encode()
        status, payload = request("POST", f"http://{srv.url}/v2/models/fraud/versions/{mv.version}/infer", body)
        assert status == 200 and payload["model_version"] == mv.version
    finally:
        assert srv.stop() == 0
