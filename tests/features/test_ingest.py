import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feature_helpers import driver_table

from fastml.errors import InvalidInput
from fastml.features import FeatureStore


def _state(fs):
    files = sorted(p.relative_to(fs.offline.root) for p in fs.offline.root.rglob("*.parquet"))
    return files, fs.metadata.ingests("driver", 1)


def test_ingest_writes_parquet_partitioned_by_event_date(fastml_home, driver_group):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    res = fs.ingest("driver", driver_table([1, 2, 3], [0, 86_400, 86_401], [5, 6, 7]))
    assert res["rows"] == 3 and res["version"] == 1
    assert sorted(res["files"]) == ["event_date=2024-03-01/part-1.parquet", "event_date=2024-03-02/part-1.parquet"]
    root = fastml_home / "features" / "offline" / "driver" / "v1"
    day2 = pq.read_table(root / "event_date=2024-03-02" / "part-1.parquet")
    assert day2.column("trips").to_pylist() == [6, 7]
    assert day2.column("driver_id").to_pylist() == ["2", "3"]  # keys stored as their text
    assert fs.read_offline("driver").num_rows == 3


def test_ingest_accepts_pandas(fastml_home, driver_group):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    df = pd.DataFrame(
        {
            "driver_id": [1, 2],
            "event_timestamp": pd.to_datetime(["2024-03-01 10:00", "2024-03-01 11:00"]),  # naive = UTC
            "trips": [3, None],
            "rating": [4.5, 3.5],
            "city": ["a", None],
            "active": [True, False],
            "score": [0.1, 0.2],
            "ignored_extra": ["x", "y"],
        }
    )
    fs.ingest("driver", df)
    t = fs.read_offline("driver").sort_by("driver_id")
    assert t.column("trips").to_pylist() == [3, None]
    assert t.column("city").to_pylist() == ["a", None]
    assert "ignored_extra" not in t.column_names


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop(["rating"]), r"missing column\(s\) \['rating'\]"),
        (lambda t: t.set_column(2, "trips", pa.array(["a", "b", "c"])), "column 'trips': expected int64, got string"),
        (lambda t: t.set_column(2, "trips", pa.array([1.5, 2.0, 3.0])), "column 'trips': values do not fit int64"),
        (lambda t: t.set_column(5, "active", pa.array([1, 0, 1])), "column 'active': expected bool, got int64"),
        (lambda t: t.set_column(4, "city", pa.array([1, 2, 3])), "column 'city': expected string, got int64"),
        (lambda t: t.set_column(0, "driver_id", pa.array([1, None, 3])), "column 'driver_id': 1 null entity keys"),
        (lambda t: t.set_column(0, "driver_id", pa.array([1.0, 2.0, 3.0])), "column 'driver_id': entity keys must be"),
        (
            lambda t: t.set_column(1, "event_timestamp", pa.array([1, 2, 3])),
            "column 'event_timestamp': expected a timestamp",
        ),
        (
            lambda t: t.set_column(1, "event_timestamp", pa.array([None, None, None], pa.timestamp("us"))),
            "null timestamps",
        ),
    ],
)
def test_bad_ingest_names_the_column_and_writes_nothing(fastml_home, driver_group, mutate, message):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    fs.ingest("driver", driver_table([1], [0], [1]))
    before = _state(fs)
    with pytest.raises(InvalidInput, match=message):
        fs.ingest("driver", mutate(driver_table([1, 2, 3], [0, 1, 2], [1, 2, 3])))
    assert _state(fs) == before
    assert fs.stats("driver")["rows"] == 1


def test_failure_while_writing_leaves_no_visible_rows(fastml_home, driver_group, monkeypatch):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    fs.ingest("driver", driver_table([1], [0], [1]))
    calls = {"n": 0}
    real = pq.write_table

    def failing_write(*a, **kw):  # fail on the second partition file of a multi-day ingest
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **kw)

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        fs.ingest("driver", driver_table([2, 3], [0, 86_400 * 3], [2, 3]))
    monkeypatch.undo()
    assert fs.read_offline("driver").column("driver_id").to_pylist() == ["1"]
    assert [i["seq"] for i in fs.metadata.ingests("driver", 1)] == [1]
    assert sorted(p.name for p in fs.offline.root.rglob("*.parquet")) == ["part-1.parquet"]
    # The next ingest works and does not reuse the failed one's number.
    assert fs.ingest("driver", driver_table([2], [0], [2]))["seq"] == 3


def test_ingest_unknown_group_and_empty_table(fastml_home, driver_group):
    from fastml.errors import NotFound

    fs = FeatureStore(fastml_home)
    with pytest.raises(NotFound, match="'driver' is not registered"):
        fs.ingest("driver", driver_table([1], [0], [1]))
    fs.register(driver_group)
    with pytest.raises(InvalidInput, match="no rows"):
        fs.ingest("driver", driver_table([1], [0], [1]).slice(0, 0))
    with pytest.raises(InvalidInput, match="pyarrow Table or a pandas DataFrame"):
        fs.ingest("driver", [1, 2, 3])


def test_files_of_an_ingest_killed_before_commit_are_invisible_then_removed(fastml_home, driver_group):
    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    g, version = fs.get_group("driver")
    # What a writer killed between moving its files and committing leaves behind.
    seq = fs.metadata.begin_ingest("driver", version, "killed")
    from fastml.features.offline import validate

    files, _, _ = fs.offline.write(g, version, validate(g, driver_table([7], [0], [70])), seq)
    assert (fs.offline.version_dir("driver", 1) / files[0]).exists()
    fs.ingest("driver", driver_table([1], [0], [1]))
    assert fs.read_offline("driver").column("driver_id").to_pylist() == ["1"]  # never visible
    assert (fs.offline.version_dir("driver", 1) / files[0]).exists()  # recent: maybe still running
    fs.metadata._tx(lambda cur: cur.execute("UPDATE ingests SET created_at = created_at - 7200 WHERE seq=?", (seq,)))
    fs.ingest("driver", driver_table([2], [0], [2]))
    assert not (fs.offline.version_dir("driver", 1) / files[0]).exists()
    assert sorted(fs.read_offline("driver").column("driver_id").to_pylist()) == ["1", "2"]


def test_a_committed_ingest_is_reported_as_done_when_its_stats_fail(fastml_home, driver_group, monkeypatch):
    # The stats are recomputed after the rows are committed; a failure there used to raise out of ingest(),
    # so a caller saw a failed ingest whose rows were saved (and a retry would have stored them twice).
    import fastml.features.stats as stats

    fs = FeatureStore(fastml_home)
    fs.register(driver_group)
    fs.ingest("driver", driver_table([1], [0], [1]))

    def broken(*a, **kw):
        raise ValueError("Too many bins for data range")

    monkeypatch.setattr(stats, "group_stats", broken)
    result = fs.ingest("driver", driver_table([2, 3], [0, 1], [2, 3]))
    assert result["rows"] == 2 and result["stats_error"] == "ValueError: Too many bins for data range"
    monkeypatch.undo()
    assert fs.stats("driver")["rows"] == 1  # the previous stats stand until the next ingest recomputes them
    fs.ingest("driver", driver_table([4], [0], [4]))
    assert fs.stats("driver")["rows"] == 4  # 1 + the 2 committed despite their stats + 1
