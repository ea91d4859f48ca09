"""Bounded memory and 4xx for malformed requests: declared sizes are checked against the bytes received before
allocating, a server-wide budget bounds buffered bodies, JSON depth and out-of-range integers are 400s, and
an upgrade request gets exactly one response."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import pytest
from served import Served

from fastml.server.app import Limits, Server
from fastml.serving import ModelManager


def _string_model(path):
    """A BYTES model: ``text_out`` = Identity(``text``), string tensor [-1, 1]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def served(sec_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("bm_repo")
    import shutil

    shutil.copytree(sec_repo / "mlp", repo / "mlp")
    _string_model(repo / "strings" / "1" / "model.onnx")
    srv = Served([str(repo), "--http-port", "0", "--metrics-port", "0"], tmp_path_factory.mktemp("home"))
    yield srv
    assert srv.stop() == 0


def _raw(srv, head: bytes, body: bytes = b"") -> list[bytes]:
    """Send one request, read until the server closes or goes quiet; return the status lines received."""
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def test_bytes_amplification_is_400_with_bounded_memory(served):
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "shape": [1, 300000000], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
            ]
        },
        separators=(",", ":"),
    ).encode()
    body = header + struct.pack("<I", 4) + b"abcd"
    assert len(body) < 140
    before = served.rss_kb()
    status, payload, _ = served.call(
        "POST",
        "/v2/models/strings/infer",
        body,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    after = served.rss_kb()
    assert status == 400, payload
    assert "300000000 BYTES elements" in payload["error"]
    assert after - before < 10 * 1024, (before, after)
    # The same declaration in JSON data: also refused without allocating.
    status, payload, _ = served.call(
        "POST",
        "/v2/models/strings/infer",
        {"inputs": [{"name": "text", "shape": [1, 300000000], "datatype": "BYTES", "data": ["a"]}]},
    )
    assert status == 400
    assert served.rss_kb() - before < 10 * 1024


@pytest.mark.parametrize("shape", [[0, 2**62], [1, 2**63], [2**40, 2**40], [1] * 40])
def test_out_of_range_shapes_are_400(served, shape):
    status, payload, _ = served.call(
        "POST", "/v2/models/mlp/infer", {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]}
    )
    assert status == 400, (shape, status, payload)
    assert "internal" not in payload["error"]


def test_timeout_out_of_range_is_400(served):
    body = {
        "parameters": {"timeout": 2**63},
        "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}],
    }
    status, payload, _ = served.call("POST", "/v2/models/mlp/infer", body)
    assert status == 400 and "timeout" in payload["error"]


def test_deep_json_is_400(served):
    deep = b"[" * 1000 + b"]" * 1000
    body = b'{"inputs":[{"name":"input","shape":[1,32],"datatype":"FP32","data":' + deep + b"}]}"
    status, payload, _ = served.call("POST", "/v2/models/mlp/infer", body)
    assert status == 400 and "nested too deeply" in payload["error"]
    status, payload, _ = served.call("POST", "/v2/repository/index", b'{"ready":' + deep + b"}")
    assert 400 <= status < 500


def test_upgrade_request_gets_exactly_one_response(served):
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    lines = _raw(served, head, b"garbage after the upgrade")
    assert lines == [b"HTTP/1.1 200 OK"]


class _InProcess:
    """A Server on an event loop in a background thread (so the test can read its counters)."""

    def __init__(self, manager, limits: Limits):
        self.loop = asyncio.new_event_loop()
        self.server = Server(manager, http_port=0, metrics_port=None, limits=limits)
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(60)
        self.port = self.server.http_port

    def buffered(self) -> int:
        return asyncio.run_coroutine_threadsafe(self._read(), self.loop).result(10)

    async def _read(self) -> int:
        return self.server.buffered_bytes

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.drain(1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _read_status(sock) -> int:
    f = sock.makefile("rb")
    return int(f.readline().split()[1])


def test_buffered_body_budget_answers_503_early(sec_repo, tmp_path):
    manager = ModelManager([str(sec_repo)])
    manager.load_all()
    srv = _InProcess(manager, Limits(max_body_bytes=1_000_000, max_buffered_bytes=1_500_000))
    try:
        path = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        a = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        a.sendall(path % 1_000_000 + b"{")  # a body announced, barely started
        for _ in range(1000):  # wait (bounded) until the server has read A's headers
            if srv.buffered() >= 1_000_000:
                break
        assert srv.buffered() == 1_000_000
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as b:
            b.sendall(path % 600_000)  # only headers: the answer comes before any body is sent
            assert _read_status(b) == 503
        a.sendall(b" " * (1_000_000 - 1))
        assert _read_status(a) == 400  # a whitespace body is not a valid request, but it was read
        a.close()
        assert srv.buffered() == 0
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            c.sendall(path % 600_000 + b" " * 600_000)
            assert _read_status(c) == 400  # admitted now that the budget is free
        assert srv.buffered() == 0
    finally:
        srv.stop()
        manager.close()
