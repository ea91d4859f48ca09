"""The fastml binary protocol transport: length-prefixed frames over TCP and Unix sockets (docs/protocol.md).

One :class:`BinaryProtocol` (an ``asyncio.BufferedProtocol``) per connection. Received bytes land in a
:class:`fastml.client.wire.FrameBuffer`, and each read goes to one native call (``fastml._frames.Intake``)
that walks its complete frames and submits every plain request straight into its model's batcher (views of
the frame's bytes, a native sink answering into the connection's ``Answers`` buffer), asking the data plane
once per model per read (``DataPlane.sink_route`` / ``sink_routed``). Every other frame comes back as the
parser's tuple, whose input tensors are read-only numpy views of that buffer, and takes the Python path
below (``_infer`` / ``_other``). Many requests are in flight per connection and answers go out as their
inferences complete (out of order, matched by request id): those of one completion pass in one write.

Bounds: frame size, tensor count, rank and name length are checked natively; at most ``max_inflight``
requests per connection (reading pauses at the limit and frames already received wait unparsed, so there is
no queue beyond the socket buffers); reading also pauses while the transport's write buffer is full (a
client that does not read its answers cannot grow our memory). A malformed frame is answered with an
error frame for its request id; a frame that breaks the stream (bad magic or version, oversized) is
answered with a fatal error frame and the connection is closed. Other connections never notice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import stat
from collections.abc import Callable

from fastml.client import wire
from fastml.errors import FastMLError, InvalidInput, Unavailable
from fastml.server.status import http_status
from fastml.serving.dataplane import InferRequest

log = logging.getLogger("fastml.server")

_INFER_REQUEST = wire.INFER_REQUEST
_encode_response = wire.encode_response
_encode_error = wire.encode_error


@dataclasses.dataclass
class BinaryLimits:
    """Per-connection bounds of the binary protocol.

    Attributes:
        max_frame_bytes: largest frame (its length prefix); larger closes the connection with 413.
        max_tensors: tensors (and requested outputs) per frame. max_rank: dimensions per tensor.
        max_name_bytes: model, version, tensor and output names.
        max_inflight: unanswered requests per connection before reading pauses.
        chunk_bytes: receive-buffer chunk size (frames larger than this get a buffer of their own).
        frames_per_pass: frames taken from the receive buffer per event-loop pass; the rest wait for the next
            pass. A client's whole window arrives in one read, and taken whole it is batched, run and
            answered in one write, so client and server take turns; taken in slices, the first slice's
            answers go out (and the client refills the window) while the next slices are submitted. None:
            one batch of the largest ``max_batch_size`` served when the connection opens, at least 32
            (smaller slices cost more per inference than the overlap gains; a larger one would split a batch).
    """

    max_frame_bytes: int = 64 * 1024 * 1024
    max_tensors: int = 64
    max_rank: int = 16
    max_name_bytes: int = 1024
    max_inflight: int = 128
    chunk_bytes: int = 256 * 1024
    frames_per_pass: int | None = None


_MIN_FRAMES_PER_PASS = 32


def _batch_frames(plane) -> int:
    """Frames per pass by default: the largest ``max_batch_size`` among the models served, at least 32."""
    manager = getattr(plane, "manager", None)
    sizes = [_MIN_FRAMES_PER_PASS]
    if manager is not None:
        for entry in manager.entries():
            try:
                sizes.append(int(entry.model.max_batch_size))
            except (AttributeError, TypeError, ValueError):
                continue  # a model without a batch bound leaves the default
    return max(sizes)


def _no_route(*args, **kwargs) -> None:
    """The sink route of a draining connection: none (see :meth:`BinaryProtocol.close_when_idle`)."""
    return None


class _Call:
    """One in-flight request on the general path: answers its connection when the data plane's future settles."""

    __slots__ = ("conn", "request_id", "entry")

    def __init__(self, conn: BinaryProtocol, request_id: int, entry):
        self.conn = conn
        self.request_id = request_id
        self.entry = entry  # None when the request went through DataPlane.submit (requested outputs)

    def done(self, fut: asyncio.Future) -> None:
        conn = self.conn
        rid = self.request_id
        plane = conn.plane
        try:
            if self.entry is not None:
                entry = self.entry
                outputs = plane.settle(entry, fut)
                frame = _encode_response(rid, entry.name, entry.version, outputs)
            else:
                resp = fut.result()
                frame = _encode_response(rid, resp.model_name, resp.model_version, resp.outputs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes this request's error frame
            frame = conn.error_frame(rid, exc)
        conn.finish(rid, frame)


class BinaryProtocol(asyncio.BufferedProtocol):
    """One binary-protocol connection (see the module docstring)."""

    def __init__(self, listener: BinaryListener):
        self.listener = listener
        self.plane = listener.plane
        self.limits = listener.limits
        self.parser = listener.parser
        self.buffer = wire.FrameBuffer(listener.limits.chunk_bytes)
        self.transport: asyncio.Transport | None = None
        # request id -> its _Call (general path) or its model entry (sink path: answered through self.answers)
        self.inflight: dict[int, object] = {}
        # Sink-path answers are encoded natively into this buffer by the engine's completion pass and
        # written with one transport.write per pass (see _answers_ready).
        self.answers = wire.Answers(self._answers_due, self.error_frame)
        lim = listener.limits
        # Plain requests go from the receive buffer to their model's batcher in one native call per read.
        self.intake = wire.Intake(self.answers, lim.max_frame_bytes, lim.max_tensors, lim.max_rank, lim.max_name_bytes)
        self.answers_due = False
        self.out: list[bytes] = []
        self.flush_due = False
        self.after_due = False  # _after_answers is scheduled
        self.more_due = False  # _more is scheduled: complete frames may wait in the buffer for the next pass
        self.frames_per_pass = lim.frames_per_pass or _batch_frames(self.plane)
        self.read_paused = False
        self.write_paused = False
        self.closing = False  # no more requests are parsed (fatal error, connection gone)
        self.eof = False  # the client half-closed: parse what it sent, answer it, then close
        # Drain: reading goes on (new requests are refused with Unavailable); closes once nothing is in flight.
        self.draining = False
        self._loop = asyncio.get_event_loop()
        # The data plane's route for a read's frames, told this loop (asking asyncio is a getpid syscall on 3.11).
        self._sink_route: Callable[..., object] = functools.partial(self.plane.sink_route, loop=self._loop)

    # ----- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.listener.connections.discard(self)
        self.closing = True
        self.transport = None
        if not self.inflight:
            self.answers.close()  # else once the last in-flight request is answered (_answers_ready)
        # In-flight requests still complete in the engine; their answers are dropped in finish().

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.buffer.advance(nbytes)
        self.process()

    def eof_received(self) -> bool:
        # A client may half-close after its last request: answer what it sent, then close.
        self.eof = True
        self._maybe_close()
        # TLS has no half-close (asyncio closes the transport after close_notify whatever we return, and warns).
        return self.listener.tls is None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume()

    # ----- requests -------------------------------------------------------------------------------
    def process(self) -> int:
        """Parse and dispatch received frames: one pass's slice, as many as the in-flight bound allows.

        Returns the number of frames taken. When the slice was full, the rest are taken in a later loop pass
        (:meth:`_more`); reading pauses meanwhile if more than a chunk of bytes waits unparsed.
        """
        if self.closing:
            return 0
        lim = self.limits
        room = lim.max_inflight - len(self.inflight)
        if room <= 0:
            self._pause_reading()
            return 0
        cap = min(room, self.frames_per_pass)
        items, fatal, routes = self.buffer.submit(self.intake, cap, self.inflight, self._sink_route)
        taken = len(items)
        if routes:
            routed = self.plane.sink_routed
            for entry, submitted, inflight_before, timeout_us in routes:
                taken += submitted
                routed(entry, submitted, inflight_before, timeout_us)
        for item in items:
            if item[0] == _INFER_REQUEST:
                self._infer(item)
            else:
                self._other(item)
        if fatal is not None:
            status, message, rid = fatal
            if status >= 500:  # the intake failed (a fastml bug), not the stream
                log.error("binary protocol: %s", message)
            kind = 9 if status >= 500 else 1  # InternalError / InvalidInput (wire.ERROR_KINDS)
            self._write(_encode_error(rid or 0, status, kind, message, wire.FLAG_FATAL))
            self._shut()
            return taken
        if len(self.inflight) >= lim.max_inflight:
            self._pause_reading()
        elif taken >= cap and self.transport is not None:
            # A full slice: more frames may be waiting. They are taken in the next pass, after this one's
            # batch has run and its answers are queued; unparsed bytes stay bounded by about one chunk.
            if not self.more_due:
                self.more_due = True
                self._loop.call_soon(self._more)
            if self.buffer.pending_bytes > lim.chunk_bytes:
                self._pause_reading()
        return taken

    def _more(self) -> None:
        """The next slice of frames already received (scheduled by :meth:`process`)."""
        self.more_due = False
        if self.transport is None or self.closing:
            return
        if self.eof:
            self._maybe_close()
        elif self.read_paused:
            self._maybe_resume()
        else:
            self.process()

    def _infer(self, item) -> None:
        _, rid, model, version, timeout_us, inputs, outputs = item
        inflight = self.inflight
        if rid in inflight:
            self._write(
                self.error_frame(rid, InvalidInput(f"request id {rid} is already in flight on this connection"))
            )
            return
        plane = self.plane
        try:
            if plane.draining or self.draining:
                raise Unavailable("the server is shutting down")
            if not inputs:  # as the HTTP and gRPC transports say it, once the model is known
                plane.resolve(model, version, route=False)  # NotFound first, and no routing decision counted
                raise InvalidInput("request has no inputs")
            deployments = plane.deployments
            if outputs is None and (deployments is None or model not in deployments.table):
                entry = plane.resolve(model, version)
                # Registered first: the engine holds the request from the submit on.
                inflight[rid] = entry
                try:
                    queued = plane.submit_sink(
                        entry, inputs, timeout_us or None, self.answers.sink(rid, entry.name, entry.version)
                    )
                except BaseException:
                    del inflight[rid]
                    raise
                if queued:
                    return
                del inflight[rid]
                fut = plane.submit_arrays(entry, inputs, timeout_us or None)
                call = _Call(self, rid, entry)
            else:
                # Requested outputs, or a deployment: the data plane's general path, which routes a deployment's
                # request and books it (the variant's requests, errors and latency that its canary judges, its
                # shadows); the fast path above would only take a routing decision and submit to its model.
                params = {"timeout": timeout_us} if timeout_us else {}
                fut = plane.submit(
                    InferRequest(model, inputs, model_version=version, outputs=outputs, parameters=params)
                )
                call = _Call(self, rid, None)
        except Exception as exc:  # noqa: BLE001 - refused requests are answered, never raised into asyncio
            self._write(self.error_frame(rid, exc))
            return
        inflight[rid] = call
        fut.add_done_callback(call.done)

    def _other(self, item) -> None:
        kind = item[0]
        if kind == wire.PING:
            self._write(wire.encode_control(wire.PONG, item[1]))
        elif kind == wire.PONG:
            pass
        elif kind == wire.INVALID:
            _, rid, status, message = item
            self._write(_encode_error(rid or 0, status, 1, message))
        else:
            self._write(self.error_frame(item[1], InvalidInput(f"a client may not send frames of type {kind}")))

    def error_frame(self, rid: int, exc: BaseException) -> bytes:
        """The error frame for ``exc``: the HTTP transport's status code and message, plus the error kind."""
        if not isinstance(exc, FastMLError):
            if isinstance(exc, asyncio.CancelledError):
                exc = Unavailable("the request was cancelled")
            else:
                log.error("binary protocol: internal error", exc_info=exc)
                message = f"internal error: {type(exc).__name__}: {exc}"
                return _encode_error(rid, 500, 9, message)
        return _encode_error(rid, http_status(exc), wire.error_kind(exc), str(exc) or type(exc).__name__)

    def finish(self, rid: int, frame: bytes) -> None:
        """An in-flight request is answered: write its frame and maybe resume reading.

        Runs in a general-path future's callback: resuming (which parses and submits more frames) and
        closing are left to a loop callback, so no request is submitted from within a completion pass.
        """
        self.inflight.pop(rid, None)
        if self.transport is None:
            if not self.inflight:
                self.answers.close()  # the last request of a closed connection: break the answers' cycle
            return
        self._write(frame)
        if (self.closing or self.eof or self.draining or self.read_paused) and not self.after_due:
            self.after_due = True
            self._loop.call_soon(self._after_answers)

    def _answers_due(self) -> None:
        # Called by the engine's completion pass on its first sink answer: finish the pass first.
        if not self.answers_due:
            self.answers_due = True
            self._loop.call_soon(self._answers_ready)

    def _answers_ready(self) -> None:
        """Sink-path answers of one completion pass: close their books, write their frames in one go."""
        self.answers_due = False
        data, rids = self.answers.take()
        pop = self.inflight.pop
        completed_many = self.plane.completed_many
        # A pass's answers mostly come from one model's batch: the books close once per run of one entry.
        last = None
        count = 0
        for rid in rids:
            entry = pop(rid, None)
            if entry is None:
                continue
            if entry is last:
                count += 1
                continue
            if last is not None:
                completed_many(last, count)
            last, count = entry, 1
        if last is not None:
            completed_many(last, count)
        if self.transport is None:
            if not self.inflight:
                self.answers.close()
            return
        if data is not None:
            self.out.append(data)
            self._flush()
        if self.closing or self.eof:
            self._maybe_close()
        elif self.read_paused:
            self._maybe_resume()
        if self.draining:
            self._maybe_close()

    def _after_answers(self) -> None:
        self.after_due = False
        if self.transport is None:
            return
        if self.closing or self.eof:
            self._maybe_close()
        elif self.read_paused:
            self._maybe_resume()
        if self.draining:
            self._maybe_close()

    # ----- writing and flow control ---------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.flush_due:
            self.flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        out = self.out
        if not out or self.transport is None:
            out.clear()
            return
        self.out = []
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if not self.read_paused or self.write_paused or self.transport is None or self.eof:
            return
        if len(self.inflight) >= self.limits.max_inflight:
            return
        # Frames that arrived while paused are parsed before more bytes are read.
        self.process()
        if (
            not self.closing
            and self.read_paused
            and self.transport is not None
            and len(self.inflight) < self.limits.max_inflight
            # Complete frames still waiting for their pass (not a large frame still arriving) keep reading off.
            and not (self.more_due and self.buffer.pending_bytes > self.limits.chunk_bytes)
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def _shut(self) -> None:
        """Stop reading; close after the pending writes (used for a fatal frame error)."""
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _maybe_close(self) -> None:
        if self.inflight or self.transport is None:
            return
        if self.eof and not self.closing:
            # Frames received before the half-close that waited for in-flight room or for their pass.
            full = min(self.frames_per_pass, self.limits.max_inflight)
            while self.process() >= full:
                if self.inflight or self.transport is None:
                    return
            if self.inflight or self.transport is None:
                return
        self._flush()
        self.transport.close()

    def close_when_idle(self) -> None:
        """Drain: close once the in-flight requests are answered.

        Reading goes on meanwhile and requests that arrive are answered with Unavailable: a socket closed
        with unread bytes is reset by the kernel, which drops the answers the client has not received yet.
        """
        self.draining = True
        self._sink_route = _no_route  # every request takes _infer, which refuses it
        self._maybe_close()


class BinaryListener:
    """Accepts binary-protocol connections on a TCP port and/or a Unix socket, over one data plane.

    Args:
        plane: the :class:`fastml.serving.dataplane.DataPlane` requests go to. limits: :class:`BinaryLimits`.
        tls: a :class:`fastml.server.tls.TlsConfig` for the TCP listener; None serves plain TCP.

    Attributes:
        port: the bound TCP port (after :meth:`start_tcp`). path: the Unix socket path (after :meth:`start_unix`).
    """

    def __init__(self, plane, limits: BinaryLimits | None = None, tls=None):
        self.plane = plane
        # fastml.server.tls.TlsConfig: TCP connections speak TLS (the Unix socket stays plain: it is local).
        self.tls = tls
        self.limits = limits or BinaryLimits()
        lim = self.limits
        self.parser = wire.Parser(lim.max_frame_bytes, lim.max_tensors, lim.max_rank, lim.max_name_bytes)
        self.connections: set[BinaryProtocol] = set()
        self.port: int | None = None
        self.path: str | None = None
        self._servers: list[asyncio.base_events.Server] = []

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0 = any free port); returns the bound port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        ssl_ctx = self.tls.server_context() if self.tls is not None else None
        srv = await asyncio.get_running_loop().create_server(
            lambda: BinaryProtocol(self), sock=sock, backlog=1024, ssl=ssl_ctx
        )
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        return self.port

    async def start_unix(self, path: str) -> str:
        """Listen on the Unix socket ``path`` (a stale socket file left by a dead server is replaced).

        Raises:
            InvalidInput: ``path`` exists and is not a socket (a file or directory is never replaced).
            Unavailable: another server listens there, or the socket cannot be made.
        """
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                # Only a socket can be a dead server's leftover: a regular file there (a typo in
                # --binary-socket) would be deleted and replaced.
                raise InvalidInput(f"cannot listen on {path}: it exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens there: a leftover of a server that died
            else:
                raise Unavailable(f"cannot listen on {path}: another server is listening there")
            finally:
                probe.close()
        try:
            srv = await asyncio.get_running_loop().create_unix_server(
                lambda: BinaryProtocol(self), path=path, backlog=1024
            )
        except OSError as exc:
            raise Unavailable(f"cannot listen on {path}: {exc.strerror or exc}") from None
        self._servers.append(srv)
        self.path = path
        return path

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections stay open."""
        for srv in self._servers:
            srv.close()
        self._servers.clear()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def drain(self) -> None:
        """Stop accepting and reading; every connection closes after answering its in-flight requests."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close_when_idle()

    @property
    def inflight(self) -> int:
        """Requests in flight over every binary connection."""
        return sum(len(c.inflight) for c in self.connections)

    def close(self) -> None:
        """Stop accepting and close every connection now."""
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
