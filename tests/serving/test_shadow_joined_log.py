"""A shadow whose model joins features logs what that model saw: the joined tensor, as its primary answers log
it, not the entity ids of the copy (which no monitor or explanation of the shadow could use)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper

import fastml
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.serving import shadow


def _identity(path, width: int):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class _Stats:
    def __init__(self):
        self.records: list[bool] = []
        self.lock = threading.Lock()

    def record_threadsafe(self, latency_us, ok):
        with self.lock:
            self.records.append(ok)

    def record_many_threadsafe(self, outcomes):
        with self.lock:
            self.records.extend(ok for _, ok in outcomes)


def test_a_joined_shadow_logs_the_joined_values_of_each_copy(fastml_home, tmp_path):
    from fastml.monitoring import read_log
    from fastml.monitoring.log import tensor_columns

    now = pd.Timestamp.now(tz="UTC")
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("drv", entities=["driver_id"], features=[Feature("trips", "float64")]))
    fs.ingest("drv", pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [now] * 2, "trips": [11.0, 20.0]}))
    fs.materialize("drv")
    fs.close()
    path = _identity(tmp_path / "m.onnx", 2)
    with fastml.load_model(path, name="m", features=["drv:trips", "dist"], log_predictions=True) as model:
        shed: list[int] = []
        deployment = SimpleNamespace(name="d", router=SimpleNamespace(count_shadow_shed=shed.append))
        target = SimpleNamespace(name="s", index=0, stats=_Stats())
        runner = shadow.ShadowRunner()
        try:
            for rid, ids, dist in (("r1", [2, 1], [0.5, 1.5]), ("r2", [1], [7.0])):
                inputs = {"driver_id": np.array(ids, np.int64), "dist": np.array(dist, np.float32)}
                assert runner.offer(deployment, target, SimpleNamespace(model=model), inputs, rid)
            assert runner.wait_idle(30.0)
        finally:
            runner.close()
        model.prediction_logger.flush()
    assert target.stats.records == [True, True] and shed == []
    table = read_log(model="m")
    assert set(table["variant"].to_pylist()) == {"s"}
    cols = tensor_columns(table, "input.x", ["trips", "dist"])
    got = sorted(zip(table["request_id"].to_pylist(), table["row"].to_pylist(), cols["trips"], cols["dist"]))
    assert got == [("r1", 0, 20.0, 0.5), ("r1", 1, 11.0, 1.5), ("r2", 0, 11.0, 7.0)]
