"""Concept-drift detectors: same detections as river on seeded streams; fire after a planted change."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring.concept import ADWIN, DDM, EDDM, PageHinkley, error_stream

river_drift = pytest.importorskip("river.drift")
from river.drift import binary as river_binary  # noqa: E402

CHANGE = 1000


def error_stream_with_change(seed, before=0.1, after=0.4, n=2000):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(CHANGE) < before, rng.random(n - CHANGE) < after]).astype(int).tolist()


def value_stream_with_change(seed, shift=2.0, n=2000):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, CHANGE), rng.normal(shift, 1, n - CHANGE)]).tolist()


def river_detections(det, xs):
    out = []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            out.append(i)
    return out


PAIRS = [
    (DDM, river_binary.DDM, error_stream_with_change),
    (EDDM, river_binary.EDDM, error_stream_with_change),
    (ADWIN, river_drift.ADWIN, value_stream_with_change),
    (ADWIN, river_drift.ADWIN, error_stream_with_change),
    (PageHinkley, river_drift.PageHinkley, value_stream_with_change),
]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ours,theirs,stream", PAIRS, ids=["ddm", "eddm", "adwin-values", "adwin-errors", "ph"])
def test_same_detections_as_river(ours, theirs, stream, seed):
    xs = stream(seed)
    assert ours().detect(xs) == river_detections(theirs(), xs)


def test_same_warnings_as_river_ddm():
    xs = error_stream_with_change(5)
    ours, theirs = DDM(), river_binary.DDM()
    for x in xs:
        ours.update(x)
        theirs.update(x)
        assert ours.warning_detected == theirs.warning_detected


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "make,stream",
    [
        (DDM, error_stream_with_change),
        (EDDM, error_stream_with_change),
        (ADWIN, value_stream_with_change),
        (PageHinkley, value_stream_with_change),
    ],
    ids=["ddm", "eddm", "adwin", "ph"],
)
def test_fires_within_window_after_planted_change(make, stream, seed):
    hits = make().detect(stream(seed))
    assert any(CHANGE <= i < CHANGE + 200 for i in hits), hits


def test_quiet_on_stationary_streams():
    """No change, no alarm: ADWIN on noise, Page–Hinkley on noise scaled to its default lambda. DDM with
    river's defaults does raise occasional false alarms on Bernoulli noise (so does river, index for
    index): require them on well under half of the stationary streams, against all of the changed ones."""
    streams = [np.random.default_rng(100 + s) for s in range(20)]
    values = [r.normal(0, 1, 2000) for r in streams]
    assert all(ADWIN().detect(v) == [] for v in values)
    assert all(PageHinkley().detect(0.25 * v) == [] for v in values)
    errors = [(r.random(2000) < 0.3).astype(int) for r in streams]
    assert all(ADWIN().detect(e) == [] for e in errors)
    assert sum(bool(DDM().detect(e)) for e in errors) <= 6
    assert all(any(CHANGE <= i < CHANGE + 200 for i in DDM().detect(error_stream_with_change(s))) for s in range(20))


def test_adwin_window_shrinks_after_change():
    det = ADWIN()
    det.detect(value_stream_with_change(0))
    assert det.n_detections >= 1 and det.width < 1000 and det.estimation == pytest.approx(2.0, abs=0.3)


def test_page_hinkley_modes_and_validation():
    up = value_stream_with_change(1, shift=3.0)
    down = value_stream_with_change(1, shift=-3.0)
    assert PageHinkley(mode="up").detect(up) and not PageHinkley(mode="up").detect(down)
    assert PageHinkley(mode="down").detect(down)
    with pytest.raises(InvalidInput):
        PageHinkley(mode="sideways")
    with pytest.raises(InvalidInput):
        EDDM(alpha=0.5, beta=0.9)


def test_error_stream_from_log_table_skips_unlabelled_rows():
    t = pa.table({"output.label": [0, 1, 1, 0, 1], "label": pa.array([0.0, 0.0, None, 0.0, 1.0])})
    np.testing.assert_array_equal(error_stream(t), [0, 1, 0, 0])
    with pytest.raises(InvalidInput, match="no column"):
        error_stream(t, prediction="output.nope")


def test_performance_drift_from_labelled_log(tmp_path):
    from fastml.monitoring import PredictionLogger
    from fastml.monitoring.concept import performance_drift
    from fastml.monitoring.log import read_log

    rng = np.random.default_rng(11)
    truth = rng.integers(0, 2, 2000)
    wrong = np.concatenate([rng.random(1000) < 0.1, rng.random(1000) < 0.45])  # the model degrades at 1000
    pred = np.where(wrong, 1 - truth, truth)
    with PredictionLogger(tmp_path) as lg:
        for i in range(2000):
            lg.log(
                model="m",
                version=1,
                inputs={"x": np.zeros((1, 2))},
                outputs={"label": pred[i : i + 1]},
                latency_us=1,
                request_id=f"r{i:04d}",
            )
    lg.feedback([f"r{i:04d}" for i in range(2000)], truth)
    hits = performance_drift(read_log(tmp_path))
    assert any(CHANGE <= h["index"] < CHANGE + 200 for h in hits), hits
    assert all(h["request_id"] == f"r{h['index']:04d}" for h in hits)
    assert [h["index"] for h in hits] == DDM().detect(error_stream(read_log(tmp_path)))
