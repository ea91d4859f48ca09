"""The gRPC request decoder under arbitrary requests: it returns an InferRequest or raises InvalidInput,
never anything else, and never allocates for a declared size the bytes do not back."""

from __future__ import annotations

import mmap
import os
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastml.errors import InvalidInput
from fastml.server.grpc_service import decode_infer_request
from fastml.server.proto import grpc_service_pb2 as pb
from fastml.serving.shm import SharedMemoryRegistry

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


@pytest.fixture(scope="module")
def registry():
    key = f"/fastml-fuzz-{uuid.uuid4().hex[:10]}"
    fd = os.open("/dev/shm" + key, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 256)
    mm = mmap.mmap(fd, 256)
    os.close(fd)
    mm[:] = bytes(range(256))
    reg = SharedMemoryRegistry()
    reg.register("r", key, 16, 200)
    yield reg
    reg.close()
    mm.close()
    os.unlink("/dev/shm" + key)


dims = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1]))
params = st.dictionaries(
    st.sampled_from(["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size", "other"]),
    st.one_of(st.integers(-5, 300), st.sampled_from(["r", "nope", ""]), st.booleans()),
    max_size=3,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "c"]),
        "datatype": st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5)),
        "shape": st.lists(dims, max_size=4),
        "params": params,
        "ints": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
        "floats": st.lists(st.floats(width=32), max_size=8),
        "bytes": st.lists(st.binary(max_size=6), max_size=8),
    }
)


def _set(pmap, key, value):
    if isinstance(value, bool):
        pmap[key].bool_param = value
    elif isinstance(value, int):
        pmap[key].int64_param = value
    else:
        pmap[key].string_param = value


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.lists(tensor, max_size=3), raw=st.lists(st.binary(max_size=40), max_size=4), use_raw=st.booleans())
def test_decoder_returns_or_raises_invalid_input(registry, tensors, raw, use_raw):
    msg = pb.ModelInferRequest(model_name="m")
    for t in tensors:
        it = msg.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for k, v in t["params"].items():
            _set(it.parameters, k, v)
        it.contents.int_contents.extend(t["ints"])
        it.contents.fp32_contents.extend(t["floats"])
        it.contents.bytes_contents.extend(t["bytes"])
    if use_raw:
        msg.raw_input_contents.extend(raw)
    try:
        req, _ = decode_infer_request(pb.ModelInferRequest.FromString(msg.SerializeToString()), registry)
    except InvalidInput:
        return
    for arr in req.inputs.values():
        assert isinstance(arr, np.ndarray)
        assert arr.size < 10_000  # nothing large was built from a small message
