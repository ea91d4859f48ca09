"""One suite, every online backend: the native C++ cache and the python-lmdb reference."""

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import BASE_US, driver_table, ts

from fastml.errors import InvalidInput, NotFound
from fastml.features import Feature, FeatureGroup

FEATS = ["driver:trips", "driver:rating", "driver:city", "driver:active", "driver:score"]


def _dump(store, keys):
    v, p, t = store.get_online(FEATS, keys)
    return np.nan_to_num(v, nan=-999.0).tolist(), p.tolist(), t.tolist()


def test_materialize_latest_per_entity_and_lookup(store, driver_group):
    store.register(driver_group)
    store.ingest(
        "driver",
        driver_table(
            [1, 2, 1, 3],
            [0, 5, 10, 7],
            [10, 20, 11, 30],
            rating=[4.0, 3.5, None, 2.0],
            city=["a", "b", "c", None],
            active=[True, False, True, None],
            score=[0.5, 1.5, 2.5, 3.5],
        ),
    )
    res = store.materialize("driver")
    assert res["entities"] == 3 and res["written"] == 3 and res["skipped_older"] == 0
    values, present, event_time = store.get_online(FEATS, [1, 2, 3, 99])
    assert values.shape == (4, 5) and values.dtype == np.float64
    assert values[0, 0] == 11 and np.isnan(values[0, 1]) and present[0].tolist() == [True, False, True, True, True]
    assert values[1].tolist() == [20, 3.5, 1, 0, 1.5]  # city 'b' has code 1 ('a' 0, 'b' 1, 'c' 2)
    assert present[2].tolist() == [True, True, False, False, True]
    assert not present[3].any() and np.isnan(values[3]).all() and (event_time[3] == 0).all()
    assert event_time[0].tolist() == [BASE_US + 10_000_000] * 5
    d = store.get_online(FEATS, [1, 2, 3, 99], as_dict=True)
    assert list(d) == ["driver_id", "trips", "rating", "city", "active", "score"]
    assert d["driver_id"] == [1, 2, 3, 99]
    assert d["trips"] == [11, 20, 30, None]
    assert d["city"] == ["c", "b", None, None]
    assert d["active"] == [True, False, None, None]
    assert d["rating"] == [None, 3.5, 2.0, None]
    # Key types: ints and their text are the same key; numpy ints too.
    assert store.get_online(["driver:trips"], ["1", np.int64(2)])[0][:, 0].tolist() == [11, 20]
    assert store.online.count(*store.get_group("driver")) == 3


def test_materialize_is_idempotent_and_never_replaces_newer(store, driver_group):
    store.register(driver_group)
    store.ingest("driver", driver_table([1, 2], [10, 10], [1, 2]))
    store.materialize("driver")
    before = _dump(store, [1, 2])
    again = store.materialize("driver")
    assert again["written"] == 2 and _dump(store, [1, 2]) == before
    # A late row (older event time) arrives and is materialised alone: the online value stays.
    store.ingest("driver", driver_table([1], [5], [100]))
    late = store.materialize("driver", start=BASE_US + 5_000_000, end=BASE_US + 6_000_000)
    assert late == {"group": "driver", "version": 1, "entities": 1, "written": 0, "skipped_older": 1}
    assert _dump(store, [1, 2]) == before
    # A newer row replaces it.
    store.ingest("driver", driver_table([1], [20], [7]))
    store.materialize("driver")
    assert store.get_online(["driver:trips"], [1])[0][0, 0] == 7


def test_online_ttl_reads_old_rows_as_absent(store):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64")], ttl_s=60))
    store.ingest("g", pa.table({"k": ["a", "b"], "event_timestamp": ts([0, 100]), "v": [1.0, 2.0]}))
    store.materialize("g")
    now = BASE_US + 130_000_000  # a is 130 s old, b 30 s
    v, p, t = store.get_online(["g:v"], ["a", "b"], now_us=now)
    assert p[:, 0].tolist() == [False, True] and np.isnan(v[0, 0]) and v[1, 0] == 2.0
    assert t[0, 0] == BASE_US  # the row exists; it is just too old


def test_lookup_into_fills_caller_array_without_allocating(store, driver_group):
    store.register(driver_group)
    store.ingest("driver", driver_table([1, 2], [0, 0], [5, 6], score=[0.25, 0.75]))
    store.materialize("driver")
    batch = np.zeros((3, 4), dtype=np.float32)
    view = batch[:, 1:3]  # not contiguous: refused
    with pytest.raises(InvalidInput, match="C-contiguous"):
        store.online.lookup_into(["driver:trips", "driver:score"], [1, 2, 3], view)
    out = np.zeros((3, 2), dtype=np.float32)
    present = np.zeros((3, 2), dtype=bool)
    n = store.online.lookup_into(["driver:trips", "driver:score"], [2, 1, 3], out, present)
    assert n == 3
    assert out[:2].tolist() == [[6.0, 0.75], [5.0, 0.25]] and np.isnan(out[2]).all()
    assert present.tolist() == [[True, True], [True, True], [False, False]]
    with pytest.raises(InvalidInput, match=r"shape \(2, 2\)"):
        store.online.lookup_into(["driver:trips", "driver:score"], [1, 2], out)
    with pytest.raises(InvalidInput, match="float32 or float64"):
        store.online.lookup_into(["driver:trips", "driver:score"], [1, 2], np.zeros((2, 2), np.int32))


def test_float32_output_and_composite_keys(store):
    store.register(FeatureGroup("pair", entities=["user", "item"], features=[Feature("clicks", "int64")]))
    store.ingest(
        "pair", pa.table({"user": [1, 1], "item": ["x", "y"], "event_timestamp": ts([0, 0]), "clicks": [3, 4]})
    )
    store.materialize("pair")
    v, p, _ = store.get_online(["pair:clicks"], [(1, "y"), (1, "x"), (2, "x")], as_float32=True)
    assert v.dtype == np.float32 and v[:2, 0].tolist() == [4.0, 3.0] and not p[2, 0]
    d = store.get_online(["pair:clicks"], [{"user": 1, "item": "x"}], as_dict=True)
    assert d == {"user": [1], "item": ["x"], "clicks": [3]}


def test_features_from_several_groups_and_versions(store, driver_group):
    store.register(driver_group)
    store.register(FeatureGroup("zone", entities=["zone_id"], features=[Feature("demand", "float64")]))
    store.ingest("driver", driver_table([1, 2], [0, 0], [5, 6]))
    store.ingest("zone", pa.table({"zone_id": ["n", "s"], "event_timestamp": ts([0, 0]), "demand": [0.5, 0.9]}))
    store.materialize("driver")
    store.materialize("zone")
    rows = [{"driver_id": 1, "zone_id": "s"}, {"driver_id": 2, "zone_id": "x"}]
    v, p, _ = store.get_online(["zone:demand", "driver:trips", "driver:score"], rows)
    assert np.nan_to_num(v, nan=-1).tolist() == [[0.9, 5, 0.5], [-1, 6, 0.5]]
    with pytest.raises(InvalidInput, match="different entity columns"):
        store.get_online(["zone:demand", "driver:trips"], [1, 2])
    # A new version with another schema: plain refs follow it, pinned refs keep v1.
    v2 = FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "int64"), Feature("x", "float64")])
    assert store.register(v2) == 2
    store.ingest("driver", pa.table({"driver_id": [1], "event_timestamp": ts([1]), "trips": [50], "x": [1.0]}))
    store.materialize("driver")
    assert store.get_online(["driver:trips", "driver@v1:trips"], [1])[0].tolist() == [[50.0, 5.0]]


def test_lookup_errors(store, driver_group):
    store.register(driver_group)
    with pytest.raises(NotFound, match="has no feature 'nope'"):
        store.get_online(["driver:nope"], [1])
    with pytest.raises(NotFound, match="'rider' is not registered"):
        store.get_online(["rider:trips"], [1])
    with pytest.raises(InvalidInput, match="feature reference"):
        store.get_online(["trips"], [1])
    with pytest.raises(InvalidInput, match="entity key at position 1"):
        store.get_online(["driver:trips"], [1, 2.5])
    with pytest.raises(InvalidInput, match="lack entity column 'driver_id'"):
        store.get_online(["driver:trips"], [{"id": 1}])
    # Unmaterialised group: every value absent, not an error.
    v, p, _ = store.get_online(["driver:trips"], [1])
    assert not p.any()


def test_native_and_reference_files_are_interchangeable(fastml_home, driver_group, backend):
    """Rows written by one backend read the same through the other (same file format)."""
    import shutil

    from fastml.features import FeatureStore

    fs = FeatureStore(fastml_home, online_backend=backend)
    fs.register(driver_group)
    fs.ingest("driver", driver_table([1, 2], [3, 4], [5, 6], city=["p", None]))
    fs.materialize("driver")
    expected = _dump(fs, [1, 2, 3])
    other = "reference" if backend == "native" else "native"
    src = fs.online.path
    dst = fastml_home / "features" / ("online" if other == "native" else "online_reference")
    shutil.copytree(src, dst)
    fs2 = FeatureStore(fastml_home, online_backend=other)
    assert _dump(fs2, [1, 2, 3]) == expected


def test_key_containers(store, driver_group):
    import pandas as pd

    store.register(driver_group)
    store.ingest("driver", driver_table([1, 2], [0, 0], [5, 6]))
    store.materialize("driver")
    assert store.get_online(["driver:trips"], np.array([2, 1]))[0][:, 0].tolist() == [6, 5]
    assert store.get_online(["driver:trips"], {"driver_id": [1]})[0][0, 0] == 5
    df = pd.DataFrame({"driver_id": [2, 3]})
    assert store.get_online(["driver:trips"], df, as_dict=True) == {"driver_id": [2, 3], "trips": [6, None]}
    with pytest.raises(InvalidInput, match="entity keys must be"):
        store.get_online(["driver:trips"], "12")
    with pytest.raises(InvalidInput, match="entity keys must be"):
        store.get_online(["driver:trips"], 12)


def test_materialize_tie_rule_matches_training_sets(store):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    store.ingest("g", pa.table({"k": ["a", "a", "b"], "event_timestamp": ts([10, 10, 10]), "v": [1, 2, 3]}))
    store.ingest("g", pa.table({"k": ["b", "c"], "event_timestamp": ts([10, 3]), "v": [4, 5]}))
    store.materialize("g")
    online = store.get_online(["g:v"], ["a", "b", "c"])[0][:, 0].tolist()
    offline = store.get_training_set(pa.table({"k": ["a", "b", "c"], "event_timestamp": ts([10, 10, 10])}), ["g:v"])
    assert online == offline.column("v").to_pylist() == [2, 4, 5]


# Serial: the keys include CPython's shared one-character strings, whose reference counts any other thread of
# the process moves (a pytest-xdist worker's I/O thread did, by 2, in a parallel run).
@pytest.mark.serial
def test_lookups_do_not_leak_references(store, driver_group):
    """Refcount check (msgspec style): keys and output arrays are not kept alive by lookups."""
    import gc
    import sys

    store.register(driver_group)
    store.ingest("driver", driver_table([1, 2], [0, 0], [5, 6]))
    store.materialize("driver")
    keys = ["1", "2", ("x", 1)[0], 12345678901]
    out = np.empty((len(keys), 2), np.float64)
    feats = ["driver:trips", "driver:score"]
    store.get_online(feats, keys)  # warm the plan cache
    # Garbage left by earlier tests in this process may hold these interned keys; collected here, not in the loop.
    gc.collect()
    before = [sys.getrefcount(k) for k in keys] + [sys.getrefcount(keys), sys.getrefcount(out)]
    for _ in range(200):
        store.get_online(feats, keys)
        store.online.lookup_into(feats, keys, out)
    gc.collect()
    after = [sys.getrefcount(k) for k in keys] + [sys.getrefcount(keys), sys.getrefcount(out)]
    assert after == before


def test_overlong_keys_read_as_absent_and_are_refused_on_write(store, driver_group):
    store.register(driver_group)
    v, p, _ = store.get_online(["driver:trips"], ["x" * 600, ""])
    assert not p.any()
    g, version = store.get_group("driver")
    with pytest.raises(InvalidInput, match="1..511 bytes"):
        # event time 1: 0 is refused on its own (the "no row" marker)
        store.online.write(g, version, ["y" * 600], np.zeros((1, 5)), np.ones((1, 5), bool), np.ones(1, np.int64))
