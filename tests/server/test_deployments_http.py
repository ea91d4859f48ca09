"""Deployments over HTTP with real `fastml serve` processes: tritonclient unchanged, sticky keys across
processes and restarts, the fastml-routing-key / fastml-variant headers, alias following, the deploy CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from serverkit import ROOT, ServerProcess

from fastml.serving.router_reference import ReferenceRouter

AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 9000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 1000

[deployments.champ]
[[deployments.champ.variants]]
name = "only"
model = "fraud@champion"
weight_bp = 10000

[deployments.mirrored]
[[deployments.mirrored.variants]]
name = "main"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.mirrored.shadows]]
name = "copy"
model = "fraud:2.0.0"
share_bp = 10000
"""


def fastml(*args, home):
    import os

    env = dict(os.environ, FASTML_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "fastml.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


@pytest.fixture
def home(fastml_home, onnx_models, tmp_path):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("fraud", onnx_models["mlp"], version="1.0.0")
        reg.register("fraud", onnx_models["gbt"], version="2.0.0")
        reg.set_alias("fraud", "champion", "1.0.0")
    path = tmp_path / "deploy.toml"
    path.write_text(AB)
    done = fastml("deploy", "apply", str(path), home=fastml_home)
    assert done.returncode == 0, done.stderr
    assert "applied deployment fraud: incumbent -> fraud:1.0.0, candidate -> fraud:2.0.0" in done.stdout
    return fastml_home


def serve(model_repo, home):
    return ServerProcess([str(model_repo), "--http-port", "0", "--metrics-port", "0"], home)


def variants_of(url: str, keys: list[str], x: np.ndarray) -> list[str]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        out = []
        for key in keys:
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            res = client.infer("fraud", [inp], parameters={"routing_key": key})
            resp = res.get_response()
            assert resp["model_name"] == "fraud"
            assert res.as_numpy("probabilities").shape == (len(x), 2)
            out.append(resp["parameters"]["variant"])
        return out
    finally:
        client.close()


def test_sticky_90_10_across_two_processes_and_a_restart(home, model_repo, onnx_models):
    x = np.load(onnx_models["data"])[:2]
    keys = [f"user-{i}" for i in range(150)]
    reference = ReferenceRouter(["incumbent", "candidate"], [9000, 1000])
    expected = [reference.variants[reference.route(k)[0]] for k in keys]
    a, b = serve(model_repo, home), serve(model_repo, home)
    try:
        assert variants_of(a.url, keys, x) == expected
        assert variants_of(b.url, keys, x) == expected
        # Counters published by both processes, summed by `fastml deploy status --json`.
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(fastml("deploy", "status", "--json", home=home).stdout)["deployments"]["fraud"]
            routed = sum(r["routed"] for r in status["variants"].values() if r["kind"] == "variant")
            if routed == 2 * len(keys) or time.monotonic() > deadline:
                break
        assert status["processes"] == 2
        assert status["variants"]["candidate"]["routed"] == 2 * expected.count("candidate")
        assert status["variants"]["incumbent"]["weight_bp"] == 9000
        assert status["variants"]["incumbent"]["serving"] == ["fraud:1.0.0"]
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
    c = serve(model_repo, home)  # a restart
    try:
        assert variants_of(c.url, keys, x) == expected
    finally:
        assert c.stop() == 0


def test_headers_pinning_and_errors(home, model_repo, onnx_models):
    x = np.load(onnx_models["data"])[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    srv = serve(model_repo, home)
    try:
        reference = ReferenceRouter(["incumbent", "candidate"], [9000, 1000])
        for key in ("alice", "bob", "carol", "dave"):
            url = f"http://{srv.url}/v2/models/fraud/infer"
            status, resp, headers = _post(url, body, {"fastml-routing-key": key})
            assert status == 200
            want = reference.variants[reference.route(key)[0]]
            assert resp["parameters"]["variant"] == want == headers["fastml-variant"]
        status, resp, headers = _post(url, {**body, "parameters": {"variant": "candidate"}}, {})
        assert status == 200 and headers["fastml-variant"] == "candidate" and resp["model_version"] == "2.0.0"
        status, resp, _ = _post(url, {**body, "parameters": {"variant": "ghost"}}, {})
        assert status == 400 and "'ghost' is not a variant of deployment 'fraud'" in resp["error"]
        # The served model itself is unchanged.
        status, resp, headers = _post(f"http://{srv.url}/v2/models/mlp/infer", body, {})
        assert status == 200 and "fastml-variant" not in headers and "parameters" not in resp
        alone = resp["outputs"]
        # A shadow never changes the answer: the mirrored deployment answers exactly as its main variant's model.
        for _ in range(5):
            status, resp, headers = _post(f"http://{srv.url}/v2/models/mirrored/infer", body, {})
            assert status == 200 and headers["fastml-variant"] == "main" and resp["model_version"] == "1.0.0"
            assert resp["outputs"] == alone
        # Prometheus series labelled by deployment and variant.
        text = srv.metrics()
        assert 'fastml_deployment_weight_bp{deployment="fraud",variant="incumbent"} 9000.0' in text
        assert 'fastml_deployment_pinned_total{deployment="fraud",variant="candidate"} 1.0' in text
        assert 'fastml_deployment_request_failures_total{deployment="fraud",kind="variant",variant="ghost"}' not in text
        assert 'fastml_deployment_requests_total{deployment="mirrored",kind="variant",variant="main"} 5.0' in text
        assert (
            'fastml_deployment_request_duration_us_count{deployment="mirrored",kind="variant",variant="main"} 5.0'
            in text
        )
        assert 'fastml_deployment_shadow_mirrored_total{deployment="mirrored",variant="copy"} 5.0' in text
    finally:
        assert srv.stop() == 0


def _post(url, body, headers):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}


def test_alias_move_is_followed_without_a_failed_request(home, model_repo, onnx_models):
    from fastml.registry import Registry

    x = np.load(onnx_models["data"])[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    srv = serve(model_repo, home)
    try:
        url = f"http://{srv.url}/v2/models/champ/infer"
        status, resp, _ = _post(url, body, {})
        assert status == 200 and resp["model_version"] == "1.0.0"
        with Registry() as reg:
            reg.set_alias("fraud", "champion", "2.0.0")
        versions = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, resp, _ = _post(url, body, {})
            assert status == 200, resp  # no failed request while the alias moves
            versions.append(resp["model_version"])
            if resp["model_version"] == "2.0.0":
                break
        assert versions[-1] == "2.0.0"
    finally:
        assert srv.stop() == 0


def test_bad_apply_names_the_field_and_keeps_the_persisted_file(home, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(AB.replace("9000", "9500"))
    done = fastml("deploy", "apply", str(bad), home=home)
    assert done.returncode == 2
    assert "deployments.fraud.variants: weight_bp values sum to 10500, not 10000" in done.stderr
    bad.write_text(AB.replace("fraud:2.0.0", "fraud:7.0.0"))
    done = fastml("deploy", "apply", str(bad), home=home)
    assert done.returncode == 2 and "deployments.fraud.variants[1].model" in done.stderr
    shown = fastml("deploy", "show", home=home)
    assert shown.stdout == AB


def test_status_table(home):
    done = fastml("deploy", "status", home=home)
    assert done.returncode == 0
    assert "incumbent" in done.stdout and "fraud:1.0.0" in done.stdout and "9000" in done.stdout


def test_workers_each_follow_the_alias(home, model_repo, onnx_models):
    from fastml.registry import Registry

    x = np.load(onnx_models["data"])[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    srv = ServerProcess([str(model_repo), "--http-port", "0", "--metrics-port", "0", "--workers", "2"], home)
    try:
        url = f"http://{srv.url}/v2/models/champ/infer"
        assert _post(url, body, {})[1]["model_version"] == "1.0.0"
        with Registry() as reg:
            reg.set_alias("fraud", "champion", "2.0.0")
        # Every request opens a new connection, so the kernel spreads them over both workers: once 40 in a
        # row answer 2.0.0, both workers have followed the alias (and none failed on the way).
        streak, deadline = 0, time.monotonic() + 60
        while streak < 40 and time.monotonic() < deadline:
            status, resp, _ = _post(url, body, {})
            assert status == 200, resp
            streak = streak + 1 if resp["model_version"] == "2.0.0" else 0
        assert streak == 40
        status = json.loads(fastml("deploy", "status", "--json", home=home).stdout)["deployments"]["champ"]
        assert status["processes"] == 2
    finally:
        assert srv.stop() == 0


def test_grpc_routes_by_key_and_names_the_variant(home, model_repo, onnx_models):
    import re

    import tritonclient.grpc as tg

    x = np.load(onnx_models["data"])[:2]
    srv = ServerProcess([str(model_repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0"], home)
    try:
        m = re.search(r"fastml serve: grpc ([\d.]+):(\d+)", srv.proc.stdout.readline())
        assert m, "no gRPC start-up line"
        client = tg.InferenceServerClient(f"{m.group(1)}:{m.group(2)}")
        reference = ReferenceRouter(["incumbent", "candidate"], [9000, 1000])
        for i in range(30):
            key = f"user-{i}"
            inp = tg.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            resp = client.infer("fraud", [inp], parameters={"routing_key": key}).get_response(as_json=True)
            assert resp["parameters"]["variant"]["string_param"] == reference.variants[reference.route(key)[0]]
            assert resp["model_name"] == "fraud"
        client.close()
    finally:
        assert srv.stop() == 0


def _call(method, url, body: bytes | None, headers):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_admin_endpoint_puts_gets_and_deletes_deployments(home, model_repo, onnx_models):
    from fastml.serving import deployment_config as dconf

    x = np.load(onnx_models["data"])[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    admin = {"Authorization": "Bearer s3cret-admin-token-0123"}
    spec = {"variants": [{"name": "old", "model": "fraud:1.0.0", "weight_bp": 10000}]}
    srv = ServerProcess(
        [str(model_repo), "--http-port", "0", "--metrics-port", "0"],
        home,
        env_extra={"FASTML_ADMIN_TOKEN": "s3cret-admin-token-0123"},
    )
    try:
        base = f"http://{srv.url}/v2/deployments"
        # Changing a deployment needs the admin token; reading does not.
        assert _call("PUT", f"{base}/ranker", json.dumps(spec).encode(), {})[0] == 401
        assert _call("PUT", f"{base}/ranker", json.dumps(spec).encode(), {"Authorization": "Bearer nope"})[0] == 401
        assert _call("GET", f"{base}/ranker", None, {})[0] == 404
        # A bad spec is a 400 naming the field; nothing changes.
        bad = {"variants": [{"name": "old", "model": "fraud:1.0.0", "weight_bp": 9999}]}
        status, resp = _call("PUT", f"{base}/ranker", json.dumps(bad).encode(), admin)
        assert status == 400 and "deployments.ranker.variants: weight_bp values sum to 9999" in resp["error"]
        status, resp = _call("PUT", f"{base}/fraud", b'[[variants]]\nname = "a"\nmodel = "fraud:9.9.9"\n', admin)
        assert status == 400 and "weight_bp" in resp["error"]
        status, resp = _call(
            "PUT", f"{base}/fraud", b'[[variants]]\nname = "a"\nmodel = "fraud:9.9.9"\nweight_bp = 10000\n', admin
        )
        assert status == 404 and "deployments.fraud.variants[0].model" in resp["error"]
        status, resp, _ = _post(
            f"http://{srv.url}/v2/models/fraud/infer", {**body, "parameters": {"variant": "candidate"}}, {}
        )
        assert status == 200 and resp["model_version"] == "2.0.0"  # the running deployment as it was
        # JSON, then a TOML replacement: applied at once and persisted beside the file's other deployments.
        status, resp = _call("PUT", f"{base}/ranker", json.dumps(spec).encode(), admin)
        assert status == 200 and resp["variants"]["old"]["weight_bp"] == 10000
        status, resp, headers = _post(f"http://{srv.url}/v2/models/ranker/infer", body, {})
        assert status == 200 and headers["fastml-variant"] == "old" and resp["model_version"] == "1.0.0"
        toml = b'[[variants]]\nname = "new"\nmodel = "fraud:2.0.0"\nweight_bp = 10000\n'
        assert _call("PUT", f"{base}/ranker", toml, admin)[0] == 200
        status, resp, headers = _post(f"http://{srv.url}/v2/models/ranker/infer", body, {})
        assert status == 200 and headers["fastml-variant"] == "new" and resp["model_version"] == "2.0.0"
        _, persisted = dconf.read(dconf.state_path())
        assert list(persisted) == ["fraud", "champ", "mirrored", "ranker"]
        assert persisted["ranker"].variants[0].model == "fraud:2.0.0"
        status, resp = _call("GET", base, None, {})
        assert status == 200 and set(resp["deployments"]) == {"fraud", "champ", "mirrored", "ranker"}
        assert resp["deployments"]["ranker"]["variants"]["new"]["routed"] == 1
        # Delete: gone from the server and the file.
        assert _call("DELETE", f"{base}/ranker", None, admin)[0] == 200
        assert _post(f"http://{srv.url}/v2/models/ranker/infer", body, {})[0] == 404
        assert "ranker" not in dconf.read(dconf.state_path())[1]
        assert _call("DELETE", f"{base}/ranker", None, admin)[0] == 404
        assert _call("POST", f"{base}/ranker", b"", admin)[0] == 405
        # `fastml deploy apply --server` goes through the same endpoint.
        (home / "ranker.toml").write_text(
            '[deployments.ranker]\n[[deployments.ranker.variants]]\nname = "c"\nmodel = "fraud:1.0.0"\nweight_bp = 10000\n'
        )
        (home / "admin.token").write_text("s3cret-admin-token-0123\n")
        args = ["deploy", "apply", str(home / "ranker.toml"), "--server", f"http://{srv.url}"]
        refused = fastml(*args, home=home)
        assert refused.returncode != 0 and "HTTP 401" in refused.stderr
        done = fastml(*args, "--token-file", str(home / "admin.token"), home=home)
        assert done.returncode == 0, done.stderr
        assert "applied deployment ranker on" in done.stdout
        status, resp = _call("GET", f"{base}/ranker", None, {})
        assert status == 200 and list(resp["variants"]) == ["c"]
    finally:
        assert srv.stop() == 0


def test_a_deployment_answers_classified_outputs_from_the_variant_that_ran(home, model_repo, onnx_models):
    """Triton's classification extension through a deployment: each variant's own probabilities, as top
    classes, and the answer still names the variant."""
    import onnxruntime as ort
    import tritonclient.http as httpclient

    x = np.load(onnx_models["data"])[:3]
    srv = serve(model_repo, home)
    client = httpclient.InferenceServerClient(srv.url)
    try:
        for variant, key in (("incumbent", "mlp"), ("candidate", "gbt")):
            probs = ort.InferenceSession(str(onnx_models[key])).run(["probabilities"], {"input": x})[0]
            top = probs.argmax(axis=1)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            res = client.infer(
                "fraud",
                [inp],
                outputs=[httpclient.InferRequestedOutput("probabilities", class_count=1)],
                parameters={"variant": variant},
            )
            assert res.get_response()["parameters"]["variant"] == variant
            want = [[f"{float(probs[i, top[i]]):f}:{top[i]}".encode()] for i in range(len(x))]
            assert res.as_numpy("probabilities").tolist() == want
    finally:
        client.close()
        assert srv.stop() == 0
