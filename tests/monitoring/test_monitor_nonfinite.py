"""NaN, infinities and degenerate windows in the health score, alert rules, concept-drift detectors and the
contingency drift test: a clear InvalidInput or an exact, documented result, never a NaN that a comparison
quietly turns into "healthy", "not firing" or "no drift"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring import detect_drift
from fastml.monitoring.alerts import AlertManager, AlertRule, rules_from_dicts
from fastml.monitoring.concept import ADWIN, DDM, EDDM, HDDM_A, KSWIN, PageHinkley
from fastml.monitoring.drift import chi2_contingency_test
from fastml.monitoring.health import HealthInputs, HealthWeights, health_score
from fastml.monitoring.quality import Joined, concept_drift

NAN = float("nan")


# ------------------------------------------------------------------------------------------- health
@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (HealthInputs(drift_share=0.5, performance=NAN, baseline=0.9), "performance is NaN"),
        (HealthInputs(performance=0.5, baseline=NAN), "baseline is NaN"),
        (HealthInputs(latency_p99_ms=NAN, latency_slo_ms=100.0), "latency_p99_ms is NaN"),
        (HealthInputs(latency_p99_ms=900.0, latency_slo_ms=NAN), "latency_slo_ms is NaN"),
        (HealthInputs(latency_p99_ms=900.0, latency_slo_ms=math.inf), "latency_slo_ms must be finite and > 0"),
        (HealthInputs(performance=0.5, baseline=math.inf), "baseline must be finite and not 0"),
    ],
)
def test_health_refuses_nan_instead_of_scoring_100(inputs, message):
    # Before, each of these scored a perfect 100.0 (a NaN penalty, then min(100, nan) == 100), hiding even
    # the half of the columns that drifted in the first case.
    with pytest.raises(InvalidInput, match=message):
        health_score(inputs)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (HealthWeights(max_relative_drop=0.0), "max_relative_drop must be finite and > 0, got 0.0"),
        (HealthWeights(max_error_rate=0.0), "max_error_rate must be finite and > 0, got 0.0"),
        (HealthWeights(errors=-0.1), "errors must be finite and >= 0, got -0.1"),
        (HealthWeights(errors=NAN), "errors must be finite and >= 0, got nan"),
    ],
)
def test_health_refuses_weights_that_break_the_formula(weights, message):
    # Before: ZeroDivisionError for a zero scale; 100.0 for a negative or NaN weight with 5 % errors.
    with pytest.raises(InvalidInput, match=message):
        health_score(HealthInputs(drift_share=0.0, performance=0.5, baseline=0.9, error_rate=0.05), weights)


def test_health_takes_the_limit_of_an_infinite_current_value():
    h = health_score(HealthInputs(latency_p99_ms=math.inf, latency_slo_ms=100.0, error_rate=0.0))
    assert h.penalties == {"latency": 1.0, "errors": 0.0}
    assert h.score == pytest.approx(50.0)
    rmse = health_score(HealthInputs(performance=math.inf, baseline=1.0, higher_is_better=False))
    assert (rmse.score, rmse.penalties) == (0.0, {"performance": 1.0})


# ------------------------------------------------------------------------------------------- alerts
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", NAN, "threshold must be finite, got nan"),
        ("threshold", math.inf, "threshold must be finite, got inf"),
        ("for_s", NAN, "window_s must be finite and >= 0, got nan"),
        ("cooldown_s", NAN, "cooldown_s must be finite and >= 0, got nan"),
    ],
)
def test_rules_with_nan_or_infinite_settings_are_refused(field, value, message):
    # TOML spells them `nan` and `inf`; before, such a rule loaded and then never fired (or never cooled down).
    d = {"name": "slow", "metric": "latency_p99_ms", "comparison": ">", "threshold": 500.0, field: value}
    with pytest.raises(InvalidInput, match=rf"^rules\[0\]: rule 'slow': {message}$"):
        rules_from_dicts([d])


@pytest.mark.parametrize("value", [np.float32(900.0), np.int64(900), np.float64(900.0), 900])
def test_numpy_metric_values_are_evaluated(value):
    # Before, np.float32 and np.int64 values were not "numbers" to the manager: the rule never fired.
    manager = AlertManager([AlertRule("slow", "latency_p99_ms", ">", 500.0)])
    events = manager.evaluate({"latency_p99_ms": value}, now=10.0)
    assert [(e.rule, e.status, e.value) for e in events] == [("slow", "firing", 900.0)]
    resolved = manager.evaluate({"latency_p99_ms": type(value)(100)}, now=20.0)
    assert [(e.status, e.value) for e in resolved] == [("resolved", 100.0)]


def test_nan_and_booleans_still_leave_the_rule_state_alone():
    manager = AlertManager([AlertRule("slow", "latency_p99_ms", ">", 500.0)])
    assert manager.evaluate({"latency_p99_ms": 900.0}, now=0.0)[0].status == "firing"
    for v in (NAN, np.float32("nan"), True, np.bool_(False), "900", None):
        assert manager.evaluate({"latency_p99_ms": v}, now=1.0) == []
    assert manager.firing == ["slow"]


# ----------------------------------------------------------------------------------- concept drift
DETECTORS = [DDM, EDDM, ADWIN, PageHinkley, HDDM_A, lambda: KSWIN(seed=0)]


def _stream() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.random(500) < 0.1, rng.random(500) < 0.6]).astype(np.float64)


@pytest.mark.parametrize("make", DETECTORS)
@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_detectors_refuse_non_finite_values_and_keep_their_state(make, bad):
    # Before: DDM raised a TypeError; ADWIN, Page-Hinkley and HDDM_A swallowed the NaN and never detected
    # the drift at 500 again.
    stream = _stream()
    expected = make().detect(stream)
    assert expected, "the stream must drift for the test to mean anything"
    det = make()
    got = det.detect(stream[:10])
    with pytest.raises(InvalidInput, match="concept drift detectors need finite values"):
        det.update(bad)
    got += [10 + i for i in det.detect(stream[10:])]
    assert got == expected


def test_concept_drift_skips_rows_without_a_finite_error():
    stream = _stream()
    n = stream.size
    pred = np.where(stream == 1, 1.0, 0.0)
    label = np.zeros(n)
    joined = Joined(np.arange(n) * 1e6, [f"r{i}" for i in range(n)], np.zeros(n, int), pred, None, label, "regression")
    clean = concept_drift(joined)
    bad = 20
    pred2 = np.insert(pred, bad, NAN)
    joined2 = Joined(
        np.arange(n + 1) * 1e6,
        [f"r{i}" for i in range(n + 1)],
        np.zeros(n + 1, int),
        pred2,
        None,
        np.zeros(n + 1),
        "regression",
    )
    shifted = concept_drift(joined2)
    assert any(clean.values())
    assert shifted == {k: [i + 1 if i >= bad else i for i in v] for k, v in clean.items()}


# --------------------------------------------------------------------------- contingency drift test
def test_chi2_contingency_on_disjoint_windows_is_certain_drift():
    ref, cur = np.array(["a", "b"] * 50), np.array(["c", "d"] * 50)
    # Before: scipy's ValueError about a zero expected frequency escaped.
    assert chi2_contingency_test(ref, cur) == (math.inf, 0.0)
    col = detect_drift({"x": ref}, {"x": cur}, methods="chi2_contingency", all_statistics=True)["x"]
    assert (col.score, col.statistic, col.drifted) == (0.0, math.inf, True)
    assert col.statistics["chi2_contingency"] == 0.0 and col.statistics["chisquare"] == 0.0


def test_chi2_contingency_of_one_reference_category_gone_entirely_is_drift():
    # Before: (0.0, 1.0), "no drift", for a current window with none of the reference's only category
    # (and for two different constant numeric columns).
    assert chi2_contingency_test(np.array(["a"] * 50), np.array(["c", "d"] * 25)) == (math.inf, 0.0)
    assert chi2_contingency_test(np.ones(50), np.full(50, 2.0)) == (math.inf, 0.0)
    # One reference category the current window still holds: nothing can differ in proportion.
    assert chi2_contingency_test(np.array(["a"] * 50), np.array(["a", "d"] * 25)) == (0.0, 1.0)


# ------------------------------------------------------------------------------------- performance
def test_scores_shorter_than_the_labels_are_refused_not_truncated():
    from fastml.monitoring.performance import PerformanceTracker, classification_metrics

    tracker = PerformanceTracker()
    # Before, zip() kept the first two outcomes and dropped the third without a word (labelled == 2).
    with pytest.raises(InvalidInput, match=r"^labels \(3,\) and scores \(2,\) differ in shape$"):
        tracker.add_outcomes([1, 0, 1], [1, 0, 0], scores=[0.9, 0.1])
    with pytest.raises(InvalidInput, match=r"^2 timestamps for 3 records"):
        tracker.add_outcomes([1, 0, 1], [1, 0, 0], timestamps_s=[1.0, 2.0])
    assert tracker.metrics(now=0.0)["labelled"] == 0
    tracker.add_outcomes([1, 0, 1], [1, 0, 0], scores=[0.9, 0.1, 0.4], timestamps_s=5.0)
    m = tracker.metrics(now=10.0)
    assert (m["labelled"], m["accuracy"], m["roc_auc"]) == (3, pytest.approx(2 / 3), 1.0)
    with pytest.raises(InvalidInput, match=r"^labels \(3,\) and scores \(2,\) differ in shape$"):
        classification_metrics([1, 0, 1], [1, 0, 1], scores=[0.5, 0.2])
    with pytest.raises(InvalidInput, match=r"^2 error flags for 3 requests"):
        tracker.add_requests([100.0, 200.0, 300.0], errors=[True, False])


def test_a_nan_label_is_refused_not_counted_as_a_miss():
    from fastml.monitoring.performance import PerformanceTracker

    for task in ("classification", "regression"):
        tracker = PerformanceTracker(task)
        # Before: accuracy 2/3 (the unknown outcome counted as wrong) or RMSE/MAE NaN.
        with pytest.raises(InvalidInput, match=r"^labels hold 1 NaN value\(s\): record only known outcomes$"):
            tracker.add_outcomes([1.0, 0.0, NAN], [1, 0, 0])
        tracker.add_outcomes([1.0, 0.0], [1, 0])
        m = tracker.metrics()
        assert m["labelled"] == 2
        assert (m["accuracy"] == 1.0) if task == "classification" else (m["rmse"], m["mae"]) == (0.0, 0.0)


# --------------------------------------------------------------------------------- empty windows, CLI
@pytest.mark.parametrize(
    ("current", "message"),
    [
        ("a,b\n", "column 'a': no finite values in current"),  # a header and no rows
        ("a,b\n,\n,\n", "column 'a': no finite values in current"),  # every value missing
        ("a,b\nfoo,x\n", "column 'a' is numeric in the reference but object in current"),  # text really
    ],
)
def test_cli_drift_names_an_empty_current_column_as_empty(tmp_path, capsys, current, message):
    from fastml.cli import main

    (tmp_path / "ref.csv").write_text("a,b\n1,x\n2,y\n3,x\n")
    (tmp_path / "cur.csv").write_text(current)
    # Before: an empty or all-missing column (Arrow's null type, read as objects) was reported as text in a
    # numeric column.
    args = ["monitor", "drift", "--reference", str(tmp_path / "ref.csv"), "--current", str(tmp_path / "cur.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"fastml: error: InvalidInput: {message}\n"


def test_an_all_missing_categorical_current_column_is_named():
    ref = {"c": np.array(["a", "b"] * 10)}
    with pytest.raises(InvalidInput, match=r"^column 'c': no non-missing values in current$"):
        detect_drift(ref, {"c": np.array([None, np.nan] * 5, dtype=object)})
