"""HDDM_A and KSWIN: the same detection (and warning) indices as river's implementations on seeded streams."""

from __future__ import annotations

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring.concept import HDDM_A, KSWIN

river_drift = pytest.importorskip("river.drift")
from river.drift import binary as river_binary  # noqa: E402

CHANGE = 1000


def errors(seed, before=0.1, after=0.4, n=2000):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(CHANGE) < before, rng.random(n - CHANGE) < after]).astype(int).tolist()


def values(seed, shift=1.0, n=2000):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, CHANGE), rng.normal(shift, 1, n - CHANGE)]).tolist()


def river_signals(det, xs):
    drifts, warnings = [], []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            drifts.append(i)
        if getattr(det, "warning_detected", False):
            warnings.append(i)
    return drifts, warnings


def our_signals(det, xs):
    drifts, warnings = [], []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            drifts.append(i)
        if det.warning_detected:
            warnings.append(i)
    return drifts, warnings


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("two_sided", [False, True])
def test_hddm_a_same_drifts_and_warnings_as_river(seed, two_sided):
    xs = errors(seed) + errors(seed + 10, before=0.4, after=0.05)  # a rise, then a fall
    ours = our_signals(HDDM_A(two_sided_test=two_sided), xs)
    theirs = river_signals(river_binary.HDDMA(two_sided_test=two_sided), xs)
    assert ours == theirs
    assert ours[0] and ours[0][0] >= CHANGE  # a planted rise is found, and not before it happens


@pytest.mark.parametrize("seed,stream", [(0, values), (1, errors)])
def test_kswin_same_detections_as_river(seed, stream):
    xs = stream(seed)[CHANGE - 300 : CHANGE + 300]  # KS p-values are exact at these sizes: keep the stream short
    assert KSWIN(seed=seed).detect(xs) == river_signals(river_drift.KSWIN(seed=seed), xs)[0]


def test_kswin_finds_a_planted_shift_after_it_happens():
    found = KSWIN(alpha=0.0001, seed=7).detect(values(5, shift=3.0)[CHANGE - 300 : CHANGE + 300])
    assert found and 300 <= found[0] < 400


def test_hddm_a_quiet_on_a_stationary_stream():
    rng = np.random.default_rng(3)
    assert HDDM_A().detect((rng.random(3000) < 0.2).astype(int)) == []


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: HDDM_A(drift_confidence=0), "drift_confidence"),
        (lambda: KSWIN(alpha=2), "alpha"),
        (lambda: KSWIN(window_size=50, stat_size=30), "stat_size"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(InvalidInput, match=match):
        make()


def test_kswin_p_values_equal_rivers_step_by_step():
    xs = errors(4)[CHANGE - 150 : CHANGE + 150]  # ties (0/1 values) and a change
    ours, theirs = KSWIN(seed=3), river_drift.KSWIN(seed=3)
    tested = 0
    for x in xs:
        ours.update(x)
        theirs.update(x)
        assert ours.drift_detected == theirs.drift_detected
        if len(ours.window) == ours.window_size or ours.drift_detected:  # a test ran at this value
            assert ours.p_value == pytest.approx(theirs.p_value, rel=1e-12, abs=0)
            tested += 1
    assert tested > 100
