"""Fairness metrics against fairlearn's own functions, and AIF360's sign conventions by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as flm

from fastml.errors import InvalidInput
from fastml.governance.fairness import assess_fairness, check_values


def _data(n_groups: int, seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    groups = np.array([f"g{i}" for i in range(n_groups)])[rng.integers(0, n_groups, n)]
    y_true = rng.integers(0, 2, n)
    # Group-dependent bias so disparities are not all ~0.
    bias = {f"g{i}": 0.15 * i for i in range(n_groups)}
    p = np.clip(0.3 + 0.4 * y_true + np.vectorize(bias.get)(groups) - 0.2, 0, 1)
    y_pred = (rng.random(n) < p).astype(int)
    return y_true, y_pred, groups


FAIRLEARN = {
    "demographic_parity_difference": flm.demographic_parity_difference,
    "demographic_parity_ratio": flm.demographic_parity_ratio,
    "equal_opportunity_difference": flm.equal_opportunity_difference,
    "equal_opportunity_ratio": flm.equal_opportunity_ratio,
    "equalized_odds_difference": flm.equalized_odds_difference,
    "equalized_odds_ratio": flm.equalized_odds_ratio,
}


@pytest.mark.parametrize("n_groups", [2, 3, 5])
@pytest.mark.parametrize("method", ["between_groups", "to_overall"])
def test_matches_fairlearn(n_groups, method):
    y_true, y_pred, groups = _data(n_groups, seed=10 + n_groups)
    rep = assess_fairness(y_true, y_pred, groups, method=method)
    assert len(rep.groups) == n_groups
    for name, fn in FAIRLEARN.items():
        expected = fn(y_true, y_pred, sensitive_features=groups, method=method)
        assert rep.value(name) == pytest.approx(expected, abs=1e-12), name
    avg = flm.equalized_odds_difference(y_true, y_pred, sensitive_features=groups, method=method, agg="mean")
    assert rep.value("average_odds_difference") == pytest.approx(avg, abs=1e-12)
    # Per-group rates equal MetricFrame's.
    mf = flm.MetricFrame(
        metrics={
            "sel": flm.selection_rate,
            "tpr": flm.true_positive_rate,
            "fpr": flm.false_positive_rate,
            "count": flm.count,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    for g in rep.groups:
        row = mf.by_group.loc[g.key[0]]
        assert g.selection_rate == pytest.approx(row["sel"])
        assert g.tpr == pytest.approx(row["tpr"])
        assert g.fpr == pytest.approx(row["fpr"])
        assert g.count == row["count"]
    # Disparate impact is always against the most favoured group.
    sel = np.array([g.selection_rate for g in rep.groups])
    assert rep.value("disparate_impact") == pytest.approx(sel.min() / sel.max())


def test_intersectional_groups_match_fairlearn():
    rng = np.random.default_rng(7)
    n = 900
    sf = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "race": rng.choice(["a", "b", "c"], n)})
    y_true = rng.integers(0, 2, n)
    y_pred = (rng.random(n) < np.where(sf["sex"] == "F", 0.35, 0.55) + 0.1 * y_true).astype(int)
    rep = assess_fairness(y_true, y_pred, sf)
    assert len(rep.groups) == 6
    assert rep.group("sex=F, race=b").key == ("F", "b")
    for name, fn in FAIRLEARN.items():
        assert rep.value(name) == pytest.approx(fn(y_true, y_pred, sensitive_features=sf), abs=1e-12), name
    # A mapping of columns is the same thing.
    rep2 = assess_fairness(y_true, y_pred, {"sex": sf["sex"].to_numpy(), "race": sf["race"].to_numpy()})
    assert rep2.value("equalized_odds_difference") == rep.value("equalized_odds_difference")


def test_sample_weight_matches_fairlearn():
    y_true, y_pred, groups = _data(3, seed=3)
    w = np.random.default_rng(1).random(len(y_true)) * 3
    rep = assess_fairness(y_true, y_pred, groups, sample_weight=w)
    for name in ("demographic_parity_difference", "equalized_odds_difference"):
        exp = FAIRLEARN[name](y_true, y_pred, sensitive_features=groups, sample_weight=w)
        assert rep.value(name) == pytest.approx(exp, abs=1e-12)


def test_aif360_pair_conventions_by_hand():
    # Hand-built data: privileged "M" selected 6/10, unprivileged "F" selected 3/10.
    #   M: y_true = 1 1 1 1 1 0 0 0 0 0 ; y_pred = 1 1 1 1 0 1 1 0 0 0  -> TPR 4/5, FPR 2/5
    #   F: y_true = 1 1 1 1 1 0 0 0 0 0 ; y_pred = 1 1 0 0 0 1 0 0 0 0  -> TPR 2/5, FPR 1/5
    y_true = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 2
    y_pred = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0] + [1, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    sex = ["M"] * 10 + ["F"] * 10
    rep = assess_fairness(y_true, y_pred, sex, privileged="M", unprivileged="F")
    sel_u, sel_p, tpr_u, tpr_p, fpr_u, fpr_p = 3 / 10, 6 / 10, 2 / 5, 4 / 5, 1 / 5, 2 / 5
    assert rep.value("pair.statistical_parity_difference") == pytest.approx(sel_u - sel_p)  # -0.3: unpriv worse
    assert rep.value("pair.disparate_impact") == pytest.approx(sel_u / sel_p)  # 0.5
    assert rep.value("pair.equal_opportunity_difference") == pytest.approx(tpr_u - tpr_p)
    assert rep.value("pair.average_odds_difference") == pytest.approx(((fpr_u - fpr_p) + (tpr_u - tpr_p)) / 2)
    assert rep.value("pair.average_abs_odds_difference") == pytest.approx((abs(fpr_u - fpr_p) + abs(tpr_u - tpr_p)) / 2)
    acc_u, acc_p = 7 / 10, 8 / 10
    assert rep.value("pair.error_rate_difference") == pytest.approx((1 - acc_u) - (1 - acc_p))
    assert rep.value("pair.statistical_parity_difference") < 0
    assert not rep.metrics["pair.disparate_impact"].passed  # 0.5 < 0.8: four-fifths rule fails
    assert (rep.privileged, rep.unprivileged) == ("M", "F")
    # Swapping the roles flips the signs and inverts the ratio.
    rev = assess_fairness(y_true, y_pred, sex, privileged="F", unprivileged="M")
    assert rev.value("pair.statistical_parity_difference") == pytest.approx(0.3)
    assert rev.value("pair.disparate_impact") == pytest.approx(2.0)


def test_thresholds_pass_fail():
    # A perfect classifier (TPR 1, FPR 0 everywhere) on groups with different base rates:
    # equalized odds holds, demographic parity does not (a: 3/4 selected, b: 1/4).
    y_true = [1, 1, 1, 0] * 25 + [1, 0, 0, 0] * 25
    y_pred = list(y_true)
    g = ["a"] * 100 + ["b"] * 100
    rep = assess_fairness(y_true, y_pred, g)
    assert rep.value("demographic_parity_difference") == pytest.approx(0.5)
    assert not rep.metrics["demographic_parity_difference"].passed
    assert rep.value("equalized_odds_difference") == 0.0
    assert rep.metrics["equalized_odds_difference"].passed
    assert not rep.passed and any("demographic_parity_difference" in f for f in rep.failures)
    loose = assess_fairness(
        y_true,
        y_pred,
        g,
        thresholds={
            "demographic_parity_difference": 1.0,
            "demographic_parity_ratio": None,
            "disparate_impact": {"min": 0.0},
        },
    )
    assert loose.metrics["demographic_parity_difference"].passed
    assert "demographic_parity_ratio" in loose.metrics and loose.metrics["demographic_parity_ratio"].min is None
    assert loose.passed
    checked = check_values(
        {"demographic_parity_difference": 0.2, "unknown_extra": 1.0}, {"demographic_parity_difference": 0.25}
    )
    assert list(checked) == ["demographic_parity_difference"] and checked["demographic_parity_difference"].passed


def test_bad_input_is_named():
    with pytest.raises(InvalidInput, match="y_pred has 2 rows"):
        assess_fairness([1, 0, 1], [1, 0], ["a", "b", "a"])
    with pytest.raises(InvalidInput, match="method"):
        assess_fairness([1], [1], ["a"], method="pairwise")
    with pytest.raises(InvalidInput, match="unknown fairness metric"):
        assess_fairness([1, 0], [1, 0], ["a", "b"], thresholds={"dp": 0.1})
    with pytest.raises(InvalidInput, match="does not occur"):
        assess_fairness([1, 0], [1, 0], ["a", "b"], privileged="a", unprivileged="z")


def test_undefined_ratio_fails_and_report_serialises():
    rep = assess_fairness([1, 0, 1, 0], [0, 0, 0, 0], ["a", "a", "b", "b"])
    assert math.isnan(rep.value("demographic_parity_ratio"))
    assert not rep.metrics["demographic_parity_ratio"].passed
    d = rep.to_dict()
    assert d["metrics"]["demographic_parity_ratio"]["value"] is None
    assert d["groups"][0]["key"] == ["a"]


def test_missing_values_form_their_own_group():
    rep = assess_fairness(
        [1, 0, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0], np.array(["a", "a", None, None, "b", "b"], dtype=object)
    )
    assert [g.label for g in rep.groups] == ["None", "a", "b"]
    assert rep.group("None").selection_rate == 1.0
