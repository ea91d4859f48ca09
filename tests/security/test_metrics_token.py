"""`fastml serve --require-token-for-metrics`: the metrics listener's /metrics needs the admin bearer token,
while inference stays open (the two options are independent)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from served import ROOT, TOKEN, Served


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_metrics_need_the_token_and_inference_stays_open(sec_repo, token_file, tmp_path):
    args = [str(sec_repo), "--http-port", "0", "--metrics-port", "0", "--admin-token-file", str(token_file)]
    srv = Served([*args, "--require-token-for-metrics"], tmp_path)
    try:
        metrics = srv.metrics_url
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            status, body = _get(metrics, headers)
            assert status == 401 and b"admin token" in body
        status, body = _get(metrics, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"fastml_inference_request_success_total" in body
        body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
        assert srv.call("POST", "/v2/models/mlp/infer", body)[0] == 200  # no token needed for inference
    finally:
        assert srv.stop() == 0


def test_require_token_for_metrics_needs_a_token(sec_repo, tmp_path):
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(sec_repo), "--http-port", "0", "--metrics-port", "0"]
    out = subprocess.run([*cmd, "--require-token-for-metrics"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "--require-token-for-metrics needs a token" in out.stderr
