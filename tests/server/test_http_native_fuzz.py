"""Fuzzing the native HTTP intake against the Python path: random and mutated requests, truncated bodies, lying
Content-Length and Inference-Header-Content-Length, huge declared shapes, random pipelines split at random
points. For the same bytes, the connection must answer exactly as the Python path does (status, headers, error
body, whether it closes), never crash, never leave an answer owed."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_conformance import FakeTransport, _json_infer, _req

from fastml.server import http as reference
from fastml.server.app import Server

http_native = pytest.importorskip("fastml.server.http_native")
if not http_native.AVAILABLE:
    pytest.skip("fastml._http_intake is not built (setup.py build_ext --inplace)", allow_module_level=True)

X = np.arange(4 * 32, dtype=np.float32).reshape(4, 32) / 100


def _plain(
    x: np.ndarray, *, shape=None, size=None, ihcl_delta=0, cl_delta=0, extra_headers=None, request_id=None
) -> bytes:
    header = {} if request_id is None else {"id": request_id}
    header |= {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape) if shape is None else shape,
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes if size is None else size},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    h = json.dumps(header).encode()
    body = h + x.tobytes()
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + cl_delta}\r\n"
        f"Inference-Header-Content-Length: {len(h) + ihcl_delta}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())
        + "\r\n"
    )
    return head.encode() + body


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def servers(manager, loop):
    async def make():
        return Server(manager, http_port=None, metrics_port=None)

    return loop.run_until_complete(make())


def _owed(proto) -> bool:
    outbox = getattr(proto, "outbox", None)
    return bool(proto.pending) or (outbox is not None and outbox.outstanding > 0)


def _talk(loop, server, cls, chunks: list[bytes]) -> tuple[bytes, bool, bool]:
    async def go():
        proto = cls(server)
        t = FakeTransport()
        proto.connection_made(t)
        for chunk in chunks:
            if t.closed:
                break
            proto.data_received(chunk)
            for _ in range(10_000):
                if not _owed(proto):
                    break
                await asyncio.sleep(0)
        assert not _owed(proto), "answers still owed: a hang"
        proto.connection_lost(None)
        return bytes(t.out), t.closed, t.eof

    return loop.run_until_complete(go())


def _same(loop, server, chunks: list[bytes]) -> None:
    ref = _talk(loop, server, reference.HttpProtocol, chunks)
    native = _talk(loop, server, http_native.NativeHttpProtocol, chunks)
    assert native == ref


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


FUZZ = settings(
    max_examples=750,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

_POOL = [
    _plain(X[:1]),
    _plain(X[:2]),
    _json_infer(X[:1]),
    _req("GET", "/v2/health/ready"),
    _plain(X[:1]).replace(b"/mlp/", b"/nope/"),
    _plain(X[:1], shape=[2**62, 32]),
    b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
]


@FUZZ
@given(
    picks=st.lists(st.integers(0, len(_POOL) - 1), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_random_pipelines_split_anywhere(loop, servers, picks, cuts):
    _same(loop, servers, _split(b"".join(_POOL[i] for i in picks), cuts))


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "drop"]), st.integers(0, 10_000), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
    tail=st.booleans(),
)
def test_mutated_requests(loop, servers, edits, tail):
    data = bytearray(_plain(X[:1]))
    for kind, at, value in edits:
        at %= len(data) + 1
        if kind == "flip" and at < len(data):
            data[at] ^= value or 1
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value])
        elif kind == "drop" and at < len(data):
            del data[at]
        if not data:
            data = bytearray(b"\r\n")
    chunks = [bytes(data)]
    if tail:
        chunks.append(_plain(X[:1]))  # what a well-formed request after the mutated one gets
    _same(loop, servers, chunks)


@FUZZ
@given(
    ihcl_delta=st.integers(-400, 400) | st.sampled_from([10**12, -(10**4)]),
    cl_delta=st.integers(-200, 20) | st.sampled_from([10**9, 10**15]),
    shape=st.none() | st.lists(st.integers(-3, 2**63 - 1) | st.integers(0, 64), min_size=0, max_size=4),
    size=st.none() | st.integers(-5, 2**64) | st.integers(0, 300),
)
def test_lying_lengths_and_huge_shapes(loop, servers, ihcl_delta, cl_delta, shape, size):
    request = _plain(X[:1], shape=shape, size=size, ihcl_delta=ihcl_delta, cl_delta=cl_delta)
    _same(loop, servers, [request, _plain(X[:1])])


@FUZZ
@given(
    ids=st.lists(
        st.none()
        | st.text(alphabet="abcXYZ019._:-", max_size=70)
        | st.text(max_size=8)
        | st.integers(-5, 5)
        | st.booleans(),
        min_size=1,
        max_size=4,
    ),
    sizes=st.lists(st.integers(1, 4), min_size=4, max_size=4),
)
def test_request_ids(loop, servers, ids, sizes):
    """Per-request ids: the intake takes plain ones (its plan is the header's without the id) and answers with
    them; anything else is the Python path's."""
    _same(loop, servers, [b"".join(_plain(X[: sizes[i]], request_id=r) for i, r in enumerate(ids))])


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "Accept-Encoding",
                "Expect",
                "Connection",
                "Transfer-Encoding",
                "fastml-routing-key",
                "Authorization",
                "X-A",
            ]
        ),
        st.sampled_from(["gzip", "identity", "100-continue", "close", "keep-alive", "chunked", "k", "Bearer t", ""]),
        max_size=3,
    ),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
)
def test_headers_the_intake_declines(loop, servers, headers, version):
    request = _plain(X[:1], extra_headers=headers).replace(b"HTTP/1.1", version, 1)
    _same(loop, servers, [request, _plain(X[:1])])
