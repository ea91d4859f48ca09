"""Harness edges: malformed answers, bounds that never end a run, the load shape asked for, exit codes."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.loadtest import (
    build_infer_request,
    parse_infer_response,
    percentiles_us,
    random_inputs,
    run,
    run_closed_loop,
    run_open_loop,
)
from fastml.loadtest.binary import run_binary_closed_loop
from fastml.loadtest.cli import main

from . import tiny_server
from .tiny_server import TinyServer

pytestmark = pytest.mark.serial  # real sockets: alone, after the parallel part of the suite

X = np.array([[1.0, 2.0, 3.0, 4.5]], dtype=np.float32)
REQUEST = build_infer_request("tiny", {"x": X}, outputs=["sum"])
GUARD_S = 3.0  # a run that is refused returns at once; this only keeps a broken bound from hanging the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastml.loadtest", *args], capture_output=True, text=True, timeout=60)


# --- malformed 2xx answers are bad_response, not a crash of the run

MALFORMED = [
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0]}]}',  # data does not fit shape
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',  # not a number
    b'{"outputs": [{"name": "y", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}',
    b'{"outputs": [1]}',  # an output that is not an object
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "parameters": []}]}',
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": "4"}}]}',
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": ["a"], "data": [1.0]}]}',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_json_answers_are_invalid_input(body):
    with pytest.raises(InvalidInput):
        parse_infer_response(body, None)


def test_binary_bytes_output_with_the_wrong_element_count_is_invalid_input():
    header = b'{"outputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}]}'
    with pytest.raises(InvalidInput, match="BYTES"):
        parse_infer_response(header + b"\x01\x00\x00\x00a", len(header))


def test_validated_run_counts_malformed_answers_as_bad_response(monkeypatch):
    def answer_malformed(self):
        if self.parser.get_method() == b"POST":
            self._send(200, MALFORMED[0], {"Content-Type": "application/json"})

    monkeypatch.setattr(tiny_server._Conn, "on_message_complete", answer_malformed)
    with TinyServer() as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=1, max_requests=3, validate=True))
    assert res.outcomes == {"bad_response": 3}
    assert res.ok == 0 and len(res.latency_ok_us) == 0 and len(res.latency_all_us) == 3


# --- a bound that is not finite would never end the run: refused


async def _guarded(coro):
    return await asyncio.wait_for(coro, GUARD_S)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(duration_s=math.nan), "duration_s"),
        (dict(duration_s=math.inf), "duration_s"),
        (dict(duration_s=0.2, warmup_s=math.nan), "warmup_s"),
        (dict(duration_s=0.2, timeout_s=math.nan), "timeout_s"),
    ],
)
def test_closed_loop_refuses_non_finite_bounds(kwargs, match):
    with TinyServer() as srv:
        with pytest.raises(InvalidInput, match=match):
            run(_guarded(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=1, **kwargs)))
        assert srv.received == 0


def test_open_loop_refuses_an_infinite_rate_and_a_nan_duration():
    with TinyServer() as srv:
        with pytest.raises(InvalidInput, match="rate_per_s"):
            run(_guarded(run_open_loop("127.0.0.1", srv.port, REQUEST, rate_per_s=math.inf, max_requests=3)))
        with pytest.raises(InvalidInput, match="duration_s"):
            run(_guarded(run_open_loop("127.0.0.1", srv.port, REQUEST, rate_per_s=50, duration_s=math.nan)))
        assert srv.received == 0


def test_binary_driver_refuses_a_nan_duration():
    with pytest.raises(InvalidInput, match="duration_s"):
        run(_guarded(run_binary_closed_loop("127.0.0.1:1", "m", {"x": X}, concurrency=1, duration_s=math.nan)))


# --- the binary driver: bytes that are not frames are a protocol error


def test_binary_driver_counts_garbage_from_the_server_as_protocol_errors():
    async def scenario():
        async def handle(reader, writer):
            await reader.read(10)
            writer.write(b"NOT A FASTML FRAME " * 8)
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(
                run_binary_closed_loop(f"127.0.0.1:{port}", "m", {"x": X}, concurrency=2, max_requests=4), 10
            )
        finally:
            srv.close()

    res = run(scenario())
    assert res.outcomes == {"protocol_error": 2}
    assert res.ok == 0 and len(res.latency_all_us) == 0


# --- the command line: the load shape asked for, and a server that cannot be reached


def test_cli_rate_without_open_mode_is_refused_not_run_closed_loop(tmp_path):
    np.save(tmp_path / "x.npy", X)
    with TinyServer() as srv:
        proc = _cli(
            f"http://127.0.0.1:{srv.port}", "-m", "tiny", "-n", "5", "--rate", "100",
            "--input-npy", f"x={tmp_path / 'x.npy'}", "--save-body", str(tmp_path / "body.bin"), "--json",
        )  # fmt: skip
        assert srv.received == 0
    assert proc.returncode == 2, proc.stdout
    assert "--mode open" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "body.bin").exists()  # refused before anything was written


def test_cli_open_mode_without_rate_writes_nothing(tmp_path):
    np.save(tmp_path / "x.npy", X)
    proc = _cli(
        f"http://127.0.0.1:{_free_port()}", "-m", "tiny", "-n", "5", "--mode", "open",
        "--input-npy", f"x={tmp_path / 'x.npy'}", "--save-body", str(tmp_path / "body.bin"),
    )  # fmt: skip
    assert proc.returncode == 2 and "--rate" in proc.stderr
    assert not (tmp_path / "body.bin").exists()


@pytest.mark.parametrize("scheme", ["http", "tcp"])
def test_cli_unreachable_server_exits_1_even_with_input_files(tmp_path, scheme):
    np.save(tmp_path / "x.npy", X)
    proc = _cli(
        f"{scheme}://127.0.0.1:{_free_port()}", "-m", "tiny", "-n", "3", "--json",
        "--input-npy", f"x={tmp_path / 'x.npy'}",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "cannot reach" in proc.stderr
    d = json.loads(proc.stdout)
    assert d["ok"] == 0 and set(d["outcomes"]) == {"connect_error"}


def test_cli_some_answers_exit_0(tmp_path):
    np.save(tmp_path / "x.npy", X)
    with TinyServer(policy=lambda i: "busy" if i % 2 else "ok") as srv:
        proc = _cli(
            f"http://127.0.0.1:{srv.port}", "-m", "tiny", "-n", "4", "--json", "--input-npy", f"x={tmp_path / 'x.npy'}"
        )
    assert proc.returncode == 0, proc.stderr


# --- the numbers: nearest-rank percentiles over the 2xx latencies only, throughput over the window


def test_percentiles_and_throughput_match_an_independent_computation():
    with TinyServer(policy=lambda i: "busy" if i % 3 == 0 else "ok") as srv:
        res = run(run_closed_loop("127.0.0.1", srv.port, REQUEST, concurrency=2, max_requests=30))
    assert res.outcomes == {"200": 20, "503": 10}
    assert len(res.latency_ok_us) == 20 and len(res.latency_all_us) == 30
    ordered = np.sort(res.latency_ok_us)
    d = res.to_dict()
    for p in (50, 90, 99):
        nearest_rank = ordered[math.ceil(p / 100 * len(ordered)) - 1]
        assert d["latency_ok_us"][f"p{p}"] == nearest_rank
    assert d["latency_ok_us"] == percentiles_us(res.latency_ok_us)
    assert res.throughput_per_s == pytest.approx(20 / res.duration_s)
    assert res.answered_per_s == pytest.approx(30 / res.duration_s)


# --- metadata a harness cannot use: a clear error, not a traceback


@pytest.mark.parametrize("shape", [["a", 4], [-2, 4], [None, 4], [True, 4]])
def test_random_inputs_refuse_a_shape_they_cannot_fill(shape):
    with pytest.raises(InvalidInput, match="'x'"):
        random_inputs({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}]})


def test_random_inputs_accept_numpy_integer_dims():
    arrays = random_inputs({"inputs": [{"name": "x", "datatype": "FP32", "shape": [np.int64(-1), np.int64(3)]}]})
    assert arrays["x"].shape == (1, 3)


def test_cli_metadata_that_is_not_json_exits_1_with_a_message(monkeypatch, capsys):
    def answer_html(self):
        self._send(200, b"<html>not a model server</html>", {"Content-Type": "text/html"})

    monkeypatch.setattr(tiny_server._Conn, "on_message_complete", answer_html)
    with TinyServer() as srv:  # in-process: the patched handler only exists in this process
        code = main([f"http://127.0.0.1:{srv.port}", "-m", "tiny", "-n", "1"])
    assert code == 1
    assert "not JSON" in capsys.readouterr().err


def test_cli_save_body_to_an_unwritable_path_is_bad_input(tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    target = tmp_path / "missing-dir" / "body.bin"
    code = main([f"http://127.0.0.1:{_free_port()}", "-m", "tiny", "-n", "1", "--input-npy",
                 f"x={tmp_path / 'x.npy'}", "--save-body", str(target)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--save-body" in err and "missing-dir" in err
