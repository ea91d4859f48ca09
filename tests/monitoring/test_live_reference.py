"""References for live monitoring: the pipeline stores the training rows with the registered version, the
server resolves them when the model loads, and a reference that does not fit the model switches monitoring
off for that model (with the reason) instead of failing the load or any request."""

from __future__ import annotations

import numpy as np
import pytest

from fastml.monitoring.store import MonitoringStore


def _frame(n: int = 300):
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=5, n_informative=3, random_state=0)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(5)])
    df["label"] = y
    return df


@pytest.fixture
def registered(fastml_home, tmp_path):
    """A pipeline run registered as ``clf:1.0.0`` (logistic regression on 5 numeric columns)."""
    from fastml.pipeline import train

    path = tmp_path / "cls.csv"
    _frame().to_csv(path, index=False)
    cfg = {
        "name": "clf",
        "task": "classification",
        "seed": 7,
        "folds": 2,
        "data": {"path": str(path), "target": "label"},
        "model": {"family": "logistic_regression"},
        "tune": {"n_trials": 1},
    }
    return train(cfg)


def test_pipeline_reference_is_resolved_when_the_model_loads(registered, fastml_home):
    import pyarrow.parquet as pq

    from fastml.registry import Registry
    from fastml.serving import ModelManager
    from fastml.serving.live_monitoring import attach

    reg = Registry()
    mv = reg.resolve(registered.model_ref)
    sha = mv.tags["reference_sha256"]
    ref_path = reg.artifacts.verified_path(sha, int(mv.tags["reference_bytes"]), "reference")
    table = pq.read_table(ref_path)
    assert table.column_names == [f"x{i}" for i in range(5)]
    assert table.num_rows == 240  # the training split (80 % of 300 rows)
    assert sha not in reg.gc(older_than_s=0.0)  # the reference lives as long as its version

    manager = ModelManager([registered.model_ref])
    manager.load_all()
    wiring = attach(manager, window_rows=100, window_s=600, store=MonitoringStore(fastml_home / "monitoring.db"))
    try:
        status = wiring.monitor.status()["models"]["clf"]
        assert status["monitored"] and status["reference"] == f"registry:{mv.ref}"
        assert status["reference_rows"] == table.num_rows
        model = manager.get("clf").model
        X = _frame(200)[[f"x{i}" for i in range(5)]].to_numpy(np.float32)
        for lo in range(0, 200, 50):
            model.predict({"input": X[lo : lo + 50]})
        assert wiring.monitor.flush()
        wins = wiring.monitor.store.windows("clf")
        assert [w.n_rows for w in wins] == [100, 100]
        assert {d.feature for d in wins[0].drift} >= {f"x{i}" for i in range(5)}
    finally:
        wiring.close()
        manager.close()


def test_reference_that_does_not_fit_turns_monitoring_off_not_serving(small_models, tmp_path):
    from fastml.monitoring.profile import ReferenceProfile
    from fastml.serving import ModelManager
    from fastml.serving.live_monitoring import attach

    ReferenceProfile.from_data({"a": np.arange(30.0), "b": np.arange(30.0)}).save(tmp_path / "bad.arrow")
    manager = ModelManager([str(small_models["gbt_onnx"])])
    manager.load_all()
    name = manager.entries()[0].name
    wiring = attach(manager, references={name: str(tmp_path / "bad.arrow")}, store=MonitoringStore(tmp_path / "m.db"))
    try:
        status = wiring.monitor.status()["models"][name]
        assert not status["monitored"]
        assert "reference has 2 feature columns" in status["reason"] and "[-1, 6]" in status["reason"]
        model = manager.get(name).model
        out = model.predict({"input": np.zeros((3, 6), np.float32)})
        assert out["label"].shape == (3,)
    finally:
        wiring.close()
        manager.close()


def test_config_toml_names_the_reference(small_models, tmp_path):
    import shutil

    import pandas as pd

    from fastml.serving import ModelManager
    from fastml.serving.live_monitoring import attach

    model_dir = tmp_path / "repo" / "gbt"
    (model_dir / "1").mkdir(parents=True)
    shutil.copy(small_models["gbt_onnx"], model_dir / "1" / "model.onnx")
    pd.DataFrame(small_models["X"], columns=[f"f{i}" for i in range(6)]).to_parquet(model_dir / "train.parquet")
    (model_dir / "config.toml").write_text('monitor_reference = "train.parquet"\n')
    manager = ModelManager([str(tmp_path / "repo")])
    manager.load_all()
    wiring = attach(manager, store=MonitoringStore(tmp_path / "m.db"))
    try:
        status = wiring.monitor.status()["models"]["gbt"]
        assert status["monitored"], status
        assert status["reference"] == f"file:{model_dir / 'train.parquet'}"
        assert status["reference_rows"] == len(small_models["X"])
    finally:
        wiring.close()
        manager.close()


def test_feature_store_statistics_are_the_reference_of_a_version_with_feature_refs(fastml_home, tmp_path):
    import onnx
    import pyarrow as pa
    from onnx import TensorProto, helper

    from fastml.features import Feature, FeatureGroup, FeatureStore
    from fastml.registry import Registry
    from fastml.serving import ModelManager
    from fastml.serving.live_monitoring import attach

    rng = np.random.default_rng(11)
    n = 300
    trips = rng.integers(0, 100, n)
    rating = rng.normal(4, 0.5, n).astype(np.float32)
    fs = FeatureStore()
    fs.register(
        FeatureGroup(
            "driver", entities=["driver_id"], features=[Feature("trips", "int64"), Feature("rating", "float32")]
        )
    )
    ts = pa.array(np.full(n, 1_700_000_000_000_000), pa.int64()).view(pa.timestamp("us", tz="UTC"))
    fs.ingest(
        "driver",
        pa.table(
            {
                "driver_id": pa.array(np.arange(n), pa.int64()),
                "event_timestamp": ts,
                "trips": trips,
                "rating": rating,
            }
        ),
    )
    fs.close()
    graph = helper.make_graph(
        [helper.make_node("Add", ["trips", "rating"], ["y"])],
        "add",
        [helper.make_tensor_value_info(f, TensorProto.FLOAT, [None, 1]) for f in ("trips", "rating")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "add.onnx"))
    Registry().register("drv", tmp_path / "add.onnx", feature_refs=["driver:trips", "driver:rating"])

    manager = ModelManager(["drv"])
    manager.load_all()
    wiring = attach(manager, window_rows=50, window_s=600, store=MonitoringStore(tmp_path / "m.db"))
    try:
        status = wiring.monitor.status()["models"]["drv"]
        assert status["monitored"], status
        assert status["reference"] == "features:driver:trips,driver:rating" and status["reference_rows"] == n
        model = manager.get("drv").model
        shifted = {"trips": (trips[:50, None] + 60).astype(np.float32), "rating": rating[:50, None]}
        model.predict(shifted)
        assert wiring.monitor.flush()
        (w,) = wiring.monitor.store.windows("drv")
        assert [f for f in w.drifted_features() if not f.startswith("prediction:")] == ["trips"]
    finally:
        wiring.close()
        manager.close()
