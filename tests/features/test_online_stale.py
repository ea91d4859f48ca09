"""A TTL-expired online value is flagged as stale, not just blank (both online backends)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from feature_helpers import BASE_US, ts

from fastml.features import Feature, FeatureGroup


def test_expired_values_carry_a_stale_flag_beside_present(store):
    store.register(
        FeatureGroup("g", entities=["k"], features=[Feature("v", "float64"), Feature("w", "float64")], ttl_s=60)
    )
    store.register(FeatureGroup("h", entities=["k"], features=[Feature("u", "float64")], ttl_s=0))
    store.ingest("g", pa.table({"k": ["a", "b"], "event_timestamp": ts([0, 100]), "v": [1.0, 2.0], "w": [None, 5.0]}))
    store.ingest("h", pa.table({"k": ["a"], "event_timestamp": ts([0]), "u": [7.0]}))
    store.materialize("g")
    store.materialize("h")
    now = BASE_US + 130_000_000  # a is 130 s old (expired), b 30 s
    got = store.get_online(["g:v", "g:w", "h:u"], ["a", "b", "zz"], now_us=now)
    values, present, event_time = got  # the three-array shape callers unpack keeps working
    assert present.tolist() == [[False, False, True], [True, True, False], [False, False, False]]
    # stale: a stored row existed but is older than its group's TTL (h has none, zz has no row at all)
    assert got.stale.tolist() == [[True, True, False], [False, False, False], [False, False, False]]
    assert got.stale.dtype == np.bool_
    assert np.isnan(values[0, :2]).all() and values[0, 2] == 7.0 and event_time[0, 0] == BASE_US
    assert (got.values is values) and (got.present is present) and (got.event_time_us is event_time)
    assert len(got) == 3 and got[0] is values


def test_stale_uses_the_clock_when_no_now_is_given(store):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64")], ttl_s=60))
    store.ingest("g", pa.table({"k": ["old"], "event_timestamp": ts([0]), "v": [1.0]}))  # in 2024
    store.materialize("g")
    got = store.get_online(["g:v"], ["old", "none"])
    assert got.present.tolist() == [[False], [False]] and got.stale.tolist() == [[True], [False]]
