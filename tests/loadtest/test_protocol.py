"""The harness's request builder and response parser against the KServe v2 binary extension."""

from __future__ import annotations

import json
import struct

import httptools
import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.loadtest.protocol import build_infer_request, parse_infer_response, random_inputs


def _parse_wire(wire: bytes) -> tuple[str, dict[bytes, bytes], bytes]:
    parts: dict = {"headers": {}, "body": b"", "url": b""}

    class P:
        def on_url(self, url):
            parts["url"] += url

        def on_header(self, name, value):
            parts["headers"][name.lower()] = value

        def on_body(self, body):
            parts["body"] += body

    parser = httptools.HttpRequestParser(P())
    parser.feed_data(wire)
    assert parser.get_method() == b"POST"
    assert parser.should_keep_alive()
    return parts["url"].decode(), parts["headers"], parts["body"]


def test_request_matches_tritonclient_body():
    import tritonclient.http as httpclient

    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    req = build_infer_request("mlp", {"input": x}, outputs=["probabilities"])
    url, headers, body = _parse_wire(req.wire)
    assert url == "/v2/models/mlp/infer"
    assert body == req.body
    assert int(headers[b"content-length"]) == len(body)
    assert int(headers[b"inference-header-content-length"]) == req.header_length

    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=True)
    tc_body, tc_json_size = httpclient.InferenceServerClient.generate_request_body([inp], outputs=[out])
    # Same JSON document (key order may differ) and byte-identical binary part.
    assert json.loads(req.body[: req.header_length]) == json.loads(tc_body[:tc_json_size])
    assert req.body[req.header_length :] == tc_body[tc_json_size:] == x.tobytes()


def test_request_without_outputs_asks_for_binary_and_has_version():
    req = build_infer_request("gbt", {"input": np.zeros((1, 3), np.int64)}, version="2")
    assert req.path == "/v2/models/gbt/versions/2/infer"
    header = json.loads(req.body[: req.header_length])
    assert header["parameters"] == {"binary_data_output": True}
    assert header["inputs"] == [
        {"name": "input", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}
    ]


def test_bytes_input_uses_length_prefixes():
    req = build_infer_request("t", {"s": np.array([b"ab", b""], dtype=object)})
    blob = req.body[req.header_length :]
    assert blob == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="", inputs={"x": np.zeros(1, np.float32)}), "model name"),
        (dict(model="m", inputs={}), "at least one input"),
        (dict(model="m", inputs={"x": np.zeros(1, np.complex64)}), "no KServe v2 datatype"),
        (dict(model="m", inputs={"x": np.zeros(1, np.float32)}, version="v1"), "digits"),
    ],
)
def test_bad_requests_are_refused(kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        build_infer_request(**kwargs)


def test_parse_binary_json_and_bytes_outputs():
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    strings = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 1) + b"z"
    header = json.dumps(
        {
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                {"name": "label", "datatype": "INT64", "shape": [1], "data": [7]},
                {"name": "names", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(strings)}},
            ]
        }
    ).encode()
    out = parse_infer_response(header + probs.tobytes() + strings, len(header))
    np.testing.assert_array_equal(out["probabilities"], probs)
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [7]
    assert out["names"].tolist() == [b"abc", b"z"]


@pytest.mark.parametrize(
    "body, header_length, match",
    [
        (
            b'{"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}1234',
            None,
            "does not decode",
        ),
        (
            b'{"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}1234',
            104,
            "needs 8 bytes",
        ),
        (
            b'{"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}}]}12345678',
            104,
            "shape",
        ),
        (b'{"outputs": [{"name": "p", "datatype": "FP99", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
        (b'{"model_name": "m"}', None, "no 'outputs'"),
        (b'{"outputs": []}xx', 15, "trailing"),
        (b"{}", 5, "outside body"),
    ],
)
def test_parse_rejects_malformed_bodies(body, header_length, match):
    with pytest.raises(InvalidInput, match=match):
        parse_infer_response(body, header_length)


def test_random_inputs_follow_metadata():
    meta = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 32]},
            {"name": "ids", "datatype": "INT32", "shape": [-1, -1]},
        ]
    }
    a = random_inputs(meta, batch_size=4, seed=1)
    b = random_inputs(meta, batch_size=4, seed=1)
    assert a["input"].shape == (4, 32) and a["input"].dtype == np.float32
    assert a["ids"].shape == (4, 1) and a["ids"].dtype == np.int32
    np.testing.assert_array_equal(a["input"], b["input"])
    with pytest.raises(InvalidInput, match="no inputs"):
        random_inputs({"inputs": []})
