"""The engine feeds the live monitor once per batch (no Python work per request), the sampling budget, and
the fallback to per-request logging when one model's requests carry two variant labels."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.monitoring.drift import detect_drift
from fastml.monitoring.live import LiveMonitor
from fastml.monitoring.log import CURRENT_VARIANT
from fastml.monitoring.profile import ReferenceProfile
from fastml.monitoring.store import MonitoringStore
from fastml.serving.live_monitoring import MonitorTap

FEATURES = 3


def _rowsum(path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["y"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tap") / "rowsum.onnx"
    _rowsum(path)
    return path


@pytest.fixture
def store(tmp_path):
    with MonitoringStore(tmp_path / "monitoring.db") as s:
        yield s


def _profile(seed=0):
    rng = np.random.default_rng(seed)
    return ReferenceProfile.from_data({f"f{j}": rng.normal(size=2000) for j in range(FEATURES)})


async def _send(model, X, rows):
    return await asyncio.gather(*(model.submit(X[lo : lo + rows]) for lo in range(0, X.shape[0], rows)))


@pytest.mark.parametrize("runner", ["threads", "loop"])
def test_batches_reach_the_monitor_whole_and_the_window_equals_the_library(model_path, store, runner):
    from fastml.serving import load_model

    prof = _profile()
    mon = LiveMonitor(store, window_rows=600, window_s=600)
    mon.set_reference("rowsum", prof, {"input": [-1, FEATURES]})
    model = load_model(model_path, name="rowsum", runner=runner)
    try:
        model.prediction_logger = tap = MonitorTap(mon)
        assert tap.observes_batches
        X = np.random.default_rng(1).normal(0.5, 1.0, size=(600, FEATURES)).astype(np.float32)
        answers = asyncio.run(_send(model, X, 4))
        got = np.concatenate([a["y"][:, 0] for a in answers])
        np.testing.assert_allclose(got, X.sum(axis=1), rtol=1e-5)
        assert mon.flush()
        assert model.batch_log_failures == 0 and tap.failures == 0
        # Fewer observed items than requests: the runner hands whole batches over.
        assert mon.observed < 600 // 4
        (w,) = store.windows("rowsum")
    finally:
        model.close()
        mon.close()
    assert w.n_rows == 600 and w.variant == ""
    # Rows are summarised in batch order, not request order: counts and (within capacity) the reservoir are
    # order-free, so the statistics equal the library's on the rows served.
    lib = detect_drift(prof, {f"f{j}": X[:, j].astype(np.float64) for j in range(FEATURES)}, all_statistics=True)
    got_scores = {(d.feature, d.stattest): d.score for d in w.drift}
    for col in lib.columns:
        assert got_scores[(col.column, col.method)] == pytest.approx(col.score, rel=1e-9, abs=1e-12)
    # The first covered request reports its latency (then at most one per LATENCY_SAMPLE_INTERVAL_S): a p99.
    assert w.extra["latency_p99_ms"] > 0


def test_a_second_variant_label_falls_back_to_per_request_logging(model_path, store):
    from fastml.serving import load_model

    prof = _profile()
    mon = LiveMonitor(store, window_rows=10_000, window_s=600)
    mon.set_reference("rowsum", prof, {"input": [-1, FEATURES]})
    model = load_model(model_path, name="rowsum")
    rng = np.random.default_rng(2)
    try:
        model.prediction_logger = MonitorTap(mon)

        async def as_variant(variant, X):
            token = CURRENT_VARIANT.set(variant)  # what the deployment router sets around each request
            try:
                return await _send(model, X, 4)
            finally:
                CURRENT_VARIANT.reset(token)

        blue = rng.normal(size=(200, FEATURES)).astype(np.float32)
        green = rng.normal(3.0, 1.0, size=(120, FEATURES)).astype(np.float32)
        asyncio.run(as_variant("blue", blue))
        assert model._batch_on  # one label so far: batches carry it
        asyncio.run(as_variant("green", green))
        assert not model._batch_on  # two labels: per request from now on
        asyncio.run(as_variant("blue", blue[:40]))
        assert mon.flush()
        by_variant = {w.variant: w for w in store.windows("rowsum")}
    finally:
        model.close()
        mon.close()
    assert {v: w.n_rows for v, w in by_variant.items()} == {"blue": 240, "green": 120}
    # Green's rows (shifted by 3 on every feature) are in green's window, not mixed into blue's.
    assert [f for f in by_variant["green"].drifted_features() if f.startswith("f")] == ["f0", "f1", "f2"]


def test_sampling_keeps_a_budget_and_the_statistics_of_the_sample(store):
    prof = _profile()
    mon = LiveMonitor(store, window_rows=100_000, window_s=600, max_rows_per_s=1000)
    mon.set_reference("m", prof, {"input": [-1, FEATURES]})
    X = np.random.default_rng(3).normal(size=(5000, FEATURES))
    kept = [X[lo : lo + 100] for lo in range(0, 5000, 100) if mon.observe("m", None, {"input": X[lo : lo + 100]}, {})]
    assert mon.flush()
    c = mon.counters()
    (w,) = store.windows("m")
    mon.close()
    rows = sum(k.shape[0] for k in kept)
    # The bucket holds one second's worth: the first 1,000 rows pass, then only what refills meanwhile.
    assert 1000 <= rows < 5000
    assert c["seen_rows"] == 5000 and c["sampled_out_rows"] == 5000 - rows and c["processed_rows"] == rows
    sample = np.concatenate(kept)
    lib = detect_drift(prof, {f"f{j}": sample[:, j] for j in range(FEATURES)})
    got = {(d.feature, d.stattest): d.score for d in w.drift}
    for col in lib.columns:
        assert got[(col.column, col.method)] == pytest.approx(col.score, rel=1e-9, abs=1e-12)


def test_sampling_budget_must_be_positive():
    from fastml.errors import InvalidInput

    with pytest.raises(InvalidInput, match="max_rows_per_s"):
        LiveMonitor(False, max_rows_per_s=0)
