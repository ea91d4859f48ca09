"""System shared memory over gRPC with tritonclient.grpc and tritonclient.utils.shared_memory."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.utils.shared_memory as shm
from inprocess import DATATYPES, InProcessServer, ShmObject, as_str_array, make_repo, ort_run, serialize_bytes
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("shm_grpc"))


@pytest.fixture(scope="module")
def srv(repo):
    with InProcessServer(repo) as s:
        yield s


@pytest.fixture
def client(srv):
    c = tg.InferenceServerClient(srv.grpc_url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


def _nbytes(arr: np.ndarray, dt: str) -> int:
    return len(serialize_bytes(arr)) if dt == "BYTES" else arr.nbytes


def test_register_status_unregister(client, srv):
    obj = ShmObject(4096)
    try:
        client.register_system_shared_memory("a", obj.key, 1024, offset=512)
        client.register_system_shared_memory("b", obj.key, 256)
        status = client.get_system_shared_memory_status()
        regions = dict(status.regions)
        assert set(regions) == {"a", "b"}
        assert (regions["a"].key, regions["a"].offset, regions["a"].byte_size) == (obj.key, 512, 1024)
        one = client.get_system_shared_memory_status("a").regions
        assert list(one) == ["a"]
        with pytest.raises(InferenceServerException) as ei:
            client.register_system_shared_memory("a", obj.key, 16)
        assert ei.value.status() == "StatusCode.ALREADY_EXISTS"
        client.unregister_system_shared_memory("a")
        assert list(client.get_system_shared_memory_status().regions) == ["b"]
        client.unregister_system_shared_memory()
        assert len(client.get_system_shared_memory_status().regions) == 0
        assert len(srv.dataplane.shm) == 0
    finally:
        obj.close()


@pytest.mark.parametrize(
    "key,offset,size,code",
    [
        ("/fastml-test-missing-" + uuid.uuid4().hex[:8], 0, 64, "StatusCode.NOT_FOUND"),
        ("/../etc/passwd", 0, 64, "StatusCode.INVALID_ARGUMENT"),
        ("/dev/shm/x", 0, 64, "StatusCode.INVALID_ARGUMENT"),
        (None, 4000, 200, "StatusCode.INVALID_ARGUMENT"),  # beyond the object's end
    ],
    # Fixed ids: the missing key is random, and pytest-xdist's workers must collect the same test names.
    ids=["missing-key", "dot-dot", "dev-shm-path", "beyond-the-end"],
)
def test_bad_registrations_are_refused(client, key, offset, size, code):
    obj = ShmObject(4096)
    try:
        with pytest.raises(InferenceServerException) as ei:
            client.register_system_shared_memory("r", key or obj.key, size, offset=offset)
        assert ei.value.status() == code, ei.value.message()
        assert len(client.get_system_shared_memory_status().regions) == 0
    finally:
        obj.close()


def test_every_datatype_round_trips_through_shared_memory(client, repo):
    """Inputs read from one region, outputs written into another, with tritonclient's own shm helpers."""
    want = ort_run(repo / "ident" / "1" / "model.onnx", {f"in_{k}": v for k, v in DATATYPES.items()})
    sizes = {dt: _nbytes(a, dt) for dt, a in DATATYPES.items()}
    total = sum(sizes.values())
    key_in, key_out = f"/fastml-in-{uuid.uuid4().hex[:8]}", f"/fastml-out-{uuid.uuid4().hex[:8]}"
    h_in = shm.create_shared_memory_region("in", key_in, total)
    h_out = shm.create_shared_memory_region("out", key_out, total + 64)
    try:
        client.register_system_shared_memory("in", key_in, total)
        client.register_system_shared_memory("out", key_out, total + 64)
        inputs, outputs, offsets = [], [], {}
        off = 0
        for dt, arr in DATATYPES.items():
            shm.set_shared_memory_region(h_in, [serialize_byte_tensor(arr) if dt == "BYTES" else arr], offset=off)
            i = tg.InferInput(f"in_{dt}", list(arr.shape), dt)
            i.set_shared_memory("in", sizes[dt], offset=off)
            inputs.append(i)
            o = tg.InferRequestedOutput(f"out_{dt}")
            o.set_shared_memory("out", sizes[dt], offset=off)
            outputs.append(o)
            offsets[dt] = off
            off += sizes[dt]
        res = client.infer("ident", inputs, outputs=outputs, request_id="shm-1")
        for dt, arr in DATATYPES.items():
            out = res.get_output(f"out_{dt}")
            assert out.parameters["shared_memory_region"].string_param == "out"
            assert out.parameters["shared_memory_byte_size"].int64_param == sizes[dt]
            got = shm.get_contents_as_numpy(
                h_out, np.object_ if dt == "BYTES" else arr.dtype, list(out.shape), offset=offsets[dt]
            )
            if dt == "BYTES":
                assert as_str_array(got).tolist() == want[f"out_{dt}"].tolist()
            else:
                assert got.dtype == want[f"out_{dt}"].dtype
                np.testing.assert_array_equal(got, want[f"out_{dt}"])
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_mixed_shared_memory_and_raw_inputs_and_outputs(client):
    """A shm input beside raw ones: raw_input_contents counts only the inputs not in shared memory; a shm
    output beside a raw one keeps tritonclient's positional output lookup right."""
    key = f"/fastml-mix-{uuid.uuid4().hex[:8]}"
    h = shm.create_shared_memory_region("mix", key, 1024)
    try:
        client.register_system_shared_memory("mix", key, 1024)
        inputs = []
        for dt, arr in DATATYPES.items():
            i = tg.InferInput(f"in_{dt}", list(arr.shape), dt)
            if dt == "INT16":
                shm.set_shared_memory_region(h, [arr], offset=100)
                i.set_shared_memory("mix", arr.nbytes, offset=100)
            else:
                i.set_data_from_numpy(arr)
            inputs.append(i)
        o_shm = tg.InferRequestedOutput("out_INT16")
        o_shm.set_shared_memory("mix", 64, offset=512)
        res = client.infer("ident", inputs, outputs=[o_shm, tg.InferRequestedOutput("out_FP64")])
        np.testing.assert_array_equal(res.as_numpy("out_FP64"), DATATYPES["FP64"])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.int16, [2, 3], offset=512), DATATYPES["INT16"])
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)


def test_bad_shared_memory_references_are_invalid_argument_and_the_server_keeps_serving(client):
    key = f"/fastml-bad-{uuid.uuid4().hex[:8]}"
    h = shm.create_shared_memory_region("r", key, 64)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        client.register_system_shared_memory("r", key, 64)
        shm.set_shared_memory_region(h, [x])
        cases = [
            (
                "unknown region",
                lambda i, o: i.set_shared_memory("nope", 16),
                "Unable to find shared memory region: 'nope'",
            ),
            ("outside the region", lambda i, o: i.set_shared_memory("r", 16, offset=60), "outside region 'r'"),
            ("wrong byte size", lambda i, o: i.set_shared_memory("r", 12), "does not match shape"),
            ("output outside", lambda i, o: o.set_shared_memory("r", 16, offset=56), "outside region 'r'"),
            ("output too small", lambda i, o: o.set_shared_memory("r", 8, offset=32), "at least 16 bytes"),
        ]
        for label, setup, needle in cases:
            i = tg.InferInput("x", [1, 4], "FP32")
            i.set_shared_memory("r", 16)
            o = tg.InferRequestedOutput("y")
            setup(i, o)
            with pytest.raises(InferenceServerException) as ei:
                client.infer("scale", [i], outputs=[o])
            assert ei.value.status() == "StatusCode.INVALID_ARGUMENT", label
            assert needle in ei.value.message(), (label, ei.value.message())
        i = tg.InferInput("x", [1, 4], "FP32")
        i.set_shared_memory("r", 16)
        o = tg.InferRequestedOutput("y")
        o.set_shared_memory("r", 16, offset=32)
        client.infer("scale", [i], outputs=[o])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.float32, [1, 4], offset=32), 2 * x)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)


def test_an_unregistered_region_is_no_longer_readable(client):
    obj = ShmObject(64)
    try:
        client.register_system_shared_memory("gone", obj.key, 64)
        client.unregister_system_shared_memory("gone")
        i = tg.InferInput("x", [1, 4], "FP32")
        i.set_shared_memory("gone", 16)
        with pytest.raises(InferenceServerException) as ei:
            client.infer("scale", [i])
        assert ei.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        obj.close()


def test_bytes_serialized_size_matches_tritonclient():
    # The sizes the tests declare for BYTES regions are those of tritonclient's own serialization.
    arr = DATATYPES["BYTES"]
    ours = serialize_bytes(arr)
    theirs = serialize_byte_tensor(arr)
    assert serialized_byte_size(theirs) == len(ours) and theirs.item() == ours


def test_registration_is_refused_when_several_worker_processes_share_the_port():
    import asyncio

    import grpc

    from fastml.server.grpc_service import GrpcListener
    from fastml.server.proto import grpc_service_pb2 as pb
    from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc
    from fastml.serving.dataplane import DataPlane

    async def go():
        listener = GrpcListener(DataPlane(None), port=0, reuse_port=True)
        port = await listener.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.SystemSharedMemoryRegister(
                        pb.SystemSharedMemoryRegisterRequest(name="r", key="/x", byte_size=8)
                    )
                return ei.value
        finally:
            await listener.stop(0)

    err = asyncio.run(go())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "--workers 1" in err.details()
