"""Group stats computed by two ingesting processes at once: the one that read before the other's commit may write
last. Stats now carry the number of committed ingests they were computed from, and fewer never replace more (the
old code kept whichever write came last: 100,000 rows reported for 120,000 committed)."""

from __future__ import annotations

import sqlite3

import pandas as pd

from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.metadata import MetadataStore


def _rows(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(seed * 1000, seed * 1000 + n),
            "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC"),
            "x": [float(i) for i in range(n)],
        }
    )


def test_stats_from_fewer_ingests_never_replace_stats_from_more(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("g", entities=["id"], features=[Feature("x", "float64")]))
    fs.ingest("g", _rows(10, 1))
    fs.ingest("g", _rows(5, 2))
    assert fs.stats("g")["rows"] == 15
    # A process that read the version after the first ingest only writes its stats late: refused.
    assert not fs.metadata.put_stats("g", 1, {"rows": 10}, 1)
    assert fs.stats("g")["rows"] == 15
    # Stats from as many ingests (or more) replace them.
    assert fs.metadata.put_stats("g", 1, {"rows": 15, "again": True}, 2)
    assert fs.stats("g")["again"] is True
    fs.close()


def test_a_store_made_before_the_ingest_count_opens_and_updates(tmp_path):
    path = tmp_path / "metadata.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE stats (name TEXT NOT NULL, version INTEGER NOT NULL, stats TEXT NOT NULL, "
        "computed_at REAL NOT NULL, PRIMARY KEY (name, version))"
    )
    db.execute("INSERT INTO stats VALUES ('g', 1, ?, 0)", ('{"rows": 3}',))
    db.commit()
    db.close()
    meta = MetadataStore(path)
    assert meta.get_stats("g", 1) == {"rows": 3}
    assert meta.put_stats("g", 1, {"rows": 4}, 1)
    assert meta.get_stats("g", 1) == {"rows": 4}
    meta.close()
