"""Wire compatibility of a server whose models run batches inline on its event loop (--runner loop)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from serverkit import ServerProcess, ort_reference


@pytest.fixture(scope="module")
def loop_server(model_repo, tmp_path_factory):
    home = tmp_path_factory.mktemp("home_loop")
    srv = ServerProcess([str(model_repo), "--http-port", "0", "--metrics-port", "0", "--runner", "loop"], home)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def loop_client(loop_server):
    c = httpclient.InferenceServerClient(loop_server.url, concurrency=8)
    yield c
    c.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_ort(loop_client, onnx_models, binary):
    X = np.load(onnx_models["data"]).astype(np.float32)[:9]
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    res = loop_client.infer("mlp", [inp], outputs=outs)
    ref = ort_reference(onnx_models["mlp"], X)
    np.testing.assert_array_equal(res.as_numpy("label"), ref["label"])
    np.testing.assert_allclose(res.as_numpy("probabilities"), ref["probabilities"], rtol=1e-6, atol=1e-6)


def test_concurrent_requests_each_get_their_rows(loop_client, onnx_models):
    X = np.load(onnx_models["data"]).astype(np.float32)
    pending = []
    for i in range(64):
        x = np.ascontiguousarray(X[i : i + 1 + i % 3])
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        pending.append((x, loop_client.async_infer("mlp", [inp])))
    for x, req in pending:
        res = req.get_result()
        ref = ort_reference(onnx_models["mlp"], x)
        np.testing.assert_array_equal(res.as_numpy("label"), ref["label"])
        np.testing.assert_allclose(res.as_numpy("probabilities"), ref["probabilities"], rtol=1e-6, atol=1e-6)


def test_model_config_says_where_batches_run(loop_server):
    status, cfg = loop_server.get("/v2/models/mlp/config")
    assert status == 200 and cfg["parameters"]["runner"] == {"string_value": "loop"}
    status, cfg = loop_server.get("/v2/models/strings/config")
    assert status == 200 and cfg["parameters"]["runner"] == {"string_value": "threads"}


def test_bytes_model_falls_back_to_runner_threads(loop_client):
    words = np.array([[b"alpha"], [b"beta"]], dtype=np.object_)
    inp = httpclient.InferInput("text", list(words.shape), "BYTES")
    inp.set_data_from_numpy(words)
    res = loop_client.infer("strings", [inp])
    assert res.as_numpy("text_out").reshape(-1).tolist() == [b"alpha", b"beta"]


def test_hot_reload_keeps_in_flight_requests(loop_server, onnx_models):
    import threading

    x = np.load(onnx_models["data"]).astype(np.float32)[:4]
    expected = ort_reference(onnx_models["mlp"], x)["label"]
    stop = threading.Event()
    counts: list[tuple[int, list[str]]] = []

    def hammer():
        c = httpclient.InferenceServerClient(loop_server.url)
        inp = httpclient.InferInput("input", [4, 32], "FP32")
        inp.set_data_from_numpy(x)
        ok, errors = 0, []
        while True:  # at least one request per client, however fast the reloads go
            try:
                np.testing.assert_array_equal(c.infer("mlp", [inp]).as_numpy("label"), expected)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
            if stop.is_set():
                break
        counts.append((ok, errors))
        c.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    admin = httpclient.InferenceServerClient(loop_server.url)
    try:
        for _ in range(3):
            admin.load_model("mlp")  # rebuild and swap while the clients keep sending
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert admin.get_model_config("mlp")["parameters"]["runner"] == {"string_value": "loop"}
    admin.close()
    assert len(counts) == 4
    assert [e for _, errors in counts for e in errors] == []
    assert all(ok > 0 for ok, _ in counts)
