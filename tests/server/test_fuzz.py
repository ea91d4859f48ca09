"""Fault tests over raw sockets: thousands of malformed requests, slow and dropped connections.

After all of it the server must still be alive, never have hung a connection, never have answered a
malformed request with 500 (that would be an internal fault), answer a valid request correctly, and keep
its memory bounded.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverkit import ServerProcess, ort_reference, read_response

ALLOWED = {200, 400, 404, 405, 408, 413, 415, 431, 503}
MAX_BODY = 65536


@pytest.fixture(scope="module")
def fuzz_server(model_repo, tmp_path_factory):
    srv = ServerProcess(
        [
            str(model_repo),
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--max-body-bytes",
            str(MAX_BODY),
            "--request-timeout-s",
            "1",
            "--idle-timeout-s",
            "1",
        ],
        tmp_path_factory.mktemp("home"),
    )
    srv.rss_start_kb = _rss_kb(srv.pid)
    yield srv
    assert srv.stop() == 0


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _valid_infer(x: np.ndarray, binary: bool = True) -> bytes:
    if binary:
        hdr = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        body = hdr + x.tobytes()
        extra = f"Inference-Header-Content-Length: {len(hdr)}\r\n"
    else:
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
        ).encode()
        extra = ""
    return (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


TEMPLATES = [
    _valid_infer(np.ones((2, 32), np.float32)),
    _valid_infer(np.ones((1, 32), np.float32), binary=False),
    b"GET /v2/models/mlp HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/models/strings/config HTTP/1.1\r\nHost: x\r\n\r\n",
    b'POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{"ready":true}',
]


def exchange(srv, chunks: list[bytes], drop: bool) -> int | None:
    """Send ``chunks`` on a fresh connection; unless ``drop``, half-close and read one answer.

    Returns the status, or None when the server closed without answering (an incomplete request).
    A read that times out fails the test: the server must never leave a connection hanging.
    """
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        try:
            for c in chunks:
                s.sendall(c)
        except (BrokenPipeError, ConnectionResetError):
            return None  # the server already answered and closed (e.g. 413 on the headers)
        if drop:
            return None
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        f = s.makefile("rb")
        try:
            first = f.peek(1)
        except ConnectionResetError:
            return None
        if not first:
            return None
        status, headers, body = read_response(f)
        while status == 100:  # "Expect: 100-continue" got its interim answer; the real one follows
            if not f.peek(1):
                return None
            status, headers, body = read_response(f)
        if status != 200:
            assert json.loads(body)["error"], body
        return status


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        p = pos % len(b)
        if kind == "flip":
            b[p] ^= val or 1
        elif kind == "cut":
            del b[p:]
        elif kind == "insert":
            b[p:p] = bytes([val]) * (1 + val % 7)
        elif kind == "delete":
            del b[p : p + 1 + val % 5]
    return bytes(b)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


mutation = st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255))


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    template=st.sampled_from(TEMPLATES),
    ops=st.lists(mutation, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
    drop=st.booleans(),
)
def test_mutated_requests(fuzz_server, template, ops, cuts, drop):
    status = exchange(fuzz_server, _split(_mutate(template, ops), cuts), drop)
    assert status is None or status in ALLOWED
    assert fuzz_server.proc.poll() is None


header_value = st.one_of(
    st.integers(-5, 10**20).map(str),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "replace").decode("latin-1")),
    st.sampled_from(["gzip", "deflate", "br", "chunked", "", "100-continue", "-1", "0"]),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "text", "x", ""]),
        "shape": st.lists(st.integers(-2, 2**40) | st.just(32) | st.just(1), max_size=4),
        "datatype": st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "BOOL", "UINT8", "nope"]),
    },
    optional={
        "data": json_value,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-3, 2**40) | json_value}),
    },
)
request_json = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3)},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["label", "probabilities", "zz"])},
                optional={
                    "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_value)
                },
            ),
            max_size=3,
        ),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_output", "timeout", "sequence_id", "priority"]), json_value
        ),
        "id": json_value,
    },
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    model=st.sampled_from(["mlp", "strings", "gbt", "missing"]),
    req=request_json,
    trailer=st.binary(max_size=300),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "Inference-Header-Content-Length",
                "Content-Encoding",
                "Accept-Encoding",
                "Expect",
                "Transfer-Encoding",
                "X-Junk",
            ]
        ),
        header_value,
        max_size=3,
    ),
    content_length=st.one_of(st.none(), st.integers(0, 10**12)),
)
def test_structured_garbage(fuzz_server, model, req, trailer, headers, content_length):
    hdr = json.dumps(req).encode()
    body = hdr + trailer
    if "Inference-Header-Content-Length" not in headers and trailer:
        headers = {**headers, "Inference-Header-Content-Length": str(len(hdr))}
    cl = len(body) if content_length is None else content_length
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    status = exchange(fuzz_server, [head.encode("latin-1") + b"\r\n" + body], drop=False)
    assert status is None or status in ALLOWED
    assert fuzz_server.proc.poll() is None


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(min_size=1, max_size=2000), st.booleans())
def test_random_bytes(fuzz_server, data, drop):
    status = exchange(fuzz_server, [data], drop)
    assert status is None or status in ALLOWED


def test_slow_client_gets_408_and_idle_connection_is_closed(fuzz_server):
    with socket.create_connection((fuzz_server.host, fuzz_server.port), timeout=15) as s:
        s.sendall(b'POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inp')
        status, _, body = read_response(s.makefile("rb"))  # blocks until the server gives up on us
        assert status == 408 and b"within" in body
    with socket.create_connection((fuzz_server.host, fuzz_server.port), timeout=15) as s:
        assert s.recv(1) == b""  # idle keep-alive connection closed by the server


def test_still_healthy_after_fuzzing(fuzz_server, onnx_models):
    # Runs last in this module: the server answers a valid request correctly and its memory is bounded.
    x = np.load(onnx_models["data"])[:3]
    with socket.create_connection((fuzz_server.host, fuzz_server.port), timeout=10) as s:
        s.sendall(_valid_infer(x))
        status, headers, body = read_response(s.makefile("rb"))
    assert status == 200
    n = int(headers["inference-header-content-length"])
    np.testing.assert_allclose(
        np.frombuffer(body[n:], np.float32).reshape(3, 2),
        ort_reference(onnx_models["mlp"], x)["probabilities"],
        rtol=1e-5,
        atol=1e-6,
    )
    growth_mb = (_rss_kb(fuzz_server.pid) - fuzz_server.rss_start_kb) / 1024
    assert growth_mb < 64, f"RSS grew by {growth_mb:.1f} MB during fuzzing"
