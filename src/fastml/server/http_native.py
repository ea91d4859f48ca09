"""HTTP/1.1 transport with the native intake: plain binary-tensor inference requests skip Python per request.

:class:`NativeHttpProtocol` is :class:`fastml.server.http.HttpProtocol` with one step in front: each read goes
to ``fastml._http_intake.Intake.feed`` (one native call), where llhttp walks every complete request and a
plain one (``POST /v2/models/<name>[/versions/<v>]/infer`` over HTTP/1.1 keep-alive, all inputs binary and
fixed-size, all outputs binary, a request header whose plan :func:`open_plan` found native-able) goes straight
into the model's native batcher, the way the binary protocol's intake does. Its answer is written natively,
from the response header the Python encoder pre-encoded for those output shapes, into the connection's
``Outbox``, which writes answers in request order.

The first request the intake declines, and everything after it in the read, goes to the Python path
(``HttpProtocol.data_received``) unchanged, so every refusal and every feature (JSON tensors, compression,
ids, deployments, shared memory, auth) is the Python path's, byte for byte. Ordering across the two paths:
the intake takes nothing while the Python path has answers pending or a request half parsed, and the Python
path writes nothing while native answers are owed, so a pipelined client reads its answers in request order.

Books: the requests the intake submitted are counted in flight per read and recorded with the admission gate
once per event-loop pass (``DataPlane.sink_counted`` / ``sink_admitted``); each answer closes its request's
books (``DataPlane.completed``) and counts its status, so statistics and metrics see native-path requests as
the Python path's.
"""

import asyncio
import copy
import inspect
import logging
import weakref

from fastml.server import shm_http
from fastml.server.http import (
    _CLOSE_HDR,
    _SHED_ERROR,
    HttpProtocol,
    _Slot,
    encode_infer_response,
    error_response,
    routed_header_key,
    shed_response,
)
from fastml.server.status import http_status
from fastml.server.tensors import build_plan, decode_request

try:
    from fastml import _http_intake
except ImportError:  # not built (a source checkout before build_ext): the Python path serves alone
    _http_intake = None

log = logging.getLogger("fastml.server")

AVAILABLE = _http_intake is not None
_MISS = object()


class _PassRoutes:
    """``DataPlane.sink_route`` answers shared by every connection's intake for one event-loop pass.

    With many connections each read carries one request: asking the data plane for the model's route (resolve,
    the engine's sink target, the admission bound) once per read was ~5 % of the server's CPU at 32 connections.
    Within a pass nothing that decides a route changes but the requests in flight, which the intake reads
    afresh per read. A deployment's route is one routing decision for one request: what is kept for the pass is
    the deployment's chooser (``DataPlane.variant_chooser``), called once per read. A refusal (None) is never
    kept: it may hold for one request only.
    """

    __slots__ = ("plane", "loop", "routes", "runs", "due", "__weakref__")

    def __init__(self, plane, loop):
        self.plane = plane
        self.loop = loop  # held, not looked up per pass: asyncio's running-loop check is a getpid syscall
        self.routes: dict = {}
        self.runs: dict = {}  # id(entry) -> [entry, inflight before the pass's first, timeout_us, submitted]
        self.due = False

    def _schedule(self):
        # Queued before the data plane's route schedules the pass's flush, so the gate records the pass's
        # requests before the flush runs them.
        self.due = True
        self.loop.call_soon(self._end_pass)

    def open_route(self, name: str, version: str | None, timeout_us: int):
        key = (name, version, timeout_us)
        route = self.routes.get(key, _MISS)
        if route is _MISS:
            if not self.due:
                self._schedule()
            choose = self.plane.variant_chooser(name, version, timeout_us, self.loop)
            if choose is not None:  # a deployment: its chooser is kept for the pass, each read gets a decision
                self.routes[key] = choose
                return choose()
            route = self.plane.sink_route(name, version, timeout_us, self.loop)
            # None is asked again by the pass's next read: a model may decline for one request only (a latency
            # sample due for the live monitor, which the Python path's next request of it reports).
            if route is not None:
                self.routes[key] = route
            return route
        if route.__class__ is tuple:
            return route
        return route()

    def routed(self, entry, submitted: int, inflight_before: int, timeout_us: int):
        """One read's requests went through a route: counted in flight now, recorded with the admission gate
        once for the pass (a deployment's variant books its own way, per read)."""
        if entry.cache.get("variant") is not None:
            self.plane.sink_routed(entry, submitted, inflight_before, timeout_us)
            return
        self.plane.sink_counted(entry, submitted)
        run = self.runs.get(id(entry))
        if run is None or run[2] != timeout_us:
            if run is not None:  # another deadline in the same pass: the earlier run is recorded first
                self.plane.sink_admitted(run[0], run[1], run[2], run[3])
            self.runs[id(entry)] = [entry, inflight_before, timeout_us, submitted]
        else:
            run[3] += submitted
        if not self.due:
            self._schedule()

    def _end_pass(self):
        self.due = False
        self.routes.clear()
        runs = self.runs
        if runs:
            self.runs = {}
            admitted = self.plane.sink_admitted
            for entry, inflight_before, timeout_us, submitted in runs.values():
                admitted(entry, inflight_before, timeout_us, submitted)


_pass_routes: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # DataPlane -> its _PassRoutes
_takes_ok: dict = {}  # DataPlane type -> whether its completed() takes ``ok``


def _inference_token(auth):
    """The bearer token the intake checks on each infer request (--require-token-for-inference), or None. A request
    without it, or with another, goes to the Python path, which answers 401 and counts it."""
    return auth.token if auth.require_for_inference and auth.token is not None else None


def _routes_of(plane, loop) -> _PassRoutes:
    routes = _pass_routes.get(plane)
    if routes is None or routes.loop is not loop:
        routes = _pass_routes[plane] = _PassRoutes(plane, loop)
    return routes


def _completed_takes_ok(plane) -> bool:
    kind = type(plane)
    got = _takes_ok.get(kind)
    if got is None:
        try:
            got = "ok" in inspect.signature(plane.completed).parameters
        except (TypeError, ValueError):
            got = False
        _takes_ok[kind] = got
    return got


def open_plan(entry, header: bytes):
    """The native plan of a request header for ``entry``'s model, or None when the Python path must serve it:
    ``(plan, [(input name, numpy kind, itemsize, shape, offset, nbytes)] in body order, binary bytes, [output
    names] in the answer's order, extra header lines, the Triton timeout parameter in us or 0)``. Built by the
    Python path's own decoder (``build_plan``), so what the intake takes is exactly what that path would accept;
    anything it would refuse, or any feature the native answer does not write (an id left in the header, JSON
    tensors, JSON or string outputs, shared memory, a deployment's request with a timeout), is None. A model's
    request with a timeout goes native on the route opened for that timeout (its admission bound and deadline)."""
    if shm_http.MARKER in header:
        return None
    # A deployment's variant (fastml.serving.deployments.NativeVariant): its answers carry the variant's header.
    variant = getattr(entry, "variant_route", None)
    try:
        req = decode_request(header)
        if variant is not None and entry.routing_params(req.parameters) != (None, None):
            return None  # a routing key or a pinned variant: the Python path routes it
        plan = build_plan(req, entry.cache["output_names"], entry.name)
    except Exception:  # noqa: BLE001 - the Python path decodes it again and words the refusal
        return None
    if not plan.cacheable or plan.request_id is not None or plan.json_inputs or plan.classify:
        return None
    if plan.timeout_us is not None and variant is not None:
        return None  # a deployment's request with a deadline: its route is drawn per request, the Python path's
    specs = plan.outputs
    if specs is None:
        specs = [(name, plan.all_binary) for name in entry.cache["output_names_ordered"]]
    if not all(binary for _, binary in specs):
        return None
    parts = []
    for name, dtype, shape, offset, nbytes, is_bytes in plan.binary:
        if is_bytes or dtype.byteorder == ">":
            return None
        parts.append((name, dtype.kind, dtype.itemsize, tuple(shape), offset, nbytes))
    extra = b"" if variant is None else variant[2]
    return plan, parts, plan.binary_size, [name for name, _ in specs], extra, plan.timeout_us or 0


class NativeHttpProtocol(HttpProtocol):
    """One HTTP/1.1 connection fed through the native intake (see the module docstring)."""

    __slots__ = ("intake", "outbox", "pass_routes", "py_mid", "eof_after_native", "refeed_due")

    def __init__(self, server, metrics_only: bool = False):
        super().__init__(server, metrics_only)
        self.intake = None
        self.outbox = None
        self.pass_routes = None
        self.py_mid = False  # the Python parser is inside a request: it keeps the stream until the request ends
        self.eof_after_native = False
        self.refeed_due = False

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.metrics_only or _http_intake is None:
            return
        server = self.server
        plane = server.plane
        lim = self.limits
        self.outbox = _http_intake.Outbox(
            transport.write,
            self._native_idle,
            self._native_error,
            self._native_encode,
            plane,
            server,
            _completed_takes_ok(plane),
        )
        self.pass_routes = _routes_of(plane, asyncio.get_running_loop())
        self.intake = _http_intake.Intake(
            self.outbox,
            self.pass_routes.open_route,
            open_plan,
            lim.max_pipelined,
            lim.max_body_bytes,
            self.max_headers,
            self.max_header_bytes,
            self._native_shed,
            _inference_token(server.auth),
        )

    def connection_lost(self, exc):
        super().connection_lost(exc)
        if self.outbox is not None:
            self.outbox.close()  # answers still owed close their books; nothing is written
        self.intake = None

    def data_received(self, data):
        intake = self.intake
        if intake is None or self.py_mid or self.pending or self.lingering:
            if intake is not None and intake.carried:
                data = intake.take_carry() + data  # a request begun natively continues in Python
            super().data_received(data)
            return
        self.last_tick = self.server.tick
        rest, used, paused = intake.feed(data)
        if used:
            routed = self.pass_routes.routed
            for entry, submitted, inflight_before, timeout_us in used:
                routed(entry, submitted, inflight_before, timeout_us)
        if paused:
            # The pipeline bound: the rest stays in the intake until the answers owed went out.
            self._pause_reading()
            self.outbox.want_idle(True)
        if rest is not None:
            super().data_received(rest)
        elif intake.carried and not paused:
            # A request begun here: the sweep's 408 for a slow client counts from its first byte (requests held
            # back by the pipeline bound are complete: they wait for answers, not for the client).
            if self.msg_tick < 0:
                self.msg_tick = self.server.tick
        else:
            self.msg_tick = -1

    # The Python parser's position: the intake takes the stream back only between requests.
    def on_message_begin(self):
        self.py_mid = True
        super().on_message_begin()

    def on_message_complete(self):
        self.py_mid = False
        super().on_message_complete()

    def eof_received(self):
        if self.outbox is not None and self.outbox.outstanding and not self.pending:
            # The client half-closed after requests the intake took: answer them, then close.
            self.eof_after_native = True
            self.outbox.want_idle(True)
            return True
        return super().eof_received()

    # ----- ordering with the native answers --------------------------------------------------------------
    def _respond(self, data: bytes, conn_hdr: bytes):
        outbox = self.outbox
        if outbox is not None and outbox.outstanding:
            slot = _Slot()
            slot.data = data
            slot.close = conn_hdr is _CLOSE_HDR
            self.pending.append(slot)
            outbox.want_idle(True)
            return
        super()._respond(data, conn_hdr)

    def flush(self):
        outbox = self.outbox
        if outbox is not None and outbox.outstanding and not self.closed:
            outbox.want_idle(True)  # the native answers owed go out first; then this flush runs
            return
        super().flush()

    # ----- callbacks of the native outbox (inside the engine's completion pass) ----------------------------
    def _native_idle(self, close: bool):
        """Every native answer owed went out (or the last one ended the connection: ``close``)."""
        if close:
            self.pending.clear()
            self._finish()
            return
        if self.pending:
            super().flush()
        elif self.eof_after_native:
            self._finish()
            return
        if self.intake is not None and self.intake.carried and not self.refeed_due:
            # Requests held back by the pipeline bound: parsed on the loop's next turn, not inside the engine's
            # completion pass.
            self.refeed_due = True
            asyncio.get_running_loop().call_soon(self._refeed)

    def _refeed(self):
        self.refeed_due = False
        if self.closed or self.intake is None:
            return
        self.data_received(b"")
        self._maybe_resume_reading()

    def _native_shed(self, entry, inflight: int, close: bool) -> bytes | None:
        """The 503 of a plain request the intake read with ``inflight`` requests of ``entry`` ahead of it (past the
        route's admission bound), counted as the Python path counts a shed, or None when the admission gate admits
        it (the Python path then serves it). The decision is the Python path's own, before decoding
        (``gate.sheds(inflight, None)``), and so is the answer (``shed_response``): only the parse is native."""
        gate = entry.cache.get("admission")
        if gate is None or not gate.sheds(inflight, None):
            return None
        server = self.server
        server.plane.count_failure(entry, _SHED_ERROR)
        server.count_status(503)
        return shed_response(_CLOSE_HDR if close else b"")

    def _native_error(self, exc: BaseException, close: bool) -> bytes:
        """The error answer of a natively submitted request, as the Python path words it."""
        data = error_response(http_status(exc), str(exc) or type(exc).__name__, _CLOSE_HDR if close else b"")
        self.server.count_error(data)
        return data

    def _native_encode(self, entry, plan, outputs: dict, close: bool, request_id: str | None = None):
        """``(response, pre-encoded JSON header or None, ok)`` for outputs the native answer has no header for
        yet (the first answer of each output shape) or cannot write itself (strings, strided arrays).
        ``request_id``: the id the request carried (its plan is that of its header without it); the answer
        then names it and nothing is pre-encoded."""
        variant = getattr(entry, "variant_route", None)  # a deployment's variant: named in the answer
        if request_id is not None:
            plan = copy.copy(plan)
            plan.request_id = request_id
            plan.response_headers = {}
        try:
            data = encode_infer_response(entry, plan, outputs, None, _CLOSE_HDR if close else b"", variant)
        except Exception as exc:  # a fault while encoding is ours: 500, but keep serving
            log.exception("encoding an inference response failed")
            data = error_response(
                500, f"encoding the response failed: {type(exc).__name__}: {exc}", _CLOSE_HDR if close else b""
            )
            self.server.count_error(data)
            return data, None, False
        specs = plan.outputs
        if specs is None:
            specs = [(name, plan.all_binary) for name in entry.cache["output_names_ordered"]]
        arrays = [outputs[name] for name, _ in specs]
        key = tuple([a.shape for a in arrays])
        if variant is not None:
            key = routed_header_key(variant, entry, arrays, key)
        return data, plan.response_headers.get(key), True
