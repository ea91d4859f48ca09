"""Prediction logging wired into fastml.load_model and fastml serve (the engine feeds monitoring)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import fastml
from fastml.errors import InvalidInput
from fastml.monitoring import read_log
from fastml.monitoring.log import tensor_columns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from serverkit import ServerProcess, ort_reference  # noqa: E402


def _inputs_logged(table, n_features=32) -> np.ndarray:
    cols = tensor_columns(table, "input.input", [f"c{i}" for i in range(n_features)])
    return np.column_stack([np.asarray(cols[f"c{i}"]) for i in range(n_features)])


def test_load_model_logs_every_request_sync_and_async(onnx_models, fastml_home):
    X = np.load(onnx_models["data"])[:40]
    with fastml.load_model(onnx_models["mlp"], log_predictions=True) as model:
        for i in range(0, 20, 4):
            model.predict(X[i : i + 4], request_id=f"sync-{i}")

        async def many():
            return await asyncio.gather(
                *(model.predict_async(X[i : i + 1], request_id=f"async-{i}") for i in range(20, 40))
            )

        asyncio.run(many())
    # close() flushed the logger: every row is in the log, with the model's name and the request ids
    table = read_log(model="mlp")
    assert table.num_rows == 40
    ids = sorted(set(table.column("request_id").to_pylist()))
    assert ids == sorted([f"sync-{i}" for i in range(0, 20, 4)] + [f"async-{i}" for i in range(20, 40)])
    logged = _inputs_logged(table)
    # the logged inputs are exactly the rows sent (as a multiset of rows)
    assert np.allclose(np.sort(logged, axis=0), np.sort(X, axis=0))


def test_load_model_log_sample_rate_is_validated(onnx_models):
    with pytest.raises(InvalidInput, match="sample rate"):
        fastml.load_model(onnx_models["mlp"], log_predictions=1.5)


def test_load_model_accepts_registry_artifact_without_suffix(onnx_models):
    from fastml.registry import Registry

    reg = Registry()
    reg.register("m", onnx_models["mlp"])
    path = reg.artifact_path("m:1.0.0")
    assert path.suffix != ".onnx"  # content-addressed, stored by hash
    X = np.load(onnx_models["data"])[:3]
    with fastml.load_model(path) as model:
        out = model.predict(X)
    assert np.allclose(out["probabilities"], ort_reference(onnx_models["mlp"], X)["probabilities"], atol=1e-6)


def test_load_model_refuses_a_file_that_is_not_onnx(tmp_path):
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"not a model")
    with pytest.raises(InvalidInput):
        fastml.load_model(bogus)


def test_server_writes_the_prediction_log(onnx_models, tmp_path):
    import tritonclient.http as httpclient

    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], repo / "mlp" / "1" / "model.onnx")
    home = tmp_path / "home"
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0", "--log-sample-rate", "1"], home)
    X = np.load(onnx_models["data"])[:6]
    try:
        client = httpclient.InferenceServerClient(srv.url)
        for i in range(3):
            inp = httpclient.InferInput("input", [2, 32], "FP32")
            inp.set_data_from_numpy(X[2 * i : 2 * i + 2])
            client.infer("mlp", [inp], request_id=f"r{i}")
    finally:
        assert srv.stop() == 0  # SIGTERM drains and closes the model, which flushes its log
    table = read_log(home / "logs", model="mlp")
    assert table.num_rows == 6
    assert np.allclose(np.sort(_inputs_logged(table), axis=0), np.sort(X, axis=0))
