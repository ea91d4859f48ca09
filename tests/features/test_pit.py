"""Point-in-time training sets against a brute-force reference."""

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import BASE_US, ts

from fastml.errors import InvalidInput, NotFound
from fastml.features import Feature, FeatureGroup, FeatureStore


def brute_force(entity_keys, entity_s, feature_rows, ttl_s):
    """feature_rows: list of (key, seconds, ingest_no, row_no, value); the spec, one row at a time."""
    out = []
    for k, t in zip(entity_keys, entity_s):
        best = None
        for fk, ft, ing, row, val in feature_rows:
            if fk != k or ft > t or (ttl_s and t - ft > ttl_s):
                continue
            if best is None or (ft, ing, row) > best[0]:
                best = ((ft, ing, row), val)
        out.append(None if best is None else best[1])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ttl_s", [0, 25])
def test_pit_matches_brute_force_with_ties_ttl_and_late_rows(fastml_home, seed, ttl_s):
    rng = np.random.default_rng(seed)
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64")], ttl_s=ttl_s))
    rows = []
    for ing in range(4):
        n = 150
        keys = rng.integers(0, 30, n)
        # Few distinct times -> many ties within and across ingests; later ingests reach back in time
        # (late-arriving rows).
        secs = rng.integers(0, 100 - 20 * ing, n) if ing else rng.integers(40, 100, n)
        vals = rng.normal(size=n).round(3)
        null = rng.random(n) < 0.1
        fs.ingest("g", pa.table({"k": pa.array(keys), "event_timestamp": ts(secs), "v": pa.array(vals, mask=null)}))
        rows += [
            (int(k), int(s), ing, r, None if null[r] else float(vals[r])) for r, (k, s) in enumerate(zip(keys, secs))
        ]
    n_e = 400
    e_keys = rng.integers(0, 34, n_e)  # 30..33 never ingested
    e_secs = rng.integers(-5, 110, n_e)
    entity = pa.table({"k": pa.array(e_keys), "event_timestamp": ts(e_secs), "label": pa.array(np.arange(n_e))})
    result = fs.get_training_set(entity, ["g:v"])
    assert result.num_rows == n_e
    assert result.column("label").to_pylist() == list(range(n_e))  # input order kept
    assert result.column("k").to_pylist() == e_keys.tolist()
    expected = brute_force(e_keys.tolist(), e_secs.tolist(), rows, ttl_s)
    assert result.column("v").to_pylist() == expected
    assert any(v is None for v in expected) and any(v is not None for v in expected)


def test_ties_latest_ingest_wins_then_latest_row(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    fs.ingest("g", pa.table({"k": ["a", "a", "b"], "event_timestamp": ts([10, 10, 10]), "v": [1, 2, 3]}))
    fs.ingest("g", pa.table({"k": ["b"], "event_timestamp": ts([10]), "v": [4]}))
    entity = pa.table({"k": ["a", "b", "b"], "event_timestamp": ts([10, 10, 9])})
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [2, 4, None]
    # The cached index follows new ingests.
    fs.ingest("g", pa.table({"k": ["a", "b"], "event_timestamp": ts([10, 9]), "v": [5, 6]}))
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [5, 4, 6]


def test_never_a_future_value_and_ttl_boundary(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")], ttl_s=10))
    fs.ingest("g", pa.table({"k": [1, 1], "event_timestamp": ts([100, 200]), "v": [1, 2]}))
    entity = pa.table({"k": [1, 1, 1, 1, 1], "event_timestamp": ts([99, 100, 110, 111, 205])})
    # 99: only a future row; 110: exactly at TTL (kept); 111: expired; 205: the second row.
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [None, 1, 1, None, 2]


def test_several_groups_composite_keys_and_versions(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("user", entities=["user_id"], features=[Feature("age", "int64")]))
    fs.register(
        FeatureGroup(
            "pair", entities=["user_id", "item"], features=[Feature("clicks", "int64"), Feature("cat", "string")]
        )
    )
    fs.ingest("user", pa.table({"user_id": [1, 2], "event_timestamp": ts([0, 0]), "age": [30, 40]}))
    fs.ingest(
        "pair",
        pa.table(
            {
                "user_id": [1, 1, 2],
                "item": ["x", "y", "x"],
                "event_timestamp": ts([5, 5, 5]),
                "clicks": [3, 4, 5],
                "cat": ["p", "q", "r"],
            }
        ),
    )
    fs.register(FeatureGroup("user", entities=["user_id"], features=[Feature("age", "float64")]))  # v2, no data
    entity = pa.table({"user_id": [2, 1, 1, 3], "item": ["x", "y", "z", "x"], "event_timestamp": ts([6, 6, 6, 6])})
    out = fs.get_training_set(entity, ["pair:clicks", "user@v1:age", "pair:cat", "user:age"], full_feature_names=True)
    assert out.column_names == [
        "user_id",
        "item",
        "event_timestamp",
        "pair__clicks",
        "user_v1__age",
        "pair__cat",
        "user__age",
    ]
    assert out.column("user_v1__age").to_pylist() == [40, 30, 30, None]
    assert out.column("user__age").to_pylist() == [None] * 4  # v2 has no rows
    assert out.schema.field("user__age").type == pa.float64()
    assert out.column("pair__clicks").to_pylist() == [5, 4, None, None]
    assert out.column("pair__cat").to_pylist() == ["r", "q", None, None]
    assert out.num_rows == 4


def test_training_set_errors(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "int64")]))
    entity = pa.table({"k": [1], "event_timestamp": ts([0])})
    with pytest.raises(NotFound, match="has no feature 'nope'"):
        fs.get_training_set(entity, ["g:nope"])
    with pytest.raises(NotFound, match="'h' is not registered"):
        fs.get_training_set(entity, ["h:v"])
    with pytest.raises(InvalidInput, match="feature reference"):
        fs.get_training_set(entity, ["g.v"])
    with pytest.raises(InvalidInput, match="missing entity column 'k'"):
        fs.get_training_set(pa.table({"x": [1], "event_timestamp": ts([0])}), ["g:v"])
    with pytest.raises(InvalidInput, match="missing timestamp column"):
        fs.get_training_set(pa.table({"k": [1]}), ["g:v"])
    # No data yet: still one (null) row per entity row.
    assert fs.get_training_set(entity, ["g:v"]).column("v").to_pylist() == [None]


def test_pandas_entity_rows_round_trip(fastml_home):
    import pandas as pd

    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float32")]))
    fs.ingest(
        "g", pd.DataFrame({"k": ["a"], "event_timestamp": pd.to_datetime([BASE_US], unit="us", utc=True), "v": [1.5]})
    )
    er = pd.DataFrame({"k": ["a", "b"], "event_timestamp": pd.to_datetime([BASE_US + 1, BASE_US], unit="us", utc=True)})
    df = fs.get_training_set(er, ["g:v"]).to_pandas()
    assert df["v"].iloc[0] == 1.5 and np.isnan(df["v"].iloc[1])


def test_sort_with_ties_orders_by_seq_then_row_even_when_rows_arrive_shuffled():
    from fastml.features.pit import sort_with_ties

    rng = np.random.default_rng(5)
    packed = rng.integers(0, 20, 500)
    seq = rng.integers(0, 5, 500)
    row = rng.permutation(500)
    order = sort_with_ties(packed, seq, row)
    assert (order == np.lexsort((row, seq, packed))).all()
    in_order = np.lexsort((row, seq))  # rows already in (seq, row) order: the fast path
    order2 = sort_with_ties(packed[in_order], seq[in_order], row[in_order])
    assert (order2 == np.lexsort((row[in_order], seq[in_order], packed[in_order]))).all()
