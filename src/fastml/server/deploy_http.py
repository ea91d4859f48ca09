"""KServe v2 HTTP inference addressed to a deployment (``POST /v2/models/<deployment>/infer``).

``HttpProtocol`` hands such a request here instead of its per-model plan cache: the request is decoded in
full (the shared decoder of :mod:`fastml.server.shm_http`, so shared-memory inputs work too), the
``fastml-routing-key`` header becomes the ``routing_key`` parameter unless the body already has one, and the
data plane routes it (:class:`fastml.serving.deployments.DeploymentManager`). The answer carries the variant
in its ``parameters`` (``{"variant": name}``) and in the ``fastml-variant`` response header.
"""

from __future__ import annotations

import logging

from fastml.errors import FastMLError, InvalidInput
from fastml.server.shm_http import decode
from fastml.server.status import http_status
from fastml.server.tensors import datatype_of, encode_json, output_bytes, output_json_data
from fastml.serving import shm as shm_params

log = logging.getLogger("fastml.server")

_OK_BINARY = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\nContent-Length: %d\r\n%s\r\n"
_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
_MAX_VARIANT_HEADER = 200  # variant names are short identifiers (deployment_config._NAME)


def infer(conn, name: str, version: str | None, body: bytes, header_len: int, conn_hdr: bytes,
          routing_key: str | None) -> None:
    """Serve one deployment infer request on an HTTP connection (answers in pipeline order).

    Raises:
        FastMLError: the request cannot be accepted (the caller answers it as an error).
    """
    from fastml.server.http import _CLOSE_HDR, _Slot, error_response

    server = conn.server
    plane = server.plane
    if header_len == 0:
        raise InvalidInput("a deployment needs a JSON request header (Inference-Header-Content-Length: 0 is refused)")
    request, out_specs, binary_default = decode(bytes(body[:header_len]), body, header_len, plane.shm, name, version)
    if routing_key is not None and "routing_key" not in request.parameters:
        request.parameters["routing_key"] = routing_key
    fut = plane.submit(request)
    slot = _Slot()
    conn.pending.append(slot)

    def done(f):
        hdr = _CLOSE_HDR if plane.draining else conn_hdr
        try:
            resp = f.result()
            slot.data = encode(resp, out_specs, binary_default, plane.shm, hdr)
            server.ok_count += 1
        except FastMLError as exc:
            slot.data = error_response(http_status(exc), str(exc) or type(exc).__name__, hdr)
            server.count_error(slot.data)
        except BaseException as exc:  # noqa: BLE001 - a fault of ours: 500, the connection keeps serving
            log.error("deployment inference failed", exc_info=exc)
            slot.data = error_response(500, f"internal error: {type(exc).__name__}: {exc}", hdr)
            server.count_error(slot.data)
        if hdr is _CLOSE_HDR:
            slot.close = True
        conn.flush()

    fut.add_done_callback(done)


def encode(resp, out_specs, binary_default: bool, shm, conn_hdr: bytes) -> bytes:
    """The HTTP response: outputs as the request asked (binary extension, JSON or shared memory), the
    response parameters (``variant``), and the ``fastml-variant`` header."""
    specs = {n: (kind, region) for n, kind, region in out_specs} if out_specs else {}
    default = ("binary" if binary_default else "json", None)
    outs, blobs = [], []
    for name, arr in resp.outputs.items():
        kind, region = specs.get(name, default)
        dt = datatype_of(arr)
        entry = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if kind == "shm":
            n = shm.write_output(region[0], region[1], region[2], output_bytes(arr, dt), f"output '{name}'")
            entry["parameters"] = {shm_params.REGION_PARAM: region[0], shm_params.BYTE_SIZE_PARAM: n}
            if region[1]:
                entry["parameters"][shm_params.OFFSET_PARAM] = region[1]
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
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outs
    header = encode_json(doc)
    variant = str(resp.parameters.get("variant", ""))[:_MAX_VARIANT_HEADER]
    extra = conn_hdr + (b"fastml-variant: " + variant.encode("ascii", "replace") + b"\r\n" if variant else b"")
    if blobs:
        payload = b"".join(blobs)
        return _OK_BINARY % (len(header), len(header) + len(payload), extra) + header + payload
    return _OK_JSON % (len(header), extra) + header


__all__ = ["encode", "infer"]
