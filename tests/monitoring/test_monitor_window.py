"""The native live-monitoring window (csrc/monitor_window.h): bins, reservoirs and window boundaries, checked
against numpy and the Python window summaries on the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from fastml._core import MonitorWindow
from fastml.errors import InvalidInput
from fastml.monitoring.live import LiveMonitor
from fastml.monitoring.profile import ReferenceProfile
from fastml.monitoring.windows import ContinuousWindow, binned_counts, reference_bins


def _columns(window):
    (summary,) = window.take()
    return summary


def test_counts_equal_numpy_histogram_and_the_python_bins():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    prof = ReferenceProfile.from_data({"a": ref})
    edges, _ = reference_bins(prof["a"])
    inner = edges[1:-1]
    X = rng.normal(0.3, 1.5, size=(3000, 2)).astype(np.float32)
    X[5, 0] = inner[-1]  # the reference maximum: closes the last finite bin, as numpy.histogram does
    X[6, 0] = inner[0]
    X[7, 0] = np.nan  # not counted, not in the reservoir
    X[8, 0] = np.inf
    w = MonitorWindow([inner], [100_000], window_rows=10_000, seed=1)
    for lo in range(0, 3000, 250):
        w.add([X[lo : lo + 250]], [0], 1.0)
    assert w.rotate()
    rows, _, _, [(n, counts, values)] = _columns(w)
    v = X[:, 0].astype(np.float64)
    finite = v[np.isfinite(v)]
    assert rows == 3000 and n == finite.size == 2998
    assert counts.tolist() == binned_counts(finite, edges).tolist()
    inside = finite[(finite >= inner[0]) & (finite <= inner[-1])]
    assert counts[1:-1].tolist() == np.histogram(inside, bins=inner)[0].tolist()
    assert counts[0] == np.sum(finite < inner[0]) and counts[-1] == np.sum(finite > inner[-1])
    # Under capacity, the reservoir is every finite value in arrival order.
    assert np.array_equal(values, finite)


def test_strided_columns_and_every_supported_dtype():
    X = np.arange(24, dtype=np.float64).reshape(8, 3)
    cols = [X, X, X[:, 1:2], X[::2, 0].astype(np.int32)[:4].repeat(2), X[:, 2].astype(np.int64)]
    w = MonitorWindow([np.empty(0)] * 5, [100] * 5, window_rows=100)
    w.add(cols, [0, 2, -1, -1, -1], 0.0)
    w.rotate()
    _, _, _, out = _columns(w)
    assert [o[2].tolist() for o in out] == [
        X[:, 0].tolist(),
        X[:, 2].tolist(),
        X[:, 1].tolist(),
        [0.0, 0.0, 6.0, 6.0, 12.0, 12.0, 18.0, 18.0],
        X[:, 2].tolist(),
    ]


def test_a_batch_is_split_at_window_rows_and_each_window_is_its_own():
    w = MonitorWindow([np.array([0.5, 10.5, 20.5])], [1000], window_rows=10)
    v = np.arange(25, dtype=np.float32)
    assert w.add([v[:7]], [-1], 1.0) == 0
    assert w.add([v[7:]], [-1], 2.0) == 2  # rows 7..24 close two windows of 10, 5 rows stay open
    assert w.open_rows == 5 and w.open_first_ts == 2.0
    first, second = w.take()
    assert first[:3] == (10, 1.0, 2.0) and second[:3] == (10, 2.0, 2.0)
    assert first[3][0][2].tolist() == list(range(10)) and second[3][0][2].tolist() == list(range(10, 20))
    assert first[3][0][1].tolist() == [1, 9, 0, 0] and second[3][0][1].tolist() == [0, 1, 9, 0]
    assert w.rotate() and not w.rotate()  # the open 5 rows, then nothing left
    ((rows, _, _, cols),) = w.take()
    assert rows == 5 and cols[0][2].tolist() == [20, 21, 22, 23, 24]


def test_closed_windows_beyond_the_limit_are_dropped_and_counted():
    w = MonitorWindow([np.empty(0)], [10], window_rows=10, max_closed=2)
    w.add([np.ones(35)], [-1], 0.0)
    assert w.dropped_rows == 10 and len(w.take()) == 2 and w.open_rows == 5


def test_the_reservoir_is_a_uniform_sample_without_replacement():
    k, n = 500, 20_000
    values = np.arange(n, dtype=np.float64)
    firsts = []
    for seed in range(20):
        w = MonitorWindow([np.empty(0)], [k], window_rows=n, seed=seed)
        for lo in range(0, n, 1000):
            w.add([values[lo : lo + 1000]], [-1], 0.0)
        ((rows, _, _, [(seen, _, res)]),) = w.take()
        assert rows == seen == n and res.size == k
        assert np.unique(res).size == k and np.isin(res, values).all()
        firsts.append(res)
    # Each value is kept with probability k / n: the share of the first half in the samples is about 1/2.
    share = np.mean([np.mean(r < n / 2) for r in firsts])
    assert abs(share - 0.5) < 0.03
    assert not np.array_equal(firsts[0], firsts[1])  # seeds differ


def test_bad_input_is_refused_with_invalid_input():
    with pytest.raises(InvalidInput, match="window_rows"):
        MonitorWindow([np.empty(0)], [1], window_rows=0)
    with pytest.raises(InvalidInput, match="increasing"):
        MonitorWindow([np.array([1.0, 0.0])], [1], window_rows=5)
    with pytest.raises(InvalidInput, match="one entry per column"):
        MonitorWindow([np.empty(0)], [1, 2], window_rows=5)
    w = MonitorWindow([np.empty(0), np.empty(0)], [5, 5], window_rows=5)
    with pytest.raises(InvalidInput, match="dtype"):
        w.add([np.array(["a"]), np.ones(1)], [-1, -1], 0.0)
    with pytest.raises(InvalidInput, match="rows"):
        w.add([np.ones(2), np.ones(3)], [-1, -1], 0.0)
    with pytest.raises(InvalidInput, match="column index"):
        w.add([np.ones((2, 3)), np.ones(2)], [-1, -1], 0.0)
    with pytest.raises(InvalidInput, match="2 arrays"):
        w.add([np.ones(2)], [-1], 0.0)
    with pytest.raises(InvalidInput, match="2 columns"):
        w.set_layout([np.empty(0)], [5])
    assert w.open_rows == 0


def test_live_monitor_native_windows_equal_the_python_path():
    """The same batches through the native window (observe_batch) and the queued Python path (observe): the
    same drift statistics, window by window (discrete and continuous features, and the prediction)."""
    rng = np.random.default_rng(4)
    prof = ReferenceProfile.from_data({"c": rng.normal(size=2000), "d": rng.integers(0, 5, 2000).astype(float)})
    X = np.column_stack([rng.normal(0.5, 1.0, 3000), rng.integers(0, 6, 3000)]).astype(np.float32)
    y = X.sum(axis=1, keepdims=True)
    results = {}
    for path in ("native", "python"):
        mon = LiveMonitor(False, window_rows=1000, window_s=600, seed=7)
        mon.set_reference("m", prof, {"input": [-1, 2]})
        for lo in range(0, 3000, 100):
            batch = X[lo : lo + 100]
            if path == "native":
                assert mon.observe_batch("m", None, "1", ["input"], [batch], ["y"], [y[lo : lo + 100]])
            else:
                assert mon.observe("m", None, {"input": batch}, {"y": y[lo : lo + 100]}, version="1")
        assert mon.flush()
        results[path] = mon.last[("m", "")]
        assert isinstance(mon._windows.get(("m", "")), type(None))
        mon.close()
        assert mon.processed_rows == 3000 and mon.windows_closed == 3
    native, python = results["native"], results["python"]
    assert native.n_rows == python.n_rows == 1000
    got = {(d.feature, d.stattest): d.score for d in native.drift}
    want = {(d.feature, d.stattest): d.score for d in python.drift}
    assert got.keys() == want.keys() and {f for f, _ in got} == {"c", "d", "prediction:y"}
    for key, score in want.items():
        assert got[key] == pytest.approx(score, rel=1e-12, abs=1e-12), key


def test_continuous_windows_keep_the_python_summary():
    rng = np.random.default_rng(5)
    prof = ReferenceProfile.from_data({"c": rng.normal(size=3000)})
    mon = LiveMonitor(False, window_rows=10_000, window_s=600)
    mon.set_reference("m", prof, {"c": [-1]})
    v = rng.normal(size=4000).astype(np.float32)
    for lo in range(0, 4000, 500):
        assert mon.observe_batch("m", None, "1", ["c"], [v[lo : lo + 500]], [], [])
    slot = mon._native[("m", "")]
    slot.acc.rotate()
    (summary,) = slot.acc.take()
    w = mon._window_from_native(("m", ""), slot, summary)
    mon.close()
    col = w.columns["c"]
    ref = ContinuousWindow(prof["c"], mon.reservoir_size, np.random.default_rng(0))
    ref.update(v)
    assert isinstance(col, ContinuousWindow)
    assert col.n == ref.n == 4000 and col.counts.tolist() == ref.counts.tolist()
    assert np.array_equal(col.current_values(), ref.current_values())  # under capacity: every value, in order


def test_string_columns_take_the_python_path_and_a_new_reference_closes_the_native_window():
    rng = np.random.default_rng(6)
    prof = ReferenceProfile.from_data({"c": rng.normal(size=500)})
    mon = LiveMonitor(False, window_rows=1000, window_s=600)
    results = []
    mon.add_listener(results.append)
    mon.set_reference("m", prof, {"c": [-1]})
    v = rng.normal(size=300)
    assert mon.observe_batch("m", None, "1", ["c"], [v], ["label"], [np.array(["x"] * 300)]) is False
    assert mon._native[("m", "")] is None  # decided once: later batches go straight to the queue
    mon.set_reference("m", prof, {"c": [-1]})  # decided again for a new reference
    assert mon.observe_batch("m", None, "1", ["c"], [v], [], [])
    mon.set_reference("m", ReferenceProfile.from_data({"c": rng.normal(size=400)}), {"c": [-1]})
    assert mon.observe_batch("m", None, "1", ["c"], [v[:100]], [], [])
    assert mon.flush()
    mon.close()
    old, new = results
    assert (old.n_rows, old.reference_rows, old.note) == (300, 500, "reference changed")
    assert (new.n_rows, new.reference_rows, new.note) == (100, 400, "flushed")
    assert mon.processed_rows == 400
