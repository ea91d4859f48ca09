"""System shared memory over KServe v2 HTTP (Triton's routes) with tritonclient.http."""

from __future__ import annotations

import http.client
import json
import uuid

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from inprocess import DATATYPES, InProcessServer, ShmObject, as_str_array, make_repo, ort_run, serialize_bytes
from tritonclient.utils import InferenceServerException, serialize_byte_tensor


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("shm_http"))


@pytest.fixture(scope="module")
def srv(repo):
    with InProcessServer(repo, http=True) as s:
        yield s


@pytest.fixture
def client(srv):
    c = th.InferenceServerClient(srv.http_url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


def _raw(srv, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    try:
        conn.request(method, path, body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_routes_register_status_unregister(srv, client):
    obj = ShmObject(4096)
    try:
        client.register_system_shared_memory("a", obj.key, 1024, offset=512)
        client.register_system_shared_memory("b", obj.key, 64)
        status = {r["name"]: r for r in client.get_system_shared_memory_status()}
        assert status["a"] == {"name": "a", "key": obj.key, "offset": 512, "byte_size": 1024}
        assert [r["name"] for r in client.get_system_shared_memory_status("b")] == ["b"]
        code, body = _raw(srv, "GET", "/v2/systemsharedmemory/region/zzz/status")
        assert code == 404 and "zzz" in json.loads(body)["error"]
        code, body = _raw(
            srv,
            "POST",
            "/v2/systemsharedmemory/region/a/register",
            json.dumps({"key": obj.key, "offset": 0, "byte_size": 8}).encode(),
        )
        assert code == 409 and "already in manager" in json.loads(body)["error"]
        client.unregister_system_shared_memory("a")
        assert [r["name"] for r in client.get_system_shared_memory_status()] == ["b"]
        code, _ = _raw(srv, "POST", "/v2/systemsharedmemory/unregister")
        assert code == 200 and client.get_system_shared_memory_status() == []
        code, _ = _raw(srv, "GET", "/v2/systemsharedmemory/region/a/register")
        assert code == 405
    finally:
        obj.close()


@pytest.mark.parametrize(
    "payload,status",
    [
        ({"key": "/fastml-test-missing-x", "byte_size": 64}, 404),
        ({"key": "/../../etc/passwd", "byte_size": 64}, 400),
        ({"key": "relative/path", "byte_size": 64}, 400),
        ({"key": "OBJ", "offset": 4090, "byte_size": 64}, 400),
        ({"key": "OBJ", "byte_size": -1}, 400),
        ({"key": "OBJ"}, 400),
        ("not json", 400),
    ],
)
def test_bad_registrations_are_400_or_404(srv, client, payload, status):
    obj = ShmObject(4096)
    try:
        if isinstance(payload, dict):
            payload = {k: (obj.key if v == "OBJ" else v) for k, v in payload.items()}
            body = json.dumps(payload).encode()
        else:
            body = payload.encode()
        code, resp = _raw(srv, "POST", "/v2/systemsharedmemory/region/r/register", body)
        assert code == status, resp
        assert "error" in json.loads(resp)
        assert client.get_system_shared_memory_status() == []
    finally:
        obj.close()


def test_cuda_shared_memory_has_no_regions_and_refuses_registration(srv):
    assert _raw(srv, "GET", "/v2/cudasharedmemory/status") == (200, b"[]")
    assert _raw(srv, "POST", "/v2/cudasharedmemory/unregister")[0] == 200
    code, body = _raw(srv, "POST", "/v2/cudasharedmemory/region/x/register", b"{}")
    assert code == 400 and "CUDA shared memory is not supported" in json.loads(body)["error"]
    code, body = _raw(srv, "GET", "/v2/cudasharedmemory/region/x/status")
    assert code == 400 and "x" in json.loads(body)["error"]


def test_every_datatype_round_trips_through_shared_memory(client, repo):
    want = ort_run(repo / "ident" / "1" / "model.onnx", {f"in_{k}": v for k, v in DATATYPES.items()})
    sizes = {dt: (len(serialize_bytes(a)) if dt == "BYTES" else a.nbytes) for dt, a in DATATYPES.items()}
    total = sum(sizes.values())
    key_in, key_out = f"/fastml-hin-{uuid.uuid4().hex[:8]}", f"/fastml-hout-{uuid.uuid4().hex[:8]}"
    h_in = shm.create_shared_memory_region("in", key_in, total)
    h_out = shm.create_shared_memory_region("out", key_out, total)
    try:
        client.register_system_shared_memory("in", key_in, total)
        client.register_system_shared_memory("out", key_out, total)
        inputs, outputs, offsets, off = [], [], {}, 0
        for dt, arr in DATATYPES.items():
            shm.set_shared_memory_region(h_in, [serialize_byte_tensor(arr) if dt == "BYTES" else arr], offset=off)
            i = th.InferInput(f"in_{dt}", list(arr.shape), dt)
            i.set_shared_memory("in", sizes[dt], offset=off)
            inputs.append(i)
            o = th.InferRequestedOutput(f"out_{dt}")
            o.set_shared_memory("out", sizes[dt], offset=off)
            outputs.append(o)
            offsets[dt] = off
            off += sizes[dt]
        res = client.infer("ident", inputs, outputs=outputs, request_id="h1")
        assert res.get_response()["id"] == "h1"
        for dt, arr in DATATYPES.items():
            out = res.get_output(f"out_{dt}")
            assert out["shape"] == [2, 3] and out["datatype"] == dt and "parameters" not in out
            got = shm.get_contents_as_numpy(
                h_out, np.object_ if dt == "BYTES" else arr.dtype, [2, 3], offset=offsets[dt]
            )
            if dt == "BYTES":
                assert as_str_array(got).tolist() == want[f"out_{dt}"].tolist()
            else:
                np.testing.assert_array_equal(got, want[f"out_{dt}"])
                assert got.dtype == want[f"out_{dt}"].dtype
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_shared_memory_beside_binary_and_json_tensors(client):
    key = f"/fastml-hmix-{uuid.uuid4().hex[:8]}"
    h = shm.create_shared_memory_region("mix", key, 256)
    try:
        client.register_system_shared_memory("mix", key, 256)
        inputs = []
        for n, (dt, arr) in enumerate(DATATYPES.items()):
            i = th.InferInput(f"in_{dt}", list(arr.shape), dt)
            if dt == "INT32":
                shm.set_shared_memory_region(h, [arr], offset=16)
                i.set_shared_memory("mix", arr.nbytes, offset=16)
            else:
                i.set_data_from_numpy(
                    arr, binary_data=(dt in ("FP16", "BYTES", "FP32", "FP64") or n % 2 == 0)
                )  # JSON has no inf
            inputs.append(i)
        o_shm = th.InferRequestedOutput("out_INT32")
        o_shm.set_shared_memory("mix", 24, offset=128)
        outs = [
            o_shm,
            th.InferRequestedOutput("out_FP64", binary_data=True),
            th.InferRequestedOutput("out_INT8", binary_data=False),
        ]
        res = client.infer("ident", inputs, outputs=outs)
        np.testing.assert_array_equal(res.as_numpy("out_FP64"), DATATYPES["FP64"])
        np.testing.assert_array_equal(res.as_numpy("out_INT8"), DATATYPES["INT8"])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.int32, [2, 3], offset=128), DATATYPES["INT32"])
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)


def test_bad_references_are_400_and_the_server_keeps_serving(client):
    key = f"/fastml-hbad-{uuid.uuid4().hex[:8]}"
    h = shm.create_shared_memory_region("r", key, 64)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        client.register_system_shared_memory("r", key, 64)
        shm.set_shared_memory_region(h, [x])
        cases = [
            (lambda i, o: i.set_shared_memory("nope", 16), "Unable to find shared memory region: 'nope'"),
            (lambda i, o: i.set_shared_memory("r", 16, offset=60), "outside region 'r'"),
            (lambda i, o: i.set_shared_memory("r", 12), "does not match shape"),
            (lambda i, o: o.set_shared_memory("r", 16, offset=56), "outside region 'r'"),
            (lambda i, o: o.set_shared_memory("r", 8, offset=32), "at least 16 bytes"),
        ]
        for setup, needle in cases:
            i = th.InferInput("x", [1, 4], "FP32")
            i.set_shared_memory("r", 16)
            o = th.InferRequestedOutput("y")
            setup(i, o)
            with pytest.raises(InferenceServerException) as ei:
                client.infer("scale", [i], outputs=[o])
            assert ei.value.status() == "400" and needle in ei.value.message(), ei.value.message()
        i = th.InferInput("x", [1, 4], "FP32")
        i.set_shared_memory("r", 16)
        o = th.InferRequestedOutput("y")
        o.set_shared_memory("r", 16, offset=32)
        client.infer("scale", [i], outputs=[o])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.float32, [1, 4], offset=32), 2 * x)
        j = th.InferInput("x", [1, 4], "FP32")
        j.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("scale", [j]).as_numpy("y"), 2 * x)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)


def test_grpc_and_http_share_one_registry(srv, client):
    import tritonclient.grpc as tg

    obj = ShmObject(64)
    try:
        client.register_system_shared_memory("shared", obj.key, 64)
        g = tg.InferenceServerClient(srv.grpc_url)
        try:
            assert list(g.get_system_shared_memory_status().regions) == ["shared"]
        finally:
            g.close()
    finally:
        client.unregister_system_shared_memory()
        obj.close()


def test_refused_shared_memory_requests_count_as_the_models_failures(client):
    # A malformed request through shared memory was answered 400 but missing from the model's statistics,
    # which count every other refused HTTP (and gRPC) request as a failure.
    def fails() -> int:
        stats = client.get_inference_statistics("scale")["model_stats"]
        return sum(int(s["inference_stats"]["fail"]["count"]) for s in stats)

    key = f"/fastml-hcnt-{uuid.uuid4().hex[:8]}"
    h = shm.create_shared_memory_region("c", key, 64)
    try:
        client.register_system_shared_memory("c", key, 64)
        before = fails()
        for setup in (
            lambda i: i.set_shared_memory("nope", 16),
            lambda i: i.set_shared_memory("c", 16, offset=60),
            lambda i: i.set_shared_memory("c", 12),
        ):
            i = th.InferInput("x", [1, 4], "FP32")
            setup(i)
            with pytest.raises(InferenceServerException) as ei:
                client.infer("scale", [i])
            assert ei.value.status() == "400"
        assert fails() == before + 3
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)
