"""A/B statistics: equal scipy's on seeded data, SRM flags a skewed split, the sequential test stays valid
under peeking while a naive fixed-horizon test looked at the same way does not."""

import numpy as np
import pytest
from scipy import stats

from fastml.errors import InvalidInput
from fastml.monitoring import experiments as ex


def test_welch_equals_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 2, 300), rng.normal(10.4, 3, 250)
    r = ex.welch_ttest(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert r.effect == pytest.approx(b.mean() - a.mean())


def test_mann_whitney_equals_scipy_with_ties():
    rng = np.random.default_rng(2)
    a = np.round(rng.lognormal(3, 0.5, 400), 0)  # rounded: many ties
    b = np.round(rng.lognormal(3.2, 0.5, 350), 0)
    r = ex.mann_whitney_u(a, b)
    ref = stats.mannwhitneyu(b, a, method="asymptotic", alternative="two-sided")
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.p_value < 0.05


def test_two_proportion_z_equals_manual_and_chi2():
    r = ex.two_proportion_ztest(120, 1000, 150, 1000)
    # The pooled z-test squared is the 2x2 chi-square without continuity correction.
    chi2, p, _, _ = stats.chi2_contingency([[120, 880], [150, 850]], correction=False)
    assert r.statistic**2 == pytest.approx(chi2, rel=1e-10)
    assert r.p_value == pytest.approx(p, rel=1e-9)
    assert r.effect == pytest.approx(0.03)
    assert r.ci_low < 0.03 < r.ci_high


def test_srm_flags_a_skewed_split_and_equals_scipy():
    ok = ex.srm_check({"a": 9010, "b": 990}, {"a": 9000, "b": 1000})
    assert not ok.flagged
    bad = ex.srm_check({"a": 9200, "b": 800}, {"a": 9000, "b": 1000})
    ref = stats.chisquare([9200, 800], [9000, 1000])
    assert bad.chi2 == pytest.approx(ref.statistic) and bad.p_value == pytest.approx(ref.pvalue)
    assert bad.flagged
    with pytest.raises(InvalidInput, match="weights name"):
        ex.srm_check({"a": 1}, {"b": 1})


def test_min_sample_size_matches_the_textbook_formula():
    # 10% -> 12% at alpha 0.05, power 0.8: the classic answer is about 3,841 per arm.
    n = ex.min_sample_size(0.10, 0.02)
    assert 3800 <= n <= 3900
    assert ex.min_sample_size(0.0, 1.0, kind="mean", sd=2.0) == int(np.ceil(2 * (1.959964 + 0.841621) ** 2 * 4))
    with pytest.raises(InvalidInput, match="mde"):
        ex.min_sample_size(0.1, 0)


def test_msprt_interval_is_where_the_ratio_crosses():
    r = ex.msprt(0.0, 1.0, 500, 0.3, 1.0, 500, alpha=0.05, tau=0.2)
    v = 2 / 500
    # At the interval's ends the ratio of the shifted null equals 1/alpha.
    for end in (r.ci_low, r.ci_high):
        assert float(ex.msprt_lambda(r.effect - end, v, 0.04)) == pytest.approx(20.0, rel=1e-9)
    assert r.p_value == pytest.approx(min(1.0, 1 / r.statistic))
    assert ex.msprt(0.0, 1.0, 500, 0.3, 1.0, 500, previous_p=1e-6).p_value == 1e-6  # running minimum


def _looks(n_exp=1000, looks=20, per_look=100, seed=7):
    """Cumulative means/variances of 1,000 A/A experiments at 20 looks each (vectorised)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n_exp, looks, per_look))
    b = rng.normal(0, 1, (n_exp, looks, per_look))
    n = per_look * np.arange(1, looks + 1)
    out = []
    for x in (a, b):
        s = np.cumsum(x.sum(axis=2), axis=1)
        ss = np.cumsum((x**2).sum(axis=2), axis=1)
        mean = s / n
        var = (ss - n * mean**2) / (n - 1)
        out.append((mean, var))
    return n, out


def test_peeking_aa_sequential_stays_valid_naive_does_not():
    alpha = 0.05
    n, ((ma, va), (mb, vb)) = _looks()
    v = va / n + vb / n
    effect = mb - ma
    # Naive: a fixed-horizon z-test at every look, stopping at the first "significant" one.
    z = effect / np.sqrt(v)
    naive_fp = np.mean(np.any(2 * stats.norm.sf(np.abs(z)) < alpha, axis=1))
    # Sequential: the mSPRT ratio crossing 1/alpha at any look.
    lam = ex.msprt_lambda(effect, v, tau2=0.1**2)
    seq_fp = np.mean(np.any(lam >= 1 / alpha, axis=1))
    assert naive_fp > alpha * 2  # peeking 20 times inflates it (about 0.2-0.25)
    assert seq_fp <= alpha
    # The single-look function agrees with the vectorised one.
    r = ex.msprt(ma[0, -1], va[0, -1], n[-1], mb[0, -1], vb[0, -1], n[-1], tau=0.1)
    assert r.statistic == pytest.approx(float(lam[0, -1]))


def test_sequential_test_detects_a_real_effect():
    rng = np.random.default_rng(3)
    a = (rng.random(20000) < 0.10).astype(float)
    b = (rng.random(20000) < 0.13).astype(float)
    v = ex.compare(a, b, kind="proportion", metric="ctr", higher_is_better=True, mde=0.02)
    assert v.verdict == ex.WINNER
    assert v.sequential.ci_low > 0 and v.fixed.p_value < 1e-6
    assert v.min_sample_size == ex.min_sample_size(a.mean(), 0.02) and v.reached_sample_size
    worse = ex.compare(a, b, kind="proportion", metric="error_rate", higher_is_better=False)
    assert worse.verdict == ex.LOSER
    same = ex.compare(
        a, (rng.random(20000) < 0.10).astype(float), kind="proportion", metric="ctr", higher_is_better=True
    )
    assert same.verdict == ex.INCONCLUSIVE


def test_analyze_reports_per_variant_and_srm():
    rng = np.random.default_rng(4)
    variants = {
        "control": {
            "weight_bp": 9000,
            "requests": 9200,
            "errors": 10,
            "latency_us": rng.lognormal(6, 0.3, 2000),
            "quality": (rng.random(3000) < 0.9).astype(float),
        },
        "candidate": {
            "weight_bp": 1000,
            "requests": 800,
            "errors": 40,
            "latency_us": rng.lognormal(6.5, 0.3, 800),
            "quality": (rng.random(700) < 0.8).astype(float),
        },
    }
    rep = ex.analyze("rec", variants, baseline="control")
    assert rep.srm.flagged  # 9200/800 against 90/10
    c = rep.comparisons["candidate"]
    assert c["error_rate"].verdict == ex.LOSER
    assert c["latency_us"].verdict == ex.LOSER
    assert c["quality"].verdict == ex.LOSER
    assert rep.overall("candidate", "quality") == ex.INCONCLUSIVE  # SRM: nothing can be trusted
    d = rep.to_dict()
    assert d["variants"][1]["error_rate"] == pytest.approx(0.05)
    assert set(d["variants"][0]["latency_us"]) == {"p50", "p90", "p99"}
