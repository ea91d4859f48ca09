"""KServe v2 tensor codec: JSON tensors and Triton's binary tensor extension, both directions.

Requests are decoded with msgspec Structs. A request whose tensors are all binary has a JSON header that
is byte-for-byte the same from one request to the next (perf_analyzer, tritonclient with a fixed batch),
so its decoded form is cached as a :class:`Plan` keyed by those bytes: the hot path then only slices the
body with ``np.frombuffer`` and reuses a pre-encoded response header. Every malformed input raises
:class:`fastml.errors.InvalidInput` saying what is wrong and where.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import numpy as np

from fastml.errors import InvalidInput
from fastml.serving.classification import requested_count
from fastml.serving.dataplane import (  # noqa: F401 - CONFIG_DTYPES re-exported
    CONFIG_DTYPES,
    check_classifiable,
    request_timeout_us,
)
from fastml.serving.shm import shape_count

# KServe datatype string -> numpy dtype (little-endian, as the binary extension requires).
NP_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# numpy dtype kind+size -> KServe datatype string, for outputs.
_DATATYPE_BY_NP = {np.dtype(v).str.lstrip("<>|=") if k != "BYTES" else "O": k for k, v in NP_DTYPES.items()}

_U32 = struct.Struct("<I")


def datatype_of(arr: np.ndarray) -> str:
    """The KServe datatype string of a numpy array (object/str/bytes arrays are BYTES)."""
    dt = arr.dtype
    if dt.kind in "OUS":
        return "BYTES"
    try:
        return _DATATYPE_BY_NP[dt.str.lstrip("<>|=")]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dt} has no KServe datatype") from None


class InferInputJSON(msgspec.Struct, omit_defaults=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = msgspec.UNSET


class InferOutputJSON(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: dict[str, Any] = {}


class InferRequestJSON(msgspec.Struct, omit_defaults=True):
    inputs: list[InferInputJSON]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[InferOutputJSON] | None = None


_request_decoder = msgspec.json.Decoder(InferRequestJSON)
_encoder = msgspec.json.Encoder()
encode_json = _encoder.encode


def decode_request(header: bytes | memoryview) -> InferRequestJSON:
    """Decode the JSON part of an inference request.

    ``NaN``, ``Infinity`` and ``-Infinity`` are read as numbers, as Triton reads them (its JSON parser runs with
    rapidjson's ``kParseNanAndInfFlag``) and as tritonclient writes them for non-finite FP32/FP64 data (Python's
    ``json.dumps``); msgspec refuses them, so such a header is read again by Python's parser.
    """
    try:
        return _request_decoder.decode(header)
    except msgspec.DecodeError as exc:
        req = _decode_non_finite(header)
        if req is None:
            raise InvalidInput(f"malformed inference request JSON: {exc}") from None
        return req
    except RecursionError:  # JSON nested hundreds deep: malformed for us, never a 500
        raise InvalidInput("malformed inference request JSON: nested too deeply") from None


def _decode_non_finite(header: bytes | memoryview) -> InferRequestJSON | None:
    """The request of a header holding the ``NaN`` / ``Infinity`` tokens msgspec refuses, or None when it holds
    none or is not JSON anyway (the caller then reports msgspec's error)."""
    raw = bytes(header)
    if b"NaN" not in raw and b"Infinity" not in raw:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    try:
        return msgspec.convert(doc, InferRequestJSON)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"malformed inference request JSON: {exc}") from None


_MAX_NDIM = 32  # numpy's own limit is 64; no model input has more than a handful of dimensions


def _shape_size(shape: list[int], where: str) -> int:
    """Elements of ``shape``; refuses more than ``_MAX_NDIM`` dimensions and shapes numpy could not describe
    (any dimension or product of non-zero dimensions beyond 2**48, e.g. [0, 2**62] or [1, 2**63])."""
    if len(shape) > _MAX_NDIM:
        raise InvalidInput(f"{where}: shape has {len(shape)} dimensions; at most {_MAX_NDIM} are allowed")
    return shape_count(shape, where)


def _param_bool(params: dict, key: str, where: str) -> bool:
    v = params.get(key, False)
    if not isinstance(v, bool):
        raise InvalidInput(f"{where}: parameter {key!r} must be a bool, got {v!r}")
    return v


def decode_bytes_tensor(buf, count: int, where: str) -> np.ndarray:
    """Parse ``count`` BYTES elements (4-byte little-endian length + raw bytes each) filling ``buf``.

    Elements become ``str``: ONNX string tensors hold UTF-8 text and ONNX Runtime's Python binding turns
    a ``bytes`` object into its repr, so bytes that are not UTF-8 are refused here with InvalidInput.
    """
    mv = memoryview(buf)
    pos, end = 0, len(mv)
    # Every element takes at least its 4-byte length: a shape declaring more elements than the bytes received
    # could hold is refused before the object array is allocated (a 124-byte request must not cost gigabytes).
    if count * 4 > end:
        raise InvalidInput(f"{where}: shape declares {count} BYTES elements but only {end} bytes of data were sent")
    out = np.empty(count, dtype=object)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"{where}: BYTES data ends after {i} of {count} elements")
        (n,) = _U32.unpack_from(mv, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"{where}: BYTES element {i} claims {n} bytes but only {end - pos} remain")
        try:
            out[i] = str(mv[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{where}: BYTES element {i} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        pos += n
    if pos != end:
        raise InvalidInput(f"{where}: {end - pos} bytes left over after {count} BYTES elements")
    return out


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    """Serialize a BYTES tensor (str or bytes elements) as length-prefixed elements in row-major order."""
    parts = []
    pack = _U32.pack
    for item in arr.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_tensor(spec: InferInputJSON, where: str) -> np.ndarray:
    dtype = NP_DTYPES[spec.datatype]
    count = _shape_size(spec.shape, where)
    data = spec.data
    if spec.datatype == "FP16":
        raise InvalidInput(f"{where}: FP16 has no JSON representation; send it as binary data")
    if spec.datatype == "BYTES":
        try:
            flat = _flatten(data, where)
        except RecursionError:
            raise InvalidInput(f"{where}: data nested too deeply") from None
        if len(flat) != count:
            raise InvalidInput(f"{where}: shape {spec.shape} needs {count} elements, data has {len(flat)}")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                out[i] = item
            else:
                raise InvalidInput(f"{where}: BYTES data element {i} is {type(item).__name__}, expected a string")
        return out.reshape(spec.shape)
    if isinstance(data, (str, bytes, dict)):
        raise InvalidInput(f"{where}: data must be a (nested) list of numbers")
    arr = _json_numbers(data, dtype, spec.datatype, where)
    if arr.size != count:
        raise InvalidInput(f"{where}: shape {spec.shape} needs {count} elements, data has {arr.size}")
    if spec.datatype != "BOOL" and _has_bool(data):
        raise InvalidInput(f"{where}: data holds booleans but the datatype is {spec.datatype}")
    return arr.reshape(spec.shape)


# The JSON values each datatype takes, by the kind numpy reads them as (np.asarray without a dtype): true/false
# for BOOL, integers for the integer types, any number for the floating-point ones, as Triton takes them.
# Casting straight to the datatype would read "false" as True, "1.5" as 1.5 and 1.5 as 1 for an INT32.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_WORDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers", "U": "strings"}
_TYPE_WORDS = {bool: "booleans", int: "integers", float: "floating-point numbers", str: "strings"}


def _json_numbers(data, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """The array of a numeric JSON tensor's ``data``, refusing values of another JSON kind than ``datatype``
    takes and integers it cannot hold."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(f"{where}: data cannot be read as {datatype}: {exc}") from None
    kind = values.dtype.kind
    if kind == "O" or (kind == "f" and dtype.kind != "f"):
        # numpy promoted the values: nulls or objects, integers beyond 64 bits, or integers of both signs past
        # int64 (read as floats): judged one by one
        return _json_values(values, data, dtype, datatype, where)
    if values.size and kind not in _JSON_KINDS[dtype.kind]:
        raise InvalidInput(f"{where}: data holds {_KIND_WORDS.get(kind, 'values')} but the datatype is {datatype}")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InvalidInput(f"{where}: data holds integers outside the range of {datatype}")
    return values.astype(dtype, copy=False)


def _json_values(values: np.ndarray, data, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """:func:`_json_numbers` for values numpy could not read as one kind: each must be an integer, or for a
    floating-point datatype any number; numpy then refuses integers the datatype cannot hold."""
    items = values if values.dtype.kind == "O" else np.asarray(data, dtype=object)
    for v in items.flat:
        if type(v) is not int and (type(v) is not float or dtype.kind != "f"):
            word = _TYPE_WORDS.get(type(v), "null values" if v is None else "values")
            raise InvalidInput(f"{where}: data holds {word} but the datatype is {datatype}")
    try:
        return items.astype(dtype)
    except OverflowError:
        raise InvalidInput(f"{where}: data holds numbers outside the range of {datatype}") from None


def _has_bool(data) -> bool:
    # Only the first element is checked: numpy already refuses mixed nesting and most type mix-ups.
    while isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, bool)


def _flatten(data, where: str) -> list:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a list")
    if data and isinstance(data[0], list):
        out: list = []
        for row in data:
            out.extend(_flatten(row, where))
        return out
    return data


class Plan:
    """A decoded inference request header, reusable for every request with the same header bytes.

    Attributes:
        binary: ``(name, dtype, shape, offset, nbytes, is_bytes)`` per binary input, in body order.
        json_inputs: ``{name: array}`` decoded from JSON ``data`` (only in uncached plans).
        outputs: ``(name, binary)`` per requested output, or None for all outputs.
        all_binary: binary flag used for every output when ``outputs`` is None.
        binary_size: total bytes of binary input data the body must carry after the header.
        request_id: the request's ``id`` (None if absent).
        response_headers: cache of pre-encoded response JSON headers keyed by output shapes.
    """

    __slots__ = (
        "binary",
        "json_inputs",
        "outputs",
        "all_binary",
        "binary_size",
        "request_id",
        "response_headers",
        "cacheable",
        "timeout_us",
        "single",
        "classify",
    )

    def __init__(self):
        self.binary: list[tuple] = []
        self.json_inputs: dict[str, np.ndarray] = {}
        self.outputs: list[tuple[str, bool]] | None = None
        self.all_binary = False
        self.binary_size = 0
        self.request_id: str | None = None
        self.response_headers: dict = {}
        self.cacheable = True
        self.timeout_us: int | None = None
        self.single: tuple | None = None  # (name, dtype, count, shape) when the one input is numeric binary
        self.classify: dict[str, int] | None = None  # outputs answered with their top classes: name -> count


def build_plan(req: InferRequestJSON, output_names: frozenset[str] | set[str], model_name: str) -> Plan:
    """Validate a decoded request's structure and turn it into a :class:`Plan`.

    Names and dtypes of inputs are checked by the engine (it knows the signature); here we check what the
    wire format itself requires, and that requested outputs exist.
    """
    plan = Plan()
    plan.request_id = req.id
    params = req.parameters
    if params:
        plan.timeout_us = request_timeout_us(params, model_name)
        plan.all_binary = _param_bool(params, "binary_data_output", "request")
    if not req.inputs:
        raise InvalidInput("request has no inputs")
    offset = 0
    seen: set[str] = set()
    for spec in req.inputs:
        where = f"input {spec.name!r}"
        if spec.name in seen:
            raise InvalidInput(f"{where} appears twice")
        seen.add(spec.name)
        if spec.datatype not in NP_DTYPES:
            raise InvalidInput(f"{where}: unknown datatype {spec.datatype!r}; known: {', '.join(NP_DTYPES)}")
        count = _shape_size(spec.shape, where)
        size = spec.parameters.get("binary_data_size") if spec.parameters else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if spec.data is not msgspec.UNSET:
                raise InvalidInput(f"{where}: has both binary_data_size and JSON data")
            is_bytes = spec.datatype == "BYTES"
            dtype = NP_DTYPES[spec.datatype]
            if not is_bytes and size != count * dtype.itemsize:
                raise InvalidInput(
                    f"{where}: binary_data_size {size} does not match shape {spec.shape} of {spec.datatype} "
                    f"({count * dtype.itemsize} bytes)"
                )
            plan.binary.append((spec.name, dtype, tuple(spec.shape), offset, size, is_bytes))
            offset += size
        else:
            if spec.data is msgspec.UNSET:
                raise InvalidInput(f"{where}: has neither data nor parameters.binary_data_size")
            plan.json_inputs[spec.name] = _json_tensor(spec, where)
            plan.cacheable = False
    plan.binary_size = offset
    if len(plan.binary) == 1 and not plan.json_inputs and not plan.binary[0][5]:
        name, dtype, shape, _, nbytes, _ = plan.binary[0]
        plan.single = (name, dtype, nbytes // dtype.itemsize, shape)
    if req.outputs is not None and len(req.outputs) > 0:
        outs = []
        for spec in req.outputs:
            if spec.name not in output_names:
                raise InvalidInput(
                    f"unknown output {spec.name!r} for model {model_name!r}; it has: {', '.join(sorted(output_names))}"
                )
            p = spec.parameters
            classes = requested_count(p, spec.name)
            if classes is not None:
                plan.classify = plan.classify or {}
                plan.classify[spec.name] = classes
            binary = (
                _param_bool(p, "binary_data", f"output {spec.name!r}") if p and "binary_data" in p else plan.all_binary
            )
            outs.append((spec.name, binary))
        if len({name for name, _ in outs}) != len(outs):
            # Refused as the data plane refuses it for gRPC and the binary protocol (Triton: a bad request).
            raise InvalidInput(f"an output is requested twice: {[name for name, _ in outs]}")
        plan.outputs = outs
        if plan.classify:
            # Refused here, before the model runs, so the refusal counts as a failure, not a success.
            check_classifiable(output_names, plan.classify)
    # A plan with an id is reused only for the same header bytes, hence the same id: still cacheable.
    return plan


def plan_inputs(plan: Plan, body, header_len: int) -> dict[str, np.ndarray]:
    """Materialise the input arrays of a plan from a request body (zero-copy views for numeric data)."""
    single = plan.single
    if single is not None and len(body) - header_len == plan.binary_size:
        name, dtype, count, shape = single
        return {name: np.frombuffer(body, dtype, count, header_len).reshape(shape)}
    if len(body) - header_len != plan.binary_size:
        raise InvalidInput(
            f"binary_data_size of the inputs adds up to {plan.binary_size} bytes but the body carries "
            f"{len(body) - header_len} bytes after the {header_len}-byte JSON header"
        )
    if plan.json_inputs:
        inputs = dict(plan.json_inputs)
    else:
        inputs = {}
    for name, dtype, shape, offset, nbytes, is_bytes in plan.binary:
        start = header_len + offset
        if is_bytes:
            count = 1
            for d in shape:
                count *= d
            inputs[name] = decode_bytes_tensor(
                memoryview(body)[start : start + nbytes], count, f"input {name!r}"
            ).reshape(shape)
        else:
            inputs[name] = np.frombuffer(body, dtype, nbytes // dtype.itemsize, start).reshape(shape)
    return inputs


def raw_input(body, spec_name: str, datatype: str, sig_shape: list[int]) -> dict[str, np.ndarray]:
    """Decode a raw binary request (``Inference-Header-Content-Length: 0``) for a one-input model.

    The body is the data of the one input, treated as batch 1; at most one other dimension may be
    variable and it is inferred from the body size.
    """
    where = f"raw binary request for input {spec_name!r}"
    if datatype == "BYTES":
        return {spec_name: decode_bytes_tensor(body, 1, where).reshape(1, *([1] * (len(sig_shape) - 1)))}
    dtype = NP_DTYPES[datatype]
    dims = list(sig_shape)
    if dims and dims[0] == -1:
        dims[0] = 1
    unknown = [i for i, d in enumerate(dims) if d < 0]
    if len(unknown) > 1:
        raise InvalidInput(f"{where}: the input has {len(unknown)} variable dimensions; at most one is allowed")
    known = 1
    for d in dims:
        if d >= 0:
            known *= d
    if len(body) % dtype.itemsize:
        raise InvalidInput(f"{where}: {len(body)} bytes is not a multiple of the {datatype} size {dtype.itemsize}")
    count = len(body) // dtype.itemsize
    if unknown:
        if known == 0 or count % known:
            raise InvalidInput(f"{where}: {count} elements do not fit shape {sig_shape}")
        dims[unknown[0]] = count // known
    elif count != known:
        raise InvalidInput(f"{where}: {len(body)} bytes do not match shape {dims} of {datatype}")
    return {spec_name: np.frombuffer(body, dtype, count).reshape(dims)}


def output_bytes(arr: np.ndarray, datatype: str) -> bytes:
    """The binary-extension bytes of one output tensor."""
    if datatype == "BYTES":
        return encode_bytes_tensor(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def output_json_data(arr: np.ndarray, datatype: str) -> list | msgspec.Raw:
    """The flat row-major JSON ``data`` list of one output tensor.

    Non-finite floating-point values are written ``NaN``, ``Infinity`` and ``-Infinity``, as Triton writes them
    (rapidjson's ``kWriteNanAndInfFlag``) and as tritonclient reads them: msgspec would write ``null``, which a
    client reads back as NaN, turning an infinity into NaN. Such data comes back as pre-encoded JSON.
    """
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x) for x in arr.reshape(-1)]
    if datatype == "FP16":
        arr = arr.astype(np.float32)
    values = arr.reshape(-1).tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return msgspec.Raw(json.dumps(values, separators=(",", ":")).encode())
    return values
