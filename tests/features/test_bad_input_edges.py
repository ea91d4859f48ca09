"""Edge cases of the feature store: concurrent ingests into one group version, TTLs that readers cannot
use, and ``fastml features register --file`` with a file that is missing or not text."""

from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from fastml.cli import main
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore


def _group(**kw) -> FeatureGroup:
    return FeatureGroup("g", entities=["id"], features=[Feature("x", "float64")], **kw)


def _ingest_many(home: str, seed: int, times: int, out) -> None:
    fs = FeatureStore(home)
    rng = np.random.default_rng(seed)
    n = 20_000
    # Rows over many days: many partition files, so each ingest stages for a while beside the other's.
    df = pd.DataFrame(
        {
            "id": rng.integers(0, 500, n),
            "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 200, n), unit="D"),
            "x": rng.random(n),
        }
    )
    errors = []
    for _ in range(times):
        try:
            fs.ingest("g", df)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")
    out.put(errors)


def test_concurrent_ingests_into_one_version_all_commit(fastml_home):
    FeatureStore(fastml_home).register(_group())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ingest_many, args=(str(fastml_home), seed, 3, out)) for seed in (1, 2)]
    for p in procs:
        p.start()
    errors = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert errors == [[], []]  # one ingest no longer deletes the other's staging directory
    fs = FeatureStore(fastml_home)
    assert fs.read_offline("g").num_rows == 6 * 20_000
    assert fs.stats("g")["rows"] == 6 * 20_000
    assert not any((fastml_home / "features" / "offline" / "g" / "v1" / "_staging").glob("*"))


@pytest.mark.parametrize("ttl", [math.nan, math.inf, 1e13, 1e-9, True])
def test_ttls_readers_cannot_use_are_refused_at_definition(ttl):
    with pytest.raises(InvalidInput) as exc:
        _group(ttl_s=ttl)
    assert str(exc.value) == (
        "feature group 'g': ttl_s must be 0 (never expires) or a finite number of seconds from 1e-06 to "
        f"9223372036854, got {ttl!r}"
    )


def test_ttls_at_the_bounds_work_offline_and_online_and_just_past_them_are_refused(fastml_home):
    for beyond in (4e-7, 9223372036855):  # rounds to 0 us; overflows int64 us
        with pytest.raises(InvalidInput, match=r"^feature group 'g': ttl_s must be 0 \(never expires\)"):
            _group(ttl_s=beyond)
    fs = FeatureStore(fastml_home)
    t0 = pd.Timestamp("2026-01-20 08:00", tz="UTC")
    for name, ttl in (("short", 1e-6), ("long", 9223372036854)):
        fs.register(FeatureGroup(name, entities=["id"], features=[Feature("x", "float64")], ttl_s=ttl))
        fs.ingest(name, pd.DataFrame({"id": [1], "event_timestamp": [t0], "x": [1.5]}))
        fs.materialize(name)
    rows = pd.DataFrame({"id": [1, 1], "event_timestamp": [t0, t0 + pd.Timedelta(microseconds=2)]})
    train = fs.get_training_set(rows, ["short:x", "long:x"], full_feature_names=True).to_pandas()
    assert train["short__x"].tolist()[0] == 1.5 and math.isnan(train["short__x"].tolist()[1])  # 2 us > 1 us
    assert train["long__x"].tolist() == [1.5, 1.5]
    values, present, _ = fs.get_online(["short:x", "long:x"], [1])
    assert present.tolist() == [[False, True]] and values[0, 1] == 1.5


def test_cli_register_file_missing_or_not_text_is_a_one_line_error(capsys, fastml_home, tmp_path):
    missing = tmp_path / "nope.json"
    assert main(["features", "register", "--file", str(missing)]) == 2
    assert capsys.readouterr().err == f"fastml: error: InvalidInput: cannot read {missing}: No such file or directory\n"
    binary = tmp_path / "group.bin"
    binary.write_bytes(b"\x80\x04 pickle")
    assert main(["features", "register", "--file", str(binary)]) == 2
    assert capsys.readouterr().err == (
        f"fastml: error: InvalidInput: {binary}: not JSON: 'utf-8' codec can't decode byte 0x80 in position 0: "
        "invalid start byte\n"
    )
    assert FeatureStore(fastml_home).list_groups() == []


@pytest.mark.parametrize("start, end", [("2026-01-21T00:00:00Z", "2026-01-20T00:00:00Z"), ("2026-01-20", "2026-01-20")])
def test_materialize_refuses_a_window_holding_no_event_time(capsys, fastml_home, start, end):
    fs = FeatureStore(fastml_home)
    fs.register(_group())
    fs.ingest(
        "g", pd.DataFrame({"id": [1], "event_timestamp": [pd.Timestamp("2026-01-20 08:00", tz="UTC")], "x": [1.5]})
    )
    want = f"start ({start}) must be before end ({end}): the window is [start, end)"
    with pytest.raises(InvalidInput) as exc:
        fs.materialize("g", start=start, end=end)
    assert str(exc.value) == want
    assert main(["features", "materialize", "g", "--start", start, "--end", end]) == 2
    assert capsys.readouterr().err == f"fastml: error: InvalidInput: {want}\n"
    # Refused before anything was written or recorded.
    assert fs.metadata.materializations("g", 1) == []
    assert fs.get_online(["g:x"], [1])[1].tolist() == [[False]]
