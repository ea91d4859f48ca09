"""`fastml serve --workers auto` for real: a load step adds a worker, its removal retires one, and no request
fails on the way (every response is counted, by the load generator and by the server's own metrics)."""

from __future__ import annotations

import collections
import signal
import time

import numpy as np
import pytest
from serverkit import ServerProcess, make_slow_model, ort_reference

from fastml.loadtest import build_infer_request, run, run_closed_loop, run_open_loop

pytestmark = pytest.mark.serial  # load steps that must move the autoscaler: alone, after the parallel part

# Short timings so the whole cycle fits in seconds; the policy itself is tested in test_autoscale_policy.py.
AUTO = [
    "--workers",
    "auto",
    "--min-workers",
    "1",
    "--max-workers",
    "2",
    "--autoscale-interval-s",
    "0.3",
    "--scale-up-cooldown-s",
    "1",
    "--scale-down-delay-s",
    "1.5",
    # Queue time drives it: a slow model's requests queue behind each other under concurrent load whatever
    # share of the (shared, maybe busy) CPU the worker gets, and do not queue at a trickle. The target sits
    # well under what 8 concurrent clients cause (about 800 us a request measured with 4 on a doubly loaded
    # 2-core machine, where batching absorbs part of the queue) and far over a trickle's (about 0).
    "--target-queue-us",
    "300",
    "--target-utilization",
    "0.9",
]
PHASE_LIMIT_S = 20.0


def _identity_repo(root):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "ident" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "ident" / "1" / "model.onnx"))
    return root


def _series(srv: ServerProcess) -> dict[str, float]:
    out = {}
    for line in srv.metrics().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _workers(m: dict[str, float]) -> tuple[float, float, float]:
    return m['fastml_workers{state="desired"}'], m['fastml_workers{state="current"}'], m["fastml_server_workers"]


def test_a_load_step_adds_a_worker_and_its_removal_retires_one_without_a_failed_request(tmp_path):
    repo = tmp_path / "repo"
    make_slow_model(repo / "slow" / "1" / "model.onnx", width=384, depth=60)  # a few ms per request
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0", *AUTO], tmp_path / "home")
    outcomes: collections.Counter[str] = collections.Counter()
    x = np.random.default_rng(0).standard_normal((1, 384)).astype(np.float32)
    expected = ort_reference(repo / "slow" / "1" / "model.onnx", x)["y"]
    req = build_infer_request("slow", {"x": x})

    def right(outputs) -> bool:
        return np.allclose(outputs["y"], expected, atol=1e-5)

    try:
        assert "workers 1 (auto 1-2)" in srv.startup_line
        assert _workers(_series(srv)) == (1, 1, 1)
        # Step up: a closed loop in half-second rounds (new connections each round, so the kernel can hand
        # some to a new worker) until two workers serve.
        deadline = time.monotonic() + PHASE_LIMIT_S
        while _workers(_series(srv))[1:] != (2, 2):
            assert time.monotonic() < deadline, f"no second worker under load: {_series(srv)}"
            result = run(run_closed_loop(srv.host, srv.port, req, concurrency=8, duration_s=0.5, validate=right))
            outcomes.update(result.outcomes)
        # Step down: a light open-loop load keeps requests (and keep-alive connections) arriving at both
        # workers while one of them is retired.
        deadline = time.monotonic() + PHASE_LIMIT_S
        while _workers(_series(srv)) != (1, 1, 1):
            assert time.monotonic() < deadline, f"no scale-down without load: {_series(srv)}"
            result = run(run_open_loop(srv.host, srv.port, req, rate_per_s=10, duration_s=1.0, validate=right))
            outcomes.update(result.outcomes)
        result = run(run_open_loop(srv.host, srv.port, req, rate_per_s=10, duration_s=0.5, validate=right))
        outcomes.update(result.outcomes)
        assert set(outcomes) == {"200"}, outcomes  # not one error, timeout, reset or wrong answer
        sent = outcomes["200"]
        # The server counted every one of them, the retired worker's included (its counters were folded).
        deadline = time.monotonic() + 10
        while (m := _series(srv))['fastml_http_responses_total{code="200"}'] != sent:
            assert time.monotonic() < deadline, (m['fastml_http_responses_total{code="200"}'], sent)
        assert m['fastml_inference_request_success_total{model="slow",version="1"}'] == sent
        assert m['fastml_autoscale_decisions_total{direction="up"}'] >= 1
        assert m['fastml_autoscale_decisions_total{direction="down"}'] >= 1
        srv.proc.send_signal(signal.SIGTERM)
        _, err = srv.proc.communicate(timeout=60)
        assert srv.proc.returncode == 0
        assert "autoscale up 1 -> 2" in err and "autoscale down 2 -> 1" in err, err
        assert "retired (drained)" in err, err
    finally:
        srv.stop()


def test_a_worker_that_dies_is_replaced_and_its_counts_are_kept(tmp_path):
    import os

    repo = _identity_repo(tmp_path / "repo")
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0", *AUTO], tmp_path / "home")
    try:
        x = np.ones((1, 4), np.float32)
        result = run(
            run_closed_loop(srv.host, srv.port, build_infer_request("ident", {"x": x}), concurrency=1, max_requests=50)
        )
        assert result.outcomes == {"200": 50}
        deadline = time.monotonic() + 10
        while _series(srv)['fastml_http_responses_total{code="200"}'] != 50:  # snapshots every 0.2 s
            assert time.monotonic() < deadline
        (child,) = open(f"/proc/{srv.pid}/task/{srv.pid}/children").read().split()
        os.kill(int(child), signal.SIGKILL)
        deadline = time.monotonic() + PHASE_LIMIT_S
        while True:
            kids = open(f"/proc/{srv.pid}/task/{srv.pid}/children").read().split()
            m = _series(srv)
            if kids and kids != [child] and _workers(m) == (1, 1, 1):
                break
            assert time.monotonic() < deadline, (kids, m)
        assert m['fastml_http_responses_total{code="200"}'] == 50  # the dead worker's last counts were kept
        assert run(
            run_closed_loop(srv.host, srv.port, build_infer_request("ident", {"x": x}), concurrency=1, max_requests=5)
        ).outcomes == {"200": 5}
        srv.proc.send_signal(signal.SIGTERM)
        _, err = srv.proc.communicate(timeout=60)
        assert f"worker {child} exited with -9; replacing it" in err, err
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--workers", "auto", "--min-workers", "3", "--max-workers", "2"],
            "--max-workers (2) must be >= --min-workers (3)",
        ),
        (["--workers", "auto", "--min-workers", "0"], "--min-workers must be >= 1"),
        (["--workers", "auto", "--binary-socket", "/tmp/x.sock"], "--binary-socket serves from one process"),
        (["--workers", "2", "--max-workers", "4"], "--max-workers only apply with --workers auto"),
        (["--workers", "many"], "--workers must be a number >= 1 or 'auto'"),
        (["--workers", "auto", "--target-utilization", "0"], "--target-utilization must be in (0, 4]"),
    ],
)
def test_conflicting_worker_settings_are_one_line_at_start(fastml_home, tmp_path, capsys, argv, message):
    from fastml.cli import main

    # Refused while parsing the flags, before any port is bound or model loaded (in-process: no server starts).
    assert main(["serve", str(tmp_path / "repo"), "--http-port", "0", "--metrics-port", "0", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastml: error: InvalidInput: ") and message in lines[0], lines
