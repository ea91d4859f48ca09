"""KServe v2 / Triton conformance of refused inference requests, over HTTP and both gRPC listeners: the
error class matches across transports and Triton, and every refusal is counted once as a failure (never as a
success) in the model's statistics."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from inprocess import InProcessServer
from serverkit import request
from tritonclient.utils import InferenceServerException

from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc


# Both gRPC listeners (native HTTP/2, the default; grpcio's, the fallback) with the HTTP server beside them.
@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(model_repo, request):
    if request.param == "native":
        pytest.importorskip("fastml._h2", reason="fastml._h2 is not built (libnghttp2-dev missing at build time)")
    with InProcessServer(model_repo, http=True, grpc_impl=request.param) as s:
        yield s


@pytest.fixture
def stub(srv):
    with grpc.insecure_channel(srv.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def x(onnx_models) -> np.ndarray:
    return np.load(onnx_models["data"])[:3].astype(np.float32)


def _counts(srv, model: str) -> tuple[int, int]:
    """(success, fail) request counts of ``model``'s only version, over HTTP."""
    status, body = request("GET", f"http://{srv.http_url}/v2/models/{model}/stats")
    assert status == 200
    (stats,) = body["model_stats"]
    return stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]


def _raw_request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())
    return msg


def _http_infer(srv, model: str, body: dict):
    return request("POST", f"http://{srv.http_url}/v2/models/{model}/infer", json.dumps(body).encode())


def test_typed_contents_beside_raw_input_contents_is_refused(srv, stub, x):
    # Triton refuses typed contents on an input when raw_input_contents is used; taking the raw bytes and
    # dropping the contents would answer for data the client did not mean.
    msg = _raw_request("mlp", x)
    msg.inputs[0].contents.fp32_contents.extend(np.zeros(x.size, np.float32).tolist())
    before = _counts(srv, "mlp")
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(msg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == (
        "contents field must not be specified when using raw_input_contents for 'input' for model 'mlp'"
    )
    assert _counts(srv, "mlp") == (before[0], before[1] + 1)
    # The same tensor without the contents is answered.
    ok = stub.ModelInfer(_raw_request("mlp", x))
    assert [o.name for o in ok.outputs] == ["label", "probabilities"]


def test_malformed_grpc_request_is_a_counted_failure_as_over_http(srv, stub, x):
    bad = _raw_request("mlp", x)
    bad.raw_input_contents[0] = x.tobytes()[:-4]  # one FP32 short of the declared shape
    before = _counts(srv, "mlp")
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents holds 380 bytes" in e.value.details()
    assert _counts(srv, "mlp") == (before[0], before[1] + 1)
    # HTTP counts its malformed request the same way.
    status, body = _http_infer(
        srv, "mlp", {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [1.0]}]}
    )
    assert status == 400 and "needs 32 elements" in body["error"]
    assert _counts(srv, "mlp") == (before[0], before[1] + 2)


def test_malformed_request_for_an_unknown_model_is_not_found_on_both(srv, stub, x):
    # HTTP looks the model up before decoding the body: gRPC must answer the same class (404 / NOT_FOUND).
    bad = _raw_request("nosuch", x)
    bad.raw_input_contents[0] = b"123"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(bad)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nosuch'" in e.value.details()
    bad.model_name, bad.model_version = "mlp", "7"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(bad)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    status, body = request("POST", f"http://{srv.http_url}/v2/models/nosuch/infer", b"{not json")
    assert status == 404 and "'nosuch'" in body["error"]


@pytest.mark.parametrize("priority", ["high", -1, 1.5, True, 2**64])
def test_priority_that_is_not_a_uint64_is_refused_on_http_and_grpc(srv, stub, x, priority):
    body = {
        "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x[0].tolist()}],
        "parameters": {"priority": priority},
    }
    status, answer = _http_infer(srv, "mlp", body)
    assert status == 400
    assert answer == {"error": f"parameter 'priority' must be a non-negative integer, got {priority!r}"}
    if priority == 2**64:
        return  # no protobuf parameter field holds it
    msg = _raw_request("mlp", x)
    p = msg.parameters["priority"]
    if isinstance(priority, bool):
        p.bool_param = priority
    elif isinstance(priority, int):
        p.int64_param = priority
    elif isinstance(priority, float):
        p.double_param = priority
    else:
        p.string_param = priority
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(msg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == f"parameter 'priority' must be a non-negative integer, got {priority!r}"


def test_uint64_priority_is_accepted_on_both(srv, x, onnx_models):
    from serverkit import ort_reference

    want = ort_reference(onnx_models["mlp"], x)["label"]
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}],
        "parameters": {"priority": 2**64 - 1},  # as tritonclient.http sends infer(..., priority=...)
    }
    status, answer = _http_infer(srv, "mlp", body)
    assert status == 200
    assert answer["outputs"][0]["name"] == "label" and answer["outputs"][0]["data"] == want.tolist()
    g = tg.InferenceServerClient(srv.grpc_url)
    gi = tg.InferInput("input", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    np.testing.assert_array_equal(g.infer("mlp", [gi], priority=2**64 - 1).as_numpy("label"), want)
    g.close()


def test_classifying_an_unclassifiable_output_is_a_failure_not_a_success(srv):
    # A BYTES output has no order: Triton refuses to classify it. The refusal must not be counted as a
    # successful request (it was, when refused only after the model had run).
    before = _counts(srv, "strings")
    body = {  # what tritonclient.http sends for InferRequestedOutput("text_out", class_count=1)
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}],
        "outputs": [{"name": "text_out", "parameters": {"binary_data": True, "classification": 1}}],
    }
    status, answer = _http_infer(srv, "strings", body)
    assert status == 400
    assert answer == {
        "error": "output 'text_out': class result not available for output due to unsupported type 'BYTES'"
    }
    assert _counts(srv, "strings") == (before[0], before[1] + 1)
    g = tg.InferenceServerClient(srv.grpc_url)
    gi = tg.InferInput("text", [2, 1], "BYTES")
    gi.set_data_from_numpy(np.array([["a"], ["b"]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        g.infer("strings", [gi], outputs=[tg.InferRequestedOutput("text_out", class_count=1)])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unsupported type 'BYTES'" in e.value.message()
    g.close()
    assert _counts(srv, "strings") == (before[0], before[1] + 2)
    # The request without classification is answered, and counted a success.
    del body["outputs"]
    status, answer = _http_infer(srv, "strings", body)
    assert status == 200 and answer["outputs"][0]["data"] == ["a", "b"]
    assert _counts(srv, "strings") == (before[0] + 1, before[1] + 2)


def test_classifying_a_numeric_output_still_answers_top_classes(srv, x, onnx_models):
    from serverkit import ort_reference

    probs = ort_reference(onnx_models["mlp"], x)["probabilities"]
    want = [[f"{row[i]:f}:{i}" for i in np.argsort(-row, kind="stable")[:1]] for row in probs]
    g = tg.InferenceServerClient(srv.grpc_url)
    gi = tg.InferInput("input", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    got = g.infer("mlp", [gi], outputs=[tg.InferRequestedOutput("probabilities", class_count=1)])
    assert [[v.decode() for v in row] for row in got.as_numpy("probabilities")] == want
    g.close()
