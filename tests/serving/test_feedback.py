"""Feedback: the client's request id and the variant reach the prediction log, outcomes are joined to it
per variant, unknown ids are counted (not recorded), malformed items are refused naming the field."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.monitoring.log import read_log
from fastml.serving import deployment_config as dconf
from fastml.serving import feedback
from fastml.serving.dataplane import DataPlane, InferRequest
from fastml.serving.deployments import DeploymentManager
from fastml.serving.manager import ModelManager

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


@pytest.fixture
def registry(onnx_models, fastml_home):
    from fastml.registry import Registry

    reg = Registry()
    reg.register("fraud", onnx_models["mlp"], version="1.0.0")
    reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    yield reg
    reg.close()


@pytest.fixture
def data(onnx_models):
    from sklearn.datasets import make_classification

    # The fixture models were trained on this data (see tests/conftest.py), so labels are their truth.
    X, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    return X.astype(np.float32), y


def run(coro_fn):
    async def main():
        manager = ModelManager([], overrides={"log_sample_rate": 1.0})
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        try:
            await dm.apply_text(AB)
            return await coro_fn(plane, dm)
        finally:
            await dm.stop()

    return asyncio.run(main())


def test_parse_refuses_bad_items_naming_the_field():
    assert [(i, lab.tolist()) for i, lab in feedback.parse({"id": "a", "label": 1})] == [("a", [1.0])]
    items = feedback.parse([{"id": "a", "labels": [0, True]}, {"id": 7, "value": 2.5}])
    assert [(i, lab.tolist()) for i, lab in items] == [("a", [0.0, 1.0]), ("7", [2.5])]
    for doc, match in [
        ([{"id": "a", "label": "yes"}], r"feedback\[0\]\.label: must be a number"),
        ([{"id": "a", "labels": [1, "x"]}], r"feedback\[0\]\.labels\[1\]: must be a number"),
        ({"label": 1}, r"feedback\.id"),
        ({"id": "a"}, r"exactly one of"),
        ({"id": "a", "label": 1, "value": 2}, r"exactly one of"),
        ({"id": "a", "label": 1, "extra": 2}, r"unknown fields \['extra'\]"),
        ({"id": "a", "label": float("nan")}, r"finite"),
        ([], r"no items"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            feedback.parse(doc)


def test_ids_and_variants_are_logged_and_feedback_is_joined_per_variant(registry, data, fastml_home):
    X, y = data

    async def scenario(plane, dm):
        served = {}
        for i in range(200):
            rid = f"req-{i}"
            resp = await plane.infer(
                InferRequest("fraud", {"input": X[i : i + 1]}, id=rid, parameters={"routing_key": f"user-{i}"})
            )
            assert resp.id == rid
            served[rid] = resp.parameters["variant"]
        # Over HTTP-less JSON through the same handler the server uses.
        body = json.dumps(
            [{"id": f"req-{i}", "label": int(y[i])} for i in range(150)]
            + [{"id": "never-served", "label": 1}, {"id": "nor-this", "labels": [0, 1]}]
        ).encode()
        answer = feedback.handle_http(plane, "fraud", body)
        return served, answer

    served, answer = run(scenario)
    assert answer == {"recorded": 150, "requests": 150, "unknown": 2, "unknown_ids": ["never-served", "nor-this"]}
    log = read_log(fastml_home / "logs", model="fraud")
    rows = {r["request_id"]: r for r in log.select(["request_id", "variant", "version", "label"]).to_pylist()}
    assert len(rows) == 200
    for rid, variant in served.items():
        assert rows[rid]["variant"] == variant  # the variant the router chose, not a guess
        assert rows[rid]["version"] == ("1.0.0" if variant == "incumbent" else "2.0.0")
    assert rows["req-3"]["label"] == float(y[3]) and rows["req-170"]["label"] is None
    spec = dconf.parse(AB)["fraud"]
    out = feedback.variant_outcomes(spec, directory=fastml_home / "logs", metric="accuracy", output="label")
    n_inc = sum(1 for i in range(150) if served[f"req-{i}"] == "incumbent")
    assert out["incumbent"]["quality"].size == n_inc and out["candidate"]["quality"].size == 150 - n_inc
    assert out["incumbent"]["logged_rows"] + out["candidate"]["logged_rows"] == 200
    # The joined outcome is exactly "the logged prediction equals the label".
    labels = log.filter(log["label"].is_valid())
    expect = {v: [] for v in ("incumbent", "candidate")}
    for r in labels.select(["variant", "output.label", "label"]).to_pylist():
        expect[r["variant"]].append(float(r["output.label"] == r["label"]))
    for v in expect:
        assert sorted(out[v]["quality"].tolist()) == sorted(expect[v])
        assert out[v]["quality"].mean() > 0.8  # both models are decent on their training data


def test_http_handler_errors(registry, data):
    X, _ = data

    async def scenario(plane, dm):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            feedback.handle_http(plane, "fraud", b"{nope")
        with pytest.raises(InvalidInput, match=r"feedback\[1\]\.label"):
            feedback.handle_http(plane, "fraud", b'[{"id": "a", "label": 1}, {"id": "b", "label": "bad"}]')
        with pytest.raises(NotFound):
            feedback.handle_http(plane, "no-such-thing", b'{"id": "a", "label": 1}')

    run(scenario)


def test_model_without_a_prediction_log_is_a_conflict(registry):
    manager = ModelManager(["fraud:1.0.0"])  # log_sample_rate defaults to 0: no prediction log
    manager.load_all(exit_on_error=True)
    try:
        plane = DataPlane(manager)
        with pytest.raises(Conflict, match="does not log predictions"):
            feedback.handle_http(plane, "fraud", b'{"id": "a", "label": 1}')
    finally:
        manager.close()


def test_python_api_and_file(registry, data, fastml_home, tmp_path):
    X, y = data

    async def scenario(plane, dm):
        for i in range(20):
            await plane.infer(InferRequest("fraud", {"input": X[i : i + 2]}, id=f"r{i}"))
        for e in {id(t.entry): t.entry for t in dm.table["fraud"].variants}.values():
            e.model.prediction_logger.flush()

    run(scenario)
    dconf.write_atomic(dconf.state_path(), AB)  # the persisted deployment names its models
    res = feedback.record("r0", [int(y[0]), int(y[1])], deployment="fraud")
    assert (res.recorded, res.unknown) == (2, 0)
    res = feedback.record(["r1", "zzz"], [1, 0], deployment="fraud")
    assert (res.recorded, res.unknown, res.unknown_ids) == (1, 1, ["zzz"])
    with pytest.raises(NotFound, match="unknown deployment 'nope'"):
        feedback.record("r0", [1], deployment="nope")
    csv = tmp_path / "fb.csv"
    csv.write_text("request_id,row,label\nr2,0,1\nr2,1,0\nr3,0,1\nghost,0,1\n")
    items = feedback.read_file(csv)
    res = feedback.record_items(items, models=["fraud"])
    assert (res.recorded, res.requests, res.unknown) == (3, 2, 1)
    log = read_log(model="fraud")
    got = {(r["request_id"], r["row"]): r["label"] for r in log.select(["request_id", "row", "label"]).to_pylist()}
    assert got[("r2", 0)] == 1.0 and got[("r2", 1)] == 0.0 and got[("r0", 1)] == float(y[1])
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nr2,1\nr3,maybe\n")
    with pytest.raises(InvalidInput, match="line 3 holds 'maybe'"):
        feedback.read_file(bad)
    with pytest.raises(InvalidInput, match="no 'label' or 'value' column"):
        (tmp_path / "x.csv").write_text("request_id,score\na,1\n")
        feedback.read_file(tmp_path / "x.csv")
