"""Closed- and open-loop runs against the tiny in-test server: every outcome is counted right."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.loadtest import build_infer_request, run, run_closed_loop, run_open_loop
from fastml.loadtest.result import LoadResult, percentiles_us

from .tiny_server import TinyServer

pytestmark = pytest.mark.serial  # load runs with short timeouts: alone, after the parallel part of the suite

X = np.array([[1.0, 2.0, 3.0, 4.5]], dtype=np.float32)
REQUEST = build_infer_request("tiny", {"x": X}, outputs=["sum"])


def _sum_is_right(outputs: dict) -> bool:
    return outputs["sum"].shape == (1, 1) and float(outputs["sum"][0, 0]) == pytest.approx(10.5)


def test_closed_loop_all_ok_and_validated():
    with TinyServer() as srv:
        res = run(
            run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=4, max_requests=200, validate=_sum_is_right)
        )
    assert res.outcomes == {"200": 200}
    assert res.ok == res.sent == 200
    assert len(res.latency_ok_us) == 200 and (res.latency_ok_us > 0).all()
    assert srv.received == 200
    assert srv.connections == 4  # keep-alive: one connection per worker for the whole run
    assert res.throughput_per_s > 0
    d = res.to_dict()
    assert d["latency_ok_us"]["p50"] <= d["latency_ok_us"]["p99"] <= d["latency_ok_us"]["max"]


def test_closed_loop_counts_503s_apart_from_successes():
    with TinyServer(policy=lambda i: "busy" if i % 3 == 2 else "ok") as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=3, max_requests=300))
    assert res.count(503) == 100 and res.count(200) == 200
    assert res.ok == 200 and res.sent == 300
    assert len(res.latency_ok_us) == 200 and len(res.latency_all_us) == 300
    assert res.answered_per_s > res.throughput_per_s


def test_timeout_closed_and_garbage_responses_are_distinct_outcomes():
    actions = {5: "hang", 9: "close", 14: "garbage"}
    with TinyServer(policy=lambda i: actions.get(i, "ok")) as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=1, max_requests=40, timeout_s=0.3))
    assert res.outcomes == {"200": 37, "timeout": 1, "connection_closed": 1, "protocol_error": 1}
    # Each failure costs its connection; the worker reconnects and carries on.
    assert srv.connections == 4
    assert srv.received == 40


def test_bad_infer_body_counts_as_bad_response_when_validating():
    with TinyServer(policy=lambda i: "badbody" if i == 3 else "ok") as srv:
        checked = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, max_requests=10, validate=True))
    with TinyServer(policy=lambda i: "badbody" if i == 3 else "ok") as srv:
        unchecked = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, max_requests=10))
    assert checked.outcomes == {"200": 9, "bad_response": 1}
    assert unchecked.outcomes == {"200": 10}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_connections_are_connect_errors():
    res = run(run_closed_loop("127.0.0.1", _closed_port(), REQUEST, concurrency=2, max_requests=6))
    assert res.outcomes == {"connect_error": 6}
    assert "refused" in res.error_samples["connect_error"].lower()
    assert res.ok == 0 and res.throughput_per_s == 0


def test_warmup_requests_are_sent_but_not_counted():
    with TinyServer() as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, max_requests=50, warmup_s=3600))
    assert srv.received == 50
    assert res.sent == 0 and res.outcomes == {}


def test_duration_bound_ends_the_run():
    with TinyServer() as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, duration_s=0.3))
    assert res.sent == srv.received > 0
    assert res.outcomes == {"200": res.sent}


def test_open_loop_sends_the_whole_schedule():
    with TinyServer(policy=lambda i: "busy" if i % 4 == 0 else "ok") as srv:
        res = run(run_open_loop("127.0.0.1", srv.port, REQUEST, rate_per_s=2000, max_requests=300, validate=True))
    assert res.mode == "open" and res.target_rate_per_s == 2000
    assert res.outcomes == {"200": 225, "503": 75}
    assert srv.received == 300
    assert 1 <= res.concurrency <= 512
    assert len(res.send_lag_us) == 300 and (res.send_lag_us >= 0).all()
    assert res.to_dict()["send_lag_us"]["p50"] is not None


def test_open_loop_caps_connections_and_times_out_a_hung_server():
    with TinyServer(policy=lambda i: "hang") as srv:
        res = run(
            run_open_loop(
                "127.0.0.1", srv.port, REQUEST, rate_per_s=1000, max_requests=20, max_connections=4, timeout_s=0.3
            )
        )
    assert res.outcomes == {"timeout": 20}
    assert res.concurrency <= 4
    assert res.late_starts >= 16  # all but the first four found every connection busy
    assert srv.connections <= 20


def test_open_loop_connect_errors():
    res = run(run_open_loop("127.0.0.1", _closed_port(), REQUEST, rate_per_s=500, max_requests=5))
    assert res.outcomes == {"connect_error": 5}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(concurrency=0, max_requests=1), "concurrency"),
        (dict(concurrency=1), "max_requests or duration_s"),
        (dict(concurrency=1, max_requests=0), "max_requests"),
        (dict(concurrency=1, duration_s=-1.0), "duration_s"),
        (dict(concurrency=1, max_requests=1, timeout_s=0), "timeout_s"),
    ],
)
def test_closed_loop_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        run(run_closed_loop("127.0.0.1", 1, REQUEST, **kwargs))


def test_open_loop_bad_arguments():
    with pytest.raises(InvalidInput, match="rate_per_s"):
        run(run_open_loop("127.0.0.1", 1, REQUEST, rate_per_s=0, max_requests=1))
    with pytest.raises(InvalidInput, match="max_connections"):
        run(run_open_loop("127.0.0.1", 1, REQUEST, rate_per_s=1, max_requests=1, max_connections=0))


def test_result_summary_and_percentiles():
    lat = np.arange(1, 101, dtype=np.float64)
    res = LoadResult("closed", 2, None, 2.0, {"200": 100, "503": 5, "timeout": 1}, lat, lat)
    d = res.to_dict()
    assert d["throughput_per_s"] == 50.0 and d["sent"] == 106 and d["ok"] == 100
    assert d["latency_ok_us"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert "timeout=1" in res.format_text()
    assert percentiles_us(np.array([]))["p50"] is None


def test_cli_reads_metadata_and_prints_json():
    with TinyServer() as srv:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastml.loadtest",
                f"http://127.0.0.1:{srv.port}",
                "-m",
                "tiny",
                "-c",
                "2",
                "-n",
                "60",
                "--validate",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["outcomes"] == {"200": 60}
    assert out["mode"] == "closed" and out["concurrency"] == 2


def test_cli_unknown_model_and_bad_url_exit_2():
    with TinyServer() as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "fastml.loadtest", f"http://127.0.0.1:{srv.port}", "-m", "nope", "-n", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fastml.loadtest", "ftp://x", "-m", "m", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "http://" in proc.stderr


def test_cli_save_body_writes_the_request_body(tmp_path):
    np.save(tmp_path / "x.npy", X)
    with TinyServer() as srv:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastml.loadtest",
                f"127.0.0.1:{srv.port}",
                "-m",
                "tiny",
                "-n",
                "5",
                "--input-npy",
                f"x={tmp_path / 'x.npy'}",
                "--output",
                "sum",
                "--save-body",
                str(tmp_path / "body.bin"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "body.bin").read_bytes() == REQUEST.body
    assert f"Inference-Header-Content-Length: {REQUEST.header_length}" in proc.stderr
    assert "ok 5" in proc.stdout
