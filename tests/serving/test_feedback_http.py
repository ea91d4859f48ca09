"""POST /v2/models/<deployment>/feedback on a real `fastml serve` process: the client's request id and the
variant reach the prediction log over HTTP, outcomes are recorded, unknown ids are reported, bad labels are
400 naming the field, an unknown name is 404."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverkit import ServerProcess  # noqa: E402

from fastml.monitoring.log import read_log  # noqa: E402
from fastml.serving import deployment_config as dconf  # noqa: E402

AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 5000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 5000
"""


def post(url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_feedback_over_http(onnx_models, fastml_home, tmp_path):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("fraud", onnx_models["mlp"], version="1.0.0")
        reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    dconf.write_atomic(dconf.state_path(), AB)
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], repo / "mlp" / "1" / "model.onnx")
    x = np.load(onnx_models["data"])[:1]
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0", "--log-sample-rate", "1"], fastml_home)
    try:
        base = f"http://{srv.url}/v2/models"
        variants = {}
        for i in range(40):
            body = {
                "id": f"web-{i}",
                "parameters": {"routing_key": f"u{i}"},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": x.ravel().tolist()}],
            }
            status, resp = post(f"{base}/fraud/infer", body)
            assert status == 200, resp
            assert resp["id"] == f"web-{i}"
            variants[f"web-{i}"] = resp["parameters"]["variant"]
        status, resp = post(
            f"{base}/fraud/feedback",
            [{"id": f"web-{i}", "label": i % 2} for i in range(30)] + [{"id": "nobody", "label": 1}],
        )
        assert status == 200, resp
        assert resp == {"recorded": 30, "requests": 30, "unknown": 1, "unknown_ids": ["nobody"]}
        status, resp = post(f"{base}/fraud/feedback", {"id": "web-1", "label": "positive"})
        assert status == 400 and "feedback.label: must be a number" in resp["error"]
        status, resp = post(f"{base}/fraud/feedback", b"not json")
        assert status == 400 and "not valid JSON" in resp["error"]
        status, resp = post(f"{base}/nothing/feedback", {"id": "a", "label": 1})
        assert status == 404
        # A served model (not a deployment) takes feedback too.
        body = {
            "id": "direct-1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": x.ravel().tolist()}],
        }
        assert post(f"{base}/mlp/infer", body)[0] == 200
        assert post(f"{base}/mlp/feedback", {"id": "direct-1", "labels": [1]}) == (
            200,
            {"recorded": 1, "requests": 1, "unknown": 0, "unknown_ids": []},
        )
    finally:
        assert srv.stop() == 0
    log = read_log(fastml_home / "logs", model="fraud")
    rows = {r["request_id"]: r for r in log.select(["request_id", "variant", "label"]).to_pylist()}
    for rid, variant in variants.items():
        assert rows[rid]["variant"] == variant
    assert rows["web-3"]["label"] == 1.0 and rows["web-35"]["label"] is None
    assert read_log(fastml_home / "logs", model="mlp").column("label").to_pylist() == [1.0]
