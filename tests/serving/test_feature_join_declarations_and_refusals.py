"""Features joined in the serving path: declarations refused at load, a model's other inputs checked before any
lookup, a request the model refuses run (and counted) once, and the TTL boundary under the ``error`` policy.

The models are tiny ONNX graphs whose output shows every joined value (``Identity``) or fails on a passthrough
index out of range (``Gather``); expected values come from the rows ingested, written out in the test. A group of
string keys that look like integers up front is served as strings when ``entity_dtype="string"`` says so.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastml
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from serverkit import ServerProcess, feature_lookups  # noqa: E402

HOUR = pd.Timedelta(hours=1)
TTL_S = 3600
# driver_id -> (trips, km): 1 and 2 fresh in both groups; 3 stale in drv (TTL 1 h); 5 only in veh.
TRIPS = {1: 11.0, 2: 20.0}
KM = {1: 100.0, 2: 200.0, 5: 500.0}


def identity_model(path: Path, width: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def gather_model(path: Path) -> Path:
    """``y = x @ [1, 1000] + T[idx]`` with T = [0, 1, 2, 3, 4]: an ``idx`` out of range fails the run
    (ONNX Runtime's INVALID_ARGUMENT), and every row shows its own ``idx``."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Gather", ["T", "idx"], ["b"], axis=0),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        "gather",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(np.array([[1.0], [1000.0]], np.float32), "W"),
            numpy_helper.from_array(np.arange(5, dtype=np.float32).reshape(5, 1), "T"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def make_store(home: Path) -> None:
    now = pd.Timestamp.now(tz="UTC")
    fs = FeatureStore(home)
    fs.register(
        FeatureGroup(
            "drv",
            entities=["driver_id"],
            features=[Feature("trips", "int64"), Feature("rating", "float32")],
            ttl_s=TTL_S,
        )
    )
    fs.register(FeatureGroup("veh", entities=["driver_id"], features=[Feature("km", "float64")]))
    fs.ingest(
        "drv",
        pd.DataFrame(
            {
                "driver_id": [1, 1, 2, 3],
                "event_timestamp": [now - 3 * HOUR, now - 0.5 * HOUR, now - 0.2 * HOUR, now - 2 * HOUR],
                "trips": [10, 11, 20, 30],
                "rating": [1.0, 1.5, 2.5, 3.5],
            }
        ),
    )
    fs.ingest(
        "veh",
        pd.DataFrame({"driver_id": [1, 2, 5], "event_timestamp": [now - HOUR] * 3, "km": [100.0, 200.0, 500.0]}),
    )
    fs.materialize("drv")
    fs.materialize("veh")
    fs.close()


@pytest.fixture
def store(fastml_home) -> Path:
    make_store(fastml_home)
    return fastml_home


def _want_gather(ids, idx) -> np.ndarray:
    return np.array([[TRIPS[i] + 1000.0 * KM[i] + j] for i, j in zip(ids, idx)], np.float32)


# ----- declarations refused at load ----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["drv@v1:trips", "drv@v01:trips"])
def test_a_feature_declared_twice_under_another_spelling_is_refused_at_load(store, tmp_path, alias):
    """``drv:trips`` is ``drv@v1:trips`` while v1 is the newest version: the old check compared the strings
    only, so the model loaded and read one value into two of its columns (its second column never declared)."""
    path = identity_model(tmp_path / "m3.onnx", 3)
    with pytest.raises(InvalidInput, match=r"'trips' of group drv@v1 twice: as 'drv:trips' and as '" + alias):
        fastml.load_model(path, features=["drv:trips", "veh:km", alias], entity_key="driver_id")
    # The same feature name in two groups is two features.
    with fastml.load_model(identity_model(tmp_path / "m2.onnx", 2), features=["drv:trips", "veh:km"]) as model:
        np.testing.assert_array_equal(
            model.predict({"driver_id": np.array([2, 1])})["y"], np.array([[20.0, 200.0], [11.0, 100.0]], np.float32)
        )


@pytest.mark.parametrize("policy", ["error", 4.0, {"on_missing": "default", "default": 4.0}])
def test_a_policy_for_a_request_time_input_is_refused_at_load(store, tmp_path, policy):
    """A request-time value is used as sent (NaN stays NaN): a policy naming one was accepted and did nothing."""
    path = identity_model(tmp_path / "m2.onnx", 2)
    with pytest.raises(InvalidInput, match=r"feature_policy names 'dist', a request-time input"):
        fastml.load_model(path, features=["drv:trips", "dist"], entity_key="driver_id", feature_policy={"dist": policy})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": "drv:trips"}, r"features must be a list .* got the string 'drv:trips'"),
        ({"features": [b"drv:trips"]}, r"features\[0\] is b'drv:trips' \(bytes\)"),
        ({"features": ["drv:trips", None]}, r"features\[1\] is None"),
        ({"features": ["drv:trips"], "entity_key": 5}, r"entity_key must be an input name .* got 5"),
        ({"features": ["drv:trips"], "entity_key": ["driver_id", None]}, r"entity_key must be an input name"),
    ],
)
def test_declarations_of_the_wrong_type_are_refused_by_name(store, tmp_path, kwargs, match):
    """A bare string was split into its characters ("features list 'r' twice"); a non-string item or key was a
    TypeError from deep in the compile."""
    path = identity_model(tmp_path / "m1.onnx", 1)
    with pytest.raises(InvalidInput, match=match):
        fastml.load_model(path, **kwargs)


# ----- the model's other inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [{}, {"drv:trips": "error"}], ids=["batched", "per-request"])
def test_a_misnamed_model_input_is_refused_by_name_before_any_lookup(store, tmp_path, policy):
    """As many inputs as the model takes, one under another name: a KeyError (HTTP 500) after the join had
    counted its lookups."""
    import asyncio

    path = gather_model(tmp_path / "g.onnx")
    with fastml.load_model(
        path, features=["drv:trips", "veh:km"], entity_key="driver_id", feature_policy=policy
    ) as model:
        assert (model.batched is not None) == (not policy)
        bad = {"driver_id": np.array([1]), "indx": np.array([1])}
        with pytest.raises(InvalidInput, match=r"unknown \['indx'\]; missing \['idx'\]"):
            model.predict(bad)
        with pytest.raises(InvalidInput, match=r"unknown \['indx'\]; missing \['idx'\]"):
            asyncio.run(model.predict_async(bad))
        assert model.feature_lookups()["drv:trips"] == {"hit": 0, "missing": 0, "stale": 0}
        np.testing.assert_array_equal(
            model.predict({"driver_id": np.array([2, 1]), "idx": np.array([1, 3])})["y"], _want_gather([2, 1], [1, 3])
        )
        assert model.feature_lookups()["drv:trips"] == {"hit": 2, "missing": 0, "stale": 0}


@pytest.mark.parametrize("policy", [{}, {"drv:trips": "error"}], ids=["batched", "per-request"])
def test_an_ordered_dict_of_the_right_inputs_is_taken(store, tmp_path, policy):
    """A dict subclass reached the per-request way's name check, which found nothing wrong and refused it anyway:
    "model 'm2' expects inputs ['driver_id']; " with no reason (on the batched way when over max_batch_size)."""
    import asyncio
    from collections import OrderedDict

    path = identity_model(tmp_path / "m2.onnx", 2)
    with fastml.load_model(
        path, features=["veh:km", "drv:trips"], entity_key="driver_id", feature_policy=policy, max_batch_size=2
    ) as model:
        ids = np.array([2, 1, 2, 1, 1])
        want = np.array([[KM[i], TRIPS[i]] for i in ids], np.float32)
        np.testing.assert_array_equal(model.predict(OrderedDict(driver_id=ids))["y"], want)
        np.testing.assert_array_equal(asyncio.run(model.predict_async(OrderedDict(driver_id=ids)))["y"], want)
        (y,) = model.run_batch([ids])
        np.testing.assert_array_equal(y, want)


def test_a_model_input_of_another_row_count_is_refused_not_broadcast(store, tmp_path):
    """``run_batch`` (a shadow copy's way) joined two rows and handed ONNX Runtime one ``idx``: broadcast onto
    both rows, the second row's answer was computed with the first row's value."""
    path = gather_model(tmp_path / "g.onnx")
    with fastml.load_model(path, features=["drv:trips", "veh:km"], entity_key="driver_id") as model:
        with pytest.raises(InvalidInput, match=r"input 'idx' has 1 rows but input 'driver_id' has 2"):
            model.run_batch([np.array([1, 2]), np.array([3])])
        with pytest.raises(InvalidInput, match=r"input 'idx' has 1 rows but input 'driver_id' has 2"):
            model.predict({"driver_id": np.array([1, 2]), "idx": np.array([3])})
        assert model.feature_lookups()["drv:trips"] == {"hit": 0, "missing": 0, "stale": 0}
        (y,) = model.run_batch([np.array([1, 2]), np.array([3, 4])])
        np.testing.assert_array_equal(y, _want_gather([1, 2], [3, 4]))


def test_http_a_misnamed_model_input_is_a_400_not_a_500(store, tmp_path):
    repo = tmp_path / "repo"
    gather_model(repo / "g" / "1" / "model.onnx")
    (repo / "g" / "config.toml").write_text('features = ["drv:trips", "veh:km"]\nentity_key = "driver_id"\n')
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], store)
    try:

        def infer(second: str) -> tuple[int, str]:
            body = {
                "inputs": [
                    {"name": "driver_id", "datatype": "INT64", "shape": [2], "data": [2, 1]},
                    {"name": second, "datatype": "INT64", "shape": [2], "data": [1, 3]},
                ]
            }
            req = urllib.request.Request(f"http://{srv.url}/v2/models/g/infer", data=json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        code, text = infer("indx")
        assert code == 400, text
        assert "indx" in text
        code, text = infer("idx")
        assert code == 200, text
        assert json.loads(text)["outputs"][0]["data"] == _want_gather([2, 1], [1, 3]).reshape(-1).tolist()
        counts = feature_lookups(srv.metrics())
        assert counts[("g", "drv:trips", "hit")] == 2  # the refused request looked nothing up
    finally:
        assert srv.stop() == 0


# ----- a request the model refuses -----------------------------------------------------------------------------


def test_sync_predict_of_a_request_the_model_refuses_runs_it_once_and_counts_no_lookup(store, tmp_path):
    """The batched way's ``predict`` took the model's own refusal (an index out of range: InvalidInput after the
    run) for a refusal before queueing, and ran the request again the per-request way: the model failed twice,
    ``failures`` counted 2 for one request, and its lookups were counted although the model never answered."""
    path = gather_model(tmp_path / "g.onnx")
    with fastml.load_model(
        path, features=["drv:trips", "veh:km"], entity_key="driver_id", max_batch_size=2, instances=1
    ) as model:
        assert model.batched is not None
        with pytest.raises(InvalidInput, match="failed on a batch"):
            model.predict({"driver_id": np.array([1]), "idx": np.array([99])})
        assert model.stats()["failures"] == 1
        assert model.feature_lookups()["drv:trips"] == {"hit": 0, "missing": 0, "stale": 0}
        # Over max_batch_size (three chunks, the second refused): no row is looked up (counted) twice.
        with pytest.raises(InvalidInput, match="rows 3-4 of the request's 5"):
            model.predict({"driver_id": np.array([1, 2, 1, 2, 1]), "idx": np.array([0, 1, 99, 2, 3])})
        assert model.stats()["failures"] == 2
        assert model.feature_lookups()["drv:trips"]["hit"] <= 3  # the answered chunks' rows at most (old: 8)
        # Input the batched engine refuses before queueing (int32 ids) still takes the per-request way.
        y = model.predict({"driver_id": np.array([1, 2], np.int32), "idx": np.array([4, 0])})["y"]
        np.testing.assert_array_equal(y, _want_gather([1, 2], [4, 0]))


# ----- the TTL boundary and the error policy -------------------------------------------------------------------


def test_ttl_boundary_under_the_error_policy_names_stale_and_missing(store, tmp_path):
    """Exactly ``ttl_s`` old is still served; a microsecond older is stale and, under ``error``, refuses the request
    naming the entity, its row and the feature; a missing entity is named as missing."""
    fs = FeatureStore(store)
    event_us = int(fs.get_online(["drv:trips"], [1])[2][0, 0])
    fs.close()
    path = identity_model(tmp_path / "m2.onnx", 2)
    with fastml.load_model(
        path, features=["veh:km", "drv:trips"], entity_key="driver_id", feature_policy={"drv:trips": "error"}
    ) as model:
        run = model.join.native.run
        for age_us, stale in ((TTL_S * 10**6 - 1, False), (TTL_S * 10**6, False), (TTL_S * 10**6 + 1, True)):
            out, row, col, is_stale = run({"driver_id": np.array([2, 1])}, event_us + age_us)
            if stale:
                assert (row, col, is_stale) == (1, 1, True)
            else:
                assert (row, col) == (-1, -1)
                np.testing.assert_array_equal(out, np.array([[200.0, 20.0], [100.0, 11.0]], np.float32))
        with pytest.raises(InvalidInput, match=r"entity 3 \(row 1\) has no value for feature 'drv:trips' \(older"):
            model.predict({"driver_id": np.array([1, 3, 5])})
        with pytest.raises(InvalidInput, match=r"entity 5 \(row 1\) has no value for feature 'drv:trips' \(missing"):
            model.predict({"driver_id": np.array([2, 5, 3])})


# ----- the key dtype a model declares -----------------------------------------------------------------------


def test_string_keys_after_integer_looking_ones_can_be_served_as_strings(fastml_home, tmp_path):
    now = pd.Timestamp.now(tz="UTC")
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("acct", entities=["acct_id"], features=[Feature("bal", "float64")]))
    keys = [str(1000 + i) for i in range(20)] + ["abc"]
    fs.ingest(
        "acct",
        pd.DataFrame({"acct_id": keys, "event_timestamp": [now - HOUR] * len(keys), "bal": np.arange(21.0)}),
    )
    fs.materialize("acct")
    fs.close()
    path = identity_model(tmp_path / "m1.onnx", 1)
    with fastml.load_model(path, features=["acct:bal"], entity_key="acct_id", entity_dtype="string") as model:
        y = model.predict({"acct_id": np.array(["abc", "1003"], object)})["y"]
        np.testing.assert_array_equal(y, np.array([[20.0], [3.0]], np.float32))
