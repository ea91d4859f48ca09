"""KServe v2 / Triton wire compatibility against a real `fastml serve` process, using tritonclient.http."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from serverkit import ort_reference, read_response, request
from serverkit import raw_http as _raw_http
from tritonclient.utils import InferenceServerException

EXPECTED_EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
    "parameters",
    "schedule_policy",
    "model_repository",
    "system_shared_memory",
]


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def X(onnx_models):
    return np.load(onnx_models["data"])[:8]


def test_startup_line_names_models_and_ports(server):
    assert server.models == "gbt:1, mlp:1, strings:1"
    assert server.port > 0 and server.metrics_port > 0 and server.workers == 1


def test_health_and_server_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    meta = client.get_server_metadata()
    assert meta["name"] == "fastml" and meta["extensions"] == EXPECTED_EXTENSIONS


def test_model_metadata_has_leading_batch_dim(client):
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]


def test_model_config_is_triton_model_config(client):
    cfg = client.get_model_config("mlp")
    assert cfg["name"] == "mlp" and cfg["max_batch_size"] == 16  # from mlp/config.toml
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [32]}]
    assert cfg["output"][1] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]}
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert cfg["instance_group"][0]["count"] == 1 and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert client.get_model_config("strings")["input"][0]["data_type"] == "TYPE_STRING"


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
@pytest.mark.parametrize("model", ["mlp", "gbt"])
def test_infer_matches_onnxruntime(client, onnx_models, X, model, binary_in, binary_out):
    ref = ort_reference(onnx_models[model], X)
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary_in)
    if binary_out is None:  # outputs not named: all outputs, binary (binary_data_output)
        res = client.infer(model, [inp])
        names = ["label", "probabilities"]
    else:
        names = ["probabilities"]
        res = client.infer(
            model, [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)]
        )
        assert res.as_numpy("label") is None
    for name in names:
        np.testing.assert_allclose(res.as_numpy(name), ref[name], rtol=1e-5, atol=1e-6)
    resp = res.get_response()
    assert resp["model_name"] == model and resp["model_version"] == "1"


def test_infer_with_id_and_version_in_url(client, onnx_models, X):
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    res = client.infer("mlp", [inp], model_version="1", request_id="req-42")
    assert res.get_response()["id"] == "req-42"
    np.testing.assert_array_equal(res.as_numpy("label"), ort_reference(onnx_models["mlp"], X)["label"])


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_round_trip(client, binary):
    words = np.array([["héllo".encode()], [b""], [b"\x00nul"], [b"x" * 1000]], dtype=object)
    inp = httpclient.InferInput("text", list(words.shape), "BYTES")
    inp.set_data_from_numpy(words, binary_data=binary)
    res = client.infer("strings", [inp], outputs=[httpclient.InferRequestedOutput("text_out", binary_data=binary)])
    out = res.as_numpy("text_out")
    assert out.shape == words.shape
    assert [o if isinstance(o, bytes) else o.encode() for o in out.reshape(-1)] == list(words.reshape(-1))


def test_bytes_that_are_not_utf8_are_refused(client):
    inp = httpclient.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("strings", [inp])
    assert e.value.status() == "400" and "UTF-8" in e.value.message()


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compressed_request_and_response(client, onnx_models, X, algo):
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    res = client.infer("mlp", [inp], request_compression_algorithm=algo, response_compression_algorithm=algo)
    np.testing.assert_allclose(
        res.as_numpy("probabilities"), ort_reference(onnx_models["mlp"], X)["probabilities"], rtol=1e-5, atol=1e-6
    )


def test_gzip_response_headers_raw(server, X):
    hdr = json.dumps(
        {"inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": X[:2].tolist()}]}
    ).encode()
    status, body, headers = raw_http(
        server,
        "POST",
        "/v2/models/mlp/infer",
        gzip.compress(hdr),
        {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    )
    assert status == 200 and headers["content-encoding"] == "gzip"
    out = json.loads(gzip.decompress(body))
    assert [o["name"] for o in out["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize(
    "path", ["/v2", "/v2/models/mlp", "/v2/models/mlp/config", "/v2/models/stats", "/v2/models/mlp/stats"]
)
def test_only_inference_responses_are_compressed(server, path):
    # Triton compresses inference answers only; metadata, statistics and repository answers go as they are.
    status, body, headers = raw_http(server, "GET", path, b"", {"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and "content-encoding" not in headers
    assert isinstance(json.loads(body), dict)
    status, body, headers = raw_http(server, "POST", "/v2/repository/index", b"", {"Accept-Encoding": "gzip"})
    assert status == 200 and "content-encoding" not in headers
    assert {m["name"] for m in json.loads(body)} >= {"mlp", "gbt"}


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", "gzip"),
        ("deflate, gzip", "deflate"),
        ("br, gzip;q=0.5", None),
        ("identity;q=0.2, gzip;q=0.9", "gzip"),
        ("gzip;q=0, deflate;q=0.1", "deflate"),
        ("GZIP", "gzip"),
        ("gzip;q=oops", None),
        ("*", None),
    ],
)
def test_inference_compression_follows_accept_encoding_weights(server, X, accept, expected):
    hdr = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": X[:1].tolist()}]}
    ).encode()
    status, body, headers = raw_http(server, "POST", "/v2/models/mlp/infer", hdr, {"Accept-Encoding": accept})
    assert status == 200 and headers.get("content-encoding") == expected
    if expected == "gzip":
        body = gzip.decompress(body)
    elif expected == "deflate":
        body = zlib.decompress(body)
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["label", "probabilities"]


def test_tritonclient_http_aio_metadata_statistics_and_index(server, X):
    import asyncio

    import tritonclient.http.aio as aioclient

    async def go():
        c = aioclient.InferenceServerClient(server.url)
        try:
            meta = await c.get_model_metadata("mlp")
            stats = await c.get_inference_statistics("mlp")
            index = await c.get_model_repository_index()
            config = await c.get_model_config("mlp")
            inp = aioclient.InferInput("input", [2, 32], "FP32")
            inp.set_data_from_numpy(X[:2])
            res = await c.infer("mlp", [inp])
            return meta, stats, index, config, res.as_numpy("probabilities")
        finally:
            await c.close()

    meta, stats, index, config, probs = asyncio.run(go())
    assert meta["name"] == "mlp" and meta["inputs"][0]["shape"] == [-1, 32]
    assert stats["model_stats"][0]["name"] == "mlp"
    assert {m["name"] for m in index} >= {"mlp", "gbt"}
    assert config["max_batch_size"] == 16
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_raw_binary_request(server, onnx_models, X):
    status, body, headers = raw_http(
        server, "POST", "/v2/models/mlp/infer", X[0].tobytes(), {"Inference-Header-Content-Length": "0"}
    )
    assert status == 200
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    probs = np.frombuffer(body[n + sizes[0] : n + sizes[0] + sizes[1]], np.float32).reshape(1, 2)
    np.testing.assert_allclose(probs, ort_reference(onnx_models["mlp"], X[:1])["probabilities"], rtol=1e-5, atol=1e-6)


def test_statistics_extension(client, X):
    before = client.get_inference_statistics("gbt")["model_stats"][0]
    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(X[:2])
    for _ in range(5):
        client.infer("gbt", [inp])
    st = stats_when(client, "gbt", lambda st: st["inference_count"] - before["inference_count"] >= 10)
    assert st["name"] == "gbt" and st["version"] == "1"
    assert st["inference_count"] - before["inference_count"] == 10
    assert st["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 5
    for key in (
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ):
        assert set(st["inference_stats"][key]) == {"count", "ns"}
    assert st["inference_stats"]["compute_infer"]["ns"] > 0 and st["execution_count"] >= 1 and st["last_inference"] > 0
    assert sum(b["compute_infer"]["count"] for b in st["batch_stats"]) == st["execution_count"]
    everything = client.get_inference_statistics()["model_stats"]
    assert sorted(m["name"] for m in everything) == ["gbt", "mlp", "strings"]
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert e.value.status() == "404"


def stats_when(client, model, cond, timeout_s=5.0):
    """Model statistics once ``cond`` holds: the engine records counters right after it answers, so a
    read straight after a response may miss that response."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = client.get_inference_statistics(model)["model_stats"][0]
        if cond(st) or time.monotonic() > deadline:
            return st


def test_pipelined_requests_answer_in_order(server, X):
    bodies = []
    for n in (1, 3, 2):
        bodies.append(
            json.dumps(
                {
                    "id": f"r{n}",
                    "inputs": [{"name": "input", "shape": [n, 32], "datatype": "FP32", "data": X[:n].tolist()}],
                    "outputs": [{"name": "label"}],
                }
            ).encode()
        )
    wire = b"".join(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies
    )
    wire += b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(wire)
        f = s.makefile("rb")
        ids = []
        for _ in range(3):
            status, headers, body = read_response(f)
            assert status == 200
            ids.append(json.loads(body)["id"])
        assert read_response(f)[0] == 200
    assert ids == ["r1", "r3", "r2"]


def test_metrics_endpoint(server, client, X):
    inp = httpclient.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(X[:1])
    client.infer("mlp", [inp])
    text = server.metrics()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('fastml_inference_request_success_total{model="mlp",version="1"}')
    )
    assert float(line.split()[-1]) >= 1
    for name in (
        "fastml_inference_count_total",
        "fastml_inference_exec_count_total",
        "fastml_inference_queue_duration_us_total",
        "fastml_inference_compute_infer_duration_us_total",
        "fastml_inference_pending_request_count",
        "fastml_batch_size_bucket",
        "fastml_model_ready",
        "fastml_inference_request_failure_total",
    ):
        assert name in text
    assert request("GET", f"http://{server.host}:{server.metrics_port}/v2")[0] == 404


# ----- errors: every status, and the server keeps serving after each -------------------------------
def _infer_body(inputs, outputs=None):
    d = {"inputs": inputs}
    if outputs is not None:
        d["outputs"] = outputs
    return json.dumps(d).encode()


ROW = [0.5] * 32
ERROR_CASES = [
    ("malformed JSON", "POST", "/v2/models/mlp/infer", b'{"inputs": [', {}, 400, "malformed"),
    ("not an object", "POST", "/v2/models/mlp/infer", b"[1,2]", {}, 400, "malformed"),
    (
        "wrong input name",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "nope", "shape": [1, 32], "datatype": "FP32", "data": ROW}]),
        {},
        400,
        "nope",
    ),
    (
        "wrong dtype",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [1, 32], "datatype": "FP64", "data": ROW}]),
        {},
        400,
        "input",
    ),
    (
        "wrong shape",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": ROW[:31]}]),
        {},
        400,
        "shape",
    ),
    (
        "data/shape mismatch",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": ROW}]),
        {},
        400,
        "64 elements",
    ),
    (
        "unknown datatype",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [1, 32], "datatype": "FP33", "data": ROW}]),
        {},
        400,
        "FP33",
    ),
    (
        "unknown output",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}], [{"name": "zz"}]),
        {},
        400,
        "zz",
    ),
    (
        "binary size mismatch",
        "POST",
        "/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [1, 32], "datatype": "FP32", "parameters": {"binary_data_size": 128}}])
        + b"\0" * 100,
        {"Inference-Header-Content-Length": None},
        400,
        "binary_data_size",
    ),
    (
        "header length beyond body",
        "POST",
        "/v2/models/mlp/infer",
        b"{}",
        {"Inference-Header-Content-Length": "999"},
        400,
        "exceeds",
    ),
    ("bad gzip", "POST", "/v2/models/mlp/infer", b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "gzip"),
    ("unknown model", "POST", "/v2/models/nope/infer", b"{}", {}, 404, "nope"),
    ("unknown version", "GET", "/v2/models/mlp/versions/7", None, {}, 404, "7"),
    ("unknown path", "GET", "/v2/nothing/here", None, {}, 404, "Not Found"),
    ("wrong method", "GET", "/v2/models/mlp/infer", None, {}, 405, "Method Not Allowed"),
    ("wrong method 2", "POST", "/v2/health/live", b"", {}, 405, "Method Not Allowed"),
    ("body too large", "POST", "/v2/models/mlp/infer", b"x" * (5 * 1024 * 1024), {}, 413, "limit"),
]


def test_more_rows_than_max_batch_size_come_back_whole(server, X):
    # The engine runs a request over max_batch_size (16 here) as 16-row chunks and answers it as one.
    x = np.concatenate([X, X, X])[:17]
    status, payload = request(
        "POST",
        f"http://{server.url}/v2/models/mlp/infer",
        _infer_body([{"name": "input", "shape": [17, 32], "datatype": "FP32", "data": x.tolist()}]),
        {},
    )
    assert status == 200
    probs = next(o for o in payload["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [17, 2]
    np.testing.assert_allclose(
        np.array(probs["data"]).reshape(17, 2)[16], np.array(probs["data"]).reshape(17, 2)[0], rtol=1e-6
    )


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_statuses(server, client, X, case):
    _, method, path, body, headers, status, needle = case
    headers = dict(headers)
    if headers.get("Inference-Header-Content-Length", "") is None:
        headers["Inference-Header-Content-Length"] = str(body.index(b"}]}") + 3)
    got, payload = request(method, f"http://{server.url}{path}", body, headers)
    assert got == status
    assert isinstance(payload, dict) and needle in payload["error"]
    # ... and the server still answers a valid request correctly.
    inp = httpclient.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(X[:1])
    assert client.infer("mlp", [inp]).as_numpy("label").shape == (1,)


def test_header_limits(server):
    status, body, _ = raw_http(server, "GET", "/v2", b"", {f"X-H{i}": "v" for i in range(150)})
    assert status == 431 and b"headers" in body
    status, body, _ = raw_http(server, "GET", "/v2", b"", {"X-Big": "v" * 20000})
    assert status == 431


def test_tritonclient_surfaces_errors(client):
    inp = httpclient.InferInput("input", [1, 31], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 31), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "400" and "input" in e.value.message()


def raw_http(server, method, path, body: bytes, headers: dict):
    return _raw_http(server.host, server.port, method, path, body, headers)


def test_binary_bytes_codec_unit():
    from fastml.errors import InvalidInput
    from fastml.server.tensors import decode_bytes_tensor, encode_bytes_tensor

    arr = np.array([b"a", b"", "é"], dtype=object)
    wire = encode_bytes_tensor(arr)
    assert wire == struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    assert list(decode_bytes_tensor(wire, 3, "t")) == ["a", "", "é"]
    with pytest.raises(InvalidInput, match="claims"):
        decode_bytes_tensor(struct.pack("<I", 10) + b"abc", 1, "t")
    with pytest.raises(InvalidInput, match="left over"):
        decode_bytes_tensor(wire + b"z", 3, "t")
    assert zlib.decompress(zlib.compress(wire)) == wire
