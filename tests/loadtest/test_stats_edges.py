"""Statistics edge cases: what a latency measures, and which outcomes count as answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.loadtest import build_infer_request, run, run_closed_loop
from fastml.loadtest import runner as runner_mod
from fastml.loadtest.binary import _Run
from fastml.loadtest.result import LoadResult

from .tiny_server import TinyServer

pytestmark = pytest.mark.serial  # real sockets with timing: alone, after the parallel part of the suite

X = np.array([[1.0, 2.0, 3.0, 4.5]], dtype=np.float32)
REQUEST = build_infer_request("tiny", {"x": X}, outputs=["sum"])
CONNECT_DELAY_S = 0.4


def test_closed_loop_latency_excludes_connecting(monkeypatch):
    """Latency counts from the send: a slow connect (TCP, TLS handshake) is not part of it."""
    real = runner_mod.open_connection

    async def slow_open(*args, **kwargs):
        await asyncio.sleep(CONNECT_DELAY_S)
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "open_connection", slow_open)
    with TinyServer() as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, max_requests=4))
    assert res.outcomes == {"200": 4}
    assert srv.connections == 2
    assert len(res.latency_ok_us) == 4
    assert res.latency_ok_us.max() < CONNECT_DELAY_S * 1e6 / 2  # each worker's first request included it


def test_bad_response_is_an_answer_with_a_latency():
    with TinyServer(policy=lambda i: "badbody" if i == 3 else "ok") as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=1, max_requests=10, validate=True))
    assert res.outcomes == {"200": 9, "bad_response": 1}
    assert len(res.latency_ok_us) == 9
    assert len(res.latency_all_us) == 10
    assert res.answered_per_s == 10 / res.duration_s


def test_answered_per_s_counts_bad_responses_not_errors():
    lat = np.arange(1, 11, dtype=np.float64)
    res = LoadResult("closed", 1, None, 2.0, {"200": 6, "503": 2, "bad_response": 2, "timeout": 3}, lat[:6], lat)
    assert res.answered_per_s == 5.0
    assert res.throughput_per_s == 3.0
    assert res.to_dict()["answered_per_s"] == 5.0


def test_binary_driver_records_bad_response_latency():
    r = _Run(b"", float("inf"), 10.0, None, True)
    r.record(10.5, 10.75, "bad_response")
    r.record(11.0, 11.5, "200")
    r.record(9.0, 12.0, "200")  # warm-up: not counted
    res = r.result(1)
    assert res.outcomes == {"bad_response": 1, "200": 1}
    assert res.latency_all_us.tolist() == [250000.0, 500000.0]
    assert res.latency_ok_us.tolist() == [500000.0]
    assert res.answered_per_s == 2 / 1.5
