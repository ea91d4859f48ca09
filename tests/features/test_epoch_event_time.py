"""Event time 0 (1970-01-01T00:00:00Z) is the online store's "no row" marker: ingest and online writes refuse
it, naming the column and the row, and write nothing. Earlier event times (before 1970) are real times and
read back as such."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup


def _us(values) -> pa.Array:
    return pa.array(values, pa.int64()).view(pa.timestamp("us", tz="UTC"))


@pytest.fixture
def group(store):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64")], ttl_s=60))
    return store


def test_ingest_refuses_an_event_time_at_the_epoch_and_writes_nothing(group):
    table = pa.table({"k": ["a", "b", "c"], "event_timestamp": _us([5, 0, 0]), "v": [1.0, 2.0, 3.0]})
    with pytest.raises(
        InvalidInput, match=r"column 'event_timestamp': row 1 \(2 row\(s\) in all\) has event time 1970"
    ):
        group.ingest("g", table)
    assert group.metadata.ingests("g", 1) == [] and group.read_offline("g").num_rows == 0
    iso = pa.table({"k": ["a"], "event_timestamp": ["1970-01-01T00:00:00Z"], "v": [1.0]})
    with pytest.raises(InvalidInput, match="row 0"):
        group.ingest("g", iso)


def test_event_times_before_1970_are_kept_and_read_back(group):
    group.ingest("g", pa.table({"k": ["neg", "pos"], "event_timestamp": _us([-5, 1]), "v": [2.0, 3.0]}))
    group.materialize("g")
    fresh = group.get_online(["g:v"], ["neg", "pos", "none"], now_us=10)
    assert fresh.values[:2, 0].tolist() == [2.0, 3.0] and fresh.present[:, 0].tolist() == [True, True, False]
    assert fresh.event_time_us[:, 0].tolist() == [-5, 1, 0] and not fresh.stale.any()
    old = group.get_online(["g:v"], ["neg", "pos", "none"], now_us=61_000_000)  # 61 s later: past the TTL
    assert old.present[:, 0].tolist() == [False, False, False] and old.stale[:, 0].tolist() == [True, True, False]
    entity_rows = pa.table({"k": ["neg", "pos"], "event_timestamp": _us([-1, -1])})
    assert group.get_training_set(entity_rows, ["g:v"]).column("v").to_pylist() == [2.0, None]


def test_online_write_refuses_event_time_zero_before_writing_any_row(group):
    g, version = group.get_group("g")
    with pytest.raises(InvalidInput, match=r"column 'event_timestamp': the row of entity 'b' \(row 1; 1 row"):
        group.online.write(g, version, ["a", "b"], np.ones((2, 1)), np.ones((2, 1), bool), np.array([7, 0]))
    assert group.online.count(g, version) == 0
    keys = pa.array(["a", "b"], pa.string())  # the Arrow keys materialize() passes
    with pytest.raises(InvalidInput, match="entity 'b'"):
        group.online.write(g, version, keys, np.ones((2, 1)), np.ones((2, 1), bool), np.array([7, 0]))
    assert group.online.count(g, version) == 0
