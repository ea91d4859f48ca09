"""The native serving join (csrc/feature_join) against the online store's own lookups, on random data:
two groups with different entity keys (one integer-keyed, one string-keyed), TTL, null values, unknown
entities, request-time columns between stored ones, and each policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.online import compile_join

COLUMNS = ["driver:a", "eta", "zone:z", "driver:b", "zone:w", "surge"]
POLICIES = {"driver:a": ("nan", 0.0), "driver:b": ("default", -7.5), "zone:z": ("default", 3.0), "zone:w": ("error", 0)}


@pytest.fixture
def store(fastml_home):
    rng = np.random.default_rng(0)
    now = pd.Timestamp.now(tz="UTC")
    fs = FeatureStore(fastml_home, sync=False)
    fs.register(FeatureGroup("driver", ["driver_id"], [Feature("a"), Feature("b", "int64")], ttl_s=3600))
    fs.register(FeatureGroup("zone", ["zone_id"], [Feature("w"), Feature("z", "float32")]))
    n = 300
    age_h = rng.choice([0.1, 0.5, 3.0], n)  # a third older than the driver TTL (1 h)
    a = rng.normal(size=n)
    a[rng.random(n) < 0.2] = np.nan
    fs.ingest(
        "driver",
        pd.DataFrame(
            {
                "driver_id": np.arange(n),
                "event_timestamp": [now - pd.Timedelta(hours=h) for h in age_h],
                "a": pd.array(np.where(np.isnan(a), None, a), dtype="Float64"),
                "b": rng.integers(0, 100, n),
            }
        ),
    )
    zones = [f"z{i}" for i in range(50)]
    fs.ingest(
        "zone",
        pd.DataFrame(
            {"zone_id": zones, "event_timestamp": [now] * 50, "w": rng.normal(size=50), "z": rng.normal(size=50)}
        ),
    )
    fs.materialize("driver")
    fs.materialize("zone")
    yield fs
    fs.close()


def reference(fs, drivers, zones, eta, surge, now_us):
    """The same input built from OnlineStore.get (values, present, stale) and the policies, in numpy."""
    d = fs.online.get(["driver:a", "driver:b"], list(drivers), as_float32=True, now_us=now_us)
    z = fs.online.get(["zone:z", "zone:w"], list(zones), as_float32=True, now_us=now_us)
    cols = {"driver:a": (d, 0), "driver:b": (d, 1), "zone:z": (z, 0), "zone:w": (z, 1)}
    out = np.empty((len(drivers), len(COLUMNS)), np.float32)
    missing, stale = np.zeros(len(COLUMNS), np.uint64), np.zeros(len(COLUMNS), np.uint64)
    for j, name in enumerate(COLUMNS):
        if name == "eta":
            out[:, j] = eta
            continue
        if name == "surge":
            out[:, j] = surge
            continue
        res, k = cols[name]
        v, present, st = res.values[:, k].copy(), res.present[:, k], res.stale[:, k]
        policy, default = POLICIES[name]
        if policy == "default":
            v[~present] = default
        out[:, j] = v
        stale[j] = st.sum()
        missing[j] = (~present & ~st).sum()
    return out, missing, stale


def test_native_join_equals_the_online_lookups(store):
    rng = np.random.default_rng(1)
    join = compile_join(store.online, COLUMNS, policies=POLICIES)
    assert join.key_inputs == ["driver_id", "zone_id"] and join.key_dtypes == ["int64", "string"]
    assert join.request_inputs == ["eta", "surge"]
    now_us = pd.Timestamp.now(tz="UTC").value // 1000
    for rows in (1, 7, 500):
        drivers = rng.integers(-5, 320, rows)  # some unknown
        zones = np.array([f"z{i}" for i in rng.integers(0, 55, rows)], dtype=object)  # some unknown
        eta = rng.normal(size=rows).astype(np.float32)
        surge = rng.normal(size=(rows, 1)).astype(np.float32)  # [rows, 1] is taken as a column too
        out = np.empty((rows, len(COLUMNS)), np.float32)
        missing, stale, err_row, err_col, err_stale = join.join([drivers, zones], [eta, surge], out, now_us)
        want, want_missing, want_stale = reference(store, drivers, zones, eta, surge[:, 0], now_us)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(missing, want_missing)
        np.testing.assert_array_equal(stale, want_stale)
        unknown_zone = np.flatnonzero([int(z[1:]) >= 50 for z in zones])
        assert err_row == (unknown_zone[0] if len(unknown_zone) else -1)
        if err_row >= 0:
            assert COLUMNS[err_col] == "zone:w" and not err_stale
        # run(): the same from a request's dict, into a fresh array, counted
        got, err_row2, _, _ = join.run({"driver_id": drivers, "zone_id": zones, "eta": eta, "surge": surge}, now_us)
        np.testing.assert_array_equal(got, want)
        assert err_row2 == err_row
    total_rows, total_missing, _ = join.counts()
    assert total_rows == 1 + 7 + 500
    assert total_missing[COLUMNS.index("eta")] == 0


def test_keys_of_every_string_layout_and_int_width(store):
    join = compile_join(store.online, ["zone:w", "driver:b"])
    now_us = pd.Timestamp.now(tz="UTC").value // 1000
    base = store.online.get(["zone:w", "driver:b"], [{"zone_id": "z3", "driver_id": 5}], as_float32=True)
    for zones in (np.array(["z3"]), np.array([b"z3"]), np.array(["z3"], object), np.array([b"z3"], object)):
        for drivers in (np.array([5], np.int32), np.array([5], np.uint16), np.array([[5]], np.int64)):
            out, *_ = join.run({"zone_id": zones, "driver_id": drivers}, now_us)
            np.testing.assert_array_equal(out, base.values)
