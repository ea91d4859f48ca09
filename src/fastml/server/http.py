"""HTTP/1.1 transport: one asyncio Protocol per connection, requests parsed by httptools.

Keep-alive and pipelining: every request takes a slot in ``pending`` in arrival order; a response is
written when its slot reaches the head, so pipelined answers never overtake each other even when
inference completes out of order. Reading pauses while too many responses are outstanding or the
transport's write buffer is full, so a client that never reads cannot grow our memory.

Limits: body size (413), header count and bytes (431), request completion and idle time (checked by the
server's once-a-second sweep, not a timer per request).

Inference goes through the data plane (``fastml.serving.dataplane``) by its staged way in, with the
HTTP-specific work kept here: route cache -> ``DataPlane.resolve`` -> cached request plan (keyed by the
JSON header bytes) -> ``np.frombuffer`` views -> ``DataPlane.submit_arrays`` -> done callback ->
``DataPlane.settle`` -> pre-encoded response header + tensor bytes. A request addressed to a deployment
takes the same path after one decision in the native router (``_infer_routed``): its plans are cached per
deployment, and the answer is named after the deployment with the variant (parameter and ``fastml-variant``).
"""

# No `from __future__ import annotations`: _http.pyx includes this file after its own header, where a
# future import is not allowed (Python >= 3.10 evaluates these annotations fine).
import logging
import zlib
from collections import deque
from time import perf_counter_ns

import httptools

try:
    import cython  # compiled as _http.pyx, the classes marked cclass become C types (declared in _http.pxd)
except ImportError:  # Cython builds the twin; the pure-Python module runs without it
    from fastml.server import _cython_shim as cython

from fastml.errors import FastMLError, InvalidInput, Overloaded, PermissionDenied, Unauthenticated
from fastml.server import routes, shm_http
from fastml.server.auth import WWW_AUTHENTICATE
from fastml.server.status import REASONS, http_status
from fastml.server.tensors import (
    Plan,
    build_plan,
    datatype_of,
    decode_request,
    encode_json,
    output_bytes,
    output_json_data,
    plan_inputs,
    raw_input,
)
from fastml.serving.admission import SHED_MESSAGE
from fastml.serving.classification import classify_outputs
from fastml.serving.dataplane import refuse_deployment_version

log = logging.getLogger("fastml.server")

_OK_BINARY = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\nContent-Length: %d\r\n%s\r\n"
_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
_PLAN_CACHE_MAX = 256  # distinct request headers remembered per model (a fuzzer must not grow it)
_RESPONSE_HEADERS_MAX = 32  # pre-encoded response headers per plan (output shapes, times variants)
_ROUTE_CACHE_MAX = 1024
# State-changing endpoints (fastml.server.auth): kind -> what the refusal names.
_ADMIN_KINDS = {
    routes.REPO_LOAD: "repository load",
    routes.REPO_UNLOAD: "repository unload",
    routes.SHM_REGISTER: "shared-memory register",
    routes.SHM_UNREGISTER: "shared-memory unregister",
    routes.CUDA_SHM_REGISTER: "CUDA shared-memory register",
    routes.CUDA_SHM_UNREGISTER: "CUDA shared-memory unregister",
    routes.DEPLOYMENT_PUT: "deployment change",
    routes.DEPLOYMENT_DELETE: "deployment removal",
}
_OPEN_KINDS = {routes.LIVE, routes.READY, routes.METRICS}  # open even with --require-token-for-inference
# Writes that are not admin calls: feedback records the outcomes that canary guards roll back on and experiments
# decide by. With a token configured they need it even where inference is open; a server with no token listens on
# loopback only (auth.check_bind), where they stay open like inference.
_TOKEN_WRITE_KINDS = {routes.FEEDBACK: "feedback"}


class _Reject(Exception):
    """Private control flow: stop parsing this connection and answer ``status`` then close."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


@cython.cclass
class _Slot:
    """A response position in a connection's pipeline; ``data`` is None until the answer is ready."""

    __slots__ = ("data", "close")

    def __init__(self):
        self.data = None
        self.close = False


@cython.cclass
class _InferCall(_Slot):
    """A pipeline slot for one submitted inference, filled by the engine future's done callback.

    For a request addressed to a deployment, ``route`` is the answering variant's :func:`_variant_routes` tuple
    (the answer is named after the deployment, carries the variant, and is counted in the variant's stats)."""

    __slots__ = ("conn", "entry", "plan", "encoding", "conn_hdr", "route", "start_ns")

    def __init__(self, conn, entry, plan, encoding, conn_hdr, route=None):
        self.data = None
        self.close = False
        self.conn = conn
        self.entry = entry
        self.plan = plan
        self.encoding = encoding
        self.conn_hdr = conn_hdr
        self.route = route
        if route is not None:
            self.start_ns = perf_counter_ns()

    def done(self, fut):
        """The engine future's done callback (the general path)."""
        try:
            outputs = self.conn.server.plane.settle(self.entry, fut)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error answer
            self._answer(None, exc)
        else:
            self._answer(outputs, None)

    # The sink path (DataPlane.submit_sink): the engine's completion pass calls one of these in place, so the
    # answer is written in the same loop iteration as the batch ran, with no asyncio future and no callback
    # hop through the loop's ready queue.
    def set_result(self, outputs):
        self.conn.server.plane.completed(self.entry)
        self._answer(outputs, None)

    def set_exception(self, exc):
        self.conn.server.plane.completed(self.entry)
        self._answer(None, exc)

    def _answer(self, outputs, exc):
        entry = self.entry
        conn = self.conn
        server = conn.server
        conn_hdr = self.conn_hdr
        if server.plane.draining:
            conn_hdr = _CLOSE_HDR  # shutting down: this is the connection's last answer
        route = self.route
        if exc is not None:
            if route is not None:
                route[5].record((perf_counter_ns() - self.start_ns) / 1000, False)
                route[3].count_error(route[4])
            self.data = error_response(http_status(exc), str(exc) or type(exc).__name__, conn_hdr)
            server.count_error(self.data)
        else:
            if route is not None:
                route[7]((perf_counter_ns() - self.start_ns) / 1000)  # the variant's stats.record_ok
            try:
                self.data = encode_infer_response(entry, self.plan, outputs, self.encoding, conn_hdr, route)
                server.ok_count += 1
            except FastMLError as exc:  # what the request asked of the answer cannot be done (classification)
                self.data = error_response(http_status(exc), str(exc), conn_hdr)
                server.count_error(self.data)
            except Exception as exc:  # a fault while encoding is ours: 500, but keep serving
                log.exception("encoding an inference response failed")
                self.data = error_response(500, f"encoding the response failed: {type(exc).__name__}: {exc}", conn_hdr)
                server.count_error(self.data)
        if conn_hdr is _CLOSE_HDR:
            self.close = True
        conn.flush()


def _variant_routes(d) -> list[tuple]:
    """Per variant of deployment ``d``, what its answers need: (deployment, variant, ``fastml-variant`` header
    line, router, variant index, variant stats, variant, ``stats.record_ok``); built once per deployment."""
    return [
        (
            d.name,
            t.name,
            b"fastml-variant: " + t.name.encode("ascii", "replace") + b"\r\n",
            d.router,
            t.index,
            t.stats,
            t,
            t.stats.record_ok,
        )
        for t in d.variants
    ]


_CLOSE_HDR = b"Connection: close\r\n"
_KEEP_HDR = b"Connection: keep-alive\r\n"


# A refusal for load (503 shed or over the byte budget, 429) tells the client when to come back (RFC 9110 10.2.3).
_RETRY_AFTER_HDR = b"Retry-After: 1\r\n"


def error_response(status: int, message: str, conn_hdr: bytes = b"") -> bytes:
    body = encode_json({"error": message})
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        status,
        REASONS.get(status, b"Error"),
        len(body),
        _RETRY_AFTER_HDR if status == 503 or status == 429 else b"",
        conn_hdr,
        body,
    )


def headers_only(data: bytes) -> bytes:
    """A response to HEAD: its status line and headers, without the body (RFC 9112 6.3); Content-Length still
    states the size the body would have, as RFC 9110 9.3.2 allows."""
    return data[: data.index(b"\r\n\r\n") + 4]


_SHED_ERROR = Overloaded(SHED_MESSAGE)
_shed_responses: dict[bytes, bytes] = {}


def shed_response(conn_hdr: bytes) -> bytes:
    """The 503 for a request shed before decoding, built once per connection header (there are three)."""
    data = _shed_responses.get(conn_hdr)
    if data is None:
        data = error_response(503, SHED_MESSAGE, conn_hdr)
        if len(_shed_responses) < 8:
            _shed_responses[conn_hdr] = data
    return data


def simple_response(status: int, body: bytes, content_type: bytes, conn_hdr: bytes = b"") -> bytes:
    """A complete, uncompressed response (everything but inference answers)."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        REASONS.get(status, b"Error"),
        content_type,
        len(body),
        conn_hdr,
        body,
    )


def compress(data: bytes, encoding: bytes) -> bytes:
    if encoding == b"gzip":
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
    else:  # deflate = zlib format, as curl and tritonclient expect
        c = zlib.compressobj(1, zlib.DEFLATED, 15)
    return c.compress(data) + c.flush()


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a gzip/deflate request body, refusing to produce more than ``limit`` bytes."""
    if encoding == "gzip":
        wbits = 31
    elif encoding == "deflate":
        wbits = 15
    else:
        raise _Reject(415, f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _Reject(400, f"request body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise _Reject(413, f"decompressed request body exceeds the {limit}-byte limit")
    if not d.eof:
        raise _Reject(400, f"request body is truncated {encoding} data")
    return out


_ENCODING_CACHE_MAX = 64  # distinct Accept-Encoding values remembered (a fuzzer must not grow it)
_encoding_cache: dict[bytes, bytes | None] = {}


def response_encoding(accept_encoding: bytes | None) -> bytes | None:
    """The compression for an inference response: the Accept-Encoding coding of highest weight (the first on
    a tie; no ``;q=`` means 1), when that is gzip or deflate; None (identity) otherwise. Triton's rule
    (http_server.cc, CompressionTypeUsed): only inference responses are ever compressed."""
    if not accept_encoding:
        return None
    hit = _encoding_cache.get(accept_encoding, False)
    if hit is not False:
        return hit
    best, best_q = None, 0.0
    for item in accept_encoding.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        params = params.strip()
        if params[:2].lower() == b"q=":
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if q > best_q:
            best, best_q = coding, q
    result = best if best in (b"gzip", b"deflate") else None
    if len(_encoding_cache) < _ENCODING_CACHE_MAX:
        _encoding_cache[accept_encoding] = result
    return result


def routed_header_key(route: tuple, entry, arrays: list, shapes: tuple) -> tuple:
    """The key of a deployment's pre-encoded response header. A deployment's plans (and so their headers) outlive
    the model entries that answer them: a variant naming a served model answers from whichever version is loaded,
    so the key holds what the header states besides the shapes: the variant, the model version and the output
    datatypes."""
    return (route[1], entry.version, tuple([a.dtype for a in arrays]), shapes)


def encode_infer_response(
    entry, plan, outputs: dict, encoding: bytes | None, conn_hdr: bytes, route: tuple | None = None
) -> bytes:
    """The full HTTP response for a successful inference. ``route`` is (deployment, variant, header line) for
    a request addressed to a deployment: the answer is named after the deployment and carries the variant in
    its ``parameters`` and in the ``fastml-variant`` header.

    Raises:
        InvalidInput: an output asked to be classified has a type that does not classify.
    """
    if plan.classify:
        outputs = classify_outputs(entry, outputs, plan.classify)
    specs = plan.outputs
    if specs is None:
        specs = entry.cache.get(("http_all_outputs", plan.all_binary))
        if specs is None:
            specs = [(name, plan.all_binary) for name in entry.cache["output_names_ordered"]]
            entry.cache[("http_all_outputs", plan.all_binary)] = specs
    arrays = [outputs[name] for name, _ in specs]
    key = tuple([a.shape for a in arrays])
    if route is not None:
        key = routed_header_key(route, entry, arrays, key)
        conn_hdr = conn_hdr + route[2]
    header = plan.response_headers.get(key)
    if header is not None:
        # Fast path: all outputs binary fixed-size tensors with shapes seen before.
        if encoding is None:
            parts = [b"", header]
            n = len(header)
            for a in arrays:
                b = a.tobytes()
                n += len(b)
                parts.append(b)
            parts[0] = _OK_BINARY % (len(header), n, conn_hdr)
            return b"".join(parts)
        blob = b"".join([a.tobytes() for a in arrays])
        body = compress(header + blob, encoding)
        return _OK_BINARY % (len(header), len(body), conn_hdr + b"Content-Encoding: " + encoding + b"\r\n") + body
    out_json = []
    blobs = []
    cacheable = True
    for (name, binary), arr in zip(specs, arrays):
        dt = datatype_of(arr)
        if binary:
            b = output_bytes(arr, dt)
            blobs.append(b)
            out_json.append(
                {"name": name, "datatype": dt, "shape": list(arr.shape), "parameters": {"binary_data_size": len(b)}}
            )
            if dt == "BYTES":
                cacheable = False
        else:
            cacheable = False
            out_json.append({"name": name, "datatype": dt, "shape": list(arr.shape), "data": output_json_data(arr, dt)})
    resp = {}
    if plan.request_id is not None:
        resp["id"] = plan.request_id
    if route is None:
        resp["model_name"] = entry.name
        resp["model_version"] = entry.version
    else:
        resp["model_name"] = route[0]
        resp["model_version"] = entry.version
        resp["parameters"] = {"variant": route[1]}
    resp["outputs"] = out_json
    header = encode_json(resp)
    if cacheable and len(plan.response_headers) < _RESPONSE_HEADERS_MAX:
        plan.response_headers[key] = header
    if blobs:
        body = header + b"".join(blobs)
        extra = conn_hdr
        if encoding is not None:
            body = compress(body, encoding)
            extra += b"Content-Encoding: " + encoding + b"\r\n"
        return _OK_BINARY % (len(header), len(body), extra) + body
    body = header
    extra = conn_hdr
    if encoding is not None:
        body = compress(body, encoding)
        extra += b"Content-Encoding: " + encoding + b"\r\n"
    return _OK_JSON % (len(body), extra) + body


@cython.cclass
class HttpProtocol:
    """One HTTP/1.1 connection (an asyncio Protocol; ``server`` is the owning fastml Server)."""

    __slots__ = (
        "server",
        "limits",
        "parser",
        "transport",
        "url",
        "body",
        "body_len",
        "ihcl",
        "content_encoding",
        "accept_encoding",
        "header_bytes",
        "header_count",
        "pending",
        "closed",
        "last_tick",
        "msg_tick",
        "reading_paused",
        "writing_paused",
        "metrics_only",
        "expect_continue",
        "content_length",
        "lingering",
        "discarded",
        "max_headers",
        "max_header_bytes",
        "routing_key",
        "authorization",
        "reserved",
        "upgrade_answered",
    )

    def __init__(self, server, metrics_only: bool = False):
        self.server = server
        self.limits = server.limits
        self.max_headers = server.limits.max_headers
        self.max_header_bytes = server.limits.max_header_bytes
        self.metrics_only = metrics_only
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.pending: deque[_Slot] = deque()
        self.closed = False
        self.last_tick = server.tick
        self.msg_tick = -1
        self.reading_paused = False
        self.writing_paused = False
        self.lingering = False
        self.discarded = 0
        self.reserved = 0  # bytes of this connection's current body counted in server.buffered_bytes
        self.upgrade_answered = False
        self._reset()

    @cython.ccall
    def _reset(self):
        self.url = b""
        self.body = None
        self.body_len = 0
        self.ihcl = -1
        self.content_encoding = None
        self.accept_encoding = None
        self.header_bytes = 0
        self.header_count = 0
        self.expect_continue = False
        self.content_length = -1
        self.routing_key = None
        self.authorization = None

    # ----- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.server.connections.add(self)
        if self.server.draining:
            transport.close()

    def connection_lost(self, exc):
        self._release()
        self.closed = True
        self.server.connections.discard(self)
        self.pending.clear()

    def pause_writing(self):
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        self._maybe_resume_reading()

    def eof_received(self):
        if self.pending:
            # The client half-closed after its last request: answer what it sent, then close. Lingering (a
            # malformed request was answered with close) the answers queued before it must still go out: closing
            # now would drop them all, earlier well-formed pipelined requests included.
            if not self.lingering:
                self.pending[-1].close = True
            return True
        return False

    def data_received(self, data):
        self.last_tick = self.server.tick
        if self.lingering:
            # After an answer that ends the connection, the client may still be sending (a body over the
            # limit): read and drop it, so closing does not reset the connection before it reads the answer.
            # The cap is well above the body limit: a client sending a body just over the limit must be able
            # to finish (the sweep ends the linger after two seconds anyway).
            self.discarded += len(data)
            if self.discarded > 4 * self.limits.max_body_bytes:
                self.closed = True
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.upgrade_answered:
                # The request asking to upgrade was answered (Connection: close) as plain HTTP: exactly one
                # response, then whatever follows on the connection is ignored.
                self.lingering = True
            else:
                self._fail(400, "protocol upgrade is not supported")
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; the original is the context.
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.status, cause.message)
            else:
                log.error("internal error while handling a request", exc_info=cause)
                self._fail(500, f"internal error: {type(cause).__name__}: {cause}")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str):
        """Answer a request we cannot parse any further, then end the connection (lingering close)."""
        self.server.count_status(status)
        slot = _Slot()
        slot.data = error_response(status, message, _CLOSE_HDR)
        if self.url and self.parser.get_method() == b"HEAD":  # (the URL is read once the method is)
            slot.data = headers_only(slot.data)
        slot.close = True
        self.pending.append(slot)
        self.flush()
        self.lingering = True  # parse nothing more, even while earlier answers are still pending

    # ----- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self):
        self._reset()
        self.msg_tick = self.server.tick

    def on_url(self, url: bytes):
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes):
        n = len(name)
        count = self.header_count + 1
        size = self.header_bytes + n + len(value)
        self.header_count = count
        self.header_bytes = size
        if count > self.max_headers or size > self.max_header_bytes:
            raise _Reject(431, f"more than {self.max_headers} headers or {self.max_header_bytes} header bytes")
        # Dispatch on length first: most headers are never lower-cased.
        if n == 31:
            if name.lower() == b"inference-header-content-length":
                try:
                    self.ihcl = int(value)
                except ValueError:
                    raise _Reject(400, f"Inference-Header-Content-Length {value[:40]!r} is not an integer") from None
                if self.ihcl < 0:
                    raise _Reject(400, "Inference-Header-Content-Length must not be negative")
        elif n == 14:
            if name.lower() == b"content-length":
                try:
                    cl = int(value)
                except ValueError:
                    raise _Reject(400, "Content-Length is not an integer") from None
                if cl > self.limits.max_body_bytes:
                    raise _Reject(
                        413, f"request body of {cl} bytes exceeds the {self.limits.max_body_bytes}-byte limit"
                    )
                self.content_length = cl
                self._reserve(cl)
        elif n == 16:
            if name.lower() == b"content-encoding":
                self.content_encoding = value.strip().lower().decode("latin-1")
        elif n == 15:
            if name.lower() == b"accept-encoding":
                self.accept_encoding = value
        elif n == 6:
            if name.lower() == b"expect" and value.strip().lower() == b"100-continue":
                self.expect_continue = True
        elif n == 18:
            if name.lower() == b"fastml-routing-key":  # sticky routing for deployments (_infer_routed)
                self.routing_key = value.decode("utf-8", "replace")
        elif n == 13:
            if name.lower() == b"authorization":  # the admin bearer token (fastml.server.auth)
                self.authorization = value

    def on_headers_complete(self):
        if self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes):
        self.body_len += len(chunk)
        if self.body_len > self.limits.max_body_bytes:
            raise _Reject(413, f"request body exceeds the {self.limits.max_body_bytes}-byte limit")
        if self.content_length < 0:  # chunked: counted as it arrives (a Content-Length body was reserved whole)
            self._reserve(len(chunk))
        body = self.body
        if body is None:
            self.body = chunk
        elif type(body) is list:
            body.append(chunk)
        else:
            self.body = [body, chunk]

    def on_message_complete(self):
        self.msg_tick = -1
        if self.closed or self.lingering:
            return
        parser = self.parser
        keep_alive = parser.should_keep_alive() and not self.server.plane.draining
        if parser.should_upgrade():
            self.upgrade_answered = True  # we never switch protocols: answer as HTTP, then close
            keep_alive = False
        if keep_alive:
            conn_hdr = b"" if parser.get_http_version() == "1.1" else _KEEP_HDR
        else:
            conn_hdr = _CLOSE_HDR
        body = self.body
        self.body = None
        if type(body) is list:
            body = b"".join(body)
        elif body is None:
            body = b""
        if self.reserved:
            self._release()  # the body is joined and about to be decoded: no longer a buffer we are filling
        method = parser.get_method()
        try:
            self._dispatch(method, body, conn_hdr)
        except _Reject as r:
            data = error_response(r.status, r.message, conn_hdr)
            # No route takes HEAD: its 404 or 405 is the one answer it gets, and it has headers only.
            self._respond(headers_only(data) if method == b"HEAD" else data, conn_hdr)
            self.server.count_status(r.status)
        if len(self.pending) >= self.limits.max_pipelined:
            self._pause_reading()

    @cython.ccall
    def _reserve(self, nbytes: int):
        """Count ``nbytes`` of request body against the server-wide budget (Limits.max_buffered_bytes): beyond
        it the request is answered 503 at once, from its Content-Length, before its body is read."""
        server = self.server
        if server.buffered_bytes + nbytes > self.limits.max_buffered_bytes:
            raise _Reject(503, "the server is buffering too many request bytes across connections; retry later")
        server.buffered_bytes += nbytes
        self.reserved += nbytes

    @cython.ccall
    def _release(self):
        if self.reserved:
            self.server.buffered_bytes -= self.reserved
            self.reserved = 0

    # ----- responses ----------------------------------------------------------------------------
    @cython.ccall
    def _respond(self, data: bytes, conn_hdr: bytes):
        """Answer the current request now (after any earlier pipelined answers)."""
        if not self.pending and not self.closed and not self.lingering:
            self.transport.write(data)
            if conn_hdr is _CLOSE_HDR:
                self._finish()
            return
        slot = _Slot()
        slot.data = data
        slot.close = conn_hdr is _CLOSE_HDR
        self.pending.append(slot)
        self.flush()

    @cython.ccall
    def flush(self):
        """Write every answer at the head of the pipeline that is ready, in order."""
        pending = self.pending
        if self.closed:
            pending.clear()
            return
        write = self.transport.write
        while pending:
            slot = pending[0]
            if slot.data is None:
                break
            pending.popleft()
            write(slot.data)
            if slot.close:
                pending.clear()
                self._finish()
                return
        self._maybe_resume_reading()

    def _finish(self):
        """End the connection after its last answer: half-close and drop whatever the client still sends
        (a lingering close), so the client reads our answer instead of a reset. The peer's close, or the
        sweep two seconds later, closes it for good."""
        self.lingering = True
        self.msg_tick = -1
        if self.transport.can_write_eof():
            self.transport.write_eof()
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
        else:
            self.closed = True
            self.transport.close()

    @cython.ccall
    def _pause_reading(self):
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    @cython.ccall
    def _maybe_resume_reading(self):
        if (
            self.reading_paused
            and not self.writing_paused
            and len(self.pending) < self.limits.max_pipelined
            and not self.closed
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    # ----- dispatch -----------------------------------------------------------------------------
    @cython.ccall
    def _dispatch(self, method: bytes, body: bytes, conn_hdr: bytes):
        server = self.server
        url = self.url
        if self.metrics_only:
            r = routes.route(url.split(b"?", 1)[0].decode("latin-1"))
            if r[0] != routes.METRICS:
                r = (routes.NOT_FOUND, None, None)
        else:
            r = server.route_cache.get(url)
            if r is None:
                r = routes.route(url.split(b"?", 1)[0].decode("latin-1"))
                if r[0] == routes.METRICS:
                    r = (routes.NOT_FOUND, None, None)
                if len(server.route_cache) < _ROUTE_CACHE_MAX:
                    server.route_cache[url] = r
        kind, name, version = r
        if kind == routes.NOT_FOUND:
            raise _Reject(404, "Not Found")
        if method != routes.METHOD[kind]:
            by_method = routes.by_method(kind, method)  # a route taking several methods (deployments)
            if by_method is None:
                allowed = routes.METHOD[kind]
                use = b", ".join(allowed) if type(allowed) is tuple else allowed
                raise _Reject(
                    405,
                    f"Method Not Allowed: {method.decode('latin-1')} on {url[:200].decode('latin-1')} (use {use.decode()})",
                )
            kind = by_method
        auth = server.auth
        guarded_write = kind in _TOKEN_WRITE_KINDS and auth.token is not None
        if (
            kind in _ADMIN_KINDS
            or guarded_write
            or (auth.require_for_inference and kind not in _OPEN_KINDS)
            or (kind == routes.METRICS and auth.require_for_metrics)  # --require-token-for-metrics
        ):
            # Checked before the body is inflated or decoded: a refused request costs nothing and changes nothing.
            what = _ADMIN_KINDS.get(kind) or _TOKEN_WRITE_KINDS.get(kind, "this endpoint")
            try:
                auth.check(self.authorization, what, admin=kind in _ADMIN_KINDS or guarded_write)
            except Unauthenticated as exc:
                server.count_status(401)
                self._respond(error_response(401, str(exc), conn_hdr + WWW_AUTHENTICATE), conn_hdr)
                return
            except PermissionDenied as exc:
                raise _Reject(403, str(exc)) from None
        if self.content_encoding is not None and body:
            body = decompress(body, self.content_encoding, self.limits.max_body_bytes)
        if kind == routes.INFER:
            self._infer(name, version, body, conn_hdr)
            return
        if kind in server.async_kinds:
            slot = _Slot()
            slot.close = conn_hdr is _CLOSE_HDR
            self.pending.append(slot)
            server.spawn(self._run_async(slot, kind, name, version, body, conn_hdr))
            return
        status, payload, ctype = server.handle(kind, name, version, body)
        if status >= 400:
            server.count_status(status)
        # Never compressed, whatever Accept-Encoding says: Triton compresses inference responses only, and
        # tritonclient.http.aio reads these answers without inflating them.
        self._respond(simple_response(status, payload, ctype, conn_hdr), conn_hdr)

    async def _run_async(self, slot, kind, name, version, body, conn_hdr):
        status, payload, ctype = await self.server.handle_async(kind, name, version, body)
        if status >= 400:
            self.server.count_status(status)
        slot.data = simple_response(status, payload, ctype, conn_hdr)
        self.flush()

    @cython.ccall
    def _infer(self, name: str, version: str | None, body: bytes, conn_hdr: bytes):
        plane = self.server.plane
        ihcl = self.ihcl
        header_len = len(body) if ihcl < 0 or ihcl > len(body) else ihcl
        if ihcl != 0 and body.find(shm_http.MARKER, 0, header_len) >= 0:
            # Tensors in shared memory take the full decode path (fastml.server.shm_http), not the plan cache.
            try:
                shm_http.infer(self, name, version, body, header_len, conn_hdr)
            except Exception as exc:
                raise _Reject(http_status(exc), str(exc) or type(exc).__name__) from None
            return
        deployments = plane.deployments
        if deployments is not None:
            d = deployments.table.get(name)
            if d is not None:
                try:
                    refuse_deployment_version(name, version)
                except FastMLError as exc:
                    raise _Reject(http_status(exc), str(exc)) from None
                self._infer_routed(deployments, d, body, conn_hdr)
                return
        try:
            entry = plane.resolve(name, version)
        except Exception as exc:
            raise _Reject(http_status(exc), str(exc)) from None
        gate = entry.cache.get("admission")
        if gate is not None and gate.sheds(entry.inflight, None):
            # Overloaded whatever this request's deadline (fastml.serving.admission): a canned 503, nothing decoded.
            plane.count_failure(entry, _SHED_ERROR)
            self.server.count_status(503)
            self._respond(shed_response(conn_hdr), conn_hdr)
            return
        try:
            inputs, plan, timeout_us = self._decode_infer(entry, body)
        except Exception as exc:
            plane.count_failure(entry, exc)
            raise _Reject(http_status(exc), str(exc) or type(exc).__name__) from None
        self._submit(entry, inputs, plan, timeout_us, conn_hdr)

    def _submit(self, entry, inputs, plan, timeout_us, conn_hdr, route=None):
        """Submit decoded inputs to ``entry``'s model and queue the pipeline slot its answer fills: the one way
        in for model and deployment calls (``route``: the variant's :func:`_variant_routes` tuple, or None)."""
        plane = self.server.plane
        sink = entry.cache.get("http_sink")
        if sink is None:
            # Only the native batcher settles a sink in place (the Python one settles asyncio futures only).
            sink = entry.cache["http_sink"] = getattr(entry.model, "batcher", None) == "native"
        call = _InferCall(
            self,
            entry,
            plan,
            None if self.accept_encoding is None else response_encoding(self.accept_encoding),
            conn_hdr,
            route,
        )
        try:
            # The plain request (no id for a logger or an error to name; a deployment's variant too, whose
            # model then has no prediction logger to label for) is answered in place by the engine
            # (_InferCall.set_result), no earlier than the loop's next flush of the batcher. submit_sink
            # answering False means the general path below takes it.
            if sink and plan.request_id is None and plane.submit_sink(entry, inputs, timeout_us, call):
                self.pending.append(call)
                return
            if route is None or getattr(entry.model, "prediction_logger", route) is None:
                # (A model object without the attribute may label its own log: it goes through submit_variant.)
                fut = plane.submit_arrays(entry, inputs, timeout_us, plan.request_id)
            else:  # sets the variant's label for the model's prediction logger
                fut = plane.deployments.submit_variant(plane, route[6], entry, inputs, timeout_us, plan.request_id)
        except Exception as exc:  # counted by the data plane (and the variant's stats)
            if route is not None:
                route[5].record(0.0, False)
                route[3].count_error(route[4])
            raise _Reject(http_status(exc), str(exc) or type(exc).__name__) from None
        self.pending.append(call)
        fut.add_done_callback(call.done)

    def _infer_routed(self, deployments, d, body: bytes, conn_hdr: bytes):
        """A request addressed to a deployment: one decision in the native router, then the model path
        (:meth:`_submit`) on the chosen variant's model. Plans are cached per deployment (variants share a
        signature), with the routing parameters read once per distinct header."""
        try:
            plan, key, pinned, routes_, ihcl = self._routed_plan(deployments, d, body)
            if pinned is None:
                index, mask = d.router.route(self.routing_key if key is None else key)
                target = d.variants[index]
            else:
                target, mask = deployments.pin(d, pinned), 0
            entry = target.entry  # a registry reference's entry; a served model is looked up per request
            if entry is None:
                entry = target.current(deployments.manager)
            if "output_names" not in entry.cache:
                self.server.plane._prepare(entry)
            inputs = plan_inputs(plan, body, ihcl)
        except Exception as exc:
            raise _Reject(http_status(exc), str(exc) or type(exc).__name__) from None
        self._submit(entry, inputs, plan, plan.timeout_us, conn_hdr, routes_[target.index])
        if mask:
            deployments.mirror_arrays(self.server.plane, d, mask, entry, inputs, plan.request_id)

    def _routed_plan(self, deployments, d, body: bytes):
        """(plan, routing_key, pinned variant, variant routes, header length) for a deployment request, cached per
        header bytes."""
        ihcl = self.ihcl
        n = len(body)
        if ihcl == 0:
            raise InvalidInput(
                "a deployment needs a JSON request header (Inference-Header-Content-Length: 0 is refused)"
            )
        if ihcl < 0 or ihcl == n:
            header = body
            ihcl = n
        elif ihcl > n:
            raise InvalidInput(f"Inference-Header-Content-Length {ihcl} exceeds the body length {n}")
        else:
            header = body[:ihcl]
        plans = d.transport_cache.get("http_plans")
        if plans is None:
            plans = d.transport_cache["http_plans"] = {}
        got = plans.get(header)
        if got is None:
            req = decode_request(header)
            first = d.variants[0].current(deployments.manager)
            if "output_names" not in first.cache:
                self.server.plane._prepare(first)
            plan = build_plan(req, first.cache["output_names"], d.name)
            key, pinned = deployments.routing_params(req.parameters)
            routes_ = d.transport_cache.get("http_routes")
            if routes_ is None:
                routes_ = d.transport_cache["http_routes"] = _variant_routes(d)
            got = (plan, key, pinned, routes_)
            if plan.cacheable and len(plans) < _PLAN_CACHE_MAX:
                plans[header] = got
        return got[0], got[1], got[2], got[3], ihcl

    @cython.ccall
    def _decode_infer(self, entry, body: bytes):
        ihcl = self.ihcl
        n = len(body)
        if ihcl == 0:
            return self._raw_infer(entry, body)
        if ihcl < 0 or ihcl == n:
            header = body
            ihcl = n
        elif ihcl > n:
            raise InvalidInput(f"Inference-Header-Content-Length {ihcl} exceeds the body length {n}")
        else:
            header = body[:ihcl]
        plans = entry.cache.get("http_plans")
        if plans is None:
            plans = entry.cache["http_plans"] = {}
        plan = plans.get(header)
        if plan is None:
            req = decode_request(header)
            plan = build_plan(req, entry.cache["output_names"], entry.name)
            if plan.cacheable and len(plans) < _PLAN_CACHE_MAX:
                plans[header] = plan
        return plan_inputs(plan, body, ihcl), plan, plan.timeout_us

    def _raw_infer(self, entry, body: bytes):
        sig = entry.model.signature
        if len(sig.inputs) != 1:
            raise InvalidInput(
                f"a raw binary request (Inference-Header-Content-Length: 0) needs a one-input model; {entry.name!r} has {len(sig.inputs)}"
            )
        spec = sig.inputs[0]
        inputs = raw_input(body, spec.name, spec.datatype, list(spec.shape))
        plan = entry.cache.get("http_raw_plan")
        if plan is None:
            plan = Plan()
            plan.all_binary = True
            entry.cache["http_raw_plan"] = plan
        return inputs, plan, None
