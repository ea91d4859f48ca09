"""Drive a real `fastml serve` process past capacity: it sheds load with 503s (never timeouts), stays up,
and answers correctly afterwards."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastml.loadtest import build_infer_request, run, run_closed_loop, run_open_loop

pytestmark = pytest.mark.serial  # load past capacity: alone, after the parallel part of the suite


@pytest.fixture
def small_queue_server(onnx_models, tmp_path):
    """`fastml serve` on a free port with a 2-request queue and batching off: easy to overload."""
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copyfile(onnx_models["mlp"], repo / "mlp" / "1" / "model.onnx")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "serve",
            str(repo),
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--max-queue-size",
            "2",
            "--max-batch-size",
            "1",
            "--instances",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    announced = threading.Event()
    port: list[int] = []

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))
                announced.set()
        announced.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        announced.wait(120)
        assert port, "fastml serve did not announce its URL:\n" + "".join(lines)
        assert _get(port[0], "/v2/health/ready")[0] == 200
        yield proc, port[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_past_capacity_gets_503_not_timeouts_then_recovers(small_queue_server, onnx_models):
    import onnxruntime as ort

    proc, port = small_queue_server
    x = np.load(onnx_models["data"])[:1]
    expected = ort.InferenceSession(str(onnx_models["mlp"]), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"input": x}
    )[0]
    request = build_infer_request("mlp", {"input": x}, outputs=["probabilities"])
    served_before = _inference_count(port)

    # 64 requests in flight against a queue of 2: most must be refused at once.
    closed = run(run_closed_loop("127.0.0.1", port, request, concurrency=64, max_requests=3000, timeout_s=30))
    assert closed.count(503) > 0, closed.outcomes
    assert closed.count(200) > 0, closed.outcomes
    assert set(closed.outcomes) <= {"200", "503"}, closed.outcomes  # no timeouts, resets or bad HTTP
    assert closed.sent == 3000
    print("closed loop past capacity:", closed.outcomes)

    # Open loop: arrivals faster than one model instance with batching off can serve.
    opened = run(
        run_open_loop("127.0.0.1", port, request, rate_per_s=4000, max_requests=2000, max_connections=256, timeout_s=30)
    )
    assert opened.count(503) > 0, opened.outcomes
    assert set(opened.outcomes) <= {"200", "503"}, opened.outcomes
    assert opened.sent == 2000
    print("open loop past capacity:", opened.outcomes)

    # Recovery: the server is alive, ready, and serves a light load entirely and correctly.
    assert proc.poll() is None
    assert _get(port, "/v2/health/ready")[0] == 200

    def correct(outputs: dict) -> bool:
        return np.allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)

    after = run(
        run_closed_loop("127.0.0.1", port, request, concurrency=2, max_requests=300, timeout_s=30, validate=correct)
    )
    assert after.outcomes == {"200": 300}
    # The harness's count of successes agrees with the server's own statistics.
    assert _inference_count(port) - served_before == closed.ok + opened.ok + after.ok


def _inference_count(port: int) -> int:
    status, body = _get(port, "/v2/models/mlp/stats")
    assert status == 200, body
    return sum(s["inference_count"] for s in json.loads(body)["model_stats"])
