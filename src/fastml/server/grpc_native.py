"""KServe v2 gRPC (``inference.GRPCInferenceService``, and ``grpc.health.v1.Health/Check``) on the server's own
event loop, HTTP/2 by libnghttp2.

grpcio's asyncio server costs as much server CPU per call as a whole inference: its completion-queue thread
wakes the event loop several times per call and every call is a task. This listener is an asyncio protocol
instead: the native session (``fastml._h2``, csrc/h2) parses each socket read into whole gRPC messages,
``ModelInfer`` goes from the message to the data plane with no task (the answer is written from the data
plane's future callback), and all answers ready in one event-loop pass leave in one write. A
``ModelStreamInfer`` stream takes the same way per request message: each is submitted as it arrives and
answered on the stream as it completes (answers may overtake each other; a failed request is answered with
``error_message`` and the stream goes on), with no task per request or per stream. The other RPCs run the same
:class:`~fastml.server.grpc_service.InferenceServicer` methods that grpcio's listener runs, so both listeners
answer alike (tests/server run one suite over both).

Bounds: a message over ``max_message_bytes`` is refused with RESOURCE_EXHAUSTED on its 5-byte prefix,
before its body is buffered; partial messages buffered on one connection are capped (beyond, the connection
ends with ENHANCE_YOUR_CALM); concurrent streams per connection are capped by HTTP/2 settings; answers leave
within the client's flow-control window, and a stream whose unread answers pass the same cap (a client that
sends requests and never reads) is reset with ENHANCE_YOUR_CALM. A call's ``grpc-timeout`` (the client's deadline) becomes its
``timeout`` parameter unless the request names one, so the data plane sheds a request that cannot be answered
in time instead of running it; on a ``ModelStreamInfer`` stream each request gets what is left of the stream's
deadline. Answers are not compressed (compressed requests, gzip or deflate, are accepted).

Python use (``fastml serve --grpc-port N`` picks this listener when ``fastml._h2`` is built)::

    listener = NativeGrpcListener(dataplane, host="127.0.0.1", port=0)
    await listener.start()          # listener.port is the bound port
    ...
    await listener.stop(grace_s=5)
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from functools import partial
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from fastml import errors
from fastml._h2 import Session, encode_infer_response, parse_infer_request
from fastml.errors import FastMLError, InvalidInput
from fastml.server import auth as auth_mod
from fastml.server.grpc_service import HealthServicer, InferenceServicer, decode_for_plane, grpc_status
from fastml.server.grpc_service import encode_infer_response as encode_infer_message
from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.tensors import NP_DTYPES, datatype_of, output_bytes
from fastml.serving.dataplane import MAX_TIMEOUT_US, InferRequest
from fastml.serving.shm import MAX_SHAPE_DIMS, shape_count

log = logging.getLogger("fastml.server.grpc")

PATH_PREFIX = "/inference.GRPCInferenceService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# path -> (method name, request message class, whether the client streams: only ModelStreamInfer)
METHODS: dict[str, tuple[str, Any, bool]] = {
    PATH_PREFIX + m.name: (m.name, getattr(pb, m.input_type.name), m.client_streaming) for m in _SERVICE.methods
}
METHODS[HEALTH_CHECK] = ("Check", health_pb2.HealthCheckRequest, False)
_INFER_REQUEST = pb.ModelInferRequest
_OK = 0
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_ENHANCE_YOUR_CALM = 0xB  # HTTP/2 error code: the peer makes the server hold too much
# ModelStreamInferResponse's field 2 (infer_response), length-delimited: what precedes a ModelInferResponse
# message to make it a stream's answer.
_STREAM_ANSWER_TAG = b"\x12"
# grpc-timeout units (the gRPC over HTTP/2 spec) in microseconds
_TIMEOUT_UNITS_US = {"H": 3_600_000_000, "M": 60_000_000, "S": 1_000_000, "m": 1_000, "u": 1, "n": 0.001}


def grpc_timeout_us(value: str) -> int | None:
    """A grpc-timeout header ("100m", "5S", ...) in whole microseconds (at least 1, at most the data plane's
    longest timeout), or None when it is malformed."""
    digits, unit = value[:-1], value[-1:]
    scale = _TIMEOUT_UNITS_US.get(unit)
    if scale is None or not (1 <= len(digits) <= 8) or not digits.isascii() or not digits.isdigit():
        return None
    return min(max(1, math.ceil(int(digits) * scale)), MAX_TIMEOUT_US)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_outputs(entry, request_id: str, outputs: dict, names: list[str]) -> bytes:
    """The ModelInferResponse of a model's answer (natively encoded)."""
    return encode_infer_response(
        entry.name, str(entry.version or ""), request_id, (), [_output(n, outputs[n]) for n in names]
    )


def _encode_response(resp) -> bytes:
    """The ModelInferResponse of a data plane InferResponse (a deployment's answer names its variant)."""
    return encode_infer_response(
        resp.model_name,
        str(resp.model_version or ""),
        resp.id or "",
        list(resp.parameters.items()) if resp.parameters else (),
        [_output(name, arr) for name, arr in resp.outputs.items()],
    )


def _answer(message: bytes) -> bytes:
    """A ModelInferResponse message as a ModelStreamInferResponse answering a stream request."""
    return _STREAM_ANSWER_TAG + _varint(len(message)) + message


def _stream_error(exc: BaseException, model: str, request_id: str) -> bytes:
    """A ModelStreamInferResponse that answers one stream request with ``exc`` (the stream goes on)."""
    if isinstance(exc, asyncio.CancelledError):
        exc = errors.Unavailable("the request was cancelled")
    elif not isinstance(exc, FastMLError):
        log.error("internal error in a gRPC stream request", exc_info=exc)
    err = pb.ModelStreamInferResponse(error_message=str(exc) or type(exc).__name__)
    err.infer_response.model_name = model
    err.infer_response.id = request_id
    return err.SerializeToString()


def _output(name: str, arr: np.ndarray) -> tuple:
    """One output for fastml._h2.encode_infer_response: (name, datatype, shape, buffer)."""
    datatype = datatype_of(arr)
    if datatype == "BYTES" or not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
        return name, datatype, arr.shape, output_bytes(arr, datatype)
    return name, datatype, arr.shape, arr  # its buffer goes into the message as it is


class _Abort(Exception):
    """What ``context.abort`` raises inside a servicer method: the call ends with this status."""

    def __init__(self, code: int, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` that InferenceServicer uses."""

    __slots__ = ()

    async def abort(self, code: grpc.StatusCode, details: str = ""):
        raise _Abort(code.value[0], details)


_CONTEXT = _Context()


class _Call:
    """One stream's state on the Python side, from its headers until it is finished."""

    __slots__ = (
        "future",
        "message",
        "method",
        "path",
        "task",
        "encoding",
        "timeout_us",
        "stream",
        "inflight",
        "closing",
        "deadline",
    )

    def __init__(self, path: str, method: str, encoding: str):
        self.path = path
        self.method = method
        self.encoding = encoding
        self.message: bytes | None = None  # a unary call's request
        self.task: asyncio.Task | None = None
        self.future: asyncio.Future | None = None
        self.timeout_us: int | None = None  # from grpc-timeout: the request's deadline unless it names a timeout
        self.stream = False  # ModelStreamInfer: each message is a request, answered on the stream
        self.inflight = 0  # a stream's requests submitted and not answered yet
        self.closing = False  # a stream the client has half-closed: it ends once nothing is in flight
        self.deadline = 0.0  # a stream's deadline on the loop's clock (with timeout_us)


class GrpcConnection(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, gRPC answers out."""

    def __init__(self, listener: NativeGrpcListener):
        self.listener = listener
        self.plane = listener.dataplane
        self.servicer = listener.servicer
        self.shm = listener.servicer.shm
        self.max_message_bytes = listener.max_message_bytes
        self.session = Session(listener.max_message_bytes, listener.max_buffered_bytes, listener.max_concurrent_streams)
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        self._write_due = False
        self._loop = asyncio.get_running_loop()

    # ----- transport ------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.listener.connections.add(self)
        self._write()  # the server's SETTINGS

    def connection_lost(self, exc) -> None:
        self.listener.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            self._cancel(call)

    def data_received(self, data: bytes) -> None:
        for ev in self.session.feed(data):
            kind = ev[0]
            if kind == 5:
                log.info("gRPC connection closed: HTTP/2 protocol error (%s)", ev[2])
                self._write()
                if self.transport is not None:
                    self.transport.close()
                return
            try:
                self._event(kind, ev)
            except Exception as exc:  # noqa: BLE001 - a fastml bug: that call ends INTERNAL, the connection goes on
                self._fail(ev[1], exc)
        self._write()

    def _event(self, kind: int, ev: tuple) -> None:
        if kind == 6:
            self._whole(ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], ev[7], ev[8])
        elif kind == 1:
            self._message(ev[1], ev[2], ev[3])
        elif kind == 0:
            self._open(ev[1], ev[2], ev[3], ev[4], ev[5], ev[6])
        elif kind == 2:
            self._half_close(ev[1], ev[2])
        elif kind == 3:
            call = self.calls.pop(ev[1], None)
            if call is not None:
                self._cancel(call)
        else:  # 4
            self._finish(
                ev[1],
                _RESOURCE_EXHAUSTED,
                f"request message of {ev[2]} bytes is over the limit of {self.max_message_bytes} bytes",
            )

    def _write(self) -> None:
        self._write_due = False
        out = self.session.output()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if out:
            transport.write(out)
        if self.session.wants_close:
            transport.close()

    def _schedule_write(self) -> None:
        # Answers that complete in one event-loop pass (a batch) leave in one write.
        if not self._write_due:
            self._write_due = True
            self._loop.call_soon(self._write)

    def shutdown(self) -> None:
        """GOAWAY: the client opens no new streams here; those in flight are answered."""
        self.session.shutdown()
        self._write()

    # ----- streams --------------------------------------------------------------------------------
    def _open(
        self, sid: int, path: str, authorization: str | None, content_type: str, encoding: str, timeout: str | None
    ) -> None:
        if not content_type.startswith("application/grpc"):
            self.session.finish(sid, _INTERNAL, f"content-type {content_type!r} is not application/grpc", 415)
            return
        spec = METHODS.get(path)
        if spec is None:
            self.session.finish(sid, _UNIMPLEMENTED, f"unknown method {path!r}")
            return
        if encoding not in ("", "identity", "gzip", "deflate"):
            self.session.finish(sid, _UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported (gzip, deflate)")
            return
        name = spec[0]
        refusal = auth_mod.grpc_refusal(self.listener.auth, name, authorization)
        if refusal is not None:
            self.session.finish(sid, grpc_status(refusal).value[0], str(refusal))
            return
        timeout_us = None
        if timeout is not None:
            timeout_us = grpc_timeout_us(timeout)
            if timeout_us is None:
                self.session.finish(
                    sid, _INVALID_ARGUMENT, f"grpc-timeout {timeout!r} is not 1 to 8 digits and a unit (H M S m u n)"
                )
                return
        call = _Call(path, name, encoding)
        call.timeout_us = timeout_us
        self.calls[sid] = call
        if spec[2]:  # the client streams (ModelStreamInfer)
            call.stream = True
            if timeout_us is not None:
                call.deadline = self._loop.time() + timeout_us / 1e6

    def _whole(self, sid, path, authorization, content_type, encoding, timeout, payload: bytes, compressed) -> None:
        """Headers, one message and the end of a stream, read at once (the usual unary call)."""
        self._open(sid, path, authorization, content_type, encoding, timeout)
        call = self.calls.get(sid)
        if call is None:
            return  # refused at its headers
        if compressed or call.stream or call.method != "ModelInfer":
            self._message(sid, payload, compressed)
            self._half_close(sid, 0)
            return
        self._infer(sid, call, payload)

    def _message(self, sid: int, payload: bytes, compressed: bool) -> None:
        call = self.calls.get(sid)
        if call is None:
            return  # a stream already answered (refused) or reset
        if compressed:
            try:
                payload = self._decompress(payload, call.encoding)
            except FastMLError as exc:
                self._fail(sid, exc)
                return
        if call.stream:
            self._stream_request(sid, call, payload)
            return
        if call.message is not None:
            self._fail(sid, InvalidInput(f"{call.method} takes one request message; the stream sent more"))
            return
        call.message = payload

    def _half_close(self, sid: int, truncated: int) -> None:
        call = self.calls.get(sid)
        if call is None:
            return
        if truncated:
            self._fail(sid, InvalidInput(f"the stream ended inside a message ({truncated} of its bytes received)"))
            return
        if call.stream:
            call.closing = True
            if not call.inflight:
                self._finish(sid, _OK, "")
            return
        if call.message is None:
            self._fail(sid, InvalidInput(f"{call.method} needs a request message; the stream sent none"))
            return
        if call.method == "ModelInfer":
            payload, call.message = call.message, None
            self._infer(sid, call, payload)
            return
        try:
            request = METHODS[call.path][1].FromString(call.message)
        except DecodeError as exc:
            self._fail(sid, InvalidInput(f"{call.method} request does not parse: {exc}"))
            return
        call.task = self._loop.create_task(self._unary(sid, call.method, request))

    def _decompress(self, payload: bytes, encoding: str) -> bytes:
        if encoding not in ("gzip", "deflate"):
            raise InvalidInput("a compressed message arrived without grpc-encoding gzip or deflate")
        d = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(payload, self.max_message_bytes + 1)  # never inflate past the limit
        except zlib.error as exc:
            raise InvalidInput(f"the {encoding} message does not decompress: {exc}") from None
        if len(out) > self.max_message_bytes or d.unconsumed_tail:
            raise InvalidInput(f"the {encoding} message inflates past the limit of {self.max_message_bytes} bytes")
        return out

    # ----- ModelInfer: no task, the data plane's future answers -----------------------------------
    def _infer(self, sid: int, call: _Call, payload: bytes) -> None:
        plain = parse_infer_request(payload)
        try:
            submitted = None if plain is None else self._submit_plain(plain, payload, call.timeout_us)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in gRPC's format
            self._fail(sid, exc)
            return
        if submitted is None:
            self._infer_general(sid, call, payload)
            return
        fut, entry, names = submitted
        if entry is None:
            call.future = fut
            fut.add_done_callback(partial(self._plain_done, sid))
            return
        # No call.future: the engine's future is settled by _arrays_done even if the client goes meanwhile.
        fut.add_done_callback(partial(self._arrays_done, sid, entry, names, plain[2]))

    def _submit_plain(self, plain: tuple, payload: bytes, timeout_us: int | None):
        """Submit a plain request (fastml._h2.parse_infer_request: raw tensors, parameters, outputs by name),
        read natively with its inputs as views of the message's bytes; its answer is encoded natively too. The
        rest (shared memory, typed contents, BYTES) is read by protobuf's runtime on the general path.

        Returns:
            None when the general path must read it (a datatype it does not map, an input named twice; that path
            says what is wrong); else ``(future, entry, output names)``: for a deployment, entry and names are
            None and the future resolves to an InferResponse naming the variant (DataPlane.submit); for a model,
            the engine's future, which ``plane.settle(entry, fut)`` reads exactly once.

        Raises:
            FastMLError: refused by the data plane (unknown model, bad shape, overload, ...).
        """
        model, version, request_id, tensors, params, outputs = plain
        inputs = {}
        for name, datatype, shape, offset, count in tensors:
            dtype = NP_DTYPES.get(datatype)
            if dtype is None or name in inputs:
                return None
            if count == 0 or len(shape) > MAX_SHAPE_DIMS:
                # The parser checks a shape's product only without a zero dimension: [0, 2**62] or a rank numpy
                # cannot build would fail in reshape as an internal error. Refused by name, as on the other paths.
                shape_count(shape, f"input '{name}'")
            inputs[name] = np.frombuffer(payload, dtype, count, offset).reshape(shape)
        plane = self.plane
        deployments = plane.deployments
        parameters = dict(params) if params else {}
        if timeout_us is not None and "timeout" not in parameters:
            parameters["timeout"] = timeout_us
        if deployments is not None and model in deployments.table:  # routed: DataPlane.submit names the variant
            request = InferRequest(
                model,
                inputs,
                model_version=version or None,
                id=request_id or None,
                outputs=list(outputs) if outputs else None,
                parameters=parameters,
            )
            return plane.submit(request), None, None
        entry = plane.resolve(model, version or None)
        names, timeout_us = plane.request_terms(entry, list(outputs) if outputs else None, parameters)
        return plane.submit_arrays(entry, inputs, timeout_us, request_id or None), entry, names

    def _arrays_done(self, sid: int, entry, names: list[str], request_id: str, fut: asyncio.Future) -> None:
        gone = self.calls.pop(sid, None) is None
        try:
            outputs = self.plane.settle(entry, fut)  # exactly once, whether or not the client is still there
            if gone:
                return
            message = _encode_outputs(entry, request_id, outputs, names)
        except BaseException as exc:  # noqa: BLE001 - the engine's error is this call's status
            if gone:
                return
            if isinstance(exc, asyncio.CancelledError):
                exc = errors.Unavailable("the request was cancelled")
            self._answer_error(sid, exc)
        else:
            self._reply(sid, message)
        self._schedule_write()

    def _plain_done(self, sid: int, fut: asyncio.Future) -> None:
        if self.calls.pop(sid, None) is None or fut.cancelled():
            return  # the client reset the stream or went
        try:
            message = _encode_response(fut.result())
        except Exception as exc:  # noqa: BLE001 - the engine's error is this call's status
            self._answer_error(sid, exc)
        else:
            self._reply(sid, message)
        self._schedule_write()

    def _infer_general(self, sid: int, call: _Call, payload: bytes) -> None:
        try:
            fut, out_shm = self._submit_general(_INFER_REQUEST.FromString(payload), call.timeout_us)
        except DecodeError as exc:
            self._fail(sid, InvalidInput(f"ModelInferRequest does not parse: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - every failure is answered in gRPC's format
            self._fail(sid, exc)
            return
        call.future = fut
        fut.add_done_callback(partial(self._infer_done, sid, out_shm))

    def _submit_general(self, request, timeout_us: int | None) -> tuple[asyncio.Future, dict | None]:
        """Submit a parsed ModelInferRequest (protobuf's runtime read it): ``(the data plane's future, the
        outputs to write into shared memory)``. ``timeout_us`` (the call's deadline) is the request's timeout
        unless it names one.

        Raises:
            FastMLError: the request is refused.
        """
        req, out_shm = decode_for_plane(self.plane, request, self.shm)
        if timeout_us is not None and "timeout" not in req.parameters:
            req.parameters["timeout"] = timeout_us
        return self.plane.submit(req), out_shm

    def _infer_done(self, sid: int, out_shm, fut: asyncio.Future) -> None:
        if self.calls.pop(sid, None) is None or fut.cancelled():
            return  # the client reset the stream or went
        try:
            data = encode_infer_message(fut.result(), self.shm, out_shm).SerializeToString()
        except Exception as exc:  # noqa: BLE001
            self._answer_error(sid, exc)
        else:
            self._reply(sid, data)
        self._schedule_write()

    # ----- ModelStreamInfer: every message a request, answered on the stream --------------------------
    def _stream_request(self, sid: int, call: _Call, payload: bytes) -> None:
        """One request message of a stream: submitted now (a plain one as ``_infer`` submits it), answered on
        the stream by its future's callback; a refused request is answered with its error at once."""
        plain = parse_infer_request(payload)
        if plain is None:
            self._stream_general(sid, call, payload)
            return
        call.inflight += 1
        try:
            submitted = self._submit_plain(
                plain, payload, None if call.timeout_us is None else self._stream_timeout_us(call)
            )
        except Exception as exc:  # noqa: BLE001 - answered on the stream in its error_message
            self._stream_answer(sid, call, _stream_error(exc, plain[0], plain[2]), plain[0], plain[2])
            return
        if submitted is None:
            call.inflight -= 1
            self._stream_general(sid, call, payload)
            return
        fut, entry, names = submitted
        if entry is None:
            fut.add_done_callback(partial(self._stream_plain_done, sid, call, plain[0], plain[2]))
        else:
            fut.add_done_callback(partial(self._stream_arrays_done, sid, call, entry, names, plain[0], plain[2]))

    def _stream_timeout_us(self, call: _Call) -> int:
        """What is left of a stream's deadline, in microseconds (at least 1: a request past it is shed)."""
        return max(1, int((call.deadline - self._loop.time()) * 1e6))

    def _stream_general(self, sid: int, call: _Call, payload: bytes) -> None:
        """A stream request that is not plain (shared memory, typed contents, BYTES): protobuf's runtime reads it.
        A message that does not parse ends the stream (INVALID_ARGUMENT): what follows it cannot be trusted."""
        try:
            request = _INFER_REQUEST.FromString(payload)
        except DecodeError as exc:
            self._fail(sid, InvalidInput(f"ModelInferRequest does not parse: {exc}"))
            return
        call.inflight += 1
        try:
            fut, out_shm = self._submit_general(
                request, None if call.timeout_us is None else self._stream_timeout_us(call)
            )
        except Exception as exc:  # noqa: BLE001 - answered on the stream in its error_message
            self._stream_answer(
                sid, call, _stream_error(exc, request.model_name, request.id), request.model_name, request.id
            )
            return
        fut.add_done_callback(partial(self._stream_general_done, sid, call, out_shm, request.model_name, request.id))

    def _stream_arrays_done(self, sid, call: _Call, entry, names: list[str], model: str, request_id: str, fut) -> None:
        try:
            outputs = self.plane.settle(entry, fut)  # exactly once, whether or not the client is still there
            if self.calls.get(sid) is not call:
                data = None
            else:
                data = _answer(_encode_outputs(entry, request_id, outputs, names))
        except BaseException as exc:  # noqa: BLE001 - the engine's error is this request's error_message
            data = _stream_error(exc, model, request_id)
        self._stream_answer(sid, call, data, model, request_id)

    def _stream_plain_done(self, sid, call: _Call, model: str, request_id: str, fut: asyncio.Future) -> None:
        try:
            data = _answer(_encode_response(fut.result()))
        except BaseException as exc:  # noqa: BLE001 - the engine's error is this request's error_message
            data = _stream_error(exc, model, request_id)
        self._stream_answer(sid, call, data, model, request_id)

    def _stream_general_done(self, sid, call: _Call, out_shm, model: str, request_id: str, fut) -> None:
        try:
            data = _answer(encode_infer_message(fut.result(), self.shm, out_shm).SerializeToString())
        except BaseException as exc:  # noqa: BLE001 - the engine's error is this request's error_message
            data = _stream_error(exc, model, request_id)
        self._stream_answer(sid, call, data, model, request_id)

    def _stream_answer(self, sid: int, call: _Call, data: bytes | None, model: str, request_id: str) -> None:
        """One stream request (``model``, ``request_id``) is answered (``data``: its ModelStreamInferResponse, None
        when the stream is gone); a half-closed stream with nothing left in flight ends OK."""
        call.inflight -= 1
        if self.calls.get(sid) is not call:
            return  # the client reset the stream, or it failed
        if data is not None:
            if len(data) > self.max_message_bytes:
                data = _stream_error(FastMLError(self._too_large(len(data))), model, request_id)
            self.session.send_message(sid, data)
            if self.session.unsent(sid) > self.listener.max_buffered_bytes:
                # The client sends requests but does not read the answers (its flow-control window holds them):
                # trailers could not reach it either, so the stream is reset and its answers freed.
                log.info("gRPC stream %d reset: %d answer bytes the client has not read", sid, self.session.unsent(sid))
                self.calls.pop(sid, None)
                self.session.reset(sid, _ENHANCE_YOUR_CALM)
                self._schedule_write()
                return
        if call.closing and not call.inflight:
            self._finish(sid, _OK, "")
        self._schedule_write()

    # ----- the other RPCs: InferenceServicer's methods ---------------------------------------------
    async def _unary(self, sid: int, method: str, request) -> None:
        try:
            owner = self.listener.health if method == "Check" else self.servicer
            response = await getattr(owner, method)(request, _CONTEXT)
            data = response.SerializeToString()
        except _Abort as abort:
            self._finish(sid, abort.code, abort.details)
        except Exception as exc:  # noqa: BLE001
            self._fail(sid, exc)
        else:
            if self.calls.pop(sid, None) is not None:
                self._reply(sid, data)
        self._schedule_write()

    # ----- answers --------------------------------------------------------------------------------
    def _reply(self, sid: int, data: bytes) -> None:
        if len(data) > self.max_message_bytes:
            self.session.finish(sid, _RESOURCE_EXHAUSTED, self._too_large(len(data)))
        else:
            self.session.reply(sid, data)

    def _too_large(self, nbytes: int) -> str:
        return f"response message of {nbytes} bytes is over the limit of {self.max_message_bytes} bytes"

    def _finish(self, sid: int, code: int, message: str) -> None:
        call = self.calls.pop(sid, None)
        if call is not None:
            self._cancel(call)
        self.session.finish(sid, code, message)

    def _fail(self, sid: int, exc: BaseException) -> None:
        call = self.calls.pop(sid, None)
        if call is not None:
            self._cancel(call)
        self._answer_error(sid, exc)

    def _answer_error(self, sid: int, exc: BaseException) -> None:
        if isinstance(exc, FastMLError):
            self.session.finish(sid, grpc_status(exc).value[0], str(exc) or type(exc).__name__)
        else:
            log.error("internal error in a gRPC call", exc_info=exc)
            self.session.finish(sid, _INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    @staticmethod
    def _cancel(call: _Call) -> None:
        if call.future is not None and not call.future.done():
            call.future.cancel()
        if call.task is not None and not call.task.done() and call.task is not asyncio.current_task():
            call.task.cancel()


class NativeGrpcListener:
    """The gRPC listener of a server process, on the event loop (see the module docstring).

    Args:
        dataplane: the process's DataPlane. host/port: bind address (port 0 picks a free port).
        max_message_bytes: largest request or response message (beyond: RESOURCE_EXHAUSTED).
        reuse_port: bind with SO_REUSEPORT (several worker processes on one port).
        tls: a :class:`fastml.server.tls.TlsConfig` to serve over TLS (ALPN h2); None: plain.
        max_concurrent_streams: HTTP/2 streams one connection may have open.
    """

    def __init__(
        self,
        dataplane,
        host: str = "127.0.0.1",
        port: int = 8001,
        max_message_bytes: int = 64 * 1024 * 1024,
        reuse_port: bool = False,
        tls=None,
        max_concurrent_streams: int = 1024,
    ):
        self.dataplane = dataplane
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        # Partial messages one connection may hold: two of the largest, or 64 MiB of smaller ones in flight.
        self.max_buffered_bytes = max(2 * max_message_bytes, 64 * 1024 * 1024)
        self.max_concurrent_streams = max_concurrent_streams
        self.reuse_port = reuse_port
        self.tls = tls
        self.servicer = InferenceServicer(dataplane, not reuse_port)
        self.health = HealthServicer(dataplane)
        self.auth = auth_mod.of_plane(dataplane)
        self.connections: set[GrpcConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Bind and start serving; returns (and stores in ``port``) the bound port.

        Raises:
            fastml.errors.Unavailable: the address cannot be bound.
        """
        ssl_ctx = None
        if self.tls is not None:
            ssl_ctx = self.tls.server_context()
            ssl_ctx.set_alpn_protocols(["h2"])  # gRPC clients insist on h2 by ALPN
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: GrpcConnection(self),
                self.host,
                self.port,
                reuse_port=self.reuse_port or None,
                backlog=1024,
                ssl=ssl_ctx,
            )
        except OSError as exc:
            raise errors.Unavailable(f"cannot listen for gRPC on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting; in-flight calls get ``grace_s`` seconds to finish, then connections close."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        for conn in list(self.connections):
            conn.shutdown()
        deadline = asyncio.get_running_loop().time() + (grace_s or 0)
        while any(c.calls for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn._write()
                conn.transport.close()


__all__ = ["METHODS", "GrpcConnection", "NativeGrpcListener"]
