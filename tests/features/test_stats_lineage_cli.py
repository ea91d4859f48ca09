import json

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import driver_table, ts

from fastml.cli import main
from fastml.errors import NotFound
from fastml.features import Feature, FeatureGroup, FeatureStore


def test_stats_computed_at_ingest(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(
        FeatureGroup(
            "g", entities=["k"], features=[Feature("x", "float64"), Feature("c", "string"), Feature("b", "bool")]
        )
    )
    x = np.arange(1, 101, dtype=np.float64)
    c = ["a"] * 50 + ["b"] * 30 + ["c"] * 19 + [None]
    fs.ingest(
        "g",
        pa.table(
            {
                "k": np.arange(100),
                "event_timestamp": ts(np.zeros(100, np.int64)),
                "x": pa.array(x, mask=np.arange(100) >= 90),
                "c": c,
                "b": [True] * 25 + [False] * 75,
            }
        ),
    )
    st = fs.stats("g")
    assert st["rows"] == 100 and st["version"] == 1
    sx = st["features"]["x"]
    assert sx["count"] == 90 and sx["null_rate"] == pytest.approx(0.1)
    assert sx["mean"] == pytest.approx(45.5) and sx["std"] == pytest.approx(np.arange(1, 91).std())
    assert (sx["min"], sx["max"]) == (1.0, 90.0)
    assert sx["p50"] == pytest.approx(45.5) and sx["p90"] == pytest.approx(np.quantile(np.arange(1, 91), 0.9))
    assert sum(sx["histogram"]["counts"]) == 90 and len(sx["histogram"]["edges"]) == 21
    sc = st["features"]["c"]
    assert sc["top_k"] == [["a", 50], ["b", 30], ["c", 19]] and sc["distinct"] == 3 and sc["null_count"] == 1
    assert st["features"]["b"]["mean"] == pytest.approx(0.25)
    # A second ingest updates the profile of the version.
    fs.ingest("g", pa.table({"k": [1], "event_timestamp": ts([1]), "x": [1000.0], "c": ["z"], "b": [True]}))
    assert fs.stats("g")["features"]["x"]["max"] == 1000.0


def test_lineage_sources_ingests_and_model_users(fastml_home, driver_group):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    fs.ingest("driver", driver_table([1], [0], [1]), source="batch-2024-03-01")
    fs.materialize("driver")
    lin = fs.lineage("driver")
    v1 = lin["versions"][0]
    assert v1["source"] == "s3://rides/driver_daily"
    assert [i["source"] for i in v1["ingests"]] == ["batch-2024-03-01"]
    assert v1["materializations"][0]["written"] == 1
    assert v1["models"] == [] and "no model registry" in lin["note"]

    from onnx import TensorProto, helper

    from fastml.registry import Registry

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    artifact = fastml_home / "m.onnx"
    artifact.write_bytes(model.SerializeToString())  # the registry accepts only loadable ONNX models
    reg = Registry()
    try:
        reg.register("churn", artifact, feature_refs=["driver:trips", "driver@v1:rating", "other:x"])
    finally:
        reg.close()
    fs.register(FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "float64")]))  # v2
    lin = fs.lineage("driver")
    users = {v["version"]: v["models"] for v in lin["versions"]}
    assert users[1] == [
        {
            "model": "churn",
            "version": "1.0.0",
            "stage": users[1][0]["stage"],
            "features": ["driver:trips", "driver@v1:rating"],
        }
    ]
    assert users[2] == []  # v2 was registered after the model
    with pytest.raises(NotFound):
        fs.lineage("nope")


def test_cli_register_ingest_materialize_get_stats_lineage_list(fastml_home, tmp_path, capsys):
    import pyarrow.parquet as pq

    assert (
        main(
            [
                "features",
                "register",
                "driver",
                "--entity",
                "driver_id",
                "--feature",
                "trips:int64",
                "--feature",
                "city:string",
                "--ttl-s",
                "0",
                "--source",
                "warehouse.drivers",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"group": "driver", "version": 1}
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"driver_id": [1, 2], "event_timestamp": ts([0, 0]), "trips": [5, 6], "city": ["a", "b"]}), path
    )
    assert main(["features", "ingest", "driver", str(path)]) == 0
    assert "ingested 2 rows" in capsys.readouterr().out
    assert main(["features", "materialize", "driver", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2
    assert main(["features", "get", "driver:trips,driver:city", "--key", "2", "--key", "9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"driver_id": ["2", "9"], "trips": [6, None], "city": ["b", None]}
    assert main(["features", "stats", "driver", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["features"]["trips"]["mean"] == 5.5
    assert main(["features", "lineage", "driver", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"][0]["ingests"][0]["source"] == str(path)
    assert main(["features", "list"]) == 0
    assert "driver@v1" in capsys.readouterr().out
    # Documented errors: bad input exits 2 with one line naming the problem.
    bad = tmp_path / "bad.csv"
    bad.write_text("driver_id,event_timestamp,trips,city\n1,2024-03-01T00:00:00,notanint,a\n")
    assert main(["features", "ingest", "driver", str(bad)]) == 2
    assert "column 'trips': expected int64" in capsys.readouterr().err
    assert main(["features", "get", "driver:nope", "--key", "1"]) == 2
    assert "has no feature 'nope'" in capsys.readouterr().err
