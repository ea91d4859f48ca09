"""One timestamp reader for every path of the feature store: ingest, training-set entity rows and
materialisation bounds accept the same ISO 8601 text (with or without a zone offset) and agree in UTC."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fastml.cli import main
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.timestamps import column_us, to_us

UTC_1858 = int(dt.datetime(2026, 1, 20, 18, 58, tzinfo=dt.UTC).timestamp()) * 1_000_000
FORMS = [
    "2026-01-20T18:58:00+00:00",
    "2026-01-20T18:58:00Z",
    "2026-01-20T20:58:00+02:00",
    "2026-01-20T18:58:00",
    "2026-01-20 18:58:00Z",
]


@pytest.fixture
def fs(fastml_home):
    store = FeatureStore(fastml_home)
    store.register(FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "int64")]))
    yield store
    store.close()


@pytest.mark.parametrize("text", FORMS)
def test_every_iso_form_is_the_same_utc_instant(text):
    assert to_us(text) == UTC_1858
    assert column_us(pa.table({"t": [text]}), "t").tolist() == [UTC_1858]


def test_a_column_mixing_naive_and_offset_text_is_read_value_by_value():
    t = pa.table({"t": ["2026-01-20T18:58:00", "2026-01-20T19:58:00+01:00", "2026-01-20T18:58:00.000001Z"]})
    assert column_us(t, "t").tolist() == [UTC_1858, UTC_1858, UTC_1858 + 1]


def test_bad_text_names_the_column_and_row():
    with pytest.raises(InvalidInput, match=r"column 't' row 1: '20 Jan 2026' is not an ISO 8601"):
        column_us(pa.table({"t": ["2026-01-20T18:58:00Z", "20 Jan 2026"]}), "t")


def test_ingest_accepts_offsets_and_stores_utc(fs):
    rows = pa.table({"driver_id": [1, 2, 3], "event_timestamp": FORMS[:3], "trips": [10, 20, 30]})
    assert fs.ingest("driver", rows)["rows"] == 3
    stored = fs.read_offline("driver").sort_by("driver_id")
    assert stored.column("event_timestamp").cast(pa.int64()).to_pylist() == [UTC_1858] * 3


def test_training_set_entity_rows_accept_offsets(fs):
    fs.ingest(
        "driver",
        pa.table(
            {"driver_id": [1, 1], "event_timestamp": ["2026-01-20T18:00:00Z", "2026-01-20T19:00:00Z"], "trips": [1, 2]}
        ),
    )
    entity = pd.DataFrame(
        {
            "driver_id": [1, 1, 1],
            # 18:58 UTC sees the 18:00 row; 19:30+01:00 is 18:30 UTC; 21:00+01:00 is 20:00 UTC.
            "event_timestamp": ["2026-01-20T18:58:00+00:00", "2026-01-20T19:30:00+01:00", "2026-01-20T21:00:00+01:00"],
        }
    )
    out = fs.get_training_set(entity, ["driver:trips"])
    assert out.column("trips").to_pylist() == [1, 1, 2]


def test_materialize_bounds_and_ingest_agree_on_the_same_text(fs):
    fs.ingest(
        "driver",
        pa.table(
            {
                "driver_id": [1, 2],
                "event_timestamp": ["2026-01-20T18:00:00Z", "2026-01-20T20:00:00+00:00"],
                "trips": [1, 2],
            }
        ),
    )
    res = fs.materialize("driver", start="2026-01-20T18:58:00+00:00", end="2026-01-20T23:00:00Z")
    values, present, _ = fs.get_online(["driver:trips"], [1, 2])
    assert present[:, 0].tolist() == [False, True] and values[1, 0] == 2
    assert res["entities"] == 1 and res["written"] == 1


def test_cli_ingest_of_a_csv_with_offsets(fs, tmp_path, capsys):
    csv = tmp_path / "rows.csv"
    csv.write_text("driver_id,event_timestamp,trips\n1,2026-01-20T18:58:00+00:00,5\n2,2026-01-20T18:58:00Z,6\n")
    assert main(["features", "ingest", "driver", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    stored = fs.read_offline("driver")
    assert np.unique(stored.column("event_timestamp").cast(pa.int64()).to_numpy()).tolist() == [UTC_1858]
