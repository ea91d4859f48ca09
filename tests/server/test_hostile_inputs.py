"""Requests a careless or hostile client sends that the server must refuse with a 400 naming the problem (and
keep serving), where it used to answer 200 with values the client never sent."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from serverkit import ServerProcess, raw_http

TOKEN = "hostile-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


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
    srv = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0"],
        tmp_path_factory.mktemp("home"),
        env_extra={"FASTML_ADMIN_TOKEN": TOKEN},  # for the admin calls (load, deployments) and feedback
    )
    yield srv
    assert srv.stop() == 0


def _infer(srv, model: str, body: dict | bytes, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    status, payload, _ = raw_http(srv.host, srv.port, "POST", f"/v2/models/{model}/infer", data, headers or {})
    return status, json.loads(payload)


def _call(srv, method: str, path: str, body: bytes, headers: dict | None = None):
    status, payload, _ = raw_http(srv.host, srv.port, method, path, body, {**ADMIN, **(headers or {})})
    return status, json.loads(payload) if payload else None  # a load answers 200 with no body


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


def test_a_feedback_label_too_large_for_a_float_is_400(hostile_server):
    # It was a 500 (OverflowError): JSON integers are unbounded. Checked before the model's prediction log is.
    body = b'{"id": "r1", "label": ' + b"9" * 400 + b"}"
    assert _call(hostile_server, "POST", "/v2/models/ints/feedback", body) == (
        400,
        {"error": "feedback.label: must be a finite number, got an integer too large for a float"},
    )


def test_a_feedback_body_nested_too_deeply_is_400(hostile_server):
    body = b"[" * 100_000 + b"]" * 100_000  # a RecursionError, answered 500
    assert _call(hostile_server, "POST", "/v2/models/ints/feedback", body) == (
        400,
        {"error": "feedback body: not valid JSON: nested too deeply"},
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"variants": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "not valid JSON: nested too deeply"),
        (b"variants = " + b"[" * 10_000 + b"]" * 10_000, "not valid TOML: nested too deeply"),
        (b"variants = " + b"{a = " * 10_000 + b"1" + b"}" * 10_000, "not valid TOML: nested too deeply"),
    ],
)
def test_a_deployment_spec_nested_too_deeply_is_400(hostile_server, body, error):
    status, payload = _call(hostile_server, "PUT", "/v2/deployments/deep", body)
    assert (status, payload) == (400, {"error": f"deployment 'deep': {error}"})
    assert _call(hostile_server, "GET", "/v2/deployments/deep", b"")[0] == 404  # nothing applied


def _load(srv, model: str, config: str):
    return _call(
        srv, "POST", f"/v2/repository/models/{model}/load", json.dumps({"parameters": {"config": config}}).encode()
    )


_SETS = "a load may set max_batch_size, dynamic_batching.max_queue_delay_microseconds and instance_group[0].count"


@pytest.mark.parametrize(
    ("config", "error"),
    [
        # Each was answered 200 and ignored.
        ('{"instance_group": "x"}', "'config.instance_group' must be a list of one group, got a string"),
        ('{"instance_group": [5]}', "'config.instance_group[0]' must be a JSON object, got a number"),
        (
            '{"instance_group": [{"count": 2}, {"count": 3}]}',
            "'config.instance_group' must be a list of one group, got a list of 2",
        ),
        ('{"dynamic_batching": "x"}', "'config.dynamic_batching' must be a JSON object, got a string"),
        (
            '{"default_model_filename": "../../etc/passwd"}',
            "'config.default_model_filename' must be 'model.onnx' when given: a load cannot change it",
        ),
        ('{"name": "other"}', "'config.name' must be the model's name 'floats' when given"),
        (
            '{"platform": "tensorrt_plan"}',
            "'config.platform' must be 'onnxruntime_onnx' when given: a load cannot change it",
        ),
        (
            '{"instance_group": [{"count": 2, "kind": "KIND_GPU"}]}',
            "'config.instance_group[0].kind' must be one of KIND_CPU, KIND_AUTO: fastml runs models on the CPU",
        ),
        ('{"ensemble_scheduling": {}}', f"'config.ensemble_scheduling' is not supported: {_SETS}"),
        (
            '{"dynamic_batching": {"preferred_batch_size": [4]}}',
            f"'config.dynamic_batching.preferred_batch_size' is not supported: {_SETS}",
        ),
        ("[5]", "'config' must be a JSON object, got a list of 1"),
        # Within the documented bound 0..4096 but refused by the engine (must be an int >= 1): the bound is 1..4096.
        ('{"max_batch_size": 0}', "override max_batch_size must be between 1 and 4096, got 0"),
    ],
)
def test_a_load_config_of_the_wrong_shape_or_with_unknown_fields_is_400(hostile_server, config, error):
    prefix = "load " if error.startswith("override") else "load parameter "
    assert _load(hostile_server, "floats", config) == (400, {"error": prefix + error})


def test_a_load_config_with_every_documented_field_is_applied(hostile_server):
    config = {
        "max_batch_size": 4,
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "instance_group": [{"count": 2}],
    }
    assert _load(hostile_server, "floats", json.dumps(config)) == (200, None)
    _, cfg = _call(hostile_server, "GET", "/v2/models/floats/config", b"")
    assert (cfg["max_batch_size"], cfg["instance_group"][0]["count"]) == (4, 2)
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 100


def test_a_load_config_read_from_the_server_and_edited_loads(hostile_server):
    """Triton's clients send back the whole config GET .../config gave them, with a field changed."""
    _, cfg = _call(hostile_server, "GET", "/v2/models/floats/config", b"")
    cfg["max_batch_size"] = 8
    cfg["instance_group"][0]["count"] = 1
    assert _load(hostile_server, "floats", json.dumps(cfg)) == (200, None)
    _, after = _call(hostile_server, "GET", "/v2/models/floats/config", b"")
    assert (after["max_batch_size"], after["instance_group"][0]) == (
        8,
        {"name": "floats", "count": 1, "kind": "KIND_CPU"},
    )


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [("/v2/models/ints/infer", 405, "Method Not Allowed"), ("/v3/nothing", 404, "Not Found")],
)
def test_an_error_answer_to_head_has_headers_only(hostile_server, path, status, reason):
    # It carried the JSON error body, which a client reading a HEAD answer takes for the start of the next answer.
    requests = (
        f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((hostile_server.host, hostile_server.port), timeout=10) as s:
        s.sendall(requests.encode())
        data = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == f"HTTP/1.1 {status} {reason}".encode()
    length = int(next(ln for ln in lines if ln.lower().startswith(b"content-length:")).split(b":")[1])
    assert length > 0  # the size the body would have (RFC 9110 9.3.2); the body itself is not sent
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:200]
