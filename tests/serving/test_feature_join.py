"""Features in the request path: entity ids in, the model input joined natively from the online store.

Predictions over HTTP equal predictions on the same features joined in Python from the offline store
(point in time "now"); each missing-value policy and the TTL; the errors a bad declaration or a bad request
gets; /metrics lookup counts; the prediction log records the joined values.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastml
from fastml.errors import InvalidInput, NotFound
from fastml.features import Feature, FeatureGroup, FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from serverkit import ServerProcess, feature_lookups  # noqa: E402

FEATURES = ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]
WEIGHTS = np.array([1.0, 10.0, 100.0, 1000.0], np.float32)


def linear_model(path: Path, width: int, weights: np.ndarray) -> Path:
    """y = x @ weights: every column shows in the output, NaN stays NaN."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights.reshape(width, 1).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def fill_store(home: Path) -> FeatureStore:
    """driver (int keys, TTL 1 day): 1 and 2 fresh, 3 three days old (stale), 4 fresh with a null rating;
    several rows per entity so "latest" matters. city (string keys, no TTL). "rider" is never materialised."""
    fs = FeatureStore(home)
    fs.register(
        FeatureGroup(
            "driver",
            entities=["driver_id"],
            features=[Feature("trips", "int64"), Feature("rating", "float32"), Feature("acceptance", "float64")],
            ttl_s=86400,
        )
    )
    fs.register(FeatureGroup("city", entities=["city_id"], features=[Feature("demand", "float64")]))
    fs.register(FeatureGroup("rider", entities=["rider_id"], features=[Feature("age", "int64")]))
    now = pd.Timestamp.now(tz="UTC")
    hour, day = pd.Timedelta(hours=1), pd.Timedelta(days=1)
    fs.ingest(
        "driver",
        pd.DataFrame(
            {
                "driver_id": [1, 1, 2, 2, 3, 4],
                "event_timestamp": [
                    now - 5 * hour,
                    now - hour,
                    now - 2 * hour,
                    now - 30 * hour,
                    now - 3 * day,
                    now - hour,
                ],
                "trips": [10, 11, 20, 19, 30, 40],
                "rating": [4.0, 4.5, 3.5, 3.0, 5.0, None],
                "acceptance": [0.5, 0.25, 0.75, 0.1, 0.9, 0.125],
            }
        ),
    )
    fs.ingest(
        "city", pd.DataFrame({"city_id": ["north", "south"], "event_timestamp": [now, now], "demand": [1.5, 2.5]})
    )
    fs.materialize("driver")
    fs.materialize("city")
    return fs


@pytest.fixture(scope="module")
def store_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("fj_home")
    fill_store(home).close()
    return home


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("fj_repo")
    linear_model(repo / "scored" / "1" / "model.onnx", 4, WEIGHTS)
    (repo / "scored" / "config.toml").write_text(
        'features = ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]\n'
        'entity_key = "driver_id"\n'
        "max_batch_size = 8\n"
        "log_sample_rate = 1.0\n"
        "[feature_policy]\n"
        '"driver:rating" = { on_missing = "default", default = -1.0 }\n'
    )
    linear_model(repo / "strict" / "1" / "model.onnx", 2, WEIGHTS[:2])
    (repo / "strict" / "config.toml").write_text(
        'features = ["driver:trips", "driver:rating"]\nentity_key = "driver_id"\n'
        '[feature_policy]\n"driver:trips" = "error"\n'
    )
    linear_model(repo / "plain" / "1" / "model.onnx", 2, WEIGHTS[:2])
    return repo


@pytest.fixture(scope="module")
def server(repo, store_home):
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], store_home)
    yield srv
    assert srv.stop() == 0


def _infer(server, model: str, inputs: list[dict]):
    return server.post(f"/v2/models/{model}/infer", {"inputs": inputs})


def _offline_features(home: Path, ids: list[int], refs: list[str]) -> np.ndarray:
    """The same features joined in Python from the offline store, as of now (point in time)."""
    fs = FeatureStore(home)
    rows = pd.DataFrame({"driver_id": ids, "event_timestamp": [pd.Timestamp.now(tz="UTC")] * len(ids)})
    table = fs.get_training_set(rows, refs).to_pandas()
    fs.close()
    return table[[r.split(":")[1] for r in refs]].to_numpy(dtype=np.float32, na_value=np.nan)


def test_http_predictions_equal_offline_join(server, store_home):
    ids = [1, 2, 3, 4, 99, 2, 1, 3, 4, 1, 2]  # 11 rows: over max_batch_size 8, split and rejoined in order
    dist = np.arange(len(ids), dtype=np.float32) / 4
    status, body = _infer(
        server,
        "scored",
        [
            {"name": "driver_id", "datatype": "INT64", "shape": [len(ids)], "data": ids},
            {"name": "distance_km", "datatype": "FP32", "shape": [len(ids)], "data": dist.tolist()},
        ],
    )
    assert status == 200, body
    got = np.array(body["outputs"][0]["data"], np.float64)
    offline = _offline_features(store_home, ids, ["driver:trips", "driver:rating", "driver:acceptance"])
    x = np.column_stack([offline[:, 0], offline[:, 1], dist, offline[:, 2]])
    # the declared policy: a missing or stale rating is -1; the other features stay NaN (policy "nan")
    x[:, 1] = np.where(np.isnan(x[:, 1]), -1.0, x[:, 1])
    want = x.astype(np.float32) @ WEIGHTS
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    # the latest rows were used (1: 11 trips, 2: 20), stale 3 and unknown 99 are NaN through trips
    assert got[0] == pytest.approx(11 + 45 + 0 + 250)
    assert np.isnan(got[2]) and np.isnan(got[4])


def test_metadata_shows_entity_inputs(server):
    status, meta = server.get("/v2/models/scored")
    assert status == 200
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("driver_id", "INT64", [-1]),
        ("distance_km", "FP32", [-1]),
    ]
    assert meta["parameters"]["features"] == ",".join(FEATURES)
    assert meta["parameters"]["entity_key"] == "driver_id"
    assert server.get("/v2/models/plain")[1].get("parameters") is None


def test_error_policy_and_bad_inputs_are_400(server):
    status, body = _infer(
        server, "strict", [{"name": "driver_id", "datatype": "INT64", "shape": [3], "data": [1, 77, 3]}]
    )
    assert status == 400
    assert "entity 77" in body["error"] and "driver:trips" in body["error"] and "row 1" in body["error"]
    # stale counts as missing for the policy, and the message says why
    status, body = _infer(server, "strict", [{"name": "driver_id", "datatype": "INT64", "shape": [1], "data": [3]}])
    assert status == 400 and "entity 3" in body["error"] and "TTL" in body["error"]
    status, body = _infer(server, "strict", [{"name": "driver_id", "datatype": "FP32", "shape": [1], "data": [1.0]}])
    assert status == 400 and "driver_id" in body["error"]
    status, body = _infer(server, "strict", [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}])
    assert status == 400
    status, body = _infer(server, "strict", [{"name": "driver_id", "datatype": "INT64", "shape": [2], "data": [1, 2]}])
    assert status == 200, body
    assert body["outputs"][0]["data"] == pytest.approx([11 + 45, 20 + 35])


def test_metrics_count_lookups_by_outcome(server):
    before = feature_lookups(server.metrics())
    status, _ = _infer(
        server,
        "scored",
        [
            {"name": "driver_id", "datatype": "INT64", "shape": [4], "data": [1, 3, 4, 99]},
            {"name": "distance_km", "datatype": "FP32", "shape": [4], "data": [0, 0, 0, 0]},
        ],
    )
    assert status == 200
    after = feature_lookups(server.metrics())

    def delta(feature, outcome):
        key = ("scored", feature, outcome)
        return after.get(key, 0) - before.get(key, 0)

    assert (delta("driver:trips", "hit"), delta("driver:trips", "stale"), delta("driver:trips", "missing")) == (2, 1, 1)
    # 4's rating is null: missing, not a hit
    assert (delta("driver:rating", "hit"), delta("driver:rating", "stale"), delta("driver:rating", "missing")) == (
        1,
        1,
        2,
    )
    assert ("scored", "distance_km", "hit") not in after  # request-time values are not lookups


# ----- in process --------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path, fastml_home):
    fill_store(fastml_home).close()
    return linear_model(tmp_path / "lin.onnx", 4, WEIGHTS)


def test_load_model_policies_and_ttl(local):
    ids = np.array([1, 3, 4, 99])
    dist = np.ones(4, np.float32)
    policy = {"driver:trips": {"on_missing": "default", "default": 7}, "driver:acceptance": 0.5}
    with fastml.load_model(local, features=FEATURES, entity_key="driver_id", feature_policy=policy) as model:
        y = model.predict({"driver_id": ids, "distance_km": dist})["y"][:, 0]
        # 1: all fresh; 3: stale row -> trips 7 (default), rating NaN; 4: null rating -> NaN; 99: unknown
        assert y[0] == pytest.approx(11 + 45 + 100 + 250)
        assert np.isnan(y[1:]).all()
        # the join itself, through the same native call, without the model
        feed = model.build({"driver_id": ids, "distance_km": dist})
        np.testing.assert_array_equal(
            feed["x"],
            np.array(
                [[11, 4.5, 1, 0.25], [7, np.nan, 1, 0.5], [40, np.nan, 1, 0.125], [7, np.nan, 1, 0.5]], np.float32
            ),
        )
        assert model.feature_lookups()["driver:trips"] == {"hit": 4, "missing": 2, "stale": 2}
    with fastml.load_model(local, features=FEATURES, feature_policy={"driver:rating": "error"}) as model:
        assert model.predict({"driver_id": np.array([1, 2], np.int32), "distance_km": dist[:2]})["y"].shape == (2, 1)
        with pytest.raises(InvalidInput, match=r"entity 4 \(row 1\).*'driver:rating' \(missing"):
            model.predict({"driver_id": np.array([1, 4]), "distance_km": dist[:2]})
        with pytest.raises(InvalidInput, match=r"entity 4 \(row 0\)"):  # the asyncio path, counted once too
            asyncio.run(model.predict_async({"driver_id": np.array([4]), "distance_km": dist[:1]}))
        assert model.feature_lookups()["driver:rating"] == {"hit": 3, "missing": 2, "stale": 0}


def test_string_keys_and_passthrough_input(tmp_path, fastml_home):
    fill_store(fastml_home).close()
    path = linear_model(tmp_path / "c.onnx", 2, np.array([1.0, 10.0], np.float32))
    with fastml.load_model(path, features=["city:demand", "surge"], entity_key="city_id") as model:
        assert [(s.name, s.datatype) for s in model.signature.inputs] == [("city_id", "BYTES"), ("surge", "FP32")]
        surge = np.array([1, 2, 3], np.float32)
        for keys in (np.array(["south", "north", "east"], object), np.array(["south", "north", "east"])):
            y = model.predict({"city_id": keys, "surge": surge})["y"][:, 0]
            assert y[:2] == pytest.approx([2.5 + 10, 1.5 + 20]) and np.isnan(y[2])
        with pytest.raises(InvalidInput, match="'city_id'.*BYTES"):
            model.predict({"city_id": np.array([1, 2, 3]), "surge": surge})
        with pytest.raises(InvalidInput, match="'surge'.*float32"):
            model.predict({"city_id": np.array(["a"], object), "surge": np.array([1.0])})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": ["driver:trips", "driver:speed"]}, NotFound, "'driver:speed'"),
        ({"features": ["driver:trips", "bus:speed"]}, NotFound, "'bus:speed'"),
        ({"features": ["driver:trips", "rider:age"]}, NotFound, "'rider:age'.*never materialised"),
        # int64 ids cannot find string keys (a string id finds an integer's text: see test_feature_join_declarations_and_refusals)
        ({"features": ["city:demand", "x"], "entity_dtype": "int64"}, InvalidInput, "'city:demand'.*string.*int64"),
        ({"features": ["driver:trips", "city:demand"], "entity_key": "driver_id"}, InvalidInput, "'city:demand'"),
        ({"features": ["driver:trips", "x"], "feature_policy": {"driver:trips": "zero"}}, InvalidInput, "'zero'"),
        ({"features": ["driver:trips", "x"], "feature_policy": {"driver:age": "nan"}}, InvalidInput, "'driver:age'"),
        ({"features": ["driver:trips", "driver:rating", "x"]}, InvalidInput, "FP32 \\[-1, 3\\]"),
    ],
)
def test_bad_declarations_name_the_feature(tmp_path, fastml_home, kwargs, error, match):
    fill_store(fastml_home).close()
    path = linear_model(tmp_path / "lin2.onnx", 2, WEIGHTS[:2])
    with pytest.raises(error, match=match):
        fastml.load_model(path, **kwargs)


def test_prediction_log_records_joined_values(local, fastml_home):
    from fastml.monitoring import read_log
    from fastml.monitoring.log import tensor_columns

    with fastml.load_model(local, features=FEATURES, log_predictions=True) as model:
        model.predict({"driver_id": np.array([1, 2]), "distance_km": np.array([3, 4], np.float32)}, request_id="r1")
    table = read_log(model="lin")
    cols = tensor_columns(table, "input.x", ["trips", "rating", "dist", "acceptance"])
    logged = np.column_stack([np.asarray(cols[c]) for c in ("trips", "rating", "dist", "acceptance")])
    order = np.argsort(np.asarray(table["row"]))
    np.testing.assert_array_equal(logged[order], np.array([[11, 4.5, 3, 0.25], [20, 3.5, 4, 0.75]], np.float32))


# ----- deployments --------------------------------------------------------------------------------

DEPLOYMENT = """
[deployments.eta]
[[deployments.eta.variants]]
name = "joined"
model = "eta:1.0.0"
weight_bp = 10000
features = ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]
entity_key = "driver_id"
feature_policy = { "driver:rating" = { on_missing = "default", default = -1.0 } }
"""


def test_deployment_variant_declares_its_features(local):
    from fastml.registry import Registry
    from fastml.serving import deployment_config as dconf
    from fastml.serving.dataplane import DataPlane, InferRequest
    from fastml.serving.deployments import DeploymentManager
    from fastml.serving.manager import ModelManager

    Registry().register("eta", local, version="1.0.0")
    specs = dconf.parse(DEPLOYMENT)
    assert dconf.parse(dconf.dump(specs)) == specs  # the persisted copy keeps the declaration

    async def main():
        manager = ModelManager([])
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        try:
            await dm.apply_text(DEPLOYMENT)
            ids = np.array([1, 4], np.int64)
            inputs = {"driver_id": ids, "distance_km": np.array([1, 2], np.float32)}
            resp = await plane.infer(InferRequest("eta", inputs))
            assert plane.model_metadata("eta")["inputs"][0]["name"] == "driver_id"
            with pytest.raises(InvalidInput, match="driver_id"):
                plane.submit(InferRequest("eta", {"driver_id": np.array([1.0]), "distance_km": np.ones(1, np.float32)}))
            return resp.outputs["y"][:, 0]
        finally:
            await dm.stop()

    y = asyncio.run(main())
    # 4's rating is null: the variant's policy makes it -1
    assert y == pytest.approx([11 + 45 + 100 + 250, 40 - 10 + 200 + 125])
    with pytest.raises(InvalidInput, match="entity_key and feature_policy need features"):
        dconf.parse(DEPLOYMENT.replace("features = [", "# features = ["))


def test_a_refusal_names_the_input_at_fault_not_an_entity_key_of_another_integer_type(local):
    from fastml.registry import Registry
    from fastml.serving.dataplane import DataPlane, InferRequest
    from fastml.serving.deployments import DeploymentManager
    from fastml.serving.manager import ModelManager

    Registry().register("eta", local, version="1.0.0")

    async def main():
        manager = ModelManager([])
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        try:
            await dm.apply_text(DEPLOYMENT)
            ids = np.array([1, 4], np.int32)  # entity keys take ids of any integer type
            ok = await plane.infer(InferRequest("eta", {"driver_id": ids, "distance_km": np.array([1, 2], np.float32)}))
            with pytest.raises(InvalidInput) as err:
                plane.submit(InferRequest("eta", {"driver_id": ids, "distance_km": np.array([1, 2], np.int32)}))
            return ok.outputs["y"][:, 0], str(err.value)
        finally:
            await dm.stop()

    y, message = asyncio.run(main())
    assert y == pytest.approx([11 + 45 + 100 + 250, 40 - 10 + 200 + 125])
    # the INT32 ids were blamed ("input 'driver_id' data-type is 'INT32'") though the model took them
    assert "inference input 'distance_km' data-type is 'INT32'" in message and "driver_id" not in message


def test_workers_lookup_counts_are_summed():
    from fastml.server.metrics import make_registry, merge_snapshots

    def snap(hit, stale):
        model = {
            "name": "m",
            "version": "1",
            "ready": True,
            "inflight": 0,
            "stats": {},
            "batch_size_histogram": {},
            "batch_stats": {},
            "server_failures": {},
            "feature_lookups": {"driver:trips": {"hit": hit, "missing": 1, "stale": stale}},
        }
        return {"models": [model], "server": {}}

    merged = merge_snapshots([snap(5, 0), snap(7, 2)])
    assert merged["models"][0]["feature_lookups"] == {"driver:trips": {"hit": 12, "missing": 2, "stale": 2}}
    reg = make_registry(lambda: merged)
    labels = {"model": "m", "version": "1", "feature": "driver:trips"}
    assert reg.get_sample_value("fastml_feature_lookups_total", {**labels, "outcome": "hit"}) == 12
    assert reg.get_sample_value("fastml_feature_lookups_total", {**labels, "outcome": "stale"}) == 2
