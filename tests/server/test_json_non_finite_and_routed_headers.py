"""KServe v2 / Triton HTTP edges: non-finite numbers in JSON tensors, and the model version a deployment's answer
names after the model behind it is reloaded."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import msgspec
import numpy as np
import pytest
import tritonclient.http as httpclient
from inprocess import make_scale_model
from serverkit import ServerProcess, read_response, request

from fastml.server.tensors import decode_request, encode_json, output_json_data

ADMIN_TOKEN = "protocol-edges-admin-token-0123456789"


def _make_floats_model(path: Path) -> None:
    """``floats``: ``x32`` FP32 [-1, 3] -> ``y32`` and ``x64`` FP64 [-1, 3] -> ``y64``, both Identity."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x32"], ["y32"]), helper.make_node("Identity", ["x64"], ["y64"])],
        "floats",
        [
            helper.make_tensor_value_info("x32", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("x64", TensorProto.DOUBLE, [None, 3]),
        ],
        [
            helper.make_tensor_value_info("y32", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("y64", TensorProto.DOUBLE, [None, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory):
    """A server (default transport) with ``floats`` and ``scale`` (width 4) and an admin token."""
    root = tmp_path_factory.mktemp("edges")
    repo = root / "repo"
    _make_floats_model(repo / "floats" / "1" / "model.onnx")
    make_scale_model(repo / "scale" / "1" / "model.onnx", 4)
    srv = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0"],
        root / "home",
        env_extra={"FASTML_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    srv.repo = repo
    yield srv
    assert srv.stop() == 0


X32 = np.array([[1.5, np.inf, -np.inf], [np.nan, -0.0, 3e38]], np.float32)
X64 = np.array([[np.inf, 1e300, np.nan], [-np.inf, 0.1, -1e-300]], np.float64)


# ----- NaN / Infinity in JSON tensors (Triton parses and writes them: rapidjson's NanAndInf flags) ---------------
def test_decode_request_reads_nan_and_infinity_tokens():
    req = decode_request(
        b'{"id": "n1", "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", '
        b'"data": [NaN, Infinity, -Infinity, 2.5]}]}'
    )
    assert req.id == "n1"
    got = np.asarray(req.inputs[0].data, np.float64)
    np.testing.assert_array_equal(got, [np.nan, np.inf, -np.inf, 2.5])


def test_decode_request_with_nan_still_refuses_a_malformed_request():
    with pytest.raises(Exception, match=r"\$\.id"):  # the field named, as for any other request
        decode_request(b'{"id": 7, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}')
    with pytest.raises(Exception, match="malformed inference request JSON"):
        decode_request(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN')


def test_output_json_data_writes_infinity_not_null():
    data = output_json_data(np.array([1.5, np.inf, -np.inf, np.nan], np.float32), "FP32")
    text = encode_json({"data": data})
    assert text == b'{"data":[1.5,Infinity,-Infinity,NaN]}'
    back = json.loads(text)["data"]
    np.testing.assert_array_equal(np.array(back, np.float32), [1.5, np.inf, -np.inf, np.nan])
    # Finite data stays a plain list (what every other caller expects).
    assert output_json_data(np.array([[1, 2]], np.float64), "FP64") == [1.0, 2.0]
    assert not isinstance(output_json_data(np.array([1.0], np.float16), "FP16"), msgspec.Raw)


@pytest.mark.parametrize("binary_in", [False, True])
def test_tritonclient_json_output_keeps_infinities(edge_server, binary_in):
    c = httpclient.InferenceServerClient(edge_server.url)
    try:
        inputs = []
        for name, arr, dt in (("x32", X32, "FP32"), ("x64", X64, "FP64")):
            i = httpclient.InferInput(name, list(arr.shape), dt)
            i.set_data_from_numpy(arr, binary_data=binary_in)  # JSON: tritonclient writes NaN / Infinity tokens
            inputs.append(i)
        outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("y32", "y64")]
        res = c.infer("floats", inputs, outputs=outs, request_id="nf")
    finally:
        c.close()
    assert res.get_response()["id"] == "nf"
    y32, y64 = res.as_numpy("y32"), res.as_numpy("y64")
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_array_equal(y32, X32)  # equal_nan: NaN where NaN was sent, +-inf where +-inf was sent
    np.testing.assert_array_equal(y64, X64)
    assert np.isposinf(y32[0, 1]) and np.isneginf(y32[0, 2]) and np.isposinf(y64[0, 0])


def test_raw_json_infinity_tokens(edge_server):
    body = (
        b'{"inputs": [{"name": "x32", "shape": [1, 3], "datatype": "FP32", "data": [[Infinity, -Infinity, NaN]]},'
        b' {"name": "x64", "shape": [1, 3], "datatype": "FP64", "data": [1, -Infinity, 2]}]}'
    )
    status, doc = request("POST", f"http://{edge_server.url}/v2/models/floats/infer", body)
    assert status == 200, doc
    assert isinstance(doc, dict), doc  # parsed by json.loads, which reads the tokens
    outs = {o["name"]: o["data"] for o in doc["outputs"]}
    np.testing.assert_array_equal(np.array(outs["y32"], np.float64), [np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(np.array(outs["y64"], np.float64), [1.0, -np.inf, 2.0])
    # An integer input still refuses a non-finite value (Triton: not an integer).
    bad = b'{"inputs": [{"name": "x32", "shape": [1, 3], "datatype": "INT32", "data": [1, NaN, 2]}]}'
    status, doc = request("POST", f"http://{edge_server.url}/v2/models/floats/infer", bad)
    assert status == 400 and "x32" in doc["error"], doc


# ----- a deployment's answer names the version of the model that answered it -------------------------------------
def _binary_infer(srv, path: str, x: np.ndarray, accept_gzip: bool):
    hdr = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = hdr + x.tobytes()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Inference-Header-Content-Length: {len(hdr)}\r\n"
    )
    if accept_gzip:  # served by the Python path, which caches the deployment's response headers
        head += "Accept-Encoding: gzip\r\n"
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        status, headers, payload = read_response(s.makefile("rb"))
    assert status == 200, payload
    if headers.get("content-encoding") == "gzip":
        payload = gzip.decompress(payload)
    n = int(headers["inference-header-content-length"])
    return json.loads(payload[:n]), np.frombuffer(payload[n:], np.float32).reshape(x.shape)


def test_deployment_answer_names_the_reloaded_version(edge_server):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    spec = {"variants": [{"name": "a", "model": "scale", "weight_bp": 10000}]}
    status, doc = request("PUT", f"http://{edge_server.url}/v2/deployments/scaled", json.dumps(spec).encode(), admin)
    assert status == 200, doc
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for accept_gzip in (False, True):  # the native intake's answer and the Python path's
        head, y = _binary_infer(edge_server, "/v2/models/scaled/infer", x, accept_gzip)
        assert (head["model_name"], head["model_version"], head["parameters"]) == ("scaled", "1", {"variant": "a"})
        np.testing.assert_array_equal(y, 2 * x)

    make_scale_model(edge_server.repo / "scale" / "2" / "model.onnx", 4)
    status, doc = request("POST", f"http://{edge_server.url}/v2/repository/models/scale/load", b"", admin)
    assert status == 200, doc
    status, meta = edge_server.get("/v2/models/scale")
    assert meta["versions"] == ["2"]
    for accept_gzip in (False, True):
        for _ in range(2):  # the first answer and the one from a cached header alike
            head, y = _binary_infer(edge_server, "/v2/models/scaled/infer", x, accept_gzip)
            assert (head["model_name"], head["model_version"]) == ("scaled", "2"), (accept_gzip, head)
            np.testing.assert_array_equal(y, 2 * x)
    head, _ = _binary_infer(edge_server, "/v2/models/scale/infer", x, True)
    assert head["model_version"] == "2"
