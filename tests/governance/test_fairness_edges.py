"""Fairness edge cases: rates with an empty denominator, one group, non-binary labels, bad weights.

Each case here used to give a number that read as "fair" (a disparity of 0 that compared nothing); an
undefined disparity must be reported as undefined (NaN, ``null`` in JSON) with a reason, and must fail.
"""

from __future__ import annotations

import math

import pytest

from fastml.errors import InvalidInput
from fastml.governance.fairness import assess_fairness

ONLY_EOD = {
    "demographic_parity_difference": None,
    "demographic_parity_ratio": None,
    "disparate_impact": None,
    "equal_opportunity_ratio": None,
    "equalized_odds_difference": None,
    "equalized_odds_ratio": None,
    "average_odds_difference": None,
    "accuracy_difference": None,
}


def test_group_without_positive_labels_makes_equal_opportunity_undefined():
    # Group a has no positive labels, so its TPR does not exist. Group b's TPR is 0. Counting a's TPR as 0
    # gave an equal opportunity difference of 0: a pass for a model that never finds b's positives.
    y_true = [0, 0, 0, 0] + [1, 1, 0, 0]
    y_pred = [0, 0, 1, 0] + [0, 0, 1, 0]
    rep = assess_fairness(y_true, y_pred, ["a"] * 4 + ["b"] * 4, thresholds=ONLY_EOD)
    assert math.isnan(rep.group("a").tpr)
    assert rep.group("b").tpr == 0.0
    eod = rep.metrics["equal_opportunity_difference"]
    assert math.isnan(eod.value) and not eod.passed and not rep.passed
    assert eod.reason == "the TPR is undefined for group(s) a (no positive labels)"
    assert any("equal_opportunity_difference = undefined" in f and "a (no positive labels)" in f for f in rep.failures)
    d = rep.to_dict()
    assert d["metrics"]["equal_opportunity_difference"]["value"] is None
    assert d["metrics"]["equal_opportunity_difference"]["reason"] == eod.reason
    assert d["groups"][0]["tpr"] is None and d["groups"][1]["tpr"] == 0.0
    # Rates that are defined are unchanged: the FPR side is a: 1/4, b: 1/2.
    assert rep.group("a").fpr == pytest.approx(0.25) and rep.group("b").fpr == pytest.approx(0.5)
    assert "group a has no positive labels; its TPR is undefined" in rep.warnings


def test_undefined_fpr_is_not_dropped_from_equalized_odds():
    # b has only positive labels (FPR undefined). max(tpr_d, nan) silently returned tpr_d = 0: "fair".
    y_true = [1, 1, 0, 0] + [1, 1, 1, 1]
    y_pred = [1, 1, 0, 0] + [1, 1, 1, 1]
    rep = assess_fairness(y_true, y_pred, ["a"] * 4 + ["b"] * 4)
    assert rep.value("equal_opportunity_difference") == 0.0
    for name in ("equalized_odds_difference", "equalized_odds_ratio", "average_odds_difference"):
        m = rep.metrics[name]
        assert math.isnan(m.value) and not m.passed, name
        assert m.reason == "the FPR is undefined for group(s) b (no negative labels)"


def test_single_group_is_not_a_pass():
    rep = assess_fairness([0, 1, 0, 1], [0, 1, 1, 1], ["a"] * 4)
    assert not rep.passed
    m = rep.metrics["demographic_parity_difference"]
    assert math.isnan(m.value) and m.reason == "only 1 group (a): nothing to compare"
    assert "only 1 group present; disparities are undefined" in rep.warnings


def test_zero_weight_group_has_undefined_rates():
    rep = assess_fairness([0, 1, 0, 1], [0, 1, 1, 1], ["a", "a", "b", "b"], sample_weight=[1, 1, 0, 0])
    b = rep.group("b")
    assert b.weight == 0 and math.isnan(b.selection_rate) and math.isnan(b.tpr) and math.isnan(b.accuracy)
    m = rep.metrics["demographic_parity_difference"]
    assert math.isnan(m.value) and m.reason == "the selection rate is undefined for group(s) b (total weight 0)"


@pytest.mark.parametrize("weights", [[1, 1, -1, 3], [1, 1, float("nan"), 1], [1, 1, float("inf"), 1]])
def test_negative_or_non_finite_weights_are_rejected(weights):
    with pytest.raises(InvalidInput, match="sample_weight must be finite and >= 0"):
        assess_fairness([0, 1, 0, 1], [0, 1, 1, 1], ["a", "a", "b", "b"], sample_weight=weights)


def test_scores_instead_of_decisions_are_rejected():
    # Before: y_pred == 1 is false for every score, so nobody was "selected" and every difference was 0.
    with pytest.raises(InvalidInput, match="need binary hard decisions.*8 distinct values"):
        assess_fairness([0, 1, 0, 1, 0, 1], [0.2, 0.9, 0.1, 0.8, 0.7, 0.6], list("aaabbb"))


def test_multiclass_labels_are_rejected():
    with pytest.raises(InvalidInput, match="3 distinct values"):
        assess_fairness([0, 1, 2, 1], [0, 2, 1, 1], list("aabb"))


def test_missing_labels_are_rejected():
    with pytest.raises(InvalidInput, match="y_pred has missing"):
        assess_fairness([1, 1, 0, 0], [1.0, float("nan"), 0.0, 0.0], list("aabb"))


def test_pos_label_that_does_not_occur_is_rejected():
    # String labels with the default pos_label=1: every row was "unfavourable", every difference 0.
    with pytest.raises(InvalidInput, match="pos_label 1 occurs in neither y_true nor y_pred.*'no', 'yes'"):
        assess_fairness(["no", "yes", "no", "yes"], ["no", "yes", "yes", "yes"], list("aabb"))
    rep = assess_fairness(["no", "yes", "no", "yes"], ["no", "yes", "yes", "yes"], list("aabb"), pos_label="yes")
    assert rep.value("demographic_parity_difference") == pytest.approx(0.5)


def test_pair_metrics_undefined_when_a_pair_rate_is():
    y_true = [0, 0, 0, 0] + [1, 1, 0, 0]
    y_pred = [0, 0, 1, 0] + [1, 0, 1, 0]
    rep = assess_fairness(y_true, y_pred, ["a"] * 4 + ["b"] * 4, privileged="a", unprivileged="b")
    m = rep.metrics["pair.equal_opportunity_difference"]
    assert math.isnan(m.value) and not m.passed
    assert m.reason == "the TPR of a is undefined (no positive labels)"
    assert rep.value("pair.false_positive_rate_difference") == pytest.approx(0.5 - 0.25)


def test_perfect_classifier_keeps_equalized_odds_ratio_of_one():
    # FPR is 0 in every group (0/0 as a ratio) but equal: the TPR side decides, as in fairlearn.
    y_true = [1, 1, 1, 0] * 5 + [1, 0, 0, 0] * 5
    rep = assess_fairness(y_true, list(y_true), ["a"] * 20 + ["b"] * 20)
    assert rep.value("equalized_odds_ratio") == 1.0 and rep.metrics["equalized_odds_ratio"].passed
    assert rep.value("equalized_odds_difference") == 0.0
