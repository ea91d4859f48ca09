"""Requests a careless or hostile client sends that the server must refuse with a 400 naming the problem (and
keep serving), where it used to answer 200 with values the client never sent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serverkit import ServerProcess, raw_http


def _save(graph, path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """ints: x INT32 [-1, 3] -> y = x, z = -x; floats: x FP32 [-1, 2] -> y = x; flags: x BOOL [-1, 2] -> y = not x."""
    from onnx import TensorProto, helper

    repo = tmp_path_factory.mktemp("hostile_repo")
    info = helper.make_tensor_value_info
    for name, onnx_type, width, nodes, outputs in [
        ("ints", TensorProto.INT32, 3, [("Identity", "y"), ("Neg", "z")], ["y", "z"]),
        ("floats", TensorProto.FLOAT, 2, [("Identity", "y")], ["y"]),
        ("flags", TensorProto.BOOL, 2, [("Not", "y")], ["y"]),
    ]:
        graph = helper.make_graph(
            [helper.make_node(op, ["x"], [out]) for op, out in nodes],
            name,
            [info("x", onnx_type, [None, width])],
            [info(out, onnx_type, [None, width]) for out in outputs],
        )
        _save(graph, repo / name / "1" / "model.onnx")
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], tmp_path_factory.mktemp("home"))
    yield srv
    assert srv.stop() == 0


def _infer(srv, model: str, body: dict | bytes, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    status, payload, _ = raw_http(srv.host, srv.port, "POST", f"/v2/models/{model}/infer", data, headers or {})
    return status, json.loads(payload)


def _json_input(datatype: str, shape: list, data) -> dict:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


def test_an_output_requested_twice_is_400_as_over_grpc_and_the_binary_protocol(hostile_server):
    body = {**_json_input("INT32", [1, 3], [1, 2, 3]), "outputs": [{"name": "y"}, {"name": "y"}]}
    assert _infer(hostile_server, "ints", body) == (400, {"error": "an output is requested twice: ['y', 'y']"})


def test_an_output_requested_twice_is_400_on_the_native_binary_tensor_path(hostile_server):
    # All inputs and outputs binary: the request the native HTTP intake serves without the Python path.
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "parameters": {"binary_data_size": 12}}],
            "outputs": [{"name": "z", "parameters": {"binary_data": True}}] * 2,
        }
    ).encode()
    body = header + np.array([[1, 2, 3]], np.int32).tobytes()
    status, payload = _infer(hostile_server, "ints", body, {"Inference-Header-Content-Length": str(len(header))})
    assert (status, payload) == (400, {"error": "an output is requested twice: ['z', 'z']"})


@pytest.mark.parametrize(
    ("model", "datatype", "shape", "data", "error"),
    [
        # Strings were read as numbers ("1" as 1, "nan" as NaN) and as booleans ("false" as True).
        ("ints", "INT32", [1, 3], ["1", "2", "3"], "data holds strings but the datatype is INT32"),
        ("floats", "FP32", [1, 2], ["nan", "1"], "data holds strings but the datatype is FP32"),
        ("flags", "BOOL", [1, 2], ["false", "false"], "data holds strings but the datatype is BOOL"),
        # Fractions were cut to integers: 1.9 ran as 1.
        ("ints", "INT32", [1, 3], [1.9, 2, 3], "data holds floating-point numbers but the datatype is INT32"),
        # Numbers other than true/false were booleans.
        ("flags", "BOOL", [1, 2], [0, 2], "data holds integers but the datatype is BOOL"),
        # null was NaN.
        ("floats", "FP32", [1, 2], [None, 1.0], "data holds null values but the datatype is FP32"),
    ],
)
def test_json_values_of_another_kind_than_the_datatype_are_400(hostile_server, model, datatype, shape, data, error):
    status, payload = _infer(hostile_server, model, _json_input(datatype, shape, data))
    assert (status, payload) == (400, {"error": f"input 'x': {error}"})


def test_json_values_of_the_datatypes_kind_are_served(hostile_server):
    ok = [
        ("ints", _json_input("INT32", [1, 3], [[2147483647, -2147483648, 0]]), "z", [-2147483647, -2147483648, 0]),
        ("floats", _json_input("FP32", [1, 2], [1, 2.5]), "y", [1.0, 2.5]),  # integers are numbers too
        ("flags", _json_input("BOOL", [1, 2], [True, False]), "y", [False, True]),
    ]
    for model, body, output, expected in ok:
        status, payload = _infer(hostile_server, model, {**body, "outputs": [{"name": output}]})
        assert status == 200, payload
        assert payload["outputs"][0]["data"] == expected
    status, payload = _infer(hostile_server, "ints", _json_input("INT32", [1, 3], [2147483648, 0, 0]))
    assert (status, payload) == (400, {"error": "input 'x': data holds integers outside the range of INT32"})
