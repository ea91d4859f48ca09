"""The HTTP transport's sink path: a plain inference on a native-batcher model is answered in place by the
engine's completion pass (the pipeline slot is the sink), on the pure-Python module and its compiled twin.
Pipelined answers keep their order, the data plane's books close, and requests that need the general path
(a request id) still take it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnxruntime as ort
import pytest

from fastml.server import http as reference
from fastml.server.app import Server, compiled_is_current


def _impls():
    impls = [pytest.param(reference.HttpProtocol, id="python")]
    try:
        from fastml.server import _http
    except ImportError:
        return impls
    if compiled_is_current(_http):
        impls.append(pytest.param(_http.HttpProtocol, id="cython"))
    return impls


class _Transport:
    """Collects what the protocol writes and wakes the test once ``want`` answers are complete."""

    def __init__(self, loop, want: int):
        self.out = bytearray()
        self.done = loop.create_future()
        self.want = want

    def write(self, data):
        self.out += data
        if len(_split(bytes(self.out))) >= self.want and not self.done.done():
            self.done.set_result(None)

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def _split(raw: bytes) -> list[tuple[int, dict, bytes]]:
    """Complete responses in ``raw``: (status, lower-cased headers, body)."""
    out = []
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return out
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers["content-length"])
        if len(rest) < n:
            return out
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]


def _infer(x: np.ndarray, request_id: str | None = None) -> bytes:
    hdr = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    if request_id is not None:
        hdr["id"] = request_id
    h = json.dumps(hdr).encode()
    body = h + x.tobytes()
    return (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(h), len(body))
    ) + body


@pytest.fixture(scope="module")
def X(onnx_models):
    return np.load(onnx_models["data"])[:8].astype(np.float32)


def _converse(manager, protocol_cls, data: bytes, want: int):
    """Feeds ``data`` to one connection; returns (responses, sink submits accepted, plane after)."""
    server = Server(manager, http_port=0, metrics_port=None)
    plane = server.plane
    accepted = []
    submit_sink = plane.submit_sink

    def counting(*args):
        queued = submit_sink(*args)
        accepted.append(queued)
        return queued

    plane.submit_sink = counting

    async def run():
        t = _Transport(asyncio.get_running_loop(), want)
        conn = protocol_cls(server)
        conn.connection_made(t)
        conn.data_received(data)
        await asyncio.wait_for(t.done, 30)
        conn.connection_lost(None)
        return _split(bytes(t.out))

    return asyncio.run(run()), accepted, plane


@pytest.mark.parametrize("protocol_cls", _impls())
def test_pipelined_plain_requests_are_answered_in_place_in_order(manager, onnx_models, X, protocol_cls):
    rows = [X[i : i + 1] for i in range(4)] + [X[4:7]]
    data = b"".join(_infer(r) for r in rows)
    answers, accepted, plane = _converse(manager, protocol_cls, data, len(rows))
    assert accepted == [True] * len(rows)  # every request took the sink path
    session = ort.InferenceSession(str(onnx_models["mlp"]), providers=["CPUExecutionProvider"])
    for (status, headers, body), r in zip(answers, rows):
        assert status == 200
        ihcl = int(headers["inference-header-content-length"])
        meta = json.loads(body[:ihcl])
        assert meta["outputs"][0]["name"] == "probabilities" and meta["outputs"][0]["shape"] == [len(r), 2]
        got = np.frombuffer(body[ihcl:], np.float32).reshape(len(r), 2)
        np.testing.assert_allclose(got, session.run(["probabilities"], {"input": r})[0], rtol=1e-5, atol=1e-6)
    entry = manager.get("mlp", None)
    assert plane.inflight == 0 and entry.inflight == 0  # DataPlane.completed ran once per answer


@pytest.mark.parametrize("protocol_cls", _impls())
def test_a_request_id_takes_the_general_path_and_is_echoed(manager, X, protocol_cls):
    data = _infer(X[:1], "req-7") + _infer(X[1:2])
    answers, accepted, plane = _converse(manager, protocol_cls, data, 2)
    assert accepted == [True]  # only the second request (no id) went through the sink
    (s1, h1, b1), (s2, _, _) = answers
    assert s1 == 200 and s2 == 200
    assert json.loads(b1[: int(h1["inference-header-content-length"])])["id"] == "req-7"
    assert plane.inflight == 0


@pytest.mark.parametrize("protocol_cls", _impls())
def test_a_refused_sink_request_is_a_triton_400(manager, X, protocol_cls):
    # FP64 bytes declared as FP32 rows of the wrong width: the engine refuses, the general path words it.
    h = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}
    ).encode()
    body = h + np.zeros(16, np.float32).tobytes()
    data = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(h), len(body))
    ) + body
    answers, accepted, plane = _converse(manager, protocol_cls, data, 1)
    status, _, payload = answers[0]
    assert status == 400 and "input" in json.loads(payload)["error"]
    assert plane.inflight == 0
