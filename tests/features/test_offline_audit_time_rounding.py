"""Offline event times at the edges of the store's 1 us resolution and of int64 microseconds.

Sub-microsecond digits must never let a training set see a feature row that happened after the entity
row's time (feature times round up, entity times down), and a time whose microseconds overflow an int64
must be refused rather than wrapped around to another time. Reference: ``pandas.merge_asof`` over the
exact nanosecond times.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.timestamps import column_us, to_us

T_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in nanoseconds


@pytest.fixture
def fs(fastml_home) -> FeatureStore:
    s = FeatureStore(fastml_home, online_backend="reference")
    s.register(FeatureGroup("g", entities=["id"], features=[Feature("v", "int64")]))
    yield s
    s.close()


def _ns(values) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), pa.timestamp("ns", tz="UTC"))


def test_feature_row_later_within_the_same_microsecond_is_not_visible(fs):
    fs.ingest("g", pa.table({"id": [1, 1], "event_timestamp": _ns([T_NS - 10_000, T_NS + 900]), "v": [1, 2]}))
    entity = pa.table({"id": [1, 1, 1], "event_timestamp": _ns([T_NS + 100, T_NS + 900, T_NS + 1_000])})
    # v=2 happened at T+900ns: after the first entity row, at or before the other two. The second row
    # floors to T while v=2 rounds up to T+1us, so it sees v=1: rounding costs a value, never leaks one.
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [1, 1, 2]


def test_pre_1970_entity_time_rounds_down_not_toward_zero(fs):
    fs.ingest("g", pa.table({"id": [1, 1], "event_timestamp": _ns([-10_000, -1_000]), "v": [1, 2]}))
    entity = pa.table({"id": [1], "event_timestamp": _ns([-1_500])})  # before v=2 (-1000 ns)
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [1]
    assert column_us(pa.table({"t": _ns([-1_500, -1_000, -1])}), "t").tolist() == [-2, -1, -1]
    assert column_us(pa.table({"t": _ns([-1_500, -1_000, -1])}), "t", round_up=True).tolist() == [-1, -1, 0]


def test_nanosecond_times_never_leak_against_merge_asof(fs):
    rng = np.random.default_rng(7)
    n_f, n_e, keys = 3_000, 2_000, 20
    # Times packed into 3 us so that most feature and entity rows share a microsecond with another.
    f = pd.DataFrame({"id": rng.integers(0, keys, n_f), "t": T_NS + rng.integers(0, 3_000, n_f), "v": np.arange(n_f)})
    f = f.drop_duplicates(["id", "t"])  # one row per (key, exact time): no tie rule involved here
    e = pd.DataFrame({"id": rng.integers(0, keys, n_e), "t": T_NS + rng.integers(0, 3_000, n_e)})
    fs.ingest("g", pa.table({"id": f["id"].to_numpy(), "event_timestamp": _ns(f["t"]), "v": f["v"].to_numpy()}))
    got = fs.get_training_set(pa.table({"id": e["id"].to_numpy(), "event_timestamp": _ns(e["t"])}), ["g:v"]).column("v")
    got = got.to_pylist()
    true_time = dict(zip(f["v"], f["t"]))
    leaks = [i for i, v in enumerate(got) if v is not None and true_time[v] > e["t"].iloc[i]]
    assert leaks == []
    # The same join on the stored resolution: feature times rounded up, entity times down; rows that now
    # share a microsecond follow the tie rule (within one ingest the later input row wins).
    f_us = f.assign(t=-(-f["t"] // 1000), _row=np.arange(len(f)))
    f_us = f_us.sort_values(["t", "_row"]).drop_duplicates(["id", "t"], keep="last")
    e_us = e.assign(t=e["t"] // 1000, _i=np.arange(n_e))
    ref = pd.merge_asof(e_us.sort_values("t"), f_us.sort_values("t"), on="t", by="id", direction="backward")
    expected = [None if np.isnan(x) else int(x) for x in ref.sort_values("_i")["v"]]
    assert got == expected


def test_text_times_past_the_microsecond_round_up_at_ingest(fs):
    # Mixed naive / offset text is parsed one value at a time: that path rounds the same way.
    times = ["2023-11-14T22:13:19", "2023-11-14T22:13:20.0000009+00:00", "2023-11-14T22:13:20.0000020"]
    fs.ingest("g", pa.table({"id": [1, 1, 1], "event_timestamp": times, "v": [1, 2, 3]}))
    base = T_NS // 1000
    assert fs.read_offline("g").column("event_timestamp").cast(pa.int64()).to_pylist() == [
        base - 1_000_000,
        base + 1,
        base + 2,
    ]
    entity = pa.table(
        {"id": [1, 1], "event_timestamp": ["2023-11-14T22:13:20.0000005Z", "2023-11-14T22:13:20.000001Z"]}
    )
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [1, 2]
    for text, floor in [
        ("2023-11-14T22:13:20.1234569Z", base + 123_456),
        ("2023-11-14T22:13:20.1234560Z", base + 123_456),
    ]:
        exact = text.endswith("0Z")
        assert column_us(pa.table({"t": [text, "2023-11-14T22:13:20"]}), "t").tolist()[0] == floor
        up = column_us(pa.table({"t": [text, "2023-11-14T22:13:20"]}), "t", round_up=True).tolist()[0]
        assert up == floor + (0 if exact else 1)


@pytest.mark.parametrize(("unit", "value"), [("s", T_NS // 1000), ("ms", T_NS // 10), ("s", 2**62)])
def test_coarse_unit_overflow_is_refused_not_wrapped(fs, unit, value):
    # Microseconds typed as seconds: value * 1e6 overflows int64. Arrow's unsafe cast wrapped it to some
    # other time (2**62 s even to exactly the epoch), and it was ingested or joined at that time.
    table = pa.table({"id": [1], "event_timestamp": pa.array([value], pa.timestamp(unit, tz="UTC")), "v": [1]})
    with pytest.raises(
        InvalidInput, match=rf"column 'event_timestamp': row 0 .* in unit '{unit}', which is out of range"
    ):
        fs.ingest("g", table)
    assert fs.read_offline("g").num_rows == 0
    fs.ingest("g", pa.table({"id": [1], "event_timestamp": _ns([T_NS]), "v": [5]}))
    with pytest.raises(InvalidInput, match="entity_rows: column 'event_timestamp': row 0"):
        fs.get_training_set(table.select(["id", "event_timestamp"]), ["g:v"])


def test_coarse_units_in_range_scale_exactly():
    us = [-86_400_000_000, 1_000_000, 1_700_000_000_000_000]
    for unit, div in [("s", 1_000_000), ("ms", 1_000), ("us", 1)]:
        col = pa.array([u // div for u in us], pa.timestamp(unit))
        assert column_us(pa.table({"t": col}), "t").tolist() == us
    days = pa.array([-1, 19_000], pa.date32())
    assert column_us(pa.table({"t": days}), "t").tolist() == [-86_400_000_000, 19_000 * 86_400_000_000]
    with pytest.raises(InvalidInput, match="out of range"):
        column_us(pa.table({"t": pa.array([2**31 - 1], pa.date32())}), "t")


def test_to_us_numpy_datetime64_floor_and_overflow():
    assert to_us(np.datetime64(-1_500, "ns")) == -2
    assert to_us(np.datetime64(1_500, "ns")) == 1
    assert to_us(np.datetime64(3, "W")) == 3 * 604_800_000_000
    assert to_us(np.datetime64("2026-01", "M")) == to_us("2026-01-01T00:00:00Z")
    assert to_us(np.datetime64("2026-01-20T18:58:00.123456", "us")) == to_us("2026-01-20T18:58:00.123456Z")
    with pytest.raises(InvalidInput, match="out of range"):
        to_us(np.datetime64(10**15, "s"))  # numpy's own cast wraps this around to year 124,787
