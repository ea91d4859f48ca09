"""The transport-neutral data plane: inference through InferRequest/InferResponse, the staged hot-path
API, failure counting, and the control/metadata answers every transport encodes."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from fastml.errors import InvalidInput, NotFound, Unavailable
from fastml.serving import ModelManager
from fastml.serving.dataplane import DataPlane, InferRequest, InferResponse, request_timeout_us


@pytest.fixture
def plane(tmp_path, onnx_models):
    root = tmp_path / "repo"
    for name in ("mlp", "gbt"):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(onnx_models[name], root / name / "1" / "model.onnx")
    manager = ModelManager([str(root)])
    manager.load_all()
    yield DataPlane(manager, version="9.9")
    manager.close()


def _x(onnx_models, rows=2):
    return np.load(onnx_models["data"])[:rows]


def test_infer_returns_outputs_in_model_or_requested_order(plane, onnx_models):
    x = _x(onnx_models)

    async def go():
        full = await plane.infer(InferRequest("mlp", {"input": x}, id="r1"))
        some = await plane.infer(InferRequest("mlp", {"input": x}, outputs=["probabilities", "label"]))
        one = await plane.infer(InferRequest("mlp", {"input": x}, model_version="1", outputs=["label"]))
        return full, some, one

    full, some, one = asyncio.run(go())
    assert isinstance(full, InferResponse)
    assert (full.model_name, full.model_version, full.id) == ("mlp", "1", "r1")
    assert list(full.outputs) == ["label", "probabilities"]
    assert list(some.outputs) == ["probabilities", "label"] and some.id is None
    assert list(one.outputs) == ["label"]
    expected = plane.manager.get("mlp").model.predict(x)
    np.testing.assert_array_equal(full.outputs["label"], expected["label"])
    np.testing.assert_allclose(some.outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    assert full.outputs["probabilities"].shape == (2, 2)
    assert plane.inflight == 0 and plane.manager.get("mlp").inflight == 0


def test_refusals_raise_synchronously_and_are_counted(plane, onnx_models):
    x = _x(onnx_models)

    async def go():
        with pytest.raises(NotFound):
            plane.submit(InferRequest("nope", {"input": x}))
        with pytest.raises(NotFound):
            plane.submit(InferRequest("mlp", {"input": x}, model_version="7"))
        with pytest.raises(InvalidInput, match="unknown output 'nope'"):
            plane.submit(InferRequest("mlp", {"input": x}, outputs=["nope"]))
        with pytest.raises(InvalidInput, match="not a sequence model"):
            plane.submit(InferRequest("mlp", {"input": x}, parameters={"sequence_id": 3}))
        with pytest.raises(InvalidInput):
            plane.submit(InferRequest("mlp", {"wrong_name": x}))
        with pytest.raises(InvalidInput):
            plane.submit(InferRequest("mlp", {"input": x.astype(np.float64)[:, :5]}))

    asyncio.run(go())
    entry = plane.manager.get("mlp")
    assert entry.failures == {"OTHER": 4}  # the two NotFound never reached a model entry
    assert plane.inflight == 0
    stats = plane.model_statistics("mlp")["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 4


def test_staged_api_settles_once(plane, onnx_models):
    x = _x(onnx_models, 3)

    async def go():
        entry = plane.resolve("gbt")
        fut = plane.submit_arrays(entry, {"input": x}, None, "abc")
        assert plane.inflight == 1 and entry.inflight == 1
        await asyncio.wait([fut])
        return entry, plane.settle(entry, fut)

    entry, out = asyncio.run(go())
    assert out["label"].shape == (3,) and plane.inflight == 0 and entry.inflight == 0


def test_request_timeout_parameter():
    assert request_timeout_us({}, "m") is None
    assert request_timeout_us({"timeout": 0}, "m") is None
    assert request_timeout_us({"timeout": 500, "priority": 1, "sequence_id": 0}, "m") == 500
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidInput, match="timeout"):
            request_timeout_us({"timeout": bad}, "m")


def test_control_and_metadata_dicts(plane):
    assert plane.server_live() and plane.server_ready()
    assert plane.server_metadata() == {
        "name": "fastml",
        "version": "9.9",
        "extensions": [
            "binary_tensor_data",
            "classification",
            "model_configuration",
            "statistics",
            "parameters",
            "schedule_policy",
            "model_repository",
            "system_shared_memory",
        ],
    }
    meta = plane.model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    cfg = plane.model_config("mlp", "1")
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [32]}] and cfg["max_batch_size"] > 0
    assert plane.model_ready("gbt", "1")
    with pytest.raises(NotFound):
        plane.model_ready("gbt", "2")
    assert {m["name"] for m in plane.model_statistics()["model_stats"]} == {"mlp", "gbt"}
    assert [m["name"] for m in plane.model_statistics("gbt", "1")["model_stats"]] == ["gbt"]
    with pytest.raises(NotFound):
        plane.model_statistics("nope")
    assert [(m["name"], m["state"]) for m in plane.repository_index()] == [("gbt", "READY"), ("mlp", "READY")]
    plane.draining = True
    assert not plane.server_ready() and not plane.model_ready("mlp")


def test_repository_load_unload_and_disable(plane, onnx_models):
    async def go():
        await plane.unload_model("gbt")
        with pytest.raises(Unavailable):
            plane.resolve("gbt")
        assert [m["state"] for m in plane.repository_index() if m["name"] == "gbt"] == ["UNAVAILABLE"]
        with pytest.raises(InvalidInput, match="file:"):
            await plane.load_model("gbt", parameters={"file:1/model.onnx": "AAAA"})
        await plane.load_model("gbt", '{"max_batch_size": 4}')
        assert plane.model_config("gbt")["max_batch_size"] == 4
        plane.disable_repository("several workers")
        with pytest.raises(InvalidInput, match="several workers"):
            await plane.unload_model("gbt")

    asyncio.run(go())
    assert not {"model_repository", "system_shared_memory"} & set(plane.server_metadata()["extensions"])


def test_snapshot_source_replaces_local_counters(plane):
    snap = {
        "name": "mlp",
        "version": "1",
        "ready": True,
        "inflight": 0,
        "server_failures": {"REJECTED": 2},
        "stats": {"requests": 10, "rows": 12, "batches": 5, "failures": 1},
        "batch_size_histogram": {},
        "batch_stats": {},
    }
    plane.snapshot_source = lambda: [snap]
    (m,) = plane.model_statistics("mlp")["model_stats"]
    assert m["inference_count"] == 12 and m["execution_count"] == 5
    assert m["inference_stats"]["success"]["count"] == 10 and m["inference_stats"]["fail"]["count"] == 3
    assert plane.model_statistics("gbt")["model_stats"] == []
