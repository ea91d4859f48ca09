"""KServe v2 / Triton infer requests and responses as raw HTTP/1.1 bytes (binary tensor extension).

The load generator writes one pre-built byte string per call, so building the request (JSON header,
binary blobs, HTTP head) happens once per run, never on the hot path. Parsing a response is only done
when a run asks to validate answers.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import msgspec
import numpy as np

from fastml.errors import InvalidInput

# KServe v2 datatype <-> numpy dtype (BYTES handled apart: 4-byte little-endian length + raw bytes).
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NUMPY_TO_DATATYPE = {dt: name for name, dt in DATATYPE_TO_NUMPY.items()}

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class InferRequest:
    """One KServe v2 infer call, ready to be written to a socket as many times as needed.

    Attributes:
        path: request target, e.g. ``/v2/models/mlp/infer``.
        body: the HTTP body: JSON header immediately followed by the binary tensor blobs.
        header_length: length in bytes of the JSON header (the ``Inference-Header-Content-Length``).
        wire: the complete HTTP/1.1 request (head + body), keep-alive.
    """

    path: str
    body: bytes
    header_length: int
    wire: bytes


def datatype_of(array: np.ndarray) -> str:
    """Return the KServe v2 datatype name for a numpy array.

    Raises:
        InvalidInput: the dtype has no KServe v2 equivalent.
    """
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"dtype {array.dtype} has no KServe v2 datatype") from None


def _tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    # Wire format is little-endian, row-major, no padding.
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# Triton's versions are digits; the registry's are semantic versions (with an optional pre-release and
# build part), which fastml serve routes too.
_VERSION = re.compile(r"^(?:\d+|\d+\.\d+\.\d+(?:-[0-9A-Za-z.\-]+)?(?:\+[0-9A-Za-z.\-]+)?)\Z")


def check_version(version) -> str:
    """``version`` as text if it is digits or a semantic version; else InvalidInput."""
    text = str(version)
    if not _VERSION.match(text):
        raise InvalidInput(
            f"model version must be digits (Triton) or a semantic version like 1.0.0 (registry); got {version!r}"
        )
    return text


def build_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    version: str | None = None,
    host: str = "127.0.0.1",
    binary_output: bool = True,
) -> InferRequest:
    """Build a binary-tensor infer request for ``model``.

    Args:
        model: model name in the URL.
        inputs: input name -> array (numeric, or object/str arrays sent as BYTES).
        outputs: output names to request; None asks for all outputs.
        version: model version for ``/versions/<v>/`` in the URL: digits (Triton's) or a semantic
            version such as ``1.0.0`` or ``2.1.0-rc.1`` (the registry's, which fastml serve answers to).
        host: value of the ``Host`` header.
        binary_output: ask for binary outputs (``binary_data`` / ``binary_data_output``).

    Returns:
        The request, with its complete wire bytes.

    Raises:
        InvalidInput: no inputs, an empty or odd name, a bad version or an unsupported dtype.
    """
    if not model or "/" in model:
        raise InvalidInput(f"model name must be non-empty without '/', got {model!r}")
    if version is not None:
        version = check_version(version)
    if not inputs:
        raise InvalidInput("an infer request needs at least one input")
    header_inputs = []
    blobs = []
    for name, value in inputs.items():
        if not name:
            raise InvalidInput("input names must be non-empty")
        array = np.asarray(value)
        datatype = datatype_of(array)
        blob = _tensor_bytes(array, datatype)
        header_inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header: dict = {"inputs": header_inputs}
    if outputs is None:
        if binary_output:
            header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": bool(binary_output)}} for name in outputs]
    header_json = _json_encoder.encode(header)
    body = header_json + b"".join(blobs)
    path = f"/v2/models/{model}" + (f"/versions/{quote(version, safe='')}" if version is not None else "") + "/infer"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header_json)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode("ascii")
    return InferRequest(path=path, body=body, header_length=len(header_json), wire=head + body)


def parse_infer_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Decode a KServe v2 infer response body into output name -> array.

    Args:
        body: the HTTP response body.
        header_length: the ``Inference-Header-Content-Length`` response header, or None when the body
            is all JSON.

    Raises:
        InvalidInput: the body is not a well-formed infer response (bad JSON, sizes that do not add
            up, unknown datatype).
    """
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise InvalidInput(f"header length {header_length} outside body of {len(body)} bytes")
    try:
        header = _json_decoder.decode(body[:header_length])
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"response JSON header does not decode: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list):
        raise InvalidInput("response has no 'outputs' list")
    offset = header_length
    result: dict[str, np.ndarray] = {}
    for out in header["outputs"]:
        if not isinstance(out, dict):
            raise InvalidInput(f"response output is not an object: {out!r}")
        name, datatype, shape = out.get("name"), out.get("datatype"), out.get("shape")
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise InvalidInput(f"response output lacks a name or a shape of non-negative integers: {out!r}")
        parameters = out.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"output {name!r}: parameters is not an object: {parameters!r}")
        size = parameters.get("binary_data_size")
        if size is None:
            dtype = np.dtype(np.object_) if datatype == "BYTES" else _numpy_dtype(datatype)
            try:
                result[name] = np.array(out.get("data", []), dtype=dtype).reshape(shape)
            except (ValueError, TypeError, OverflowError) as exc:
                raise InvalidInput(f"output {name!r}: JSON data does not fit shape {shape} {datatype}: {exc}") from None
            continue
        if type(size) is not int or size < 0:
            raise InvalidInput(f"output {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > len(body):
            raise InvalidInput(f"output {name!r} needs {size} bytes at {offset}, body has {len(body)}")
        raw = body[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            result[name] = _decode_bytes_tensor(raw, shape)
        else:
            dtype = _numpy_dtype(datatype).newbyteorder("<")
            count = int(np.prod(shape)) if shape else 1
            if count * dtype.itemsize != size:
                raise InvalidInput(f"output {name!r}: shape {shape} {datatype} != {size} bytes")
            result[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} trailing bytes after the last binary output")
    return result


def _numpy_dtype(datatype: object) -> np.dtype:
    try:
        return DATATYPE_TO_NUMPY[datatype]  # type: ignore[index]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown datatype {datatype!r}") from None


def _decode_bytes_tensor(raw: bytes, shape: list) -> np.ndarray:
    items = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidInput("BYTES tensor: truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidInput("BYTES tensor: element runs past the end")
        items.append(raw[pos : pos + length])
        pos += length
    if len(items) != (int(np.prod(shape)) if shape else 1):
        raise InvalidInput(f"BYTES tensor: {len(items)} elements do not fit shape {shape}")
    return np.array(items, dtype=np.object_).reshape(shape)


def random_inputs(metadata: Mapping, *, batch_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random input tensors matching a model's KServe v2 metadata.

    Variable dimensions (-1) become ``batch_size`` for the first dimension and 1 elsewhere.

    Args:
        metadata: the ``GET /v2/models/<m>`` answer (``inputs``: name, datatype, shape).
        batch_size: rows per request.
        seed: seed of the random generator, so a run sends the same data each time.

    Raises:
        InvalidInput: the metadata has no inputs or an input the harness cannot generate.
    """
    specs = metadata.get("inputs") if isinstance(metadata, Mapping) else None
    if not specs:
        raise InvalidInput("model metadata lists no inputs")
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list):
            raise InvalidInput(f"input metadata lacks a name or shape: {spec!r}")
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise InvalidInput(f"input {name!r}: shape {shape} must hold integers >= 0 (or -1 for a variable dim)")
        dims = [(batch_size if i == 0 else 1) if d == -1 else int(d) for i, d in enumerate(shape)]
        if datatype == "BYTES":
            arrays[name] = np.array([b"x%d" % i for i in range(int(np.prod(dims)))], dtype=np.object_).reshape(dims)
            continue
        dtype = _numpy_dtype(datatype)
        if dtype.kind == "f":
            arrays[name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, dims).astype(dtype)
        else:
            arrays[name] = rng.integers(0, 100, dims).astype(dtype)
    return arrays
