"""KServe v2 gRPC (Triton's GRPCInferenceService) against tritonclient.grpc and our own stubs."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from inprocess import DATATYPES, InProcessServer, as_str_array, ident_inputs, make_repo, ort_run, serialize_bytes
from tritonclient.utils import InferenceServerException

from fastml import errors
from fastml.server.grpc_service import GRPC_STATUS, grpc_status
from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("grpc"))


# Every test here runs against both gRPC listeners: the native one (HTTP/2 by libnghttp2 on the event loop,
# the default) and grpcio's asyncio server (the fallback where fastml._h2 is not built).
@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(repo, request):
    if request.param == "native":
        pytest.importorskip("fastml._h2", reason="fastml._h2 is not built (libnghttp2-dev missing at build time)")
    with InProcessServer(repo, grpc_impl=request.param) as s:
        yield s


@pytest.fixture
def client(srv):
    c = tg.InferenceServerClient(srv.grpc_url)
    yield c
    c.close()


@pytest.fixture
def stub(srv):
    with grpc.insecure_channel(srv.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _reference(repo) -> dict[str, np.ndarray]:
    return ort_run(repo / "ident" / "1" / "model.onnx", {f"in_{k}": v for k, v in DATATYPES.items()})


def _assert_same(got: np.ndarray, want: np.ndarray, datatype: str):
    if datatype == "BYTES":
        assert as_str_array(got).tolist() == want.tolist()
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def _code(exc: InferenceServerException) -> str:
    return exc.status()


def test_every_grpc_status_code_has_its_own_error_class():
    # Each error kind maps to exactly the code the table says; the base class is the internal fallback.
    for cls, code in GRPC_STATUS.items():
        assert grpc_status(cls("x")) is code
    assert grpc_status(ValueError("not ours")) is grpc.StatusCode.INTERNAL
    assert grpc_status(errors.InvalidInput("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert set(GRPC_STATUS) >= {getattr(errors, n) for n in errors.__all__}


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("ident")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_server_metadata()
    assert meta.name == "fastml" and "statistics" in meta.extensions and meta.version
    mm = client.get_model_metadata("ident")
    assert mm.name == "ident" and list(mm.versions) == ["1"] and mm.platform == "onnxruntime_onnx"
    ins = {t.name: (t.datatype, list(t.shape)) for t in mm.inputs}
    assert ins["in_FP16"] == ("FP16", [-1, 3]) and ins["in_BYTES"] == ("BYTES", [-1, 3]) and len(ins) == 13
    cfg = client.get_model_config("ident").config
    assert cfg.name == "ident" and cfg.max_batch_size > 0 and cfg.backend == "onnxruntime"
    types = {i.name: tg.model_config_pb2.DataType.Name(i.data_type) for i in cfg.input}
    assert types["in_BYTES"] == "TYPE_STRING" and types["in_FP64"] == "TYPE_FP64" and list(cfg.input[0].dims) == [3]
    assert cfg.parameters["runner"].string_value in ("loop", "threads")
    assert cfg.dynamic_batching.default_queue_policy.allow_timeout_override
    with pytest.raises(InferenceServerException) as ei:
        client.get_model_metadata("no-such-model")
    assert _code(ei.value) == "StatusCode.NOT_FOUND" and "no-such-model" in ei.value.message()


def test_every_datatype_round_trips_raw_like_onnxruntime(client, repo):
    want = _reference(repo)
    inputs = []
    for dt, arr in DATATYPES.items():
        i = tg.InferInput(f"in_{dt}", list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    res = client.infer("ident", inputs, request_id="req-7")
    assert res.get_response().id == "req-7" and res.get_response().model_name == "ident"
    assert res.get_response().model_version == "1"
    for dt in DATATYPES:
        _assert_same(res.as_numpy(f"out_{dt}"), want[f"out_{dt}"], dt)
        out = res.get_output(f"out_{dt}")
        assert out.datatype == dt and list(out.shape) == [2, 3]


def test_requested_outputs_come_back_in_the_requested_order(client):
    inputs = ident_inputs(tg)
    outs = [tg.InferRequestedOutput("out_INT8"), tg.InferRequestedOutput("out_FP32")]
    res = client.infer("ident", inputs, outputs=outs)
    assert [o.name for o in res.get_response().outputs] == ["out_INT8", "out_FP32"]
    np.testing.assert_array_equal(res.as_numpy("out_FP32"), DATATYPES["FP32"])


def _typed_request(skip_fp16: bool = True) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="ident", id="typed")
    for dt, arr in DATATYPES.items():
        t = req.inputs.add(name=f"in_{dt}", datatype=dt, shape=arr.shape)
        flat = arr.reshape(-1)
        if dt == "FP16":
            continue
        if dt == "BYTES":
            t.contents.bytes_contents.extend([s.encode("utf-8") for s in flat])
        else:
            field = {
                "BOOL": "bool_contents",
                "INT64": "int64_contents",
                "UINT64": "uint64_contents",
                "FP32": "fp32_contents",
                "FP64": "fp64_contents",
            }.get(dt)
            if field is None:
                field = "uint_contents" if dt.startswith("UINT") else "int_contents"
            getattr(t.contents, field).extend(flat.tolist())
    return req


def test_every_datatype_round_trips_as_typed_contents(stub, repo):
    # FP16 has no typed field: it travels in raw_input_contents, which then holds exactly that input...
    req = _typed_request()
    with pytest.raises(grpc.RpcError) as ei:
        stub.ModelInfer(req)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "FP16" in ei.value.details()
    # ...so send every input raw except the typed ones: Triton's rule is all-raw or none; check all-raw
    # with our stub, then typed for all but FP16 against a model input list without FP16 being typed.
    raw = pb.ModelInferRequest(model_name="ident")
    for dt, arr in DATATYPES.items():
        raw.inputs.add(name=f"in_{dt}", datatype=dt, shape=arr.shape)
        raw.raw_input_contents.append(serialize_bytes(arr) if dt == "BYTES" else arr.tobytes())
    res_raw = stub.ModelInfer(raw)
    want = _reference(repo)
    decoded = {}
    for i, out in enumerate(res_raw.outputs):
        dt = out.datatype
        data = res_raw.raw_output_contents[i]
        if dt == "BYTES":
            from tritonclient.utils import deserialize_bytes_tensor

            decoded[out.name] = deserialize_bytes_tensor(data).reshape(tuple(out.shape))
        else:
            decoded[out.name] = np.frombuffer(data, DATATYPES[dt].dtype).reshape(tuple(out.shape))
    for dt in DATATYPES:
        _assert_same(decoded[f"out_{dt}"], want[f"out_{dt}"], dt)
    # Typed contents decode to the same arrays as raw bytes (checked on the server's decoder directly).
    from fastml.server.grpc_service import decode_infer_request
    from fastml.serving.shm import SharedMemoryRegistry

    typed = _typed_request()
    del typed.inputs[9]  # in_FP16
    req_typed, _ = decode_infer_request(typed, SharedMemoryRegistry())
    for dt, arr in DATATYPES.items():
        if dt == "FP16":
            continue
        got = req_typed.inputs[f"in_{dt}"]
        assert got.shape == arr.shape
        if dt == "BYTES":
            assert got.tolist() == arr.tolist()
        else:
            assert got.dtype == arr.dtype
            np.testing.assert_array_equal(got, arr)


def test_typed_contents_out_of_range_are_refused(stub):
    req = pb.ModelInferRequest(model_name="ident")
    t = req.inputs.add(name="in_INT8", datatype="INT8", shape=[1, 3])
    t.contents.int_contents.extend([1, 2, 300])
    with pytest.raises(grpc.RpcError) as ei:
        stub.ModelInfer(req)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the range of INT8" in ei.value.details()


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 5), "needs 12"),
        (lambda r: r.raw_input_contents.append(b"\x00" * 12), "entries for 1 inputs"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "unknown datatype"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -2), "negative dimension"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 2**62), "too large"),
        (lambda r: (r.inputs[0].shape.__setitem__(0, 0), r.inputs[0].shape.__setitem__(1, 2**62)), "too large"),
        (
            lambda r: (setattr(r.inputs[0], "datatype", "BYTES"), r.inputs[0].shape.__setitem__(0, 2**40)),
            "BYTES elements",
        ),
        (lambda r: r.inputs.add(name="in_FP32", datatype="FP32", shape=[1, 3]), "appears twice"),
        (lambda r: r.outputs.add(name="nope"), "unknown output"),
        (
            lambda r: (
                r.parameters["sequence_id"].int64_param == 0
                or r.parameters["sequence_id"].__setattr__("int64_param", 5)
            ),
            "sequence",
        ),
        (lambda r: r.parameters["timeout"].__setattr__("string_param", "soon"), "timeout"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(stub, mutate, needle):
    req = pb.ModelInferRequest(model_name="scale")
    req.inputs.add(name="in_FP32", datatype="FP32", shape=[1, 3])
    req.raw_input_contents.append(np.zeros(3, np.float32).tobytes())
    req.model_name = "ident"
    mutate(req)
    with pytest.raises(grpc.RpcError) as ei:
        stub.ModelInfer(req)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert needle in ei.value.details()
    ok = pb.ModelInferRequest(model_name="scale")
    ok.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    ok.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    res = stub.ModelInfer(ok)
    np.testing.assert_array_equal(np.frombuffer(res.raw_output_contents[0], np.float32), [0, 2, 4, 6])


def test_model_errors_map_to_grpc_codes(client):
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as ei:
        client.infer("no-such-model", [x])
    assert _code(ei.value) == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'no-such-model' is not found" in ei.value.message()
    y = tg.InferInput("x", [1, 5], "FP32")
    y.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as ei:
        client.infer("scale", [y])
    assert _code(ei.value) == "StatusCode.INVALID_ARGUMENT"
    z = tg.InferInput("x", [1, 4], "FP64")
    z.set_data_from_numpy(np.ones((1, 4), np.float64))
    with pytest.raises(InferenceServerException) as ei:
        client.infer("scale", [z])
    assert _code(ei.value) == "StatusCode.INVALID_ARGUMENT"
    np.testing.assert_array_equal(client.infer("scale", [x]).as_numpy("y"), 2 * np.ones((1, 4), np.float32))


def test_statistics_count_requests(client):
    before = client.get_inference_statistics("scale").model_stats[0]
    x = tg.InferInput("x", [3, 4], "FP32")
    x.set_data_from_numpy(np.ones((3, 4), np.float32))
    for _ in range(3):
        client.infer("scale", [x])
    after = client.get_inference_statistics("scale").model_stats[0]
    assert after.name == "scale" and after.version == "1"
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_count == before.inference_count + 9
    assert after.inference_stats.compute_infer.ns > 0
    names = {m.name for m in client.get_inference_statistics().model_stats}
    assert {"ident", "scale"} <= names
    with pytest.raises(InferenceServerException) as ei:
        client.get_inference_statistics("no-such-model")
    assert _code(ei.value) == "StatusCode.NOT_FOUND"


def test_stream_infer_answers_every_request_and_survives_errors(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(8):
            n = 4 if i != 5 else 5  # request 5 has the wrong width
            x = tg.InferInput("x", [1, n], "FP32")
            x.set_data_from_numpy(np.full((1, n), i, np.float32))
            client.async_stream_infer("scale", [x], request_id=f"s{i}")
        got = [answers.get(timeout=30) for _ in range(8)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r.as_numpy("y") for r, e in got if e is None}
    errs = [e for r, e in got if e is not None]
    assert sorted(ok) == [f"s{i}" for i in range(8) if i != 5]
    for rid, y in ok.items():
        np.testing.assert_array_equal(y, np.full((1, 4), 2 * int(rid[1:]), np.float32))
    assert len(errs) == 1 and "unexpected shape for input 'x'" in errs[0].message() and "got [1,5]" in errs[0].message()


def test_repository_index_unload_and_load(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["ident"].state == "READY" and index["scale"].version == "1"
    client.unload_model("scale")
    try:
        assert not client.is_model_ready("scale")
        x = tg.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as ei:
            client.infer("scale", [x])
        assert _code(ei.value) == "StatusCode.UNAVAILABLE"
    finally:
        client.load_model("scale")
    assert client.is_model_ready("scale")
    with pytest.raises(InferenceServerException) as ei:
        client.load_model("scale", files={"file:1/model.onnx": b"x"})
    assert _code(ei.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as ei:
        client.load_model("no-such-model")
    assert _code(ei.value) == "StatusCode.NOT_FOUND"


def test_cuda_shared_memory_has_no_regions_and_registration_is_unimplemented(client):
    assert len(client.get_cuda_shared_memory_status().regions) == 0
    client.unregister_cuda_shared_memory()  # nothing registered: nothing to do, as perf_analyzer expects at exit
    with pytest.raises(InferenceServerException) as ei:
        client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64)  # base64 of a handle
    assert _code(ei.value) == "StatusCode.UNIMPLEMENTED" and "CUDA shared memory is not supported" in ei.value.message()


def test_aio_client(srv):
    import asyncio

    import tritonclient.grpc.aio as tga

    async def go():
        c = tga.InferenceServerClient(srv.grpc_url)
        try:
            xs = []
            for i in range(16):
                x = tga.InferInput("x", [1, 4], "FP32")
                x.set_data_from_numpy(np.full((1, 4), i, np.float32))
                xs.append(c.infer("scale", [x], request_id=str(i)))
            return await asyncio.gather(*xs)
        finally:
            await c.close()

    results = asyncio.run(go())
    for r in results:
        i = int(r.get_response().id)
        np.testing.assert_array_equal(r.as_numpy("y"), np.full((1, 4), 2 * i, np.float32))


def test_grpc_health_check_follows_readiness(srv):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert stub.Check(named).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        srv.call(setattr, srv.dataplane, "draining", True)  # what a SIGTERM starts with
        try:
            assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            srv.call(setattr, srv.dataplane, "draining", False)
