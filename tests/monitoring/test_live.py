"""LiveMonitor and its windows against the batch library: exact where the window keeps counts, within the
stated DKW bound where it keeps a reservoir; health direction; clear states for bad references and empty
windows; failures that stay inside the monitor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from fastml.errors import InvalidInput
from fastml.monitoring.drift import _psi_from_shares, detect_drift
from fastml.monitoring.live import LiveMonitor
from fastml.monitoring.profile import ReferenceProfile
from fastml.monitoring.store import MonitoringStore
from fastml.monitoring.windows import ContinuousWindow, binned_counts, column_window, sketch_bound


@pytest.fixture
def store(tmp_path):
    with MonitoringStore(tmp_path / "monitoring.db") as s:
        yield s


def _feed(mon, model, X, rows=100, outputs=None):
    for lo in range(0, X.shape[0], rows):
        part = X[lo : lo + rows]
        mon.observe(model, None, {"input": part}, outputs(part) if outputs else {})
    assert mon.flush()


def test_counted_columns_equal_the_library_exactly(store):
    rng = np.random.default_rng(1)
    ref = {"k": rng.integers(0, 6, 3000).astype(np.float64), "c": rng.choice(["x", "y", "z"], 3000)}
    prof = ReferenceProfile.from_data(ref)
    mon = LiveMonitor(store, window_rows=1500, window_s=600)
    mon.set_reference("m", prof, {"k": [-1], "c": [-1, 1]})
    cur_k = rng.integers(0, 7, 1500).astype(np.float64)
    cur_c = rng.choice(["x", "y", "w"], 1500, p=[0.5, 0.3, 0.2])
    for lo in range(0, 1500, 64):
        mon.observe("m", None, {"k": cur_k[lo : lo + 64], "c": cur_c[lo : lo + 64, None]}, {})
    assert mon.flush()
    (w,) = store.windows("m")
    lib = detect_drift(prof, {"k": cur_k, "c": cur_c}, all_statistics=True)
    got = {(d.feature, d.stattest): d.score for d in w.drift}
    for col in lib.columns:
        assert got[(col.column, col.method)] == col.score
        for m, v in col.statistics.items():
            assert got[(col.column, m)] == v, (col.column, m)
    mon.close()


def test_continuous_reservoir_is_exact_within_capacity_and_bounded_beyond(store):
    rng = np.random.default_rng(2)
    prof = ReferenceProfile.from_data({"a": rng.normal(size=4000)})
    cur = rng.normal(0.2, 1.1, size=20000)
    # Within capacity: KS/Wasserstein equal the library on the same rows.
    win = column_window(prof["a"], reservoir_size=20000, rng=np.random.default_rng(0))
    for lo in range(0, cur.size, 333):
        win.update(cur[lo : lo + 333])
    lib = detect_drift(prof, {"a": cur}, all_statistics=True)["a"]
    got = {d.stattest: d.score for d in win.drift("a")}
    assert got["wasserstein"] == lib.statistics["wasserstein"]
    assert {d.stattest: d.score for d in win.drift("a", method="ks")}["ks"] == lib.statistics["ks"]
    # Beyond capacity: sup |F_reservoir - F_window| <= eps (alpha 0.001), so D moves by at most eps.
    small = column_window(prof["a"], reservoir_size=2048, rng=np.random.default_rng(0))
    for lo in range(0, cur.size, 333):
        small.update(cur[lo : lo + 333])
    assert isinstance(small, ContinuousWindow) and not small.exact
    sample = np.sort(small.current_values())
    grid = np.sort(cur)
    f_win = np.arange(1, grid.size + 1) / grid.size
    f_res = np.searchsorted(sample, grid, side="right") / sample.size
    eps = sketch_bound(2048)
    assert np.max(np.abs(f_res - f_win)) <= eps
    from scipy.stats import ks_2samp

    d_exact = ks_2samp(prof["a"].values, cur).statistic
    d_sketch = ks_2samp(prof["a"].values, sample).statistic
    assert abs(d_sketch - d_exact) <= eps


def test_fixed_bins_psi_and_js_equal_the_library_formulas_on_those_bins(store):
    rng = np.random.default_rng(3)
    prof = ReferenceProfile.from_data({"a": rng.normal(size=3000)})
    cur = rng.normal(0.5, 1.0, size=2000)
    win = column_window(prof["a"], rng=np.random.default_rng(0))
    for lo in range(0, cur.size, 250):
        win.update(cur[lo : lo + 250])
    edges = win.edges
    # numpy's histogram on the finite edges, with the two overflow bins counted by hand.
    inner = edges[1:-1]
    hist = np.histogram(cur, inner)[0]
    expected = np.concatenate(([np.sum(cur < inner[0])], hist, [np.sum(cur > inner[-1])]))
    assert np.array_equal(binned_counts(cur, edges), expected)
    ref_s = binned_counts(prof["a"].values, edges) / 3000
    cur_s = expected / cur.size
    got = {d.stattest: d.score for d in win.drift("a")}
    assert got["psi"] == _psi_from_shares(ref_s, cur_s)
    assert got["jensenshannon"] == float(jensenshannon(ref_s, cur_s))


def test_health_falls_as_more_features_drift(store):
    rng = np.random.default_rng(4)
    prof = ReferenceProfile.from_data({f"f{i}": rng.normal(size=3000) for i in range(4)})
    mon = LiveMonitor(store, window_rows=1000, window_s=600)
    mon.set_reference("m", prof, {"input": [-1, 4]})
    scores = []
    for n_shifted in range(5):
        X = rng.normal(size=(1000, 4))
        X[:, :n_shifted] += 2.0
        _feed(mon, "m", X)
        scores.append(mon.health("m"))
    assert scores == pytest.approx([100.0, 75.0, 50.0, 25.0, 0.0])
    mon.record_quality("m", None, {"performance": 0.8, "baseline": 0.9})
    _feed(mon, "m", rng.normal(size=(1000, 4)))
    with_quality = mon.health("m")
    assert with_quality < 100.0  # same drift-free data, worse quality: lower
    mon.close()


def test_mismatched_reference_is_a_clear_error():
    prof = ReferenceProfile.from_data({"a": np.arange(10.0), "b": np.arange(10.0)})
    mon = LiveMonitor(False)
    with pytest.raises(InvalidInput, match=r"reference has 2 feature columns .* shape \[-1, 3\]"):
        mon.set_reference("m", prof, {"input": [-1, 3]})
    with pytest.raises(InvalidInput, match="not inputs of the model"):
        mon.set_reference("m", prof, {"x": [-1], "y": [-1]})
    mon.disable("m", "reference does not fit")
    assert mon.flush()  # the notice is stored by the monitor thread, like every result
    status = mon.status()["models"]["m"]
    assert (status["monitored"], status["reason"], status["health_score"]) == (False, "reference does not fit", None)
    notice = status["windows"][""]
    assert (notice["status"], notice["note"], notice["n_rows"], notice["drift"]) == (
        "no_reference",
        "reference does not fit",
        0,
        [],
    )
    assert mon.observe("m", None, {"input": np.zeros((2, 3))}, {}) is False
    mon.close()


def test_idle_period_gives_one_no_data_window(store):
    rng = np.random.default_rng(5)
    prof = ReferenceProfile.from_data({"a": rng.normal(size=1000)})
    mon = LiveMonitor(store, window_rows=100, window_s=600)
    mon.set_reference("m", prof, {"a": [-1]})
    mon.observe("m", None, {"a": rng.normal(size=100)}, {})
    assert mon.flush()
    done = mon.last[("m", "")]
    # The monitor thread emits "no_data" once a whole period passed after the last window.
    mon._close_expired(done.end_ts + 601.0)
    mon._close_expired(done.end_ts + 1202.0)
    wins = store.windows("m")
    assert [w.status for w in wins] == ["ok", "no_data"]
    assert wins[1].n_rows == 0 and wins[1].drift == [] and "no rows" in wins[1].note
    assert wins[0].small_window  # 100 rows against 500: flagged (under a fifth of 1,000 and under 1,000)
    mon.close()


def test_failing_listener_and_bad_batch_are_counted_not_raised(store):
    rng = np.random.default_rng(6)
    prof = ReferenceProfile.from_data({"a": rng.normal(size=500)})
    mon = LiveMonitor(store, window_rows=50, window_s=600)
    mon.set_reference("m", prof, {"a": [-1]})
    seen = []
    mon.add_listener(lambda r: (_ for _ in ()).throw(RuntimeError("listener bug")))
    mon.add_listener(seen.append)
    mon.observe("m", None, {"a": object()}, {})  # not an array: the monitor thread fails on it
    mon.observe("m", None, {"a": rng.normal(size=50)}, {})
    assert mon.flush()
    assert mon.failures == 1 and mon.listener_failures == 1
    assert len(seen) == 1 and seen[0].n_rows == 50
    mon.close()


def test_full_queue_drops_and_counts(store):
    prof = ReferenceProfile.from_data({"a": np.arange(100.0)})
    # A long poll: nothing is taken off the queue until flush(), so exactly queue_size batches fit.
    mon = LiveMonitor(store, queue_size=10, poll_s=60.0, window_rows=1000)
    mon.set_reference("m", prof, {"a": [-1]})
    results = [mon.observe("m", None, {"a": np.arange(10.0)}, {}) for _ in range(200)]
    assert results == [True] * 10 + [False] * 190
    assert (mon.observed, mon.dropped) == (10, 190)
    assert mon.flush()
    (w,) = store.windows("m")
    assert w.n_rows == 100  # the 10 accepted batches, nothing else
    mon.close()


def _rowsum_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["y"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_tap_feeds_the_monitor_and_a_broken_monitor_never_fails_a_request(store, tmp_path):
    import asyncio

    from fastml.serving import load_model
    from fastml.serving.live_monitoring import MonitorTap

    _rowsum_model(tmp_path / "m.onnx")
    prof = ReferenceProfile.from_data({"a": np.arange(50.0), "b": np.arange(50.0)})
    mon = LiveMonitor(store, window_rows=1000, window_s=600)
    mon.set_reference("m", prof, {"input": [-1, 2]})
    model = load_model(tmp_path / "m.onnx", name="m")
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    try:
        tap = MonitorTap(mon)
        model.prediction_logger = tap

        async def serve(n):
            return [await model.predict_async({"input": X}) for _ in range(n)]

        answers = asyncio.run(serve(3))
        assert np.array_equal(answers[0]["y"][:, 0], X.sum(axis=1))
        assert mon.flush()
        (w,) = store.windows("m")
        assert w.n_rows == 30 and w.status == "ok"

        def broken(*a, **k):
            raise RuntimeError("monitor bug")

        mon.observe = mon.observe_batch = broken  # the native path and the queued one
        answers = asyncio.run(serve(2))
        assert [np.array_equal(a["y"][:, 0], X.sum(axis=1)) for a in answers] == [True, True]
        assert tap.failures == 2
    finally:
        model.close()
        mon.close()


def test_windows_are_kept_per_deployment_variant(store):
    from fastml.monitoring.log import CURRENT_VARIANT
    from fastml.serving.live_monitoring import MonitorTap

    rng = np.random.default_rng(8)
    prof = ReferenceProfile.from_data({"a": rng.normal(size=1000)})
    mon = LiveMonitor(store, window_rows=100, window_s=600)
    mon.set_reference("d", prof, {"a": [-1]})
    tap = MonitorTap(mon)
    for variant, shift in (("blue", 0.0), ("green", 3.0)):
        token = CURRENT_VARIANT.set(variant)  # what the deployment router sets around each request
        try:
            tap.log(model="d", version="1", inputs={"a": rng.normal(shift, 1, 100)}, outputs={}, latency_us=10.0)
        finally:
            CURRENT_VARIANT.reset(token)
    assert mon.flush()
    by_variant = {w.variant: w for w in store.windows("d")}
    assert sorted(by_variant) == ["blue", "green"]
    assert by_variant["blue"].drifted_features() == [] and by_variant["green"].drifted_features() == ["a"]
    assert mon.health("d") == by_variant["green"].health_score == 0.0
    rows = mon.metric_rows()["health"]
    assert {(r["variant"], r["score"]) for r in rows} == {("blue", 100.0), ("green", 0.0)}
    mon.close()
