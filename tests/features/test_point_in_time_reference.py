"""Feature values against independent references on seeded random data.

Offline: ``pandas.merge_asof`` (``by=`` the entity columns, ``direction="backward"``, ``tolerance=`` the TTL)
after keeping, per (entity, event time), the row of the latest ingest and then the latest input row.
Online: each entity's latest row computed with plain Python over the same rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feature_helpers import BASE_US

from fastml.features import Feature, FeatureGroup, FeatureStore

US = 1_000_000
DAY_US = 86_400 * US


def _ts(us) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), pa.int64()).view(pa.timestamp("us", tz="UTC"))


def _norm(values) -> list:
    """None for null and NaN alike (pandas' merge output turns nulls into NaN)."""
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in values]


def _merge_asof_reference(feature_rows: pd.DataFrame, entity: pd.DataFrame, keys: list[str], column: str, ttl_s):
    """The feature value per entity row: latest event time <= the row's time, ties -> latest (seq, row)."""
    latest = feature_rows.sort_values(["t", "seq", "row"]).drop_duplicates(keys + ["t"], keep="last")
    left = entity[keys + ["t"]].assign(_i=np.arange(len(entity))).sort_values("t")
    tolerance = {"tolerance": pd.Timedelta(seconds=ttl_s)} if ttl_s else {}
    merged = pd.merge_asof(
        left, latest.sort_values("t")[keys + ["t", column]], on="t", by=keys, direction="backward", **tolerance
    )
    return _norm(merged.sort_values("_i")[column].tolist())


def _random_ingests(fs, group, rng, n_ingests, n_rows, make_keys, span_us):
    """Ingest random rows (ties within and across ingests, late rows); returns them with seq/row columns."""
    frames = []
    for ing in range(n_ingests):
        keys = make_keys(n_rows)
        # later ingests reach back in time (late rows); second-resolution times make many ties
        t = BASE_US + rng.integers(0, span_us // US, n_rows) * US // (ing + 1)
        t[: n_rows // 5] = t[n_rows // 5 : 2 * (n_rows // 5)]  # ties within the ingest
        for k in keys:
            keys[k][: n_rows // 5] = keys[k][n_rows // 5 : 2 * (n_rows // 5)]
        cols = {k: pa.array(v) for k, v in keys.items()}
        cols["event_timestamp"] = _ts(t)
        values = {}
        for f in group.features:
            null = rng.random(n_rows) < 0.1
            if f.dtype == "float64":
                v = rng.normal(size=n_rows).round(3)
            elif f.dtype == "int64":
                v = rng.integers(-50, 50, n_rows)
            else:
                v = rng.choice(["red", "green", "blue", "grey"], n_rows)
            cols[f.name] = pa.array(v, type=pa.string() if f.dtype == "string" else None, mask=null)
            values[f.name] = [None if n else x for n, x in zip(null, v.tolist())]
        fs.ingest(group.name, pa.table(cols))
        frames.append(pd.DataFrame({**keys, "t": pd.to_datetime(t, unit="us", utc=True), "seq": ing, **values}))
        frames[-1]["row"] = np.arange(n_rows)
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("seed, ttl_s", [(0, 0), (1, 3 * 3600), (2, 1.5)])
def test_training_set_matches_merge_asof(fastml_home, seed, ttl_s):
    rng = np.random.default_rng(seed)
    fs = FeatureStore(fastml_home)
    driver = FeatureGroup(
        "driver",
        entities=["driver_id"],
        features=[Feature("rating", "float64"), Feature("trips", "int64"), Feature("city", "string")],
        ttl_s=ttl_s,
    )
    zone = FeatureGroup("zone", entities=["city_id", "zone"], features=[Feature("demand", "float64")], ttl_s=ttl_s * 2)
    fs.register(driver)
    fs.register(zone)
    span = 3 * DAY_US  # several event-date partitions
    d_rows = _random_ingests(fs, driver, rng, 3, 400, lambda n: {"driver_id": rng.integers(0, 60, n)}, span)
    z_rows = _random_ingests(
        fs,
        zone,
        rng,
        2,
        300,
        lambda n: {"city_id": rng.integers(0, 5, n), "zone": rng.choice(["n", "s", "e"], n).astype(object)},
        span,
    )
    n_e = 1500
    e_t = BASE_US + rng.integers(-span // 10, span + span // 10, n_e) // US * US
    e_t[:300] = (
        d_rows["t"].dt.tz_convert(None).to_numpy()[:300].astype("datetime64[us]").astype(np.int64)
    )  # exactly on event times
    entity = pd.DataFrame(
        {
            "driver_id": rng.integers(0, 66, n_e),  # 60..65 never ingested
            "city_id": rng.integers(0, 6, n_e),
            "zone": rng.choice(["n", "s", "e"], n_e),
            "event_timestamp": pd.to_datetime(e_t, unit="us", utc=True),
            "label": np.arange(n_e),
        }
    )
    entity.loc[:299, "driver_id"] = d_rows["driver_id"].to_numpy()[:300]
    # just after a zone's event times: some within the TTL, some past it
    z_t = z_rows["t"].dt.tz_convert(None).to_numpy()[:300].astype("datetime64[us]").astype(np.int64)
    entity.loc[300:599, "event_timestamp"] = pd.to_datetime(z_t + rng.integers(0, 6, 300) * US, unit="us", utc=True)
    entity.loc[300:599, "city_id"] = z_rows["city_id"].to_numpy()[:300]
    entity.loc[300:599, "zone"] = z_rows["zone"].to_numpy()[:300]
    out = fs.get_training_set(entity, ["driver:rating", "zone:demand", "driver:trips", "driver:city"])
    assert out.column("label").to_pylist() == list(range(n_e))
    ref_entity = entity.rename(columns={"event_timestamp": "t"})
    for col, rows, keys, ttl in [
        ("rating", d_rows, ["driver_id"], ttl_s),
        ("trips", d_rows, ["driver_id"], ttl_s),
        ("city", d_rows, ["driver_id"], ttl_s),
        ("demand", z_rows, ["city_id", "zone"], ttl_s * 2),
    ]:
        expected = _merge_asof_reference(rows, ref_entity, keys, col, ttl)
        assert _norm(out.column(col).to_pylist()) == expected, col
        assert any(v is None for v in expected) and any(v is not None for v in expected)


@pytest.mark.parametrize(
    "times",
    [
        pd.Series(pd.to_datetime(["2024-03-01 08:59", "2024-03-01 09:00", "2024-03-01 12:59", "2024-03-01 13:00"])),
        pd.Series(
            pd.to_datetime(["2024-03-01 03:59", "2024-03-01 04:00", "2024-03-01 07:59", "2024-03-01 08:00"])
        ).dt.tz_localize("America/New_York"),
        pd.Series(
            ["2024-03-01T09:59+01:00", "2024-03-01T10:00+01:00", "2024-03-01T13:59+01:00", "2024-03-01T14:00+01:00"]
        ),
        pd.Series(["2024-03-01T08:59Z", "2024-03-01T09:00:00", "2024-03-01 12:59+00:00", "2024-03-01 14:00+01:00"]),
    ],
    ids=["naive-is-utc", "new-york", "iso-offsets", "iso-mixed"],
)
def test_entity_row_time_zones(fastml_home, times):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    berlin = pd.to_datetime(["2024-03-01 10:00", "2024-03-01 12:00", "2024-03-01 14:00"]).tz_localize("Europe/Berlin")
    fs.ingest("g", pd.DataFrame({"k": [1, 1, 1], "event_timestamp": berlin, "v": [1, 2, 3]}))  # 09:00Z, 11:00Z, 13:00Z
    out = fs.get_training_set(pd.DataFrame({"k": [1] * 4, "event_timestamp": times}), ["g:v"])
    assert out.column("v").to_pylist() == [None, 1, 2, 3]


def _latest_rows(rows: pd.DataFrame, key: str) -> dict:
    """Per entity, its latest row (greatest event time, then ingest, then input row), by a plain loop."""
    best: dict = {}
    for r in rows.itertuples(index=False):
        rank = (r.t.value // 1000, r.seq, r.row)
        k = getattr(r, key)
        if k not in best or rank > best[k][0]:
            best[k] = (rank, r)
    return {k: r for k, (_, r) in best.items()}


def test_online_matches_offline_latest_after_windows_in_any_order(store, backend):
    rng = np.random.default_rng(11)
    group = FeatureGroup(
        "driver",
        entities=["driver_id"],
        features=[Feature("rating", "float64"), Feature("trips", "int64"), Feature("city", "string")],
        ttl_s=86_400,
    )
    store.register(group)
    rows = _random_ingests(store, group, rng, 3, 1500, lambda n: {"driver_id": rng.integers(0, 1000, n)}, 4 * DAY_US)
    # one-day windows in shuffled order, some replayed: older windows never replace newer rows
    windows = [*range(4), *rng.integers(0, 4, 3).tolist()]
    rng.shuffle(windows)
    for w in windows:
        store.materialize("driver", start=BASE_US + w * DAY_US, end=BASE_US + (w + 1) * DAY_US)
    latest = _latest_rows(rows, "driver_id")
    keys = list(range(1000))
    now = BASE_US + 4 * DAY_US
    refs = ["driver:rating", "driver:trips", "driver:city"]
    got = store.get_online(refs, keys, now_us=now)
    values, present, event_time = got
    vocab = store.metadata.vocab("driver", 1, "city")
    as_dict = store.get_online(refs, keys, as_dict=True, now_us=now)
    for i, k in enumerate(keys):
        r = latest.get(k)
        t = 0 if r is None else r.t.value // 1000
        expired = r is not None and now - t > 86_400 * US
        assert event_time[i].tolist() == [t] * 3
        assert got.stale[i].tolist() == [expired] * 3
        for j, name in enumerate(["rating", "trips", "city"]):
            want = None if r is None or expired else getattr(r, name)
            want = None if want is None or (isinstance(want, float) and np.isnan(want)) else want
            assert present[i, j] == (want is not None), (k, name)
            have = None if not present[i, j] else vocab[int(values[i, j])] if name == "city" else values[i, j]
            assert have == want, (k, name)
            assert as_dict[name][i] == want, (k, name)
    # the same answer offline: a training set at "now" with the group's TTL
    entity = pa.table({"driver_id": keys, "event_timestamp": _ts([now] * len(keys))})
    offline = store.get_training_set(entity, refs)
    for name in ["rating", "trips", "city"]:
        assert _norm(offline.column(name).to_pylist()) == as_dict[name]


def test_ties_across_ingests_offline_and_online(store, backend):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    store.ingest("g", pa.table({"k": ["a", "a", "b"], "event_timestamp": _ts([BASE_US] * 3), "v": [1, 2, 3]}))
    store.materialize("g")
    store.ingest("g", pa.table({"k": ["b", "b", "a"], "event_timestamp": _ts([BASE_US] * 3), "v": [4, 5, 6]}))
    store.ingest("g", pa.table({"k": ["a"], "event_timestamp": _ts([BASE_US - US]), "v": [7]}))  # late, older
    store.materialize("g")
    entity = pa.table({"k": ["a", "b"], "event_timestamp": _ts([BASE_US, BASE_US])})
    assert store.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [6, 5]
    assert store.get_online(["g:v"], ["a", "b"], as_dict=True)["v"] == [6, 5]


def test_versions_do_not_mix_offline_or_online(store, backend):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64"), Feature("c", "string")]))
    store.ingest(
        "g", pa.table({"k": [1, 2], "event_timestamp": _ts([BASE_US, BASE_US]), "v": [1.0, 2.0], "c": ["x", "y"]})
    )
    store.materialize("g")
    # a new schema: a new version with its own rows and vocabulary
    store.register(
        FeatureGroup(
            "g", entities=["k"], features=[Feature("v", "float64"), Feature("c", "string"), Feature("w", "int64")]
        )
    )
    store.ingest("g", pa.table({"k": [1], "event_timestamp": _ts([BASE_US + US]), "v": [10.0], "c": ["z"], "w": [5]}))
    store.materialize("g")
    entity = pa.table({"k": [1, 2], "event_timestamp": _ts([BASE_US + 2 * US] * 2)})
    out = store.get_training_set(entity, ["g:v", "g@v1:v", "g:c", "g@v1:c"], full_feature_names=True).to_pydict()
    assert out["g__v"] == [10.0, None] and out["g_v1__v"] == [1.0, 2.0]
    assert out["g__c"] == ["z", None] and out["g_v1__c"] == ["x", "y"]
    values, present, _ = store.get_online(["g:v", "g@v1:v", "g:c", "g@v1:c"], [1, 2])
    assert present.tolist() == [[True, True, True, True], [False, True, False, True]]
    assert values[0, :2].tolist() == [10.0, 1.0]
    # as_dict names the version where two versions of one group share a feature name (no column lost)
    d = store.get_online(["g:v", "g@v1:v", "g:c", "g@v1:c"], [1, 2], as_dict=True)
    assert d == {
        "k": [1, 2],
        "g_v2__v": [10.0, None],
        "g_v1__v": [1.0, 2.0],
        "g_v2__c": ["z", None],
        "g_v1__c": ["x", "y"],
    }


def test_materialize_int64_beyond_float_precision(store, backend):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("n", "int64")]))
    big = 2**53 + 1
    store.ingest("g", pa.table({"k": [1, 2], "event_timestamp": _ts([BASE_US] * 2), "n": [big, 7]}))
    entity = pa.table({"k": [1], "event_timestamp": _ts([BASE_US])})
    assert store.get_training_set(entity, ["g:n"]).column("n").to_pylist() == [big]  # offline: exact
    assert store.materialize("g")["written"] == 2
    values, present, _ = store.get_online(["g:n"], [1, 2])
    assert present[:, 0].tolist() == [True, True]
    assert values[:, 0].tolist() == [float(big), 7.0]  # online: the nearest float ("exact below 2**53")


def test_nan_is_a_value_null_is_missing(store, backend):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64"), Feature("n", "int64")]))
    # Arrow: NaN is a value, null is missing
    store.ingest(
        "g",
        pa.table(
            {
                "k": [1, 2],
                "event_timestamp": _ts([BASE_US] * 2),
                "v": pa.array([float("nan"), None], pa.float64()),
                "n": pa.array([None, 3], pa.int64()),
            }
        ),
    )
    # pandas: NaN and None are nulls (Arrow's from_pandas), int columns with None arrive as floats
    store.ingest(
        "g",
        pd.DataFrame(
            {
                "k": [3, 4],
                "event_timestamp": pd.to_datetime([BASE_US] * 2, unit="us", utc=True),
                "v": [np.nan, 1.0],
                "n": [None, 4],
            }
        ),
    )
    store.materialize("g")
    entity = pa.table({"k": [1, 2, 3, 4], "event_timestamp": _ts([BASE_US] * 4)})
    out = store.get_training_set(entity, ["g:v", "g:n"]).to_pydict()
    assert np.isnan(out["v"][0]) and out["v"][1:] == [None, None, 1.0]
    assert out["n"] == [None, 3, None, 4]
    values, present, _ = store.get_online(["g:v", "g:n"], [1, 2, 3, 4])
    assert present.tolist() == [[True, False], [False, True], [False, False], [True, True]]
    assert np.isnan(values[0, 0]) and values[3, 0] == 1.0
    assert values[[1, 3], 1].tolist() == [3.0, 4.0]


def test_ttl_updated_in_place_applies_online_as_offline(store, backend):
    group = FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")], ttl_s=10)
    store.register(group)
    store.ingest("g", pa.table({"k": [1], "event_timestamp": _ts([BASE_US]), "v": [1]}))
    store.materialize("g")
    now = BASE_US + 60 * US
    entity = pa.table({"k": [1], "event_timestamp": _ts([now])})
    got = store.get_online(["g:v"], [1], now_us=now)
    assert got.present[0, 0] == False and got.stale[0, 0] == True  # noqa: E712
    assert store.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [None]
    # same schema, longer TTL: the same version, updated in place; both stores follow it
    assert store.register(dataclasses.replace(group, ttl_s=3600)) == 1
    assert store.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [1]
    got = store.get_online(["g:v"], [1], now_us=now)
    assert got.present[0, 0] == True and got.stale[0, 0] == False  # noqa: E712
