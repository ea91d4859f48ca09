"""The early 503 (fastml.server.early_shed): a whole, plainly framed inference request its model sheds is answered
with the same canned 503 and counters as the ordinary shed; anything else is left to the HTTP parser."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from fastml.errors import Overloaded
from fastml.server import early_shed, http, routes
from fastml.serving.admission import SHED_MESSAGE, AdmissionGate
from fastml.serving.dataplane import failure_reason

URL = b"/v2/models/mlp/infer"
BODY = b'{"inputs":[]}' + b"\x00" * 128


def _request(headers: bytes = b"", body: bytes = BODY, line: bytes = b"POST " + URL + b" HTTP/1.1") -> bytes:
    return line + b"\r\nHost: t\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


class _Plane:
    def __init__(self, entry) -> None:
        self.entry = entry
        self.draining = False
        self.deployments = None

    def resolve(self, name, version):
        if name != "mlp":
            raise LookupError(name)
        return self.entry


def _conn(sheds: bool = True):
    gate = AdmissionGate()
    gate.rate_per_s = 100.0
    entry = SimpleNamespace(cache={"admission": gate}, inflight=1000 if sheds else 0, failures={})
    written: list[bytes] = []
    server = SimpleNamespace(
        route_cache={URL: (routes.INFER, "mlp", None)},
        auth=SimpleNamespace(require_for_inference=False),
        plane=_Plane(entry),
        status_counts={},
    )
    return SimpleNamespace(
        pending=deque(),
        closed=False,
        msg_tick=-1,
        metrics_only=False,
        max_header_bytes=16384,
        limits=SimpleNamespace(max_body_bytes=1 << 20),
        server=server,
        transport=SimpleNamespace(write=written.append),
        written=written,
        entry=entry,
        gate=gate,
    )


def test_the_early_503_is_the_ordinary_shed_answer_with_its_counters():
    conn = _conn()
    assert early_shed.answer(conn, _request(b"Content-Type: application/octet-stream\r\n"))
    assert conn.written == [http.shed_response(b"")]  # same bytes: status, Retry-After, the error JSON
    assert b"Retry-After: 1\r\n" in conn.written[0]
    assert conn.written[0].endswith(b'{"error":"' + SHED_MESSAGE.encode() + b'"}')
    assert conn.server.status_counts == {503: 1}
    assert conn.entry.failures == {failure_reason(Overloaded(SHED_MESSAGE)): 1}
    assert conn.gate.shed == 1


@pytest.mark.parametrize(
    "data",
    [
        _request()[:-1],  # the body is not all here yet
        _request() + _request(),  # pipelined: the parser keeps the order of the answers
        _request(b"Transfer-Encoding: chunked\r\n"),
        _request(b"Connection: close\r\n"),
        _request(b"Expect: 100-continue\r\n"),
        _request(b"Content-Length: 5\r\n"),  # two lengths
        _request(b"X-Folded: a\r\n b\r\n"),
        _request(b"X-Bare: a\nX-Other: b\r\n"),
        _request(line=b"POST " + URL + b" HTTP/1.0"),
        _request(line=b"GET " + URL + b" HTTP/1.1"),
        _request(line=b"POST /v2/models/other/infer HTTP/1.1"),  # a target not routed yet
        _request().replace(b"Content-Length: ", b"Content-Length: +"),
    ],
)
def test_anything_but_one_plain_whole_request_is_left_to_the_parser(data):
    conn = _conn()
    assert not early_shed.answer(conn, data)
    assert conn.written == [] and conn.server.status_counts == {} and conn.gate.shed == 0


def test_a_request_the_gate_admits_or_a_busy_connection_is_left_to_the_parser():
    admitted = _conn(sheds=False)
    assert not early_shed.answer(admitted, _request())
    assert admitted.written == [] and admitted.gate.shed == 0
    for change in ("pending", "msg_tick", "draining", "token", "deployment"):
        conn = _conn()
        if change == "pending":
            conn.pending.append(object())  # an earlier answer must go out first
        elif change == "msg_tick":
            conn.msg_tick = 7  # the parser holds part of a request
        elif change == "draining":
            conn.server.plane.draining = True
        elif change == "token":
            conn.server.auth.require_for_inference = True
        else:
            conn.server.plane.deployments = SimpleNamespace(table={"mlp": object()})
        assert not early_shed.answer(conn, _request()), change
        assert conn.written == [] and conn.gate.shed == 0, change
