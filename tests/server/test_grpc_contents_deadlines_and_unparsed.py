"""Edge cases of the gRPC endpoint's request decoding, against Triton's rules, over both listeners."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from inprocess import DATATYPES, InProcessServer, ShmObject, make_repo

from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc

TYPED = [dt for dt in DATATYPES if dt != "FP16"]  # FP16 has no typed contents field


def _make_typed_identity(path) -> None:
    """``typed``: ``ident`` without FP16, so that a request may carry every input as typed contents."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    onnx_types = {dt: getattr(T, {"FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING"}.get(dt, dt)) for dt in TYPED}
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in onnx_types],
        "typed",
        [helper.make_tensor_value_info(f"in_{k}", v, [None, 3]) for k, v in onnx_types.items()],
        [helper.make_tensor_value_info(f"out_{k}", v, [None, 3]) for k, v in onnx_types.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("grpc_edges"))
    _make_typed_identity(repo / "typed" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(repo, request):
    if request.param == "native":
        pytest.importorskip("fastml._h2", reason="fastml._h2 is not built (libnghttp2-dev missing at build time)")
    with InProcessServer(repo, grpc_impl=request.param) as s:
        yield s


@pytest.fixture
def stub(srv):
    with grpc.insecure_channel(srv.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _scale_request(values) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="scale", id="r1")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(values)
    return req


def _typed_request() -> pb.ModelInferRequest:
    """Every input of ``typed`` in its datatype's own typed contents field."""
    req = pb.ModelInferRequest(model_name="typed")
    fields = {
        "BOOL": "bool_contents",
        "UINT8": "uint_contents",
        "UINT16": "uint_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
    }
    for dt in TYPED:
        arr = DATATYPES[dt]
        t = req.inputs.add(name=f"in_{dt}", datatype=dt, shape=list(arr.shape))
        if dt == "BYTES":
            t.contents.bytes_contents.extend(s.encode() for s in arr.reshape(-1))
        else:
            getattr(t.contents, fields[dt]).extend(arr.reshape(-1).tolist())
    req.outputs.add(name="out_INT8")
    return req


def test_the_well_formed_typed_request_is_served(stub):
    # The baseline of the next test: the same request without the stray values is answered.
    req = _typed_request()
    answer = stub.ModelInfer(req)
    got = np.frombuffer(answer.raw_output_contents[0], np.int8).reshape(2, 3)
    np.testing.assert_array_equal(got, DATATYPES["INT8"])
    assert (
        stub.ModelInfer(_scale_request([1, 2, 3, 4])).raw_output_contents[0]
        == np.array([2, 4, 6, 8], np.float32).tobytes()
    )


@pytest.mark.parametrize(
    ("datatype", "stray_field", "stray_values"),
    [
        ("FP32", "int_contents", [9]),
        ("FP32", "fp64_contents", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ("INT8", "int64_contents", [7]),
        ("UINT64", "uint_contents", [1]),
        ("BOOL", "int_contents", [1, 0]),
        ("BYTES", "fp32_contents", [0.5]),
        ("INT64", "bytes_contents", [b"x"]),
    ],
)
def test_typed_values_in_a_field_of_another_type_are_refused_not_dropped(stub, datatype, stray_field, stray_values):
    # Triton: "unexpected explicit tensor data for input tensor ..." when a contents field of another type holds
    # values; reading only the datatype's own field and answering would silently drop what the client sent.
    req = _typed_request()
    tensor = next(t for t in req.inputs if t.datatype == datatype)
    getattr(tensor.contents, stray_field).extend(stray_values)
    with pytest.raises(grpc.RpcError) as ei:
        stub.ModelInfer(req)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = ei.value.details()
    assert f"in_{datatype}" in details and stray_field in details
    # the connection and the server go on
    assert (
        stub.ModelInfer(_scale_request([1, 2, 3, 4])).raw_output_contents[0]
        == np.array([2, 4, 6, 8], np.float32).tobytes()
    )


def test_typed_contents_beside_a_shared_memory_input_are_refused(stub):
    # Triton: "unexpected 'content' provided when using shared memory for input tensor ...": the region's bytes
    # and the typed values disagree, and silently taking one of them is a wrong answer for the other.
    obj = ShmObject(64)
    name = "edges-s3-in"
    try:
        obj.buf[:16] = np.array([10, 20, 30, 40], np.float32).tobytes()
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=name, key=obj.key, offset=0, byte_size=64)
        )
        req = pb.ModelInferRequest(model_name="scale")
        t = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        t.parameters["shared_memory_region"].string_param = name
        t.parameters["shared_memory_byte_size"].int64_param = 16
        # the region alone is served
        got = np.frombuffer(stub.ModelInfer(req).raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, [20, 40, 60, 80])
        t.contents.fp32_contents.extend([1, 2, 3, 4])
        with pytest.raises(grpc.RpcError) as ei:
            stub.ModelInfer(req)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shared memory" in ei.value.details() and "'x'" in ei.value.details()
    finally:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name))
        obj.close()


def test_a_stream_request_with_stray_typed_values_is_answered_with_its_error_and_the_stream_goes_on(stub):
    good = _scale_request([1, 2, 3, 4])
    bad = _scale_request([1, 2, 3, 4])
    bad.id = "bad"
    bad.inputs[0].contents.int64_contents.extend([5])
    answers = list(stub.ModelStreamInfer(iter([bad, good]), timeout=30))
    by_id = {a.infer_response.id: a for a in answers}
    assert set(by_id) == {"bad", "r1"}
    assert "int64_contents" in by_id["bad"].error_message
    assert by_id["r1"].error_message == ""
    assert by_id["r1"].infer_response.raw_output_contents[0] == np.array([2, 4, 6, 8], np.float32).tobytes()


@pytest.fixture
def request_timeouts(monkeypatch) -> list:
    """The ``timeout`` parameter of every request the data plane takes terms for, in order."""
    from fastml.serving.dataplane import DataPlane

    seen = []
    real = DataPlane.request_terms

    def spy(self, entry, outputs, parameters):
        seen.append(parameters.get("timeout"))
        return real(self, entry, outputs, parameters)

    monkeypatch.setattr(DataPlane, "request_terms", spy)
    return seen


def test_the_client_deadline_becomes_the_request_timeout_on_both_listeners(stub, request_timeouts):
    # The docs' promise for `fastml serve --grpc-port` (either listener): a call's deadline is the request's
    # timeout unless the request names one, so a request that cannot be answered in time is shed, not run.
    seen = request_timeouts
    assert stub.ModelInfer(_scale_request([1, 2, 3, 4]), timeout=30).id == "r1"
    own = _scale_request([1, 2, 3, 4])
    own.parameters["timeout"].int64_param = 5_000
    assert stub.ModelInfer(own, timeout=30).id == "r1"
    assert stub.ModelInfer(_scale_request([1, 2, 3, 4])).id == "r1"  # no deadline: no timeout
    # the deadline the client set, in microseconds (grpc-core rounds a grpc-timeout up, by up to ~0.5%)
    assert 25_000_000 < seen[0] <= 31_000_000
    assert seen[1:] == [5_000, None]


def test_each_stream_request_gets_what_is_left_of_the_stream_deadline_on_both_listeners(stub, request_timeouts):
    seen = request_timeouts
    own = _scale_request([1, 2, 3, 4])
    own.id = "own"
    own.parameters["timeout"].int64_param = 5_000
    answers = list(stub.ModelStreamInfer(iter([_scale_request([1, 2, 3, 4]), own]), timeout=20))
    assert sorted(a.infer_response.id for a in answers) == ["own", "r1"]
    assert all(a.error_message == "" for a in answers)
    assert 15_000_000 < seen[0] <= 21_000_000 and seen[1] == 5_000


def _raw_method(channel, method: str, streaming: bool = False):
    path = f"/inference.GRPCInferenceService/{method}"
    ident = lambda b: b  # noqa: E731 - the message bytes go as they are
    if streaming:
        return channel.stream_stream(path, request_serializer=ident, response_deserializer=ident)
    return channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)


GARBAGE = b"\xff\xff\xff"  # a field number 0 with a truncated varint: no protobuf message


@pytest.mark.parametrize(
    ("method", "needle"),
    [("ModelInfer", "ModelInferRequest does not parse"), ("ModelMetadata", "ModelMetadata request does not parse")],
)
def test_a_request_that_does_not_parse_is_invalid_argument_on_both_listeners(srv, method, needle):
    # grpcio answered UNKNOWN ("Unexpected <class DecodeError>"); the native listener INVALID_ARGUMENT.
    with grpc.insecure_channel(srv.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as ei:
            _raw_method(channel, method)(GARBAGE, timeout=30)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in ei.value.details()
        # the server goes on
        answer = pb.ModelInferResponse.FromString(
            _raw_method(channel, "ModelInfer")(_scale_request([1, 2, 3, 4]).SerializeToString(), timeout=30)
        )
        assert answer.id == "r1" and answer.raw_output_contents[0] == np.array([2, 4, 6, 8], np.float32).tobytes()


def test_a_stream_message_that_does_not_parse_ends_the_stream_invalid_argument_not_ok(srv):
    # grpcio's listener ended such a stream OK with no answers at all: the valid request before the bad message
    # was cancelled and the one after it dropped, and the client saw a complete, successful stream.
    import queue
    import threading

    first_answered = threading.Event()

    def messages():
        yield _scale_request([1, 2, 3, 4]).SerializeToString()
        assert first_answered.wait(30)
        yield GARBAGE
        after = _scale_request([5, 5, 5, 5])
        after.id = "after"
        yield after.SerializeToString()

    got: queue.SimpleQueue = queue.SimpleQueue()
    with grpc.insecure_channel(srv.grpc_url) as channel:
        call = _raw_method(channel, "ModelStreamInfer", streaming=True)(messages(), timeout=30)
        with pytest.raises(grpc.RpcError) as ei:
            for data in call:
                answer = pb.ModelStreamInferResponse.FromString(data)
                got.put(
                    (
                        answer.infer_response.id,
                        answer.error_message,
                        bytes(answer.infer_response.raw_output_contents[0]),
                    )
                )
                first_answered.set()
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest does not parse" in ei.value.details()
    answers = []
    while not got.empty():
        answers.append(got.get())
    assert answers == [("r1", "", np.array([2, 4, 6, 8], np.float32).tobytes())]
