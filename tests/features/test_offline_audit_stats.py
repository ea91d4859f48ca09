"""Ingest statistics on data numpy's histogram refuses: the ingest must neither fail after committing
nor leave its version unable to take another ingest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.stats import HISTOGRAM_BINS, feature_stats

T_US = 1_700_000_000_000_000


@pytest.fixture
def fs(fastml_home) -> FeatureStore:
    s = FeatureStore(fastml_home, online_backend="reference")
    s.register(FeatureGroup("g", entities=["id"], features=[Feature("ns", "int64"), Feature("x", "float64")]))
    yield s
    s.close()


def _rows(ids, ns, x) -> pa.Table:
    ts = pa.array(np.full(len(ids), T_US, np.int64)).view(pa.timestamp("us", tz="UTC"))
    return pa.table({"id": ids, "event_timestamp": ts, "ns": pa.array(ns, pa.int64()), "x": pa.array(x, pa.float64())})


def test_large_constant_int64_feature_ingests_and_reports_stats(fs):
    # One row of a nanosecond-timestamp feature: numpy's histogram raised "Too many bins" after the commit,
    # so the caller saw a failure for rows that were visible, and every later ingest of the version failed.
    out = fs.ingest("g", _rows([1], [1_700_000_000_000_000_123], [1.0]))
    assert out["rows"] == 1
    st = fs.stats("g")["features"]["ns"]
    assert st["count"] == 1 and st["min"] == st["max"] == 1.7e18
    assert st["histogram"] == {"edges": [1.7e18, 1.7e18], "counts": [1]}
    fs.ingest("g", _rows([2], [1_700_000_000_000_000_999], [2.0]))
    assert fs.read_offline("g").num_rows == 2
    assert fs.stats("g")["rows"] == 2 and sum(fs.stats("g")["features"]["ns"]["histogram"]["counts"]) == 2


@pytest.mark.parametrize(
    "values",
    [[1e308, 1e308], [5e-324, 1e-323, 5e-324], [-1.7e308, 1.7e308, 0.0], [2.0**60, 2.0**60 + 2**8, 2.0**60]],
)
def test_degenerate_ranges_count_every_value(values):
    x = np.asarray(values)
    h = feature_stats(pa.array(values), "float64")["histogram"]
    counts, edges = np.asarray(h["counts"]), np.asarray(h["edges"])
    assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) >= 0)
    assert edges[0] == x.min() and edges[-1] == x.max()
    assert counts.sum() == len(x) and len(counts) == len(edges) - 1
    # each value lies in its bin (the last bin closed)
    idx = np.repeat(np.arange(len(counts)), counts)
    for v, i in zip(np.sort(x), idx):
        assert edges[i] <= v <= edges[i + 1]


def test_ordinary_data_keeps_numpys_histogram():
    x = np.random.default_rng(3).normal(size=1_000)
    h = feature_stats(pa.array(x), "float64")["histogram"]
    ref_counts, ref_edges = np.histogram(x, bins=HISTOGRAM_BINS)
    assert h == {"edges": ref_edges.tolist(), "counts": ref_counts.tolist()}
