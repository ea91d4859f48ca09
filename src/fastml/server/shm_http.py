"""System shared memory over KServe v2 HTTP: Triton's ``/v2/systemsharedmemory`` endpoints and the infer
requests whose inputs or outputs name a registered region.

The HTTP hot path (cached request plans) never sees these requests: ``HttpProtocol`` hands a request whose
JSON header mentions ``shared_memory_region`` to :func:`infer`, which decodes it fully, reads inputs from
their regions (zero-copy views, bounds-checked by :mod:`fastml.serving.shm`), runs it through the data
plane's request/response way in and writes outputs into their regions. Other inputs and outputs in the same
request keep their usual forms (binary extension or JSON).
"""

from __future__ import annotations

import logging

import msgspec
import numpy as np

from fastml.errors import FastMLError, InvalidInput
from fastml.server import routes
from fastml.server.status import http_status
from fastml.server.tensors import (
    NP_DTYPES,
    datatype_of,
    decode_bytes_tensor,
    decode_request,
    encode_json,
    output_bytes,
    output_json_data,
)
from fastml.serving import shm as shm_params
from fastml.serving.classification import requested_count
from fastml.serving.dataplane import InferRequest

log = logging.getLogger("fastml.server")

MARKER = b"shared_memory_region"  # a request header holding this goes the shared-memory way

_OK_BINARY = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\nContent-Length: %d\r\n%s\r\n"
_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"


class _RegisterRequest(msgspec.Struct, forbid_unknown_fields=False):
    key: str
    byte_size: int
    offset: int = 0


# ----- control endpoints --------------------------------------------------------------------------
KINDS = frozenset(
    {
        routes.SHM_STATUS,
        routes.SHM_REGISTER,
        routes.SHM_UNREGISTER,
        routes.CUDA_SHM_STATUS,
        routes.CUDA_SHM_REGISTER,
        routes.CUDA_SHM_UNREGISTER,
    }
)


def handle(kind: int, shm, name: str | None, body: bytes, single_process: bool) -> bytes:
    """Answer one of the shared-memory routes (``KINDS``) with its JSON body (empty for register/unregister).

    CUDA shared memory is answered as a server without GPUs: its status lists nothing and unregistering has
    nothing to do (perf_analyzer unregisters both kinds when it ends), registering is refused.

    Raises:
        InvalidInput: a bad register request, CUDA registration, or registration when several worker
            processes share the port (``single_process`` False). NotFound: status of an unknown region.
        Conflict: a region of that name is already registered.
    """
    if kind == routes.SHM_STATUS:
        return status(shm, name)
    if kind == routes.CUDA_SHM_STATUS:
        if name:
            raise InvalidInput(f"Unable to find cuda shared memory region: '{name}'")
        return b"[]"
    if kind == routes.CUDA_SHM_UNREGISTER:
        return b""
    if kind == routes.CUDA_SHM_REGISTER:
        raise InvalidInput(
            "CUDA shared memory is not supported by this server (no GPU support); use system shared memory"
        )
    if not single_process:
        raise InvalidInput(
            "system shared memory needs a single server process (--workers 1): a region registered with one "
            "worker would be unknown to the others"
        )
    if kind == routes.SHM_REGISTER:
        register(shm, name, body)
    else:
        unregister(shm, name)
    return b""


def status(shm, name: str | None) -> bytes:
    """``GET /v2/systemsharedmemory[/region/<name>]/status``: Triton's list of region entries."""
    return encode_json(shm.status(name))


def register(shm, name: str, body: bytes) -> None:
    """``POST /v2/systemsharedmemory/region/<name>/register`` with ``{"key", "offset", "byte_size"}``."""
    try:
        req = msgspec.json.decode(body or b"{}", type=_RegisterRequest)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed shared memory register request: {exc}") from None
    shm.register(name, req.key, req.offset, req.byte_size)


def unregister(shm, name: str | None) -> None:
    """``POST /v2/systemsharedmemory[/region/<name>]/unregister`` (no name: every region)."""
    shm.unregister(name)


# ----- inference ----------------------------------------------------------------------------------
def decode(header: bytes, body, header_len: int, shm, model_name: str, version: str | None):
    """An InferRequest plus the per-output encoding ``[(name, "shm"|"binary"|"json", region or None)]`` (or
    None when all outputs take the request's default) from a JSON header whose tensors may name regions.
    An output's region is ``(name, offset, byte_size, Region)``: the registered region it resolved to now, so
    its answer never lands in another object registered under the same name while the request runs.

    Raises:
        InvalidInput: a malformed request, an unknown region, a window outside its region, or sizes that do
        not match the shapes and the bytes received.
    """
    req = decode_request(header)
    params = dict(req.parameters or {})
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(f"parameter 'binary_data_output' must be a bool, got {binary_default!r}")
    if not req.inputs:
        raise InvalidInput("request has no inputs")
    inputs: dict[str, np.ndarray] = {}
    blob = memoryview(body)[header_len:]
    pos = 0
    for spec in req.inputs:
        where = f"input '{spec.name}'"
        if spec.name in inputs:
            raise InvalidInput(f"{where} appears twice")
        dtype = NP_DTYPES.get(spec.datatype)
        if dtype is None:
            raise InvalidInput(f"{where}: unknown datatype {spec.datatype!r}; known: {', '.join(NP_DTYPES)}")
        count = shm_params.shape_count(spec.shape, where)
        p = spec.parameters or {}
        region = shm_params.tensor_params(p)
        if region is not None:
            if spec.data is not msgspec.UNSET or "binary_data_size" in p:
                raise InvalidInput(f"{where}: names a shared memory region and also carries data")
            inputs[spec.name] = shm.input_view(region[0], region[1], region[2], dtype, spec.shape, where)
        elif "binary_data_size" in p:
            size = p["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if pos + size > len(blob):
                raise InvalidInput(f"{where}: binary_data_size {size} runs past the end of the body")
            chunk = blob[pos : pos + size]
            pos += size
            if spec.datatype == "BYTES":
                if count * 4 > size:  # every element has a 4-byte length: refuse before allocating
                    raise InvalidInput(
                        f"{where}: shape {spec.shape} needs {count} BYTES elements, binary_data_size is {size}"
                    )
                inputs[spec.name] = decode_bytes_tensor(chunk, count, where).reshape(spec.shape)
            else:
                if size != count * dtype.itemsize:
                    raise InvalidInput(
                        f"{where}: binary_data_size {size} does not match shape {spec.shape} of {spec.datatype}"
                    )
                inputs[spec.name] = np.frombuffer(chunk, dtype, count).reshape(spec.shape)
        elif spec.data is not msgspec.UNSET:
            from fastml.server.tensors import _json_tensor

            inputs[spec.name] = _json_tensor(spec, where)
        else:
            raise InvalidInput(f"{where}: has no data, binary_data_size or shared_memory_region")
    if pos != len(blob):
        raise InvalidInput(
            f"the inputs' binary_data_size add up to {pos} bytes but the body carries {len(blob)} after the header"
        )
    out_specs: list[tuple[str, str, tuple | None]] | None = None
    names: list[str] | None = None
    classify: dict[str, int] | None = None
    if req.outputs:
        out_specs, names = [], []
        for o in req.outputs:
            p = o.parameters or {}
            region = shm_params.tensor_params(p)
            classes = requested_count(p, o.name, region is not None)
            if classes is not None:
                classify = classify or {}
                classify[o.name] = classes
            if region is not None:
                held = shm.check_window(region[0], region[1], region[2], f"output '{o.name}'")
                out_specs.append((o.name, "shm", (*region, held)))
            else:
                binary = p.get("binary_data", binary_default)
                if not isinstance(binary, bool):
                    raise InvalidInput(f"output '{o.name}': parameter 'binary_data' must be a bool, got {binary!r}")
                out_specs.append((o.name, "binary" if binary else "json", None))
            names.append(o.name)
    params.pop("binary_data_output", None)
    request = InferRequest(
        model_name, inputs, model_version=version, id=req.id, outputs=names, parameters=params, classify=classify
    )
    return request, out_specs, binary_default


def encode(resp, out_specs, binary_default: bool, shm, conn_hdr: bytes) -> bytes:
    """The HTTP response: shared-memory outputs written into their regions (named in the output's
    parameters, no data), the others as binary-extension blobs or JSON data."""
    specs = {name: (kind, region) for name, kind, region in out_specs} if out_specs else {}
    default = ("binary" if binary_default else "json", None)
    outs, blobs = [], []
    for name, arr in resp.outputs.items():
        kind, region = specs.get(name, default)
        dt = datatype_of(arr)
        entry = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if kind == "shm":
            # No "parameters" on this output: Triton's clients read an output's parameters as its binary-data
            # entry (perf_analyzer fails on parameters without binary_data_size); the data is in the region.
            shm.write_region(region[3], region[1], region[2], output_bytes(arr, dt), f"output '{name}'")
        elif kind == "binary":
            b = output_bytes(arr, dt)
            blobs.append(b)
            entry["parameters"] = {"binary_data_size": len(b)}
        else:
            entry["data"] = output_json_data(arr, dt)
        outs.append(entry)
    doc = {}
    if resp.id is not None:
        doc["id"] = resp.id
    doc["model_name"] = resp.model_name
    doc["model_version"] = resp.model_version
    doc["outputs"] = outs
    header = encode_json(doc)
    if blobs:
        payload = b"".join(blobs)
        return _OK_BINARY % (len(header), len(header) + len(payload), conn_hdr) + header + payload
    return _OK_JSON % (len(header), conn_hdr) + header


def infer(conn, name: str, version: str | None, body: bytes, header_len: int, conn_hdr: bytes) -> None:
    """Serve one shared-memory infer request on an HTTP connection (answers in pipeline order).

    Raises:
        FastMLError: the request cannot be accepted (the caller answers it as an error).
    """
    from fastml.server.http import _CLOSE_HDR, _Slot, error_response

    server = conn.server
    plane = server.plane
    shm = plane.shm
    try:
        request, out_specs, binary_default = decode(bytes(body[:header_len]), body, header_len, shm, name, version)
    except InvalidInput as exc:
        plane.count_refused(name, version, exc)  # in the model's statistics, as any other refused HTTP request
        raise
    fut = plane.submit(request)
    slot = _Slot()
    conn.pending.append(slot)

    def done(f):
        hdr = _CLOSE_HDR if plane.draining else conn_hdr
        try:
            resp = f.result()
            slot.data = encode(resp, out_specs, binary_default, shm, hdr)
            server.ok_count += 1
        except FastMLError as exc:
            slot.data = error_response(http_status(exc), str(exc) or type(exc).__name__, hdr)
            server.count_error(slot.data)
        except BaseException as exc:  # noqa: BLE001 - a fault of ours: 500, the connection keeps serving
            log.error("shared-memory inference failed", exc_info=exc)
            slot.data = error_response(500, f"internal error: {type(exc).__name__}: {exc}", hdr)
            server.count_error(slot.data)
        if hdr is _CLOSE_HDR:
            slot.close = True
        conn.flush()

    fut.add_done_callback(done)


__all__ = ["KINDS", "MARKER", "decode", "encode", "handle", "infer", "register", "status", "unregister"]
