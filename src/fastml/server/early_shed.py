"""The cheapest 503: a whole inference request answered from its raw bytes while its model sheds.

A request the admission gate refuses before decoding (fastml.serving.admission) still cost about 70 us of server
CPU through the ordinary path, half of it Python: the HTTP parser's callbacks (message begin, URL, every header,
body, message complete), routing, the body's join and budget, the model lookup and the counters. While the gate
is shedding (:data:`~fastml.serving.admission.SHED_HINT`), the connection first offers each chunk it reads here:
when the chunk is exactly one complete, plainly framed ``POST .../infer`` request for a model whose gate sheds
it now, the canned 503 (Retry-After, the protocol's error JSON; the same bytes and counters as the ordinary
shed) is written at once and the parser never sees the request. Anything else — a partial or pipelined chunk,
chunked or otherwise unusual framing, a route not yet cached, a deployment, a model that admits the request, a
server that wants a token for inference — returns False and the parser takes the chunk as usual, so this path
changes no answer but the cost of a 503.

Framing is checked strictly enough that the parser and this path always agree on where the request ends: the
request line is ``POST <target> HTTP/1.1``, headers end at the first blank line, there is exactly one
Content-Length (digits only) and no Transfer-Encoding, Connection, Upgrade or Expect header, no bare CR or LF
and no folded line, and the chunk ends exactly where the body does. The request's bytes are dropped unread.
"""

from __future__ import annotations

from fastml.errors import Overloaded
from fastml.server import routes
from fastml.server.status import REASONS
from fastml.server.tensors import encode_json
from fastml.serving.admission import SHED_MESSAGE
from fastml.serving.dataplane import failure_reason

_METHOD = b"POST /"
_VERSION = b" HTTP/1.1"
_CL = b"\r\ncontent-length:"
# Headers whose presence changes framing or the answer's shape: the parser's path handles them.
_UNUSUAL = (b"transfer-encoding", b"connection", b"upgrade", b"expect", b"\r\n ", b"\r\n\t", b"\x00")
_SHED_REASON = failure_reason(Overloaded(SHED_MESSAGE))  # the failure label the ordinary shed counts


def canned_response() -> bytes:
    """The 503 for a shed HTTP/1.1 keep-alive request: status line, Retry-After and the error JSON."""
    body = encode_json({"error": SHED_MESSAGE})
    return b"HTTP/1.1 503 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\n\r\n%s" % (
        REASONS[503],
        len(body),
        body,
    )


_RESPONSE = canned_response()


def answer(conn, data: bytes) -> bool:
    """Answer ``data`` with the canned 503 if it is one whole shed inference request (see the module docstring).

    Args:
        conn: the fastml.server.http.HttpProtocol that read ``data``, between requests.
        data: the bytes just read.

    Returns:
        True when the request was answered here (the parser must not see ``data``), else False.
    """
    if conn.pending or conn.closed or conn.msg_tick != -1 or conn.metrics_only or type(data) is not bytes:
        return False
    if not data.startswith(_METHOD):
        return False
    line_end = data.find(b"\r\n")
    head_end = data.find(b"\r\n\r\n", line_end)
    if line_end < 0 or head_end < 0 or head_end > conn.max_header_bytes:
        return False
    line = data[:line_end]
    if not line.endswith(_VERSION):
        return False
    url = line[5 : line_end - len(_VERSION)]
    if b" " in url:
        return False
    route = conn.server.route_cache.get(url)  # only a target the parser's path has already routed
    if route is None or route[0] != routes.INFER:
        return False
    headers = data[line_end:head_end].lower()  # from the CRLF ending the request line: each header follows a CRLF
    for unusual in _UNUSUAL:
        if unusual in headers:
            return False
    if headers.count(b"\n") != headers.count(b"\r\n") or headers.count(b"\r") != headers.count(b"\r\n"):
        return False
    at = headers.find(_CL)
    if at < 0 or headers.find(_CL, at + 1) >= 0:
        return False
    value_end = headers.find(b"\r\n", at + 2)
    value = headers[at + len(_CL) : len(headers) if value_end < 0 else value_end].strip(b" \t")
    if not value.isdigit() or len(value) > 12:
        return False
    body_len = int(value)
    if body_len > conn.limits.max_body_bytes or len(data) != head_end + 4 + body_len:
        return False
    server = conn.server
    if server.auth.require_for_inference:
        return False  # the token is checked before anything else is answered
    plane = server.plane
    if plane.draining:
        return False  # answered with Connection: close by the ordinary path
    name = route[1]
    deployments = plane.deployments
    if deployments is not None and name in deployments.table:
        return False
    try:
        entry = plane.resolve(name, route[2])
    except Exception:  # noqa: BLE001 - unknown or unloaded: the ordinary path words the error
        return False
    gate = entry.cache.get("admission")
    if gate is None or not gate.sheds(entry.inflight, None):
        return False
    failures = entry.failures
    failures[_SHED_REASON] = failures.get(_SHED_REASON, 0) + 1
    counts = server.status_counts
    counts[503] = counts.get(503, 0) + 1
    conn.transport.write(_RESPONSE)
    return True


__all__ = ["answer", "canned_response"]
