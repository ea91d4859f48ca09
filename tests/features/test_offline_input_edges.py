"""Offline feature store edges: CSV ingest through the CLI, lineage of a store outside FASTML_HOME, NaT time
bounds, repeated column names, Arrow's string_view layout, and point-in-time joins over spans too wide to pack
(checked against ``pandas.merge_asof`` and plain loops written here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fastml.cli import main
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore

US = 1_000_000


def _ts(us) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), pa.int64()).view(pa.timestamp("us", tz="UTC"))


def _merge_asof(rows: pd.DataFrame, entity: pd.DataFrame, key: str, column: str) -> list:
    """Per entity row (in input order) the value of the latest row of its key at or before its time ``t``
    (int64 microseconds); ties in time go to the later row of ``rows``. None where there is none."""
    latest = rows.assign(_r=np.arange(len(rows))).sort_values(["t", "_r"]).drop_duplicates([key, "t"], keep="last")
    left = entity[[key, "t"]].assign(_i=np.arange(len(entity))).sort_values("t")
    merged = pd.merge_asof(left, latest[[key, "t", column]].sort_values("t"), on="t", by=key, direction="backward")
    out = merged.sort_values("_i")[column].tolist()
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in out]


# --- CLI: a CSV's keys and categorical values are text ----------------------------------------------


def test_cli_csv_ingest_keeps_leading_zeros_of_entity_keys(fastml_home, tmp_path, capsys):
    assert main(["features", "register", "zips", "--entity", "zip", "--feature", "population:int64"]) == 0
    csv = tmp_path / "zips.csv"
    csv.write_text(
        "zip,event_timestamp,population\n"
        "00501,2026-01-20T00:00:00Z,10\n"
        "02134,2026-01-20T00:00:00Z,20\n"
        "00501,2026-01-21T00:00:00Z,11\n"
    )
    assert main(["features", "ingest", "zips", str(csv)]) == 0
    capsys.readouterr()
    fs = FeatureStore(fastml_home)
    assert fs.read_offline("zips").column("zip").to_pylist() == ["00501", "02134", "00501"]

    rows = pd.read_csv(csv, dtype={"zip": str})
    rows["t"] = pd.to_datetime(rows["event_timestamp"]).dt.as_unit("us").astype("int64")
    when = [pd.Timestamp("2026-01-20T12:00:00Z"), pd.Timestamp("2026-01-22T00:00:00Z")] * 2 + [
        pd.Timestamp("2026-01-22T00:00:00Z")
    ]
    entity = pd.DataFrame({"zip": ["00501", "00501", "02134", "02134", "501"], "event_timestamp": when})
    got = fs.get_training_set(entity, ["zips:population"]).column("population").to_pylist()
    expected = _merge_asof(rows, entity.assign(t=[int(t.value // 1000) for t in when]), "zip", "population")
    assert expected == [10, 11, 20, 20, None]
    assert got == expected

    fs.materialize("zips")
    out = fs.get_online(["zips:population"], ["00501", "02134", "501"], as_dict=True)
    assert out["population"] == [11, 20, None]


def test_cli_csv_ingest_reads_a_categorical_of_digits_as_text(fastml_home, tmp_path, capsys):
    group = FeatureGroup("plan", entities=["user_id"], features=[Feature("tier", "string"), Feature("n", "float64")])
    FeatureStore(fastml_home).register(group)
    csv = tmp_path / "plan.csv"
    csv.write_text("user_id,event_timestamp,tier,n\n7,2026-01-20T00:00:00Z,01,1\n8,2026-01-20T00:00:00Z,2,2\n")
    assert main(["features", "ingest", "plan", str(csv)]) == 0, capsys.readouterr().err
    table = FeatureStore(fastml_home).read_offline("plan")
    assert table.column("user_id").to_pylist() == ["7", "8"]  # the same text an integer key has
    assert table.column("tier").to_pylist() == ["01", "2"]
    assert table.column("n").to_pylist() == [1.0, 2.0]


# --- lineage: the registry of the store's own home -------------------------------------------------


def _onnx_file(path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_lineage_reads_the_registry_in_the_stores_home_not_fastml_home(fastml_home, tmp_path):
    from fastml.registry import Registry

    artifact = _onnx_file(tmp_path / "m.onnx")
    other = tmp_path / "other_home"
    fs = FeatureStore(other)  # not FASTML_HOME
    fs.register(FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "int64")]))
    with Registry() as reg:  # FASTML_HOME's registry: a different project's model
        reg.register("elsewhere", artifact, feature_refs=["driver:trips"])
    assert fs.lineage("driver")["versions"][0]["models"] == []
    with Registry(f"sqlite:///{other / 'registry.db'}", artifacts_dir=other / "artifacts") as reg:
        reg.register("here", artifact, feature_refs=["driver:trips"])
    models = fs.lineage("driver")["versions"][0]["models"]
    assert [(m["model"], m["features"]) for m in models] == [("here", ["driver:trips"])]
    # The store in FASTML_HOME still reads FASTML_HOME's registry.
    home_fs = FeatureStore(fastml_home)
    home_fs.register(FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "int64")]))
    assert [m["model"] for m in home_fs.lineage("driver")["versions"][0]["models"]] == ["elsewhere"]


# --- time bounds ------------------------------------------------------------------------------------


def test_nat_time_bound_is_invalid_input_and_records_nothing(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    fs.ingest("g", pd.DataFrame({"k": [1], "event_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")], "v": [5]}))
    with pytest.raises(InvalidInput, match="NaT"):
        fs.materialize("g", start=pd.NaT)
    with pytest.raises(InvalidInput, match="NaT"):
        fs.materialize("g", end=pd.NaT)
    with pytest.raises(InvalidInput, match="NaT"):
        fs.read_offline("g", start=pd.NaT)
    assert fs.lineage("g")["versions"][0]["materializations"] == []
    assert fs.read_offline("g", start=pd.Timestamp("2026-01-01")).column("v").to_pylist() == [5]


# --- repeated column names and other table shapes ------------------------------------------------------


def test_repeated_column_names(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    # A repeated column the group does not use is ignored, like any other column.
    rows = pd.DataFrame([[1, t0, 10, "a", "b"], [2, t0, 20, "c", "d"]], columns=["k", "event_timestamp", "v", "x", "x"])
    assert fs.ingest("g", rows)["rows"] == 2
    # A repeated column it needs is ambiguous: refused, naming it, and nothing is written.
    bad = pd.DataFrame([[1, t0, 11, 12]], columns=["k", "event_timestamp", "v", "v"])
    with pytest.raises(InvalidInput, match="column 'v' appears 2 times"):
        fs.ingest("g", bad)
    assert fs.read_offline("g").num_rows == 2
    # Entity rows: labels may repeat a name; a repeated key or timestamp column is refused.
    t1 = t0 + pd.Timedelta(hours=1)
    entity = pd.DataFrame([[2, t1, 0, 1], [3, t1, 1, 0], [1, t1, 1, 1]], columns=["k", "event_timestamp", "y", "y"])
    out = fs.get_training_set(entity, ["g:v"])
    assert out.column_names == ["k", "event_timestamp", "y", "y", "v"]
    ref = pd.DataFrame({"k": [1, 2], "t": [t0.value // 1000] * 2, "v": [10, 20]})
    assert out.column("v").to_pylist() == _merge_asof(
        ref, pd.DataFrame({"k": [2, 3, 1], "t": [t1.value // 1000] * 3}), "k", "v"
    )
    assert out.column("v").to_pylist() == [20, None, 10]
    with pytest.raises(InvalidInput, match="column 'k' appears 2 times"):
        fs.get_training_set(pd.DataFrame([[1, 1, t1]], columns=["k", "k", "event_timestamp"]), ["g:v"])
    with pytest.raises(InvalidInput, match="column 'event_timestamp' appears 2 times"):
        fs.get_training_set(pd.DataFrame([[1, t1, t1]], columns=["k", "event_timestamp", "event_timestamp"]), ["g:v"])
    with pytest.raises(InvalidInput, match="got Series"):
        fs.get_training_set(entity["k"], ["g:v"])


@pytest.mark.skipif(not hasattr(pa, "string_view"), reason="pyarrow without string_view")
def test_string_view_columns_read_as_text(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["a", "b"], features=[Feature("c", "string"), Feature("v", "int64")]))
    sv = pa.string_view()
    times = ["2026-01-20T00:00:00+02:00", "2026-01-20T00:00:00Z", "2026-01-21T00:00:00Z"]
    fs.ingest(
        "g",
        pa.table(
            {
                "a": pa.array(["x", "x", "y"], sv),
                "b": pa.array(["1", "1", "2"], sv),
                "event_timestamp": pa.array(times, sv),
                "c": pa.array(["red", "blue", None], sv),
                "v": [1, 2, 3],
            }
        ),
    )
    stored = fs.read_offline("g").sort_by([("_ingest_row", "ascending")])
    assert stored.column("event_timestamp").cast(pa.int64()).to_pylist() == [
        pd.Timestamp(t).value // 1000 for t in times
    ]
    entity = pa.table(
        {
            "a": pa.array(["x", "x", "y", "y"], sv),
            "b": pa.array(["1", "1", "2", "2"], sv),
            "event_timestamp": pa.array(
                ["2026-01-19T23:00:00Z", "2026-01-20T00:00:00Z", "2026-01-20", "2026-01-21"], sv
            ),
        }
    )
    out = fs.get_training_set(entity, ["g:c", "g:v"])
    # Row 0 of the ingest is 22:00Z on the 19th; row 1 (00:00Z on the 20th) is later.
    assert out.column("c").to_pylist() == ["red", "blue", None, None]
    assert out.column("v").to_pylist() == [1, 2, None, 3]


# --- point-in-time joins over spans too wide to pack into one int64 ----------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_training_set_and_materialize_over_a_span_of_millennia(fastml_home, seed):
    """Event times from about 100,000 years before 1970 to as far after it: (key, time) cannot be packed into one
    int64, so the join ranks the distinct times instead. Checked against merge_asof and a plain loop."""
    rng = np.random.default_rng(seed)
    fs = FeatureStore(fastml_home, online_backend="reference")
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    pool = np.array([-3 * 10**18, -(10**16), -5 * US, 7 * US, 10**15, 3 * 10**18], dtype=np.int64)
    frames = []
    for _ in range(3):
        n = 25
        k = rng.integers(0, 6, n)
        t = rng.choice(pool, n)  # many ties, within and across ingests
        v = rng.integers(0, 1000, n)
        fs.ingest("g", pa.table({"k": pa.array(k), "event_timestamp": _ts(t), "v": pa.array(v)}))
        frames.append(pd.DataFrame({"k": k, "t": t, "v": v}))
    rows = pd.concat(frames, ignore_index=True)  # in ingest order, then row order: ties go to the later row
    ek = rng.integers(0, 7, 60)
    et = rng.choice(pool, 60) + rng.integers(-1, 2, 60) * US
    got = fs.get_training_set(pa.table({"k": pa.array(ek), "event_timestamp": _ts(et)}), ["g:v"]).column("v")
    assert got.to_pylist() == _merge_asof(rows, pd.DataFrame({"k": ek, "t": et}), "k", "v")

    fs.materialize("g")
    keys = list(range(7))
    values, present, event_us = fs.get_online(["g:v"], keys)
    for key in keys:
        mine = rows[rows.k == key]
        if mine.empty:
            assert not present[key, 0] and event_us[key, 0] == 0
            continue
        latest_t = mine.t.max()
        assert event_us[key, 0] == latest_t
        assert values[key, 0] == mine[mine.t == latest_t].v.iloc[-1]
