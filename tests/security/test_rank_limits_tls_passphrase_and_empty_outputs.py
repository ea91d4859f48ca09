"""Edges of the bounded-request and TLS promises: a client-declared rank numpy cannot build is a 400 (never a
500) on every path that reads shapes itself (shared memory over HTTP and gRPC, gRPC raw contents), a
zero-element output writes into a region, and an encrypted TLS key is refused at start-up with the file named
instead of prompting for a passphrase."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pki import make_pki
from served import ROOT

from fastml.errors import InvalidInput
from fastml.server.tls import TlsConfig
from fastml.serving.shm import SharedMemoryRegistry, shape_count

sys.path.insert(0, str(ROOT / "tests" / "server"))
from inprocess import InProcessServer, ShmObject, make_repo  # noqa: E402

RANK = 70  # more than the 32 dimensions a request may declare, and more than numpy's 64


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with InProcessServer(make_repo(tmp_path_factory.mktemp("edges_s3")), http=True) as s:
        yield s


@pytest.fixture(scope="module")
def grpcio_srv(tmp_path_factory):
    """The grpcio listener, which decodes every request in Python (the native one reads plain requests natively)."""
    with InProcessServer(make_repo(tmp_path_factory.mktemp("edges_s3_grpcio")), grpc_impl="grpcio") as s:
        yield s


@pytest.fixture
def region(srv):
    """A 64-byte region 'r' registered on the in-process server (directly: the admin plane is tested elsewhere)."""
    obj = ShmObject(64)
    srv.call(srv.dataplane.shm.register, "r", obj.key, 0, 64)
    yield "r"
    srv.call(srv.dataplane.shm.unregister, "r")
    obj.close()


def _post(srv, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    try:
        conn.request("POST", path, body, headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_shape_count_refuses_more_than_32_dimensions():
    assert shape_count([1] * 32, "input 'x'") == 1
    with pytest.raises(InvalidInput, match=r"input 'x': shape has 33 dimensions; at most 32"):
        shape_count([1] * 33, "input 'x'")
    with pytest.raises(InvalidInput, match=rf"shape has {RANK} dimensions"):
        shape_count([0] * RANK, "input 'x'")  # an empty tensor is no exception


@pytest.mark.parametrize("datatype,byte_size", [("FP32", 4), ("BYTES", 8)])
def test_http_shared_memory_input_of_rank_70_is_400(srv, region, datatype, byte_size):
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": [1] * RANK,
                "datatype": datatype,
                "parameters": {"shared_memory_region": region, "shared_memory_byte_size": byte_size},
            }
        ]
    }
    status, body = _post(srv, "/v2/models/scale/infer", json.dumps(doc).encode())
    assert status == 400, body
    assert f"input 'x': shape has {RANK} dimensions; at most 32 are allowed" in body["error"]


def test_http_binary_input_of_rank_70_beside_a_shared_memory_output_is_400(srv, region):
    # A request naming a region anywhere takes the shared-memory decoder, binary inputs included.
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1] * RANK, "datatype": "FP32", "parameters": {"binary_data_size": 4}}],
            "outputs": [{"name": "y", "parameters": {"shared_memory_region": region, "shared_memory_byte_size": 16}}],
        }
    ).encode()
    status, body = _post(
        srv,
        "/v2/models/scale/infer",
        header + np.float32(1).tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400, body
    assert f"shape has {RANK} dimensions" in body["error"]


@pytest.mark.parametrize("in_shm", [False, True], ids=["raw_input_contents", "shared_memory"])
def test_grpc_input_of_rank_70_is_invalid_argument(srv, grpcio_srv, region, in_shm):
    """Over the native listener a region's input goes the general way (grpc_service.decode); raw contents are
    checked on the grpcio listener, which reads every request that way."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    target = srv if in_shm else grpcio_srv

    req = service_pb2.ModelInferRequest(model_name="scale")
    tensor = req.inputs.add(name="x", datatype="FP32", shape=[1] * RANK)
    if in_shm:
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_byte_size"].int64_param = 4
    else:
        req.raw_input_contents.append(np.float32(1).tobytes())
    with grpc.insecure_channel(target.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert f"shape has {RANK} dimensions" in info.value.details()


def test_registry_input_view_of_rank_70_is_invalid_input(tmp_path):
    (tmp_path / "obj").write_bytes(bytes(64))
    reg = SharedMemoryRegistry(shm_dir=str(tmp_path))
    reg.register("r", "/obj", 0, 64)
    try:
        with pytest.raises(InvalidInput, match=rf"shape has {RANK} dimensions"):
            reg.input_view("r", 0, 4, np.float32, [1] * RANK)
    finally:
        reg.close()


def test_write_output_of_a_zero_element_array(tmp_path):
    """An output with no rows (a batch of zero) writes nothing and says so; a 2-D empty array used to raise
    TypeError (memoryview cannot cast a view with a zero in its shape)."""
    (tmp_path / "obj").write_bytes(b"\xab" * 64)
    reg = SharedMemoryRegistry(shm_dir=str(tmp_path))
    reg.register("r", "/obj", 0, 64)
    try:
        assert reg.write_output("r", 0, 64, np.zeros((0, 4), np.float32)) == 0
        assert reg.write_output("r", 8, 8, np.array([[1.5, -2.0]], np.float32)) == 8
        got = np.frombuffer(reg._regions["r"].buffer, np.uint8, 64).copy()
    finally:
        reg.close()
    expected = np.full(64, 0xAB, np.uint8)
    expected[8:16] = np.frombuffer(np.array([1.5, -2.0], np.float32).tobytes(), np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_an_encrypted_tls_key_is_refused_naming_the_file(tmp_path):
    pki = make_pki(tmp_path / "pki")
    key = serialization.load_pem_private_key(Path(pki["server_key"]).read_bytes(), None)
    encrypted = tmp_path / "server.enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(InvalidInput) as info:
        TlsConfig.from_options(str(pki["server_cert"]), str(encrypted), None)
    assert str(encrypted) in str(info.value)
    assert "is encrypted" in str(info.value)
    # The unencrypted key of the same certificate still works, and a mismatched one is still named as such.
    assert TlsConfig.from_options(str(pki["server_cert"]), str(pki["server_key"]), str(pki["ca"])).mutual
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(InvalidInput, match="KEY_VALUES_MISMATCH|does not match|cannot use certificate"):
        TlsConfig.from_options(str(pki["server_cert"]), str(other), None)


@pytest.mark.parametrize(
    "shape", [[1] * RANK, [0, 2**62], [2**31, 0, 2**31]], ids=["rank-70", "zero-by-huge", "huge-zero"]
)
def test_native_grpc_raw_contents_with_a_shape_numpy_cannot_build_is_invalid_argument(srv, shape):
    """The native listener reads raw contents on its own plain path, whose parser checks a shape's product only
    without a zero dimension: these shapes failed in numpy's reshape as INTERNAL."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    req = service_pb2.ModelInferRequest(model_name="scale")
    req.inputs.add(name="x", datatype="FP32", shape=shape)
    req.raw_input_contents.append(b"" if 0 in shape else np.float32(1).tobytes())
    with grpc.insecure_channel(srv.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "input 'x'" in info.value.details()
