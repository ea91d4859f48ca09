"""Online lookups at their edges, as a Feast user calls them: values against pandas, the Feast dict shape,
entity rows given as columns, key arrays, "now", and results that travel (pickle, copy)."""

import copy
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feature_helpers import BASE_US, ts

from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup


def _typed_group(store, ttl_s=0):
    g = FeatureGroup(
        "typed",
        entities=["k"],
        features=[Feature("i", "int64"), Feature("b", "bool"), Feature("s", "string"), Feature("f", "float64")],
        ttl_s=ttl_s,
    )
    store.register(g)
    return g


def _pair(store):
    """Group 'a' keyed by d (feature x) and group 'b' keyed by k with a feature named d."""
    store.register(FeatureGroup("a", entities=["d"], features=[Feature("x", "int64")]))
    store.register(FeatureGroup("b", entities=["k"], features=[Feature("d", "int64")]))
    store.ingest("a", pa.table({"d": pa.array([1, 2]), "event_timestamp": ts([0, 0]), "x": pa.array([10, 20])}))
    store.ingest("b", pa.table({"k": pa.array([5, 6]), "event_timestamp": ts([0, 0]), "d": pa.array([55, 66])}))
    store.materialize("a")
    store.materialize("b")


def test_latest_offline_row_per_entity_matches_pandas(store):
    _typed_group(store)
    rng = np.random.default_rng(7)
    frames = []
    for ing in range(3):  # ties across and within ingests: the latest ingest, then the later row wins
        n = 120
        df = pd.DataFrame({"k": rng.integers(0, 25, n), "sec": rng.integers(1, 15, n), "i": np.arange(n) + 1000 * ing})
        df["ing"], df["row"] = ing, np.arange(n)
        frames.append(df)
        store.ingest(
            "typed",
            pa.table(
                {
                    "k": pa.array([f"é{k}" if k % 3 == 0 else str(k) for k in df.k]),
                    "event_timestamp": ts(df.sec.to_numpy()),
                    "i": pa.array(df.i, pa.int64()),
                    "b": pa.array((df.i % 2 == 0).tolist()),
                    "s": pa.array([f"c{v % 5}" for v in df.i]),
                    "f": pa.array(df.i / 8.0),
                }
            ),
        )
        store.materialize("typed")  # materialised after each ingest: an older row never wins
    latest = pd.concat(frames).sort_values(["k", "sec", "ing", "row"]).groupby("k").tail(1).set_index("k")
    keys = [f"é{k}" if k % 3 == 0 else k for k in range(-1, 27)]  # ints match the stored text "7"
    out = store.get_online(["typed:i", "typed:b", "typed:s", "typed:f"], keys, as_dict=True)
    for pos, k in enumerate(range(-1, 27)):
        if k not in latest.index:
            assert [out[c][pos] for c in "ibsf"] == [None] * 4
            continue
        v = int(latest.i[k])
        assert [out[c][pos] for c in "ibsf"] == [v, v % 2 == 0, f"c{v % 5}", v / 8.0]
    # "7", 7 and "007": matched by text
    r = store.get_online(["typed:i"], ["7", 7, "007"]).values[:, 0]
    assert r[0] == r[1] == latest.i[7] and np.isnan(r[2])


def test_ttl_boundary_nan_and_null(store):
    _typed_group(store, ttl_s=10)
    store.ingest(
        "typed",
        pa.table(
            {
                "k": pa.array(["n", "z"]),
                "event_timestamp": ts([0, 0]),
                "i": pa.array([1, None], pa.int64()),
                "b": pa.array([False, None]),
                "s": pa.array(["", None]),
                "f": pa.array([float("nan"), None]),
            }
        ),
    )
    store.materialize("typed")
    feats = ["typed:i", "typed:b", "typed:s", "typed:f"]
    at = store.get_online(feats, ["n", "z"], now_us=BASE_US + 10_000_000)  # exactly ttl_s old: still in
    assert at.present.tolist() == [[True, True, True, True], [False, False, False, False]]
    assert np.isnan(at.values[0, 3]) and not at.stale.any()
    d = store.get_online(feats, ["n", "z"], as_dict=True, now_us=BASE_US + 10_000_000)
    assert d["i"] == [1, None] and d["b"] == [False, None] and d["s"] == ["", None] and d["f"][1] is None
    assert np.isnan(d["f"][0])  # a stored NaN is a value, a null is not
    past = store.get_online(feats, ["n", "z"], now_us=BASE_US + 10_000_001)
    assert not past.present.any() and past.stale.tolist() == [[True] * 4, [True] * 4]


def test_as_dict_feature_named_like_an_entity_column_keeps_the_entity_ids(store):
    _pair(store)
    out = store.get_online(["a:x", "b:d"], [{"d": 1, "k": 5}, {"d": 2, "k": 7}], as_dict=True)
    assert out["d"] == [1, 2]  # the entity ids, not b's feature d
    assert out["k"] == [5, 7] and out["x"] == [10, 20] and out["b__d"] == [55, None]
    # an entity-row column (a label) is echoed as given, the feature qualified beside it
    out = store.get_online(["a:x"], pd.DataFrame({"d": [2], "x": ["label"]}), as_dict=True)
    assert out == {"d": [2], "x": ["label"], "a__x": [20]}


def test_dict_of_columns_must_have_one_value_per_row(store):
    store.register(FeatureGroup("c", entities=["r", "d"], features=[Feature("v", "int64")]))
    store.ingest(
        "c", pa.table({"r": pa.array([1, 2]), "d": pa.array([2, 3]), "event_timestamp": ts([0, 0]), "v": [12, 23]})
    )
    store.materialize("c")
    assert store.get_online(["c:v"], {"r": [1, 2], "d": [2, 3]}, as_dict=True)["v"] == [12, 23]
    with pytest.raises(InvalidInput, match=r"different lengths \{'r': 2, 'd': 1\}"):
        store.get_online(["c:v"], {"r": [1, 2], "d": [2]}, as_dict=True)  # was: one row, 'r' echoed with two
    with pytest.raises(InvalidInput, match=r"column 'd' must be a list"):
        store.get_online(["c:v"], {"r": [1], "d": 2})
    out = np.empty((2, 1))
    with pytest.raises(InvalidInput, match="different lengths"):
        store.online.lookup_into(["c:v"], {"r": [1, 2], "d": [2]}, out)


def test_two_dimensional_key_array_is_invalid_input(store):
    _pair(store)
    with pytest.raises(InvalidInput, match=r"1-D .*shape \(2, 1\)"):
        store.get_online(["a:x"], np.array([[1], [2]]))
    assert store.get_online(["a:x"], np.array([1, 2])).values[:, 0].tolist() == [10, 20]


def test_entity_rows_mixing_dicts_and_keys_is_invalid_input(store):
    _pair(store)
    with pytest.raises(InvalidInput, match=r"row 1 is int 2"):
        store.get_online(["a:x"], [{"d": 1}, 2])


def test_as_dict_ignores_float32_so_values_stay_exact(store):
    _typed_group(store)
    big = 2**24 + 1  # not a float32
    store.ingest(
        "typed",
        pa.table(
            {
                "k": ["a"],
                "event_timestamp": ts([0]),
                "i": pa.array([big], pa.int64()),
                "b": [True],
                "s": ["x"],
                "f": [0.1],
            }
        ),
    )
    store.materialize("typed")
    out = store.get_online(["typed:i", "typed:f"], ["a"], as_dict=True, as_float32=True)
    assert out["i"] == [big] and out["f"] == [0.1]
    arr = store.get_online(["typed:i", "typed:f"], ["a"], as_float32=True)
    assert arr.values.dtype == np.float32  # the arrays still honour it


def test_online_values_pickle_and_copy(store):
    _typed_group(store, ttl_s=5)
    store.ingest(
        "typed",
        pa.table(
            {
                "k": ["a"],
                "event_timestamp": ts([0]),
                "i": pa.array([3], pa.int64()),
                "b": [True],
                "s": ["x"],
                "f": [1.0],
            }
        ),
    )
    store.materialize("typed")
    r = store.get_online(["typed:i"], ["a", "b"], now_us=BASE_US + 6_000_000)
    for back in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        values, present, event_time = back
        assert np.isnan(values).all() and not present.any()
        assert event_time[:, 0].tolist() == [BASE_US, 0] and back.stale[:, 0].tolist() == [True, False]


def test_now_us_must_be_an_integer(store):
    _pair(store)
    with pytest.raises(InvalidInput, match=r"now_us must be an integer .* got 1\.5"):
        store.get_online(["a:x"], [1], now_us=1.5)
    with pytest.raises(InvalidInput, match="now_us"):
        store.online.lookup_into(["a:x"], [1], np.empty((1, 1)), now_us="soon")
    assert store.get_online(["a:x"], [1], now_us=np.int64(BASE_US)).values.tolist() == [[10.0]]


def test_features_must_be_a_list_of_references(store):
    _pair(store)
    with pytest.raises(InvalidInput, match="features must be a list of references"):
        store.get_online([["a:x"]], [1])


def test_key_that_is_not_valid_unicode_is_invalid_input(store):
    _pair(store)
    with pytest.raises(InvalidInput, match=r"entity key '\\ud800' cannot be encoded as UTF-8"):
        store.get_online(["a:x"], [1, "\ud800"])
    with pytest.raises(InvalidInput, match="cannot be encoded as UTF-8"):
        store.online.lookup_into(["a:x"], ["\ud800"], np.empty((1, 1)))
    g, version = store.get_group("a")
    with pytest.raises(InvalidInput, match="cannot be encoded as UTF-8"):
        store.online.write(g, version, ["3", "\ud800"], np.ones((2, 1)), np.ones((2, 1), bool), np.array([5, 5]))
    assert not store.get_online(["a:x"], [3]).present.any()  # nothing written
