"""The Triton "model config" answer that perf_analyzer asks for once at start-up.

MLServer and KServe do not implement ``GET /v2/models/{name}/config`` (HTTP) or the ``ModelConfig``
RPC (gRPC); perf_analyzer refuses to run without them. Both reference models share one signature
(input ``input`` FP32 [-1, 32] -> ``probabilities`` FP32 [-1, 2]), so the answer is fixed.

The gRPC reply is encoded by hand (a few protobuf fields): importing tritonclient's generated classes
into a server that registers its own ``inference.*`` descriptors would clash in protobuf's default pool.
Runs inside the peer's virtual environment (fastapi and grpc come with the peer).
"""

from __future__ import annotations

TYPE_FP32 = 11  # inference.DataType.TYPE_FP32


def config_json(model_name: str) -> dict:
    """The HTTP answer (Triton's JSON form of ModelConfig)."""
    return {
        "name": model_name,
        "platform": "",
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 32]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, 2]}],
    }


def add_http_route(app) -> None:
    """Put the config route in front of the server's own routes (a FastAPI/Starlette app)."""
    from fastapi.routing import APIRoute

    async def model_config(model_name: str, model_version: str = "") -> dict:
        return config_json(model_name)

    for path in ("/v2/models/{model_name}/config", "/v2/models/{model_name}/versions/{model_version}/config"):
        app.router.routes.insert(0, APIRoute(path, model_config, methods=["GET"]))


# ---- protobuf wire format: just what ModelConfigResponse needs ------------------------------------------
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 dims (-1) are ten-byte two's complement varints
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _tensor(name: str, dims: list[int], dims_field: int) -> bytes:
    # ModelInput: name=1, data_type=2, dims=4 (packed); ModelOutput: name=1, data_type=2, dims=3.
    packed = b"".join(_varint(d) for d in dims)
    return _field_bytes(1, name.encode()) + _field_int(2, TYPE_FP32) + _field_bytes(dims_field, packed)


def model_config_response(model_name: str) -> bytes:
    """Serialized inference.ModelConfigResponse{config: ModelConfig{name, max_batch_size, input, output, backend}}."""
    config = (
        _field_bytes(1, model_name.encode())
        + _field_int(4, 0)
        + _field_bytes(5, _tensor("input", [-1, 32], 4))
        + _field_bytes(6, _tensor("probabilities", [-1, 2], 3))
        + _field_bytes(17, b"python")
    )
    return _field_bytes(1, config)


def _request_name(raw: bytes) -> str:
    """ModelConfigRequest.name (field 1) from the serialized request; other fields are skipped."""
    i = 0
    while i < len(raw):
        key, i = _read_varint(raw, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(raw, i)
        elif wire == 2:
            length, i = _read_varint(raw, i)
            if key >> 3 == 1:
                return raw[i : i + length].decode()
            i += length
        else:
            break
    return ""


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = raw[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def grpc_handler():
    """A generic gRPC handler answering inference.GRPCInferenceService/ModelConfig (grpc.aio server)."""
    import grpc

    async def model_config(name: str, context) -> bytes:
        return model_config_response(name)

    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelConfig": grpc.unary_unary_rpc_method_handler(
                model_config, request_deserializer=_request_name, response_serializer=lambda b: b
            ),
        },
    )
