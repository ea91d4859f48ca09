"""KServe v2 HTTP inference addressed to a deployment (``POST /v2/models/<deployment>/infer``).

``HttpProtocol`` hands such a request here. Its routing parameters (``routing_key``, ``variant``; else the
``fastml-routing-key`` header) are read once per distinct JSON header, the deployment's router picks the
variant (:class:`fastml.serving.deployments.DeploymentManager`), and the request then takes that variant's
ordinary cached request plan and engine submit, so a deployment costs about what a model does. The answer
is named after the deployment and carries the variant in its ``parameters`` (``{"variant": name}``) and in
the ``fastml-variant`` response header. (Requests with shared-memory tensors go through the data plane's
``submit``, which routes them the same way.)
"""

from __future__ import annotations

import logging
import time

from fastml.errors import FastMLError, InvalidInput
from fastml.server.status import http_status
from fastml.server.tensors import datatype_of, decode_request, encode_json, output_bytes, output_json_data
from fastml.serving.dataplane import InferRequest
from fastml.serving.deployments import CURRENT_VARIANT  # the server reaches monitoring only through serving

log = logging.getLogger("fastml.server")

_OK_BINARY = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\nContent-Length: %d\r\n%s\r\n"
_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
_MAX_VARIANT_HEADER = 200  # variant names are short identifiers (deployment_config._NAME)


_PARAMS_CACHE_MAX = 256  # distinct request headers whose routing parameters are remembered per deployment


class _DeployCall:
    """A pipeline slot for one routed inference, filled when the variant's engine future is done."""

    __slots__ = ("data", "close", "conn", "entry", "plan", "encoding", "conn_hdr", "target", "deployment", "start_ns")

    def __init__(self, conn, entry, plan, encoding, conn_hdr, target, deployment, start_ns):
        self.data = None
        self.close = False
        self.conn = conn
        self.entry = entry
        self.plan = plan
        self.encoding = encoding
        self.conn_hdr = conn_hdr
        self.target = target
        self.deployment = deployment
        self.start_ns = start_ns

    def done(self, fut):
        from fastml.server.http import _CLOSE_HDR, error_response

        conn = self.conn
        server = conn.server
        plane = server.plane
        hdr = _CLOSE_HDR if plane.draining else self.conn_hdr
        target = self.target
        latency_us = (time.perf_counter_ns() - self.start_ns) / 1000
        try:
            outputs = plane.settle(self.entry, fut)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error answer
            target.stats.record(latency_us, False)
            self.deployment.router.count_error(target.index)
            self.data = error_response(http_status(exc), str(exc) or type(exc).__name__, hdr)
            server.count_error(self.data)
        else:
            target.stats.record(latency_us, True)
            try:
                self.data = encode_planned(
                    self.deployment.name, target.name, self.entry, self.plan, outputs, self.encoding, hdr
                )
                server.ok_count += 1
            except Exception as exc:  # a fault while encoding is ours: 500, but keep serving
                log.exception("encoding a deployment response failed")
                self.data = error_response(500, f"encoding the response failed: {type(exc).__name__}: {exc}", hdr)
                server.count_error(self.data)
        if hdr is _CLOSE_HDR:
            self.close = True
        conn.flush()


def _routing_params(d, header: bytes) -> tuple:
    """(routing_key, variant) from a request header's parameters, remembered per distinct header bytes."""
    cache = d.http_params
    got = cache.get(header)
    if got is None:
        params = decode_request(header).parameters or {}
        got = (params.get("routing_key"), params.get("variant"))
        if len(cache) < _PARAMS_CACHE_MAX:
            cache[header] = got
    return got


def infer(
    conn, name: str, version: str | None, body: bytes, header_len: int, conn_hdr: bytes, routing_key: str | None
) -> None:
    """Serve one deployment infer request on an HTTP connection (answers in pipeline order).

    Route first (the ``routing_key`` / ``variant`` parameters, else the ``fastml-routing-key`` header), then
    take the chosen variant's usual cached request plan, so a deployment costs about what its model does.

    Raises:
        FastMLError: the request cannot be accepted (the caller answers it as an error).
    """
    from fastml.server.http import response_encoding

    server = conn.server
    plane = server.plane
    dm = plane.deployments
    d = dm.table[name]
    if header_len == 0:
        raise InvalidInput("a deployment needs a JSON request header (Inference-Header-Content-Length: 0 is refused)")
    header = body if header_len >= len(body) else body[:header_len]
    key, pinned = _routing_params(d, bytes(header))
    target, shadows = dm.route(name, routing_key if key is None else key, pinned)
    start_ns = time.perf_counter_ns()
    try:
        entry = target.current(dm.manager)
        if "output_names" not in entry.cache:
            plane._prepare(entry)
        inputs, plan, timeout_us = conn._decode_infer(entry, body)
    except FastMLError:
        target.stats.record(0.0, False)
        d.router.count_error(target.index)
        raise
    token = CURRENT_VARIANT.set(target.name)  # the prediction log's variant column (monitoring.log)
    try:
        fut = plane.submit_arrays(entry, inputs, timeout_us, plan.request_id)
    except FastMLError:
        target.stats.record(0.0, False)
        d.router.count_error(target.index)
        raise
    finally:
        CURRENT_VARIANT.reset(token)
    accept = conn.accept_encoding
    call = _DeployCall(
        conn, entry, plan, None if accept is None else response_encoding(accept), conn_hdr, target, d, start_ns
    )
    conn.pending.append(call)
    fut.add_done_callback(call.done)
    if shadows:
        copy = InferRequest(entry.name, inputs, model_version=entry.version, id=plan.request_id)
        for s in shadows:
            dm._mirror(plane, d, s, entry, copy)


def encode_planned(
    deployment: str, variant: str, entry, plan, outputs: dict, encoding: bytes | None, conn_hdr: bytes
) -> bytes:
    """The response for a planned request: like the model's own, named after the deployment, with the
    variant in ``parameters`` and the ``fastml-variant`` header. Headers of all-binary answers are cached
    in the plan per (deployment, variant, output shapes)."""
    from fastml.server.http import compress

    specs = plan.outputs
    if specs is None:
        specs = [(n, plan.all_binary) for n in entry.cache["output_names_ordered"]]
    arrays = [outputs[n] for n, _ in specs]
    extra = conn_hdr + b"fastml-variant: " + variant.encode("ascii", "replace") + b"\r\n"
    if encoding is not None:
        extra += b"Content-Encoding: " + encoding + b"\r\n"
    key = ("deployment", deployment, variant, tuple([a.shape for a in arrays]))
    header = plan.response_headers.get(key)
    if header is None:
        out_json = []
        blobs = []
        cacheable = True
        for (n, binary), arr in zip(specs, arrays):
            dt = datatype_of(arr)
            if binary:
                b = output_bytes(arr, dt)
                blobs.append(b)
                out_json.append(
                    {"name": n, "datatype": dt, "shape": list(arr.shape), "parameters": {"binary_data_size": len(b)}}
                )
                if dt == "BYTES":
                    cacheable = False
            else:
                cacheable = False
                out_json.append(
                    {"name": n, "datatype": dt, "shape": list(arr.shape), "data": output_json_data(arr, dt)}
                )
        doc = {}
        if plan.request_id is not None:
            doc["id"] = plan.request_id
        doc["model_name"] = deployment
        doc["model_version"] = entry.version
        doc["parameters"] = {"variant": variant}
        doc["outputs"] = out_json
        header = encode_json(doc)
        if cacheable and len(plan.response_headers) < 32:
            plan.response_headers[key] = header
        if not blobs:
            body = header if encoding is None else compress(header, encoding)
            return _OK_JSON % (len(body), extra) + body
        payload = b"".join(blobs)
    else:
        payload = b"".join([a.tobytes() for a in arrays])
    body = header + payload
    if encoding is not None:
        body = compress(body, encoding)
    return _OK_BINARY % (len(header), len(body), extra) + body


__all__ = ["encode_planned", "infer"]
