"""Model repository extension: index, load, unload, and hot reload while requests are in flight."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient
from serverkit import ServerProcess, ort_reference
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def repo_server(model_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("mutable_repo")
    for name in ("mlp", "gbt"):
        shutil.copytree(model_repo / name, repo / name)
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], tmp_path_factory.mktemp("home"))
    srv.repo = repo
    yield srv
    assert srv.stop() == 0


def test_index_unload_load(repo_server, onnx_models):
    c = httpclient.InferenceServerClient(repo_server.url)
    x = np.load(onnx_models["data"])[:2]
    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    assert {(m["name"], m["state"]) for m in c.get_model_repository_index()} == {("gbt", "READY"), ("mlp", "READY")}
    c.unload_model("gbt")
    assert not c.is_model_ready("gbt")
    with pytest.raises(InferenceServerException) as e:
        c.infer("gbt", [inp])
    assert e.value.status() == "503" and "not loaded" in e.value.message()
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["gbt"]["state"] == "UNAVAILABLE"
    assert [m["name"] for m in repo_server.post("/v2/repository/index", {"ready": True})[1]] == ["mlp"]
    c.load_model("gbt")
    assert c.is_model_ready("gbt")
    np.testing.assert_array_equal(
        c.infer("gbt", [inp]).as_numpy("label"), ort_reference(onnx_models["gbt"], x)["label"]
    )
    with pytest.raises(InferenceServerException) as e:
        c.load_model("not_there")
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        c.load_model("gbt", config='{"max_batch_size": "many"}')
    assert e.value.status() == "400"
    c.load_model("gbt", config='{"max_batch_size": 4, "instance_group": [{"count": 2}]}')
    cfg = c.get_model_config("gbt")
    assert cfg["max_batch_size"] == 4 and cfg["instance_group"][0]["count"] == 2
    c.close()


def test_hot_reload_and_new_version_without_failing_requests(repo_server, onnx_models):
    x = np.load(onnx_models["data"])[:4]
    expected = ort_reference(onnx_models["mlp"], x)["label"]
    stop = threading.Event()
    results: list[tuple[int, int]] = []  # (ok, failed) per thread
    errors: list[str] = []

    def hammer():
        c = httpclient.InferenceServerClient(repo_server.url)
        inp = httpclient.InferInput("input", [4, 32], "FP32")
        inp.set_data_from_numpy(x)
        ok = failed = 0
        while not stop.is_set():
            try:
                out = c.infer("mlp", [inp]).as_numpy("label")
                assert np.array_equal(out, expected)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failed += 1
                errors.append(repr(exc))
        results.append((ok, failed))
        c.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    admin = httpclient.InferenceServerClient(repo_server.url)
    for _ in range(3):
        admin.load_model("mlp")  # rebuild + swap while the four clients keep sending
    # A new version directory appears; a load serves it (version policy: latest).
    shutil.copytree(repo_server.repo / "mlp" / "1", repo_server.repo / "mlp" / "2")
    admin.load_model("mlp")
    assert admin.get_model_metadata("mlp")["versions"] == ["2"]
    stop.set()
    for t in threads:
        t.join()
    assert sum(f for _, f in results) == 0, errors[:3]
    assert sum(o for o, _ in results) > 0
    assert admin.is_model_ready("mlp", "2") and not _ready(admin, "mlp", "1")
    admin.close()


def _ready(client, name, version):
    try:
        return client.is_model_ready(name, version)
    except InferenceServerException:
        return False
