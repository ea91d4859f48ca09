"""The compiled HTTP transport (fastml.server._http) against its pure-Python reference (fastml.server.http):
the same request bytes in, the same response bytes out, for every path the hot path takes (cached plans,
pre-encoded headers, JSON tensors, compression, pipelining, byte-by-byte arrival) and for the refusals."""

from __future__ import annotations

import asyncio
import gzip
import json

import numpy as np
import pytest

from fastml.server import http as reference
from fastml.server.app import Server, compiled_is_current, protocol_class

_http = pytest.importorskip(
    "fastml.server._http", reason="the Cython extension is not built (setup.py build_ext --inplace)"
)
pytestmark = pytest.mark.skipif(
    not compiled_is_current(_http),
    reason="fastml.server._http is older than server/http.py: "
    "rebuild it (setup.py build_ext --inplace) to compare the two",
)


class FakeTransport:
    """Collects what the protocol writes; enough of asyncio.Transport for HttpProtocol."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data):
        self.out += data

    def close(self):
        self.closed = True

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.eof = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return self.closed


def _req(method: str, path: str, body: bytes = b"", headers: dict | None = None, version: str = "1.1") -> bytes:
    head = f"{method} {path} HTTP/{version}\r\nHost: x\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


def _binary_infer(x: np.ndarray, request_id: str | None = None, outputs_binary: bool = True) -> bytes:
    hdr = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": outputs_binary},
    }
    if request_id is not None:
        hdr["id"] = request_id
    h = json.dumps(hdr).encode()
    return _req("POST", "/v2/models/mlp/infer", h + x.tobytes(), {"Inference-Header-Content-Length": str(len(h))})


def _binary_infer_short(x: np.ndarray) -> bytes:
    """A binary request whose body carries 4 bytes fewer than its binary_data_size declares."""
    h = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return _req("POST", "/v2/models/mlp/infer", h + x.tobytes()[:-4], {"Inference-Header-Content-Length": str(len(h))})


def _json_infer(x: np.ndarray, extra: dict | None = None, headers: dict | None = None) -> bytes:
    body = json.dumps(
        {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
            **(extra or {}),
        }
    ).encode()
    return _req("POST", "/v2/models/mlp/infer", body, headers)


def _conversations(x: np.ndarray) -> dict[str, list[bytes]]:
    """Each entry: the chunks one connection receives, in order."""
    one = x[:1]
    gz_body = gzip.compress(
        json.dumps(
            {"inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": x[:2].reshape(-1).tolist()}]}
        ).encode()
    )
    pipelined = _binary_infer(one) + _binary_infer(x[:3], "r-2") + _json_infer(one) + _req("GET", "/v2/health/ready")
    return {
        "binary fast path twice": [_binary_infer(one), _binary_infer(one)],
        "binary with id and JSON outputs": [_binary_infer(x[:2], "abc", outputs_binary=False)],
        "json tensors": [_json_infer(x[:4])],
        "json requested outputs": [
            _json_infer(x[:2], {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
        ],
        "gzip in, gzip out": [
            _req("POST", "/v2/models/mlp/infer", gz_body, {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
        ],
        "deflate out by weight": [_json_infer(one, headers={"Accept-Encoding": "br;q=0.1, deflate"})],
        "raw binary": [_req("POST", "/v2/models/mlp/infer", one.tobytes(), {"Inference-Header-Content-Length": "0"})],
        "pipelined in one chunk": [pipelined],
        "byte by byte": [bytes([b]) for b in _binary_infer(x[:2], "slow")],
        "metadata and health": [
            _req("GET", "/v2"),
            _req("GET", "/v2/models/mlp"),
            _req("GET", "/v2/models/mlp/config"),
            _req("GET", "/v2/health/live"),
            _req("GET", "/v2/models/mlp/ready", headers={"Accept-Encoding": "gzip"}),
        ],
        "repository index": [_req("POST", "/v2/repository/index", b'{"ready": true}')],
        "http/1.0 keep-alive then close": [
            _req("GET", "/v2", version="1.0", headers={"Connection": "keep-alive"}),
            _req("GET", "/v2/health/live", headers={"Connection": "close"}),
        ],
        "unknown model": [_json_infer(one).replace(b"/mlp/", b"/nope/")],
        "bad json": [_req("POST", "/v2/models/mlp/infer", b"{not json")],
        "bad shape": [
            _json_infer(one, {"inputs": [{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": [0.0] * 31}]})
        ],
        "size mismatch": [_binary_infer_short(one)],
        "wrong method": [_req("GET", "/v2/models/mlp/infer")],
        "not found": [_req("GET", "/v3/nothing")],
        "sequence refused": [_json_infer(one, {"parameters": {"sequence_id": 7}})],
        "bad timeout": [_json_infer(one, {"parameters": {"timeout": -5}})],
        "unknown output": [_json_infer(one, {"outputs": [{"name": "nope"}]})],
        "too many headers": [_req("GET", "/v2", headers={f"X-{i}": "v" for i in range(120)})],
        "body too large": [b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"],
        "malformed http": [b"GET /v2 HTTP/9.9 garbage\r\n\r\n"],
        "bad ihcl": [_req("POST", "/v2/models/mlp/infer", b"{}", {"Inference-Header-Content-Length": "abc"})],
        # An answer to HEAD has headers only, the refusals of the parser included.
        "head refused, then get": [_req("HEAD", "/v2/models/mlp/infer") + _req("HEAD", "/v3/x") + _req("GET", "/v2")],
        "head body too large": [b"HEAD /v2 HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"],
    }


def _run(manager, cls, chunks: list[bytes]) -> tuple[bytes, bool, bool]:
    for e in manager.entries():
        e.cache.clear()  # each implementation starts cold: plans and pre-encoded headers are built by it

    async def go():
        server = Server(manager, http_port=None, metrics_port=None)
        proto = cls(server)
        t = FakeTransport()
        proto.connection_made(t)
        for chunk in chunks:
            proto.data_received(chunk)
            for _ in range(10_000):  # let the engine's completions run (inline runner: a few loop turns)
                if not proto.pending:
                    break
                await asyncio.sleep(0)
        assert not proto.pending, "answers still pending"
        return bytes(t.out), t.closed, t.eof

    return asyncio.run(go())


@pytest.mark.parametrize("name", list(_conversations(np.zeros((4, 32), np.float32))))
def test_same_bytes_out(manager, onnx_models, name):
    x = np.load(onnx_models["data"])[:4]
    chunks = _conversations(x)[name]
    ref = _run(manager, reference.HttpProtocol, chunks)
    compiled = _run(manager, _http.HttpProtocol, chunks)
    assert ref[0], "the reference wrote nothing"
    assert compiled == ref


def test_answers_are_real(manager, onnx_models):
    # The comparison above is only worth something if the answers are right: check one against the model.
    x = np.load(onnx_models["data"])[:3]
    out, _, _ = _run(manager, _http.HttpProtocol, [_binary_infer(x, "r")])
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    n = int(
        [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"inference-header-content-length")][0].split(b":")[
            1
        ]
    )
    meta = json.loads(body[:n])
    assert meta["id"] == "r" and [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    probs = np.frombuffer(body[n + sizes[0] : n + sizes[0] + sizes[1]], np.float32).reshape(3, 2)
    expected = manager.get("mlp").model.predict(x)["probabilities"]
    np.testing.assert_allclose(probs, expected, rtol=1e-6)


def test_protocol_class_selection(monkeypatch):
    assert protocol_class("python") is reference.HttpProtocol
    assert protocol_class("cython") is _http.HttpProtocol
    monkeypatch.setenv("FASTML_HTTP_IMPL", "cython")
    assert protocol_class() is _http.HttpProtocol
    monkeypatch.delenv("FASTML_HTTP_IMPL")
    assert protocol_class() is protocol_class("native")  # the default (the native intake, when built)
    with pytest.raises(ValueError, match="FASTML_HTTP_IMPL"):
        protocol_class("rust")
