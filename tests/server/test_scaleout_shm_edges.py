"""System shared memory edge cases: a region name unregistered or reused while a request runs."""

from __future__ import annotations

import json
import mmap
import os
import uuid

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.server import shm_http
from fastml.serving.dataplane import InferResponse
from fastml.serving.shm import SharedMemoryRegistry


@pytest.fixture
def objects():
    """make(byte_size) -> (key, mapping) of a fresh POSIX shared-memory object; all removed afterwards."""
    made = []

    def make(byte_size: int):
        key = f"/fastml-test-{uuid.uuid4().hex[:12]}"
        fd = os.open("/dev/shm" + key, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, byte_size)
        mm = mmap.mmap(fd, byte_size)
        os.close(fd)
        made.append((key, mm))
        return key, mm

    yield make
    for key, mm in made:
        mm.close()
        os.unlink("/dev/shm" + key)


def _request_with_output_in(region: str, offset: int = 0) -> bytes:
    return json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [
                {
                    "name": "y",
                    "parameters": {
                        "shared_memory_region": region,
                        "shared_memory_offset": offset,
                        "shared_memory_byte_size": 16,
                    },
                }
            ],
        }
    ).encode()


def _answer(header: bytes, registry, between=lambda: None) -> bytes:
    """Decode a request as the HTTP transport does, run ``between`` while it is "in flight", then encode."""
    _, out_specs, binary_default = shm_http.decode(header, header, len(header), registry, "m", None)
    between()
    resp = InferResponse("m", "1", None, {"y": np.array([[2, 4, 6, 8]], np.float32)})
    return shm_http.encode(resp, out_specs, binary_default, registry, b"")


def test_a_region_name_reused_while_a_request_runs_never_receives_its_answer(objects):
    key_a, mm_a = objects(64)
    key_b, mm_b = objects(64)
    registry = SharedMemoryRegistry()
    registry.register("out", key_a, 16, 48)
    _answer(_request_with_output_in("out", 8), registry)  # untouched: the answer lands at 16 + 8
    assert np.frombuffer(mm_a, np.float32).tolist() == [0.0] * 6 + [2.0, 4.0, 6.0, 8.0] + [0.0] * 6

    def reuse():  # another client takes the name for its own object meanwhile
        registry.unregister("out")
        registry.register("out", key_b, 0, 64)

    with pytest.raises(InvalidInput) as info:
        _answer(_request_with_output_in("out"), registry, reuse)
    assert str(info.value) == "output 'y': shared memory region 'out' was unregistered while the request ran"
    assert bytes(mm_b) == bytes(64)
    registry.close()


def test_a_region_unregistered_while_a_request_runs_is_not_written(objects):
    key, mm = objects(64)
    registry = SharedMemoryRegistry()
    registry.register("out", key, 0, 64)
    with pytest.raises(InvalidInput) as info:
        _answer(_request_with_output_in("out"), registry, lambda: registry.unregister())
    assert str(info.value) == "output 'y': shared memory region 'out' was unregistered while the request ran"
    assert bytes(mm) == bytes(64)


def test_grpc_answers_go_to_the_region_found_when_the_request_arrived(objects):
    """The gRPC decoder and encoder keep the region as the HTTP ones do: a name reused meanwhile is refused."""
    from fastml.server.grpc_service import decode_infer_request, encode_infer_response
    from fastml.server.proto import grpc_service_pb2 as pb

    key_a, mm_a = objects(64)
    key_b, mm_b = objects(64)
    registry = SharedMemoryRegistry()
    registry.register("out", key_a, 16, 48)
    msg = pb.ModelInferRequest(model_name="m")
    x = msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([1, 2, 3, 4])
    out = msg.outputs.add(name="y")
    out.parameters["shared_memory_region"].string_param = "out"
    out.parameters["shared_memory_byte_size"].int64_param = 16
    resp = InferResponse("m", "1", None, {"y": np.array([[2, 4, 6, 8]], np.float32)})

    _, out_shm = decode_infer_request(msg, registry)
    encode_infer_response(resp, registry, out_shm)
    assert np.frombuffer(mm_a, np.float32)[4:8].tolist() == [2.0, 4.0, 6.0, 8.0]

    _, out_shm = decode_infer_request(msg, registry)
    registry.unregister("out")
    registry.register("out", key_b, 0, 64)
    with pytest.raises(InvalidInput) as info:
        encode_infer_response(resp, registry, out_shm)
    assert str(info.value) == "output 'y': shared memory region 'out' was unregistered while the request ran"
    assert bytes(mm_b) == bytes(64)
