"""KServe v2 gRPC (Triton's ``inference.GRPCInferenceService``, and ``grpc.health.v1.Health``) on grpcio's
asyncio server.

A thin adapter over :class:`fastml.serving.dataplane.DataPlane`: each RPC decodes its protobuf message into
the data plane's plain types (``InferRequest``, names, dicts) and encodes the answer back; validation,
batching, statistics and logging happen in the data plane, once for every transport. Tensors arrive as
``raw_input_contents`` (what tritonclient and perf_analyzer send: zero-copy numpy views over the message's
bytes), typed ``contents``, or a registered system shared-memory region; outputs go back as
``raw_output_contents`` or into a region.

``fastml serve --grpc-port N`` serves with this listener under ``FASTML_GRPC_IMPL=grpcio`` or where
``fastml._h2`` is not built; otherwise with :mod:`fastml.server.grpc_native`, which runs the same servicer
methods for every RPC but the plain ``ModelInfer``. Python use::

    listener = GrpcListener(dataplane, host="127.0.0.1", port=0)
    await listener.start()          # listener.port is the bound port
    ...
    await listener.stop(grace_s=5)
"""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastml import errors
from fastml.errors import FastMLError, InvalidInput, NotFound
from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc
from fastml.server.tensors import NP_DTYPES, datatype_of, decode_bytes_tensor, output_bytes
from fastml.serving import shm as shm_params
from fastml.serving.classification import requested_count
from fastml.serving.dataplane import MAX_TIMEOUT_US, InferRequest
from fastml.serving.shm import SharedMemoryRegistry

log = logging.getLogger("fastml.server.grpc")

# THE one table from fastml.errors classes to gRPC status codes (Triton's choices: a full queue or an
# expired request timeout is UNAVAILABLE, a duplicate shared-memory region ALREADY_EXISTS).
GRPC_STATUS: dict[type[FastMLError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Conflict: grpc.StatusCode.ALREADY_EXISTS,
    errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.IntegrityError: grpc.StatusCode.INTERNAL,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.FastMLError: grpc.StatusCode.INTERNAL,
}


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    """gRPC status for an exception: the entry of its nearest class in GRPC_STATUS, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = GRPC_STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


# datatype -> (InferTensorContents field, numpy dtype the field's values are read as) for typed contents.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENT_FIELDS = tuple(dict.fromkeys(_CONTENTS.values()))
_NO_MODEL = "(no model)"


def _param_value(p):
    """The Python value of an InferParameter / ModelRepositoryParameter (None when unset)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(pmap) -> dict:
    return {k: _param_value(v) for k, v in pmap.items()} if pmap else {}


def _set_param(pmap, key: str, value) -> None:
    p = pmap[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, (int, np.integer)):
        p.int64_param = int(value)
    elif isinstance(value, (float, np.floating)):
        p.double_param = float(value)
    else:
        p.string_param = str(value)


_count = shm_params.shape_count


def _typed_input(tensor, datatype: str, shape: tuple, count: int, where: str) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents")
    for other in _CONTENT_FIELDS:
        # Triton refuses values in a field of another type; reading only the datatype's own field would
        # silently drop them.
        if other != field and len(getattr(tensor.contents, other)):
            raise InvalidInput(
                f"{where}: unexpected explicit tensor data in contents.{other}; a {datatype} tensor's values go "
                f"in contents.{field}"
            )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {count} elements, contents.{field} has {len(values)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, item in enumerate(values):
            try:
                out[i] = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{where}: BYTES element {i} is not UTF-8 text ({exc.reason})") from None
        return out.reshape(shape)
    dtype = NP_DTYPES[datatype]
    arr = np.array(
        values, dtype=np.result_type(dtype, np.int64) if field == "int_contents" or field == "uint_contents" else dtype
    )
    if arr.dtype != dtype:
        narrow = arr.astype(dtype)
        if not np.array_equal(narrow, arr):
            raise InvalidInput(f"{where}: contents.{field} holds values outside the range of {datatype}")
        arr = narrow
    return arr.reshape(shape)


def decode_infer_request(msg: pb.ModelInferRequest, shm) -> tuple[InferRequest, dict | None]:
    """A data-plane InferRequest from a ModelInferRequest (inputs from raw contents, typed contents or
    shared memory; every declared size checked against the bytes present before any array is built), and
    the requested outputs that go into shared memory (``{name: (region, offset, byte_size, Region)}`` or None;
    the Region found now, which the answer is written to).

    Raises:
        InvalidInput: a malformed request.
    """
    raw = msg.raw_input_contents
    n_raw = len(raw)
    raw_index = 0
    inputs: dict[str, np.ndarray] = {}
    if not msg.inputs:
        raise InvalidInput("request has no inputs")
    for tensor in msg.inputs:
        name = tensor.name
        where = f"input '{name}'"
        if name in inputs:
            raise InvalidInput(f"{where} appears twice")
        datatype = tensor.datatype
        dtype = NP_DTYPES.get(datatype)
        if dtype is None:
            raise InvalidInput(f"{where}: unknown datatype {datatype!r}; known: {', '.join(NP_DTYPES)}")
        shape = tuple(tensor.shape)
        count = _count(shape, where)
        region = shm_params.tensor_params(_params(tensor.parameters)) if tensor.parameters else None
        if n_raw and tensor.HasField("contents"):
            # Triton refuses it: with raw_input_contents present, typed contents would be silently dropped (or
            # the raw entries would shift onto the wrong inputs).
            raise InvalidInput(
                f"contents field must not be specified when using raw_input_contents for '{name}' "
                f"for model '{msg.model_name}'"
            )
        if region is not None:
            if tensor.HasField("contents"):
                # Triton refuses it too: the contents would be silently dropped for the region's bytes.
                raise InvalidInput(
                    f"unexpected 'content' provided when using shared memory for input tensor '{name}' "
                    f"for model '{msg.model_name}'"
                )
            inputs[name] = shm.input_view(region[0], region[1], region[2], dtype, shape, where)
        elif n_raw:
            # Triton's rule: raw_input_contents holds one entry per input that is not in shared memory.
            if raw_index >= n_raw:
                raise InvalidInput(f"{where}: raw_input_contents has {n_raw} entries, fewer than the inputs sent in it")
            data = raw[raw_index]
            raw_index += 1
            if datatype == "BYTES":
                if count * 4 > len(data):  # every element has a 4-byte length: refuse before allocating
                    raise InvalidInput(
                        f"{where}: shape {list(shape)} needs {count} BYTES elements, raw_input_contents holds {len(data)} bytes"
                    )
                inputs[name] = decode_bytes_tensor(data, count, where).reshape(shape)
            else:
                if len(data) != count * dtype.itemsize:
                    raise InvalidInput(
                        f"{where}: raw_input_contents holds {len(data)} bytes, shape {list(shape)} of {datatype} "
                        f"needs {count * dtype.itemsize}"
                    )
                inputs[name] = np.frombuffer(data, dtype, count).reshape(shape)
        else:
            inputs[name] = _typed_input(tensor, datatype, shape, count, where)
    if raw_index != n_raw:
        raise InvalidInput(f"raw_input_contents has {n_raw} entries for {raw_index} inputs sent in it")
    outputs = [o.name for o in msg.outputs] if msg.outputs else None
    out_shm = None
    classify = None
    if msg.outputs:
        for o in msg.outputs:
            p = _params(o.parameters)
            region = shm_params.tensor_params(p)
            classes = requested_count(p, o.name, region is not None)
            if classes is not None:
                classify = classify or {}
                classify[o.name] = classes
            if region is not None:
                # The region found now is the one the answer goes to: its name may be unregistered and registered
                # again for another object while the request runs.
                held = shm.check_window(region[0], region[1], region[2], f"output '{o.name}'")
                if out_shm is None:
                    out_shm = {}
                out_shm[o.name] = (*region, held)
    req = InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=_params(msg.parameters),
        classify=classify,
    )
    return req, out_shm


def decode_for_plane(plane, msg: pb.ModelInferRequest, shm) -> tuple[InferRequest, dict | None]:
    """:func:`decode_infer_request`, with a refused request answered and counted as HTTP answers and counts it:
    an unknown or unloaded model (or version) is NOT_FOUND / UNAVAILABLE whatever else is wrong with the request,
    and a malformed request to a served model is a failure in that model's statistics.

    Raises:
        NotFound / Unavailable: the model is not served. InvalidInput: a malformed request.
    """
    try:
        return decode_infer_request(msg, shm)
    except InvalidInput as exc:
        plane.count_refused(msg.model_name, msg.model_version or None, exc)  # raises NotFound / Unavailable first
        raise


def encode_infer_response(resp, shm, out_shm: dict | None) -> pb.ModelInferResponse:
    """A ModelInferResponse from a data-plane InferResponse: raw_output_contents in output order, or the
    output written into its shared-memory region (an empty raw entry then keeps tritonclient's by-position
    indexing of raw_output_contents aligned)."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=str(resp.model_version or ""))
    if resp.id:
        msg.id = resp.id
    if resp.parameters:
        for k, v in resp.parameters.items():
            _set_param(msg.parameters, k, v)
    raw = msg.raw_output_contents
    for name, arr in resp.outputs.items():
        dt = datatype_of(arr)
        out = msg.outputs.add(name=name, datatype=dt, shape=arr.shape)
        data = output_bytes(arr, dt)
        region = out_shm.get(name) if out_shm else None
        if region is not None:
            n = shm.write_region(region[3], region[1], region[2], data, f"output '{name}'")
            _set_param(out.parameters, shm_params.REGION_PARAM, region[0])
            _set_param(out.parameters, shm_params.BYTE_SIZE_PARAM, n)
            if region[1]:
                _set_param(out.parameters, shm_params.OFFSET_PARAM, region[1])
            raw.append(b"")
        else:
            raw.append(data)
    return msg


def _deadline_us(context) -> int | None:
    """What is left of a call's deadline (the client's ``grpc-timeout``) in whole microseconds, at least 1 and at
    most the data plane's longest timeout; None when the call has none. It becomes the request's ``timeout``
    parameter unless the request names one, as on the native listener, so the data plane sheds a request that
    cannot be answered in time instead of running it."""
    remaining = getattr(context, "time_remaining", None)
    remaining = remaining() if remaining is not None else None
    if remaining is None:
        return None
    return min(max(1, math.ceil(remaining * 1e6)), MAX_TIMEOUT_US)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of ``inference.GRPCInferenceService`` over one data plane."""

    def __init__(self, dataplane, single_process: bool = True):
        self.dataplane = dataplane
        self.single_process = single_process
        if dataplane.shm is None:
            dataplane.shm = SharedMemoryRegistry()
        self.shm = dataplane.shm

    async def _abort(self, context, exc: BaseException):
        if not isinstance(exc, FastMLError):
            log.error("internal error in a gRPC call", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        await context.abort(grpc_status(exc), str(exc) or type(exc).__name__)

    # ----- health and metadata -------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.server_live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    async def ModelReady(self, request, context):
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except (NotFound, errors.Unavailable):
            ready = False  # Triton answers "not ready" for unknown and unloaded models alike
        except Exception as exc:  # noqa: BLE001 - every failure is answered in gRPC's format
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta.get("extensions", [])
        )

    async def ModelMetadata(self, request, context):
        try:
            meta = self.dataplane.model_metadata(request.name, request.version or None)
            return json_format.ParseDict(meta, pb.ModelMetadataResponse(), ignore_unknown_fields=True)
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def ModelConfig(self, request, context):
        try:
            config = self.dataplane.model_config(request.name, request.version or None)
            resp = pb.ModelConfigResponse()
            json_format.ParseDict(config, resp.config, ignore_unknown_fields=True)
            return resp
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def ModelStatistics(self, request, context):
        try:
            stats = self.dataplane.model_statistics(request.name or None, request.version or None)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    # ----- repository ----------------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):
        try:
            index = self.dataplane.repository_index(ready_only=request.ready)
            resp = pb.RepositoryIndexResponse()
            for m in index:
                resp.models.add(
                    name=m.get("name", ""),
                    version=str(m.get("version", "") or ""),
                    state=m.get("state", "") or "",
                    reason=m.get("reason", "") or "",
                )
            return resp
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def RepositoryModelLoad(self, request, context):
        try:
            params = _params(request.parameters)
            await self.dataplane.load_model(request.model_name, params.pop("config", None), parameters=params)
            return pb.RepositoryModelLoadResponse()
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    # ----- system shared memory ------------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request, context):
        try:
            resp = pb.SystemSharedMemoryStatusResponse()
            for r in self.shm.status(request.name or None):
                resp.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
            return resp
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def SystemSharedMemoryRegister(self, request, context):
        try:
            self._check_single_process()
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def SystemSharedMemoryUnregister(self, request, context):
        try:
            self._check_single_process()
            self.shm.unregister(request.name or None)
            return pb.SystemSharedMemoryUnregisterResponse()
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    # CUDA shared memory: answered as a server without GPUs (perf_analyzer unregisters both kinds at exit).
    async def CudaSharedMemoryStatus(self, request, context):
        if request.name:
            await self._abort(context, InvalidInput(f"Unable to find cuda shared memory region: '{request.name}'"))
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "CUDA shared memory is not supported by this server (no GPU support); use system shared memory",
        )

    async def CudaSharedMemoryUnregister(self, request, context):
        return pb.CudaSharedMemoryUnregisterResponse()

    def _check_single_process(self) -> None:
        if not self.single_process:
            raise InvalidInput(
                "system shared memory needs a single server process (--workers 1): a region registered with one "
                "worker would be unknown to the others"
            )

    # ----- inference -----------------------------------------------------------------------------
    async def _infer(self, request, timeout_us: int | None = None) -> pb.ModelInferResponse:
        req, out_shm = decode_for_plane(self.dataplane, request, self.shm)
        if timeout_us is not None and "timeout" not in req.parameters:
            req.parameters["timeout"] = timeout_us
        resp = await self.dataplane.submit(req)
        return encode_infer_response(resp, self.shm, out_shm)

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, _deadline_us(context))
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def ModelStreamInfer(self, request_iterator, context):
        """Bidirectional stream: every request is answered on the stream as soon as it completes (answers
        may overtake each other; the response id says which request it answers); a failed request is
        answered with ``error_message`` and the stream goes on; a message that does not parse ends the stream
        INVALID_ARGUMENT once the requests before it are answered."""
        answers: asyncio.Queue = asyncio.Queue()
        end = object()
        inflight: set[asyncio.Task] = set()
        failed: list[BaseException] = []  # what ended the reading early (a message that does not parse)

        async def one(request, timeout_us):
            try:
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=await self._infer(request, timeout_us)))
            except Exception as exc:  # noqa: BLE001 - the stream survives a failed request
                if not isinstance(exc, FastMLError):
                    log.error("internal error in a gRPC stream request", exc_info=exc)
                err = pb.ModelStreamInferResponse(error_message=str(exc) or type(exc).__name__)
                err.infer_response.model_name = request.model_name
                err.infer_response.id = request.id
                answers.put_nowait(err)

        async def read():
            try:
                try:
                    async for request in request_iterator:
                        if isinstance(request, _Unparsed):
                            # What follows it cannot be trusted: the stream ends INVALID_ARGUMENT (as on the native
                            # listener), once the requests before it are answered.
                            failed.append(InvalidInput(request.message))
                            break
                        # each request gets what is left of the stream's deadline
                        task = asyncio.get_running_loop().create_task(one(request, _deadline_us(context)))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                except Exception as exc:  # noqa: BLE001 - the stream ends with it, never OK as if it were complete
                    failed.append(exc)
                if inflight:
                    await asyncio.gather(*inflight, return_exceptions=True)
            finally:
                answers.put_nowait(end)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await answers.get()
                if item is end:
                    break
                yield item
            if failed:
                await self._abort(context, failed[0])
        finally:
            reader.cancel()
            for task in list(inflight):
                task.cancel()


HEALTH_SERVICES = ("", "inference.GRPCInferenceService")  # the names Health/Check answers for


class _Unparsed:
    """A request message that protobuf could not parse, as grpcio's listener hands it to the servicer (grpcio
    itself would answer UNKNOWN, and end a stream OK as if it were complete): the call ends INVALID_ARGUMENT
    with the native listener's message."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _parse_interceptor():
    """A ``grpc.aio`` server interceptor: a unary request or a ModelStreamInfer message that does not parse is
    INVALID_ARGUMENT ("<Method> request does not parse: ..."), as on the native listener."""

    def safe(deserializer, what: str):
        def parse(data: bytes):
            try:
                return deserializer(data)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, whatever its runtime
                return _Unparsed(f"{what} does not parse: {exc}")

        return parse

    def refuse_unparsed(behavior):
        async def unary(request, context):
            if isinstance(request, _Unparsed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await behavior(request, context)

        return unary

    class _ParseInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None or handler.request_deserializer is None:
                return handler
            method = details.method.rsplit("/", 1)[-1]
            if not handler.request_streaming and not handler.response_streaming:
                what = "ModelInferRequest" if method == "ModelInfer" else f"{method} request"
                return handler._replace(
                    request_deserializer=safe(handler.request_deserializer, what),
                    unary_unary=refuse_unparsed(handler.unary_unary),
                )
            if method == "ModelStreamInfer":  # its servicer method ends the stream on an _Unparsed message
                return handler._replace(request_deserializer=safe(handler.request_deserializer, "ModelInferRequest"))
            return handler

    return _ParseInterceptor()


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health/Check`` as Triton answers it: SERVING while the server is ready (the data
    plane's readiness: models loaded, not draining), NOT_SERVING otherwise; an unknown service name is
    NOT_FOUND (the health-checking protocol's rule). ``Watch`` stays UNIMPLEMENTED."""

    def __init__(self, dataplane):
        self.dataplane = dataplane

    async def Check(self, request, context):
        if request.service not in HEALTH_SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        serving = self.dataplane.server_ready()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class GrpcListener:
    """The gRPC listener of a server process.

    Args:
        dataplane: the process's DataPlane. host/port: bind address (port 0 picks a free port).
        max_message_bytes: largest request or response message (a request beyond is RESOURCE_EXHAUSTED).
        reuse_port: bind with SO_REUSEPORT (several worker processes on one port).
        tls: a :class:`fastml.server.tls.TlsConfig` to serve over TLS (mutual TLS with its client CA); None: plain.
    """

    def __init__(
        self,
        dataplane,
        host: str = "127.0.0.1",
        port: int = 8001,
        max_message_bytes: int = 64 * 1024 * 1024,
        reuse_port: bool = False,
        tls=None,
    ):
        self.dataplane = dataplane
        self.tls = tls  # fastml.server.tls.TlsConfig: a secure port (mutual TLS with a client CA); None: plain
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.reuse_port = reuse_port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; returns (and stores in ``port``) the bound port.

        Raises:
            fastml.errors.Unavailable: the address cannot be bound.
        """
        from fastml.server import auth

        server = grpc.aio.server(
            interceptors=[auth.grpc_interceptor(auth.of_plane(self.dataplane)), _parse_interceptor()],
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, not self.reuse_port), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.dataplane), server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            if self.tls is not None:
                port = server.add_secure_port(f"{host}:{self.port}", self.tls.grpc_credentials())
            else:
                port = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:
            raise errors.Unavailable(f"cannot listen for gRPC on {self.host}:{self.port}: {exc}") from None
        if port == 0:
            raise errors.Unavailable(f"cannot listen for gRPC on {self.host}:{self.port}")
        await server.start()
        self._server = server
        self.port = port
        return port

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting; in-flight RPCs get ``grace_s`` seconds to finish."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None


__all__ = [
    "GRPC_STATUS",
    "GrpcListener",
    "HealthServicer",
    "InferenceServicer",
    "decode_for_plane",
    "decode_infer_request",
    "encode_infer_response",
    "grpc_status",
]
