"""Repository load requests with a ModelConfig: the fields that describe the model (version_policy, input, output)
must agree with it, or the load is refused (400) and the served model is unchanged; never a 200 that serves other
versions or other tensors than the config sent says."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from serverkit import ServerProcess
from tritonclient.utils import InferenceServerException

from fastml.errors import InvalidInput
from fastml.serving import ModelManager


def _scale_model(path: Path, k: float) -> None:
    """y = k * x, x and y FP32 [-1, 4]: each version answers with its own factor."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [float(k)])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    _scale_model(root / "m" / "1" / "model.onnx", 1.0)
    _scale_model(root / "m" / "2" / "model.onnx", 2.0)
    return root


def _predict(manager, version=None) -> float:
    out = manager.get("m", version).model.predict({"x": np.ones((1, 4), np.float32)})
    return float(out["y"][0, 0])


@pytest.mark.parametrize(
    "policy",
    [{"all": {}}, {"specific": {"versions": [1]}}, {"latest": {"num_versions": 2}}, "all"],
    ids=["all", "specific", "latest2", "string"],
)
def test_load_with_another_version_policy_is_refused_not_ignored(repo, policy):
    m = ModelManager([str(repo)])
    m.load_all()
    try:
        with pytest.raises(InvalidInput, match=r"config\.version_policy"):
            asyncio.run(m.load("m", json.dumps({"version_policy": policy})))
        assert sorted(m.models["m"]) == ["2"] and _predict(m) == 2.0  # unchanged
        # The policy the model serves by (what GET .../config reports) may be sent back.
        new = asyncio.run(m.load("m", json.dumps({"version_policy": {"latest": {"num_versions": 1}}})))
        assert [e.version for e in new] == ["2"]
    finally:
        m.close()


def test_load_with_the_all_policy_of_an_all_model_serves_every_version(repo):
    (repo / "m" / "config.toml").write_text('version_policy = "all"\n')
    m = ModelManager([str(repo)])
    m.load_all()
    try:
        new = asyncio.run(m.load("m", json.dumps({"version_policy": {"all": {}}, "max_batch_size": 4})))
        assert sorted(e.version for e in new) == ["1", "2"]
        assert _predict(m, "1") == 1.0 and _predict(m) == 2.0
        with pytest.raises(InvalidInput, match=r"version_policy = 'all'"):
            asyncio.run(m.load("m", json.dumps({"version_policy": {"latest": {"num_versions": 1}}})))
        assert sorted(m.models["m"]) == ["1", "2"]
    finally:
        m.close()


@pytest.mark.parametrize(
    ("field", "tensors", "named"),
    [
        ("input", [{"name": "x", "data_type": "TYPE_INT64", "dims": [4]}], r"config\.input\[0\]\.data_type"),
        ("input", [{"name": "x", "data_type": "TYPE_FP32", "dims": [7]}], r"config\.input\[0\]\.dims"),
        ("input", [{"name": "nope", "data_type": "TYPE_FP32", "dims": [4]}], r"config\.input\[0\]\.name"),
        ("output", [{"name": "y", "data_type": "TYPE_FP64", "dims": [4]}], r"config\.output\[0\]\.data_type"),
        ("output", {"name": "y"}, r"config\.output' must be a list"),
    ],
)
def test_load_declaring_tensors_the_model_lacks_is_refused(repo, field, tensors, named):
    m = ModelManager([str(repo)])
    m.load_all()
    try:
        before = m.get("m")
        with pytest.raises(InvalidInput, match=named):
            asyncio.run(m.load("m", json.dumps({field: tensors, "max_batch_size": 4})))
        assert m.get("m") is before and before.model.ready and before.model.max_batch_size == 32
        assert "m" not in m.failed
    finally:
        m.close()


def test_config_read_and_sent_back_over_http_loads_and_a_changed_one_is_a_400(repo, tmp_path):
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], tmp_path / "home")
    try:
        c = httpclient.InferenceServerClient(srv.url)
        cfg = c.get_model_config("m")
        cfg["max_batch_size"] = 8
        c.load_model("m", config=json.dumps(cfg))  # the config read, edited, sent back
        assert c.get_model_config("m")["max_batch_size"] == 8
        for change in ({"version_policy": {"all": {}}}, {"input": [{**cfg["input"][0], "dims": [3]}]}):
            with pytest.raises(InferenceServerException) as e:
                c.load_model("m", config=json.dumps({**cfg, **change}))
            assert e.value.status() == "400", e.value.message()
        assert [r["version"] for r in c.get_model_repository_index() if r["state"] == "READY"] == ["2"]
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        res = c.infer("m", [inp])
        assert res.get_response()["model_version"] == "2" and res.as_numpy("y").tolist() == [[2.0] * 4]
        c.close()
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(("line", "field"), [("max_batch_size = 0", "max_batch_size"), ("instances = 0", "instances")])
def test_config_toml_value_the_engine_refuses_fails_its_model_at_scan_naming_file_and_field(repo, line, field):
    _scale_model(repo / "n" / "1" / "model.onnx", 5.0)
    (repo / "n" / "config.toml").write_text(line + "\n")
    m = ModelManager([str(repo)])
    assert m.load_all() == [("n", "", f"{repo / 'n' / 'config.toml'}: {field} must be >= 1, got 0")]
    try:
        assert m.index() == [
            {"name": "m", "version": "2", "state": "READY", "reason": ""},
            {
                "name": "n",
                "state": "UNAVAILABLE",
                "reason": f"{repo / 'n' / 'config.toml'}: {field} must be >= 1, got 0",
            },
        ]
        assert _predict(m) == 2.0
    finally:
        m.close()


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"max_queue_size": 3}, "max_queue_size"),
        ({"default_timeout_microseconds": 5}, "default_timeout_microseconds"),
        ({"timeout_action": "DELAY"}, "timeout_action"),
        ({"allow_timeout_override": 1}, "allow_timeout_override"),
        ({"priority_levels": 2}, "priority_levels"),
        ("REJECT", "must be a JSON object"),
    ],
)
def test_load_with_another_queue_policy_is_refused_not_ignored(repo, policy, named):
    m = ModelManager([str(repo)])
    m.load_all()
    try:
        before = m.get("m")
        body = {"max_batch_size": 4, "dynamic_batching": {"default_queue_policy": policy}}
        with pytest.raises(InvalidInput, match=rf"default_queue_policy.*{named}|{named}.*default_queue_policy"):
            asyncio.run(m.load("m", json.dumps(body)))
        assert m.get("m") is before and before.model.max_batch_size == 32
        # What GET .../config reports (the queue policy config.toml sets) loads, in either integer spelling.
        (repo / "m" / "config.toml").write_text("max_queue_size = 7\ntimeout_us = 9\n")
        same = {"timeout_action": "REJECT", "default_timeout_microseconds": "9", "allow_timeout_override": True}
        body["dynamic_batching"]["default_queue_policy"] = {**same, "max_queue_size": 7}
        new = asyncio.run(m.load("m", json.dumps(body)))
        assert (new[0].config.max_queue_size, new[0].config.timeout_us, new[0].model.max_batch_size) == (7, 9, 4)
    finally:
        m.close()


def test_latest_version_linked_to_a_missing_directory_fails_its_model_not_served_as_the_one_below(repo, tmp_path):
    (repo / "m" / "3").symlink_to(tmp_path / "unmounted" / "m-v3", target_is_directory=True)
    _scale_model(repo / "n" / "1" / "model.onnx", 5.0)
    m = ModelManager([str(repo)])
    failures = m.load_all()
    try:
        assert [(n, v) for n, v, _ in failures] == [("m", "")] and "version 3" in failures[0][2]
        with pytest.raises(Exception, match="has no available versions"):
            m.get("m")
        assert [r.get("state") for r in m.index()] == ["UNAVAILABLE", "READY"]
        (repo / "m" / "3").unlink()  # the link removed: version 2 is the latest again
        new = asyncio.run(m.load("m"))
        assert [e.version for e in new] == ["2"] and _predict(m) == 2.0
    finally:
        m.close()


def test_a_triton_config_pbtxt_without_config_toml_is_named_in_a_warning(tmp_path, caplog):
    import logging

    from fastml.serving.repository import scan_model_dir

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"")
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 8\n')
    with caplog.at_level(logging.WARNING, logger="fastml.serving.repository"):
        sources = scan_model_dir(tmp_path / "m")
    assert [s.config.max_batch_size for s in sources] == [32]  # the defaults: config.pbtxt is not read
    assert any("config.pbtxt is not read" in r.getMessage() for r in caplog.records)
