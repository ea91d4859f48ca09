"""fastml as a Ray Serve application: the replica's KServe v2 handler (in-process, no Ray), then a local Ray
cluster started here: tritonclient answers equal a direct ONNX Runtime call, and a bounded load scales the
deployment from 1 to 2 replicas (Ray's autoscaler, read from ``serve.status()``)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from fastml.errors import InvalidInput
from fastml.ray.serve_app import KServeReplica, RayServeOptions

pytestmark = pytest.mark.serial  # a local Ray cluster of 2 CPUs (autoscaling on load): alone, after the parallel part


def direct(path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32)


# ----- the replica's handler, without Ray ----------------------------------------------------------------
@pytest.fixture(scope="module")
def replica(onnx_models):
    r = KServeReplica([str(onnx_models["mlp"])], {"max_batch_size": 64})
    yield r
    r.manager.close()


def call(replica, method, path, body=b"", headers=None):
    async def read():
        return body

    async def go():
        return await replica.handle(method, path, {k.lower(): v for k, v in (headers or {}).items()}, read)

    return asyncio.run(go())


def test_replica_answers_json_and_binary_inference_like_onnx_runtime(replica, onnx_models):
    x = rows(5)
    want = direct(onnx_models["mlp"], x)
    req = {"id": "r1", "inputs": [{"name": "input", "shape": [5, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, headers, body = call(replica, "POST", "/v2/models/mlp/infer", json.dumps(req).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["id"] == "r1" and answer["model_name"] == "mlp"
    outs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    np.testing.assert_allclose(outs["probabilities"], want["probabilities"], rtol=1e-6)
    assert np.array_equal(outs["label"], want["label"])

    # Triton's binary extension: a JSON header, then the raw tensors; the answer comes back the same way.
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [5, 32], "datatype": "FP32", "parameters": {"binary_data_size": 640}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = call(
        replica,
        "POST",
        "/v2/models/mlp/infer",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 40
    got = np.frombuffer(body[n:], np.float32).reshape(5, 2)
    np.testing.assert_allclose(got, want["probabilities"], rtol=1e-6)

    # A gzip body inflates to the same request.
    status, _, body = call(
        replica, "POST", "/v2/models/mlp/infer", gzip.compress(json.dumps(req).encode()), {"Content-Encoding": "gzip"}
    )
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] in ([5], [5, 2])


def test_replica_metadata_and_health(replica):
    assert call(replica, "GET", "/v2/health/ready")[0] == 200
    status, _, body = call(replica, "GET", "/v2/models/mlp")
    meta = json.loads(body)
    assert status == 200 and meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert json.loads(call(replica, "GET", "/v2")[2])["name"] == "fastml"


@pytest.mark.parametrize(
    "method, path, body, headers, status, text",
    [
        ("POST", "/v2/models/nope/infer", b"{}", {}, 404, "nope"),
        ("GET", "/v2/models/mlp/infer", b"", {}, 405, "accepts POST"),
        ("POST", "/v2/repository/index", b"{}", {}, 404, "not served"),
        ("POST", "/v2/models/mlp/infer", b"{not json", {}, 400, "malformed"),
        (
            "POST",
            "/v2/models/mlp/infer",
            json.dumps({"inputs": [{"name": "input", "shape": [2, 31], "datatype": "FP32", "data": [0.0] * 62}]}),
            {},
            400,
            "input",
        ),
        ("POST", "/v2/models/mlp/infer", b"{}", {"Content-Length": str(2**40)}, 413, "limit"),
        ("POST", "/v2/models/mlp/infer", b"{}", {"Content-Encoding": "br"}, 415, "br"),
        ("POST", "/v2/models/mlp/infer", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "outside"),
    ],
)
def test_replica_refuses_bad_requests_with_a_clear_4xx(replica, method, path, body, headers, status, text):
    got, hdrs, payload = call(replica, method, path, body.encode() if isinstance(body, str) else body, headers)
    assert got == status and hdrs["content-type"] == "application/json"
    assert text in json.loads(payload)["error"]


def test_options_refuse_conflicting_bounds():
    with pytest.raises(InvalidInput, match="min_replicas .3. is greater than max_replicas .2."):
        RayServeOptions(min_replicas=3, max_replicas=2)
    with pytest.raises(InvalidInput, match="target_ongoing_requests"):
        RayServeOptions(target_ongoing_requests=0)


# ----- a local Ray cluster ---------------------------------------------------------------------------------
def free_port() -> int:
    # Ray Serve's proxy takes a fixed port (it cannot report one the kernel chose), so one is picked here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(ray_cluster, onnx_models):
    from ray import serve

    from fastml.ray.serve_app import deploy

    port = free_port()
    options = RayServeOptions(
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        max_ongoing_requests=16,
        upscale_delay_s=0.5,
        look_back_period_s=1.0,
        replica_cpus=0.5,
        engine={"max_batch_size": 64},
    )
    try:
        yield deploy([str(onnx_models["mlp"])], options, port=port), port
    finally:
        serve.shutdown()


@pytest.mark.slow
# A one-second look-back (for a test that must see a decision in seconds) is shorter than Ray's deprecated
# metrics_interval_s default, which Ray warns about; the push intervals above are what Ray uses.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_tritonclient_gets_onnx_runtime_answers_and_load_scales_to_two_replicas(ray_app, onnx_models):
    import tritonclient.http as httpclient

    from fastml.ray.serve_app import replica_count

    url, port = ray_app
    assert replica_count() == 1
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_server_ready() and client.is_model_ready("mlp")
        x = rows(300, seed=3)
        want = direct(onnx_models["mlp"], x)
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
            result = client.infer("mlp", [inp], outputs=outs)
            np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
            assert np.array_equal(result.as_numpy("label"), want["label"])
    finally:
        client.close()

    # Bounded load: 8 keep-alive connections for at most 60 s, stopped as soon as Ray runs a second replica.
    stop = threading.Event()
    failures: list[str] = []
    answered = [0] * 8
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [4, 32], "datatype": "FP32", "data": x[:4].ravel().tolist()}]}
    )

    def load(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while not stop.is_set():
                conn.request("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status}: {payload[:200]!r}")
                    return
                answered[i] += 1
        except OSError as exc:
            failures.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    replicas = 1
    try:
        while time.monotonic() < deadline and not failures:
            replicas = replica_count()
            if replicas >= 2:
                break
            stop.wait(0.25)  # polling serve.status(), bounded by the deadline
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:3]
    assert replicas == 2, f"still {replicas} replica(s) after 60 s of load ({sum(answered)} answers)"
    assert sum(answered) > 0
