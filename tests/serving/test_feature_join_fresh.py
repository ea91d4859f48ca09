"""The joined features are the latest committed values, on every path through the join.

The native cache keeps its read transactions open between reads (renewed only once a write has committed
since their snapshot), and the serving join runs once per batch: a value written after the model (or the
server) started must still be what the next request sees, from this process or another one, and the TTL and
missing-value policies must hold on the batched path as on the per-request one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_feature_join import FEATURES, WEIGHTS, fill_store, linear_model

import fastml
from fastml.features import Feature, FeatureGroup, FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from serverkit import ServerProcess  # noqa: E402


def _write_trips(home: Path, driver_id: int, trips: int) -> None:
    """A newer driver row (trips only; rating null, acceptance 0) committed through a fresh FeatureStore."""
    fs = FeatureStore(home)
    group, version = fs.get_group("driver")
    now_us = int(time.time() * 1e6)
    fs.online.write(
        group,
        version,
        [str(driver_id)],
        np.array([[trips, 0.0, 0.0]]),
        np.array([[True, False, True]]),
        np.array([now_us]),
    )
    fs.close()


@pytest.fixture
def local(tmp_path, fastml_home):
    fill_store(fastml_home).close()
    return linear_model(tmp_path / "lin.onnx", 4, WEIGHTS)


def test_a_write_after_load_is_seen_by_the_next_request(local, fastml_home):
    policy = {"driver:rating": {"on_missing": "default", "default": -1.0}}
    dist = np.zeros(1, np.float32)
    with fastml.load_model(local, features=FEATURES, entity_key="driver_id", feature_policy=policy) as model:
        assert model.batched is not None  # int64 ids, no "error" policy: joined per batch
        first = model.predict({"driver_id": np.array([1]), "distance_km": dist})["y"][0, 0]
        assert first == pytest.approx(11 + 45 + 250)
        _write_trips(fastml_home, 1, 500)
        # blocking, then asyncio (several requests in one batch): no snapshot older than the write
        assert model.predict({"driver_id": np.array([1]), "distance_km": dist})["y"][0, 0] == pytest.approx(500 - 10)
        _write_trips(fastml_home, 2, 600)

        async def both():
            return await asyncio.gather(
                *(model.predict_async({"driver_id": np.array([k]), "distance_km": dist}) for k in (1, 2))
            )

        a, b = asyncio.run(both())
        assert (a["y"][0, 0], b["y"][0, 0]) == (pytest.approx(490), pytest.approx(590))
        # a group registered and materialised after the first reads (a table handle newer than the pooled
        # read transactions) is readable at once
        fs = FeatureStore(fastml_home)
        fs.register(FeatureGroup("late", entities=["driver_id"], features=[Feature("score", "float64")]))
        fs.ingest(
            "late", pd.DataFrame({"driver_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "score": [2.5]})
        )
        fs.materialize("late")
        assert fs.get_online(["late:score"], [1, 2])[0][:, 0].tolist()[0] == 2.5
        fs.close()


def test_ttl_and_missing_policies_hold_per_batch(local):
    ids = np.array([1, 3, 4, 99])
    dist = np.ones(4, np.float32)
    policy = {"driver:trips": {"on_missing": "default", "default": 7}, "driver:acceptance": 0.5}
    with fastml.load_model(local, features=FEATURES, entity_key="driver_id", feature_policy=policy) as model:
        assert model.batched is not None

        # one request per entity, all in flight together: the batch is joined once, each row by its own state
        async def each():
            return await asyncio.gather(
                *(model.predict_async({"driver_id": ids[i : i + 1], "distance_km": dist[i : i + 1]}) for i in range(4))
            )

        y = np.array([r["y"][0, 0] for r in asyncio.run(each())])
        # 1 fresh; 3 older than the TTL: trips -> 7 (default), rating NaN; 4: null rating; 99 unknown
        assert y[0] == pytest.approx(11 + 45 + 100 + 250) and np.isnan(y[1:]).all()
        whole = model.predict({"driver_id": ids, "distance_km": dist})["y"][:, 0]
        np.testing.assert_array_equal(np.isnan(whole), np.isnan(y))
        assert whole[0] == pytest.approx(y[0])
        # counted per batch exactly as per request: 8 trips lookups, 2 stale (3 twice), 2 missing (99 twice)
        assert model.feature_lookups()["driver:trips"] == {"hit": 4, "missing": 2, "stale": 2}
        assert model.stats()["rows"] == 8
    # an "error" policy refuses only the request that hit it: such a plan joins per request
    with fastml.load_model(local, features=FEATURES, feature_policy={"driver:rating": "error"}) as model:
        assert model.batched is None

        async def mixed():
            return await asyncio.gather(
                model.predict_async({"driver_id": np.array([1]), "distance_km": dist[:1]}),
                model.predict_async({"driver_id": np.array([4]), "distance_km": dist[:1]}),
                return_exceptions=True,
            )

        ok, refused = asyncio.run(mixed())
        assert ok["y"][0, 0] == pytest.approx(11 + 45 + 100 + 250)
        assert "entity 4" in str(refused) and "driver:rating" in str(refused)


def test_idle_pooled_readers_are_reset(fastml_home):
    fill_store(fastml_home).close()
    fs = FeatureStore(fastml_home)
    fs.get_online(["driver:trips"], [1])
    native = fs.online._cache.impl
    mine = [r for r in native.readers() if r[0] == os.getpid()]
    assert mine and any(txn >= 0 for _, txn in mine)  # the snapshot stays open right after a read
    # ... and is reset by the reaper once idle (FeatureCache::kIdleResetMs), keeping its slot; bounded wait
    deadline = time.monotonic() + 30
    while any(txn >= 0 for pid, txn in native.readers() if pid == os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [txn for pid, txn in native.readers() if pid == os.getpid()] == [-1] * len(mine)
    assert fs.get_online(["driver:trips"], [1])[0][0, 0] == 11  # renewed on the next read
    fs.close()


def test_server_sees_a_write_from_another_process(tmp_path, fastml_home):
    fill_store(fastml_home).close()
    repo = tmp_path / "repo"
    linear_model(repo / "scored" / "1" / "model.onnx", 4, WEIGHTS)
    (repo / "scored" / "config.toml").write_text(
        'features = ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]\n'
        'entity_key = "driver_id"\n'
        '[feature_policy]\n"driver:rating" = { on_missing = "default", default = -1.0 }\n'
    )
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], fastml_home)
    try:
        body = {
            "inputs": [
                {"name": "driver_id", "datatype": "INT64", "shape": [1], "data": [2]},
                {"name": "distance_km", "datatype": "FP32", "shape": [1], "data": [0.0]},
            ]
        }
        status, out = srv.post("/v2/models/scored/infer", body)
        assert status == 200 and out["outputs"][0]["data"] == pytest.approx([20 + 35 + 750])
        _write_trips(fastml_home, 2, 321)  # this process, not the server's, commits the newer row
        status, out = srv.post("/v2/models/scored/infer", body)
        assert status == 200 and out["outputs"][0]["data"] == pytest.approx([321 - 10])
    finally:
        assert srv.stop() == 0


def test_entity_ids_of_any_integer_form_give_the_same_answer(tmp_path, fastml_home):
    """A request of int64 ids alone takes the batched model's coroutine directly; int32 ids or a request id take
    the checked path: every form answers what the blocking call answers, and a list is refused by name."""
    fill_store(fastml_home).close()
    feats = ["driver:trips", "driver:rating", "driver:acceptance"]
    path = linear_model(tmp_path / "lin3.onnx", 3, np.array([1.0, 10.0, 1000.0], np.float32))
    with fastml.load_model(path, features=feats, entity_key="driver_id") as model:
        assert model.batched is not None
        ids = [1, 2, 4]
        want = model.predict({"driver_id": np.array(ids, np.int64)})["y"]
        assert want.shape == (3, 1) and np.isfinite(want[:2]).all()

        async def forms():
            return [
                (await model.predict_async({"driver_id": np.array(ids, np.int64)}))["y"],
                (await model.predict_async({"driver_id": np.array(ids, np.int32)}))["y"],
                (await model.predict_async({"driver_id": np.array(ids, np.int64)}, request_id="r1"))["y"],
                # a [n, 1] column: refused by the batched engine model, taken by the per-request way
                (await model.predict_async({"driver_id": np.array(ids, np.int64).reshape(-1, 1)}))["y"],
                (await model.submit({"driver_id": np.array(ids, np.int16)}))["y"],
            ]

        for got in asyncio.run(forms()):
            np.testing.assert_array_equal(got, want)
        with pytest.raises(fastml.errors.InvalidInput, match="driver_id"):
            asyncio.run(model.predict_async({"driver_id": ids}))


class _Recorder:
    """A prediction logger keeping the inputs it is handed."""

    def __init__(self):
        self.inputs = []

    def log(self, *, inputs, **_):
        self.inputs.append(inputs)


def test_a_logger_set_on_the_joined_model_logs_what_the_model_saw(tmp_path, fastml_home):
    """``prediction_logger`` set on the wrapper (as the live monitor sets it) lands on the wrapped model, and
    requests then take the per-request way, whose logged input is the joined tensor."""
    fill_store(fastml_home).close()
    feats = ["driver:trips", "driver:acceptance"]
    path = linear_model(tmp_path / "lin2.onnx", 2, np.array([1.0, 1000.0], np.float32))
    with fastml.load_model(path, features=feats, entity_key="driver_id") as model:
        recorder = _Recorder()
        model.prediction_logger = recorder
        assert model.model.prediction_logger is recorder and model.prediction_logger is recorder
        got = asyncio.run(model.predict_async({"driver_id": np.array([1, 2], np.int64)}))["y"]
        np.testing.assert_allclose(got[:, 0], [11 + 250, 20 + 750])
        assert len(recorder.inputs) == 1
        np.testing.assert_array_equal(recorder.inputs[0]["x"], np.array([[11, 0.25], [20, 0.75]], np.float32))
        model.prediction_logger = None  # back to the batched way: nothing more is logged
        again = asyncio.run(model.predict_async({"driver_id": np.array([1, 2], np.int64)}))["y"]
        np.testing.assert_array_equal(again, got)
        assert len(recorder.inputs) == 1 and model.batched.stats()["rows"] >= 2


def test_a_transport_submitting_natively_gets_the_batched_models_batcher(tmp_path, fastml_home):
    """``sink_target`` (a native intake's way in) is the batched engine model's, whose input is the entity ids;
    none while a logger needs the per-request way."""
    fill_store(fastml_home).close()
    path = linear_model(tmp_path / "lin2.onnx", 2, np.array([1.0, 1000.0], np.float32))
    with fastml.load_model(path, features=["driver:trips", "driver:acceptance"], entity_key="driver_id") as model:

        async def targets():
            first = model.sink_target()
            model.prediction_logger = _Recorder()
            return first, model.sink_target()

        (batcher, _, names), with_logger = asyncio.run(targets())
        assert tuple(names) == ("driver_id",) and batcher is model.batched._core
        assert with_logger is None


def test_run_batch_joins_before_running(tmp_path, fastml_home):
    """``run_batch`` (how a shadow copy runs, off the batcher) takes entity ids like every other entry point and
    answers what ``predict`` answers; an ``error`` policy hit is refused by name."""
    fill_store(fastml_home).close()
    path = linear_model(tmp_path / "lin2.onnx", 2, np.array([1.0, 1000.0], np.float32))
    with fastml.load_model(path, features=["driver:trips", "driver:acceptance"], entity_key="driver_id") as model:
        ids = np.array([1, 2], np.int64)
        (got,) = model.run_batch([ids])
        np.testing.assert_allclose(got[:, 0], [11 + 250, 20 + 750])
        np.testing.assert_array_equal(got, model.predict({"driver_id": ids})["y"])
    policy = {"driver:trips": {"on_missing": "error"}}
    with fastml.load_model(
        path, features=["driver:trips", "driver:acceptance"], entity_key="driver_id", feature_policy=policy
    ) as model:
        with pytest.raises(fastml.errors.InvalidInput, match="driver:trips|trips"):
            model.run_batch([np.array([1, 999], np.int64)])
