"""A part of a composite entity key holding the byte 0x1f is refused (InvalidInput naming the key's position and
the part), online and offline: the parts are joined by 0x1f, so ``("a\\x1fb", "c")`` and ``("a", "b\\x1fc")``
would be one key and read or overwrite each other's features. A one-part key may hold 0x1f."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import ts

from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup
from fastml.features import offline as _offline

SEP = "\x1f"


def _refused(position: int, part: int) -> str:
    return re.escape(
        f"entity key at position {position}: part {part} contains the byte 0x1f, which separates the parts of a "
        "composite key"
    )


def _offline_refused(position, part: int, column: str) -> str:
    at = r"\d+" if position is None else str(position)  # None: any row (of stored rows, in their read order)
    return f"entity key at position {at}: " + re.escape(f"part {part} (column {column!r}) contains the byte 0x1f")


@pytest.fixture
def trips(store):
    store.register(FeatureGroup("trip", entities=["rider", "driver"], features=[Feature("n", "float64")]))
    store.ingest(
        "trip",
        pa.table({"rider": ["r1", "r2"], "driver": ["d7", "d8"], "event_timestamp": ts([0, 0]), "n": [3.0, 4.0]}),
    )
    store.materialize("trip")
    return store


def _write(store, keys, value=9.0):
    g, version = store.get_group("trip")
    n = len(keys)
    return store.online.write(
        g, version, keys, np.full((n, 1), value), np.ones((n, 1), bool), np.full(n, 1_700_000_000_000_000, np.int64)
    )


def _online_rows(store):
    got = store.get_online(["trip:n"], [("r1", "d7"), ("r2", "d8")])
    return got.values[:, 0].tolist(), got.present[:, 0].tolist(), got.event_time_us[:, 0].tolist()


def test_online_write_refuses_a_composite_part_holding_the_separator(trips):
    g, version = trips.get_group("trip")
    before = (trips.online.count(g, version), _online_rows(trips))
    with pytest.raises(InvalidInput, match=_refused(1, 0)):
        _write(trips, [("r1", "d7"), (f"r{SEP}9", "d7")])  # a good key first: nothing of the batch is written
    with pytest.raises(InvalidInput, match=_refused(0, 1)):
        _write(trips, [("r1", f"d{SEP}7")])
    with pytest.raises(InvalidInput, match=_refused(0, 1)):
        _write(trips, [("r1", b"d\x1f7")])  # bytes parts too
    assert (trips.online.count(g, version), _online_rows(trips)) == before


def test_online_lookup_refuses_a_composite_part_holding_the_separator(trips):
    keys = [("r1", "d7"), ("r2", "d8"), ("r1", f"d{SEP}7")]
    with pytest.raises(InvalidInput, match=_refused(2, 1)):
        trips.get_online(["trip:n"], keys)
    with pytest.raises(InvalidInput, match=_refused(2, 1)):
        trips.get_online(["trip:n"], keys, as_dict=True)
    with pytest.raises(InvalidInput, match=_refused(2, 1)):
        trips.online.lookup_into(["trip:n"], keys, np.zeros((3, 1), np.float32))
    with pytest.raises(InvalidInput, match=_refused(1, 0)):  # entity rows as dicts are encoded the same way
        trips.get_online(["trip:n"], [{"rider": "r1", "driver": "d7"}, {"rider": f"r{SEP}", "driver": "d7"}])
    # the keys without 0x1f still read as before
    assert trips.get_online(["trip:n"], keys[:2]).values[:, 0].tolist() == [3.0, 4.0]


def test_the_two_colliding_keys_are_both_refused(trips):
    # Both encode to b"a\x1fb\x1fc": before the fix, writing one and reading the other returned its value.
    with pytest.raises(InvalidInput, match=_refused(0, 0)):
        _write(trips, [(f"a{SEP}b", "c")], value=42.0)
    with pytest.raises(InvalidInput, match=_refused(0, 1)):
        trips.get_online(["trip:n"], [("a", f"b{SEP}c")])
    with pytest.raises(InvalidInput, match=_refused(0, 1)):
        _write(trips, [("a", f"b{SEP}c")], value=42.0)
    with pytest.raises(InvalidInput, match=_refused(0, 0)):
        trips.get_online(["trip:n"], [(f"a{SEP}b", "c")])


def test_ingest_of_a_composite_part_holding_the_separator_writes_nothing(trips):
    g, version = trips.get_group("trip")
    offline_before = trips.read_offline("trip").sort_by("rider").to_pylist()
    ingests_before = trips.metadata.ingests("trip", version)
    online_before = (trips.online.count(g, version), _online_rows(trips))
    bad = pa.table(
        {
            "rider": ["r1", "r3", "a"],
            "driver": ["d7", "d9", f"b{SEP}c"],
            "event_timestamp": ts([10, 10, 10]),
            "n": [30.0, 50.0, 42.0],
        }
    )
    with pytest.raises(InvalidInput, match=_offline_refused(2, 1, "driver")):
        trips.ingest("trip", bad)
    assert trips.read_offline("trip").sort_by("rider").to_pylist() == offline_before
    assert trips.metadata.ingests("trip", version) == ingests_before
    trips.materialize("trip")  # nothing new to write
    assert (trips.online.count(g, version), _online_rows(trips)) == online_before
    # an integer part beside a string part: the string part is the one named
    trips.register(FeatureGroup("pair", entities=["a", "b"], features=[Feature("x", "float64")]))
    with pytest.raises(InvalidInput, match=_offline_refused(0, 0, "a")):
        trips.ingest("pair", pa.table({"a": [f"{SEP}"], "b": [1], "event_timestamp": ts([0]), "x": [1.0]}))
    assert trips.read_offline("pair").num_rows == 0


def test_materialize_and_training_sets_refuse_stored_rows_with_such_a_key(trips, monkeypatch):
    # Rows stored before ingest refused them (simulated by switching the check off for one ingest).
    g, version = trips.get_group("trip")
    with monkeypatch.context() as m:
        m.setattr(_offline, "refuse_separator", lambda *a, **k: None)
        trips.ingest(
            "trip",
            pa.table(
                {"rider": ["r1", f"a{SEP}b"], "driver": ["d7", "c"], "event_timestamp": ts([10, 10]), "n": [5.0, 6.0]}
            ),
        )
    online_before = (trips.online.count(g, version), _online_rows(trips))
    with pytest.raises(InvalidInput, match=_offline_refused(None, 0, "rider")):
        trips.materialize("trip")
    assert (trips.online.count(g, version), _online_rows(trips)) == online_before  # r1's newer row not written
    entity_rows = pa.table({"rider": ["r1"], "driver": ["d7"], "event_timestamp": ts([20])})
    with pytest.raises(InvalidInput, match=_offline_refused(None, 0, "rider")):
        trips.get_training_set(entity_rows, ["trip:n"])


def test_training_set_refuses_entity_rows_with_such_a_key(trips):
    entity_rows = pa.table({"rider": ["r1", "a"], "driver": ["d7", f"b{SEP}c"], "event_timestamp": ts([5, 5])})
    with pytest.raises(InvalidInput, match=_offline_refused(1, 1, "driver")):
        trips.get_training_set(entity_rows, ["trip:n"])
    good = trips.get_training_set(entity_rows.slice(0, 1), ["trip:n"])
    assert good.column("n").to_pylist() == [3.0]


def test_a_one_part_key_may_hold_the_separator(store):
    store.register(FeatureGroup("acct", entities=["acct_id"], features=[Feature("x", "float64")]))
    key = f"a{SEP}b"
    store.ingest("acct", pa.table({"acct_id": [key, "c"], "event_timestamp": ts([0, 0]), "x": [1.5, 2.5]}))
    store.materialize("acct")
    got = store.get_online(["acct:x"], [key, (key,), "c", "a"])
    assert got.present[:, 0].tolist() == [True, True, True, False]
    assert got.values[:3, 0].tolist() == [1.5, 1.5, 2.5]
    g, version = store.get_group("acct")
    store.online.write(g, version, [f"d{SEP}e"], np.full((1, 1), 7.0), np.ones((1, 1), bool), np.array([5], np.int64))
    assert store.get_online(["acct:x"], [f"d{SEP}e"], now_us=10).values[0, 0] == 7.0
    entity_rows = pa.table({"acct_id": [key], "event_timestamp": ts([5])})
    assert store.get_training_set(entity_rows, ["acct:x"]).column("x").to_pylist() == [1.5]


def test_key_strings_checks_only_composite_string_parts():
    t = pa.table(
        {"a": [f"x{SEP}y", "z"], "b": pa.array([1, 2], pa.int64()), "c": pa.array(["p", "q"], pa.large_string())}
    )
    assert _offline.key_strings(t, ("a",)).to_pylist() == [f"x{SEP}y", "z"]  # one part: left alone
    with pytest.raises(InvalidInput, match=r"^entity_rows: " + _offline_refused(0, 0, "a")):
        _offline.key_strings(t, ("a", "b"), "entity_rows")
    assert _offline.key_strings(t, ("b", "c")).to_pylist() == [f"1{SEP}p", f"2{SEP}q"]
    t2 = pa.table({"c": pa.array(["p", f"q{SEP}"], pa.large_string()), "b": [1, 2]})
    with pytest.raises(InvalidInput, match=_offline_refused(1, 0, "c")):
        _offline.key_strings(t2, ("c", "b"))
