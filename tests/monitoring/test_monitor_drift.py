"""Drift statistics agree with scipy (and with Evidently, when its venv exists) on seeded data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from fastml.errors import InvalidInput
from fastml.monitoring import drift as D
from fastml.monitoring.profile import ReferenceProfile

REL = 1e-6
ROOT = Path(__file__).resolve().parents[2]
EVIDENTLY_PY = ROOT / ".cache" / "evidently-venv" / "bin" / "python"


def close(a, b):
    return a == pytest.approx(b, rel=REL, abs=1e-12)


SIZES = [(50, 70), (300, 300), (999, 1500), (4000, 3000), (12000, 11000)]


@pytest.mark.parametrize("n1,n2", SIZES)
def test_ks_matches_scipy(n1, n2):
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=n1), rng.normal(0.05, 1.1, size=n2)
    d, p = D.ks_test(a, b)
    ref = stats.ks_2samp(a, b)
    assert close(d, ref.statistic) and close(p, ref.pvalue)


def test_ks_with_ties_and_nan_matches_scipy_on_finite_values():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 30, 800).astype(float)
    b = rng.integers(2, 31, 600).astype(float)
    a[:5] = np.nan
    b[:3] = np.inf
    d, p = D.ks_test(a, b)
    ref = stats.ks_2samp(a[np.isfinite(a)], b[np.isfinite(b)])
    assert close(d, ref.statistic) and close(p, ref.pvalue)


@pytest.mark.parametrize("n1,n2", SIZES)
def test_wasserstein_normed_matches_scipy(n1, n2):
    rng = np.random.default_rng(n2)
    a, b = rng.lognormal(size=n1), rng.lognormal(0.1, size=n2)
    assert close(D.wasserstein_normed(a, b), stats.wasserstein_distance(a, b) / np.std(a))


def test_wasserstein_norm_floor_for_constant_reference():
    a, b = np.full(100, 3.0), np.full(80, 3.5)
    assert close(D.wasserstein_normed(a, b), 0.5 / 0.001)


def evidently_bins(a, b):
    """Evidently's get_binned_data, written out with numpy (the reference the tests compare to)."""
    if len(np.unique(a)) > 20:
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")
        return np.histogram(a, edges)[0] / len(a), np.histogram(b, edges)[0] / len(b)
    keys = np.union1d(a, b)
    return (np.array([(a == k).sum() for k in keys]) / len(a), np.array([(b == k).sum() for k in keys]) / len(b))


def fill(p):
    nz = p[p != 0]
    p = p.copy()
    p[p == 0] = nz.min() / 1e6 if nz.min() <= 0.0001 else 0.0001
    return p


@pytest.mark.parametrize("n1,n2", SIZES)
def test_psi_and_jensen_shannon_match_reference_binning(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    a, b = rng.normal(size=n1), rng.normal(0.3, 1.0, size=n2)
    r, c = evidently_bins(a, b)
    assert close(D.jensen_shannon(a, b), jensenshannon(r, c))
    rf, cf = fill(r), fill(c)
    assert close(D.psi(a, b), np.sum((rf - cf) * np.log(rf / cf)))


def test_sturges_edges_and_sorted_histogram_equal_numpy():
    rng = np.random.default_rng(3)
    for n in (21, 100, 1000, 20001):
        x = rng.standard_cauchy(n)
        edges = np.histogram_bin_edges(x, "sturges")
        mine = D.sturges_edges(float(x.min()), float(x.max()), x.size)
        np.testing.assert_array_equal(mine, edges)
        np.testing.assert_array_equal(D._sorted_histogram(np.sort(x), edges), np.histogram(x, edges)[0])


def test_low_cardinality_numeric_uses_value_bins_and_psi_zero_fill():
    a = np.array([0, 0, 1, 1, 2, 2, 2, 3] * 50, dtype=float)
    b = np.array([0, 1, 1, 1, 2, 4] * 40, dtype=float)  # 3 absent from current, 4 absent from reference
    r, c = evidently_bins(a, b)
    assert r.size == 5
    rf, cf = fill(r), fill(c)
    assert close(D.psi(a, b), np.sum((rf - cf) * np.log(rf / cf)))
    assert close(D.jensen_shannon(a, b), jensenshannon(r, c))


def test_categorical_tests_match_scipy():
    rng = np.random.default_rng(4)
    cats = np.array(["a", "b", "c", "d"])
    ref = rng.choice(cats, 600, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(cats, 500, p=[0.3, 0.3, 0.2, 0.2])
    rc = np.array([(ref == k).sum() for k in cats])
    cc = np.array([(cur == k).sum() for k in cats])
    s, p = D.chisquare_gof(ref, cur)
    want = stats.chisquare(cc, rc * len(cur) / len(ref))
    assert close(s, want.statistic) and close(p, want.pvalue)
    s, p = D.chi2_contingency_test(ref, cur)
    want = stats.chi2_contingency(np.vstack([rc, cc]))
    assert close(s, want.statistic) and close(p, want.pvalue)


def test_chi2_contingency_uses_reference_categories_only():
    ref = np.array(["a"] * 60 + ["b"] * 40)
    cur = np.array(["a"] * 30 + ["b"] * 30 + ["z"] * 40)
    s, p = D.chi2_contingency_test(ref, cur)
    want = stats.chi2_contingency(np.array([[60, 40], [30, 30]]))  # Yates' correction applies (dof 1)
    assert close(s, want.statistic) and close(p, want.pvalue)


def test_z_test_matches_two_proportion_formula():
    ref = np.array(["no"] * 70 + ["yes"] * 30)
    cur = np.array(["no"] * 50 + ["yes"] * 50)
    z, p = D.z_test(ref, cur)
    p1, p2 = 0.3, 0.5
    pp = (30 + 50) / 200
    want_z = (p1 - p2) / np.sqrt(pp * (1 - pp) * (1 / 100 + 1 / 100))
    assert close(z, want_z) and close(p, 2 * (1 - stats.norm.cdf(abs(want_z))))
    assert D.z_test(np.array(["x"] * 5), np.array(["x"] * 9)) == (0.0, 1.0)


@pytest.mark.parametrize(
    "kind,n_ref,n_values,want",
    [
        ("numeric", 1000, 6, "ks"),
        ("numeric", 1000, 5, "chisquare"),
        ("numeric", 10, 2, "z"),
        ("categorical", 500, 7, "chisquare"),
        ("categorical", 500, 2, "z"),
        ("numeric", 1001, 6, "wasserstein"),
        ("numeric", 5000, 5, "jensenshannon"),
        ("categorical", 5000, 30, "jensenshannon"),
    ],
)
def test_default_method_is_evidentlys(kind, n_ref, n_values, want):
    assert D.default_method(kind, n_ref, n_values) == want


def test_detect_drift_defaults_thresholds_and_dataset_share():
    rng = np.random.default_rng(5)
    ref = {f"x{i}": rng.normal(size=2000) for i in range(4)}
    cur = {f"x{i}": rng.normal(size=2000) + (1.0 if i < 2 else 0.0) for i in range(4)}
    rep = D.detect_drift(ref, cur)
    assert [c.method for c in rep.columns] == ["wasserstein"] * 4
    assert [c.drifted for c in rep.columns] == [True, True, False, False]
    assert rep.share_drifted == 0.5 and rep.dataset_drift  # >= 50 % drifts the dataset
    assert not D.detect_drift(ref, cur, drift_share=0.75).dataset_drift
    # per-column methods and thresholds
    rep = D.detect_drift(ref, cur, methods={"x0": "ks", "x2": "psi"}, thresholds={"x3": 10.0})
    assert rep["x0"].method == "ks" and rep["x0"].threshold == 0.05 and rep["x0"].drifted
    want = stats.ks_2samp(ref["x0"], cur["x0"])
    assert close(rep["x0"].score, want.pvalue) and close(rep["x0"].statistic, want.statistic)
    assert rep["x2"].method == "psi" and rep["x3"].threshold == 10.0 and not rep["x3"].drifted
    cats = {"c": rng.choice(np.array(["a", "b", "c"]), 800)}
    cur_cats = {"c": rng.choice(np.array(["a", "b", "c"]), 600, p=[0.5, 0.3, 0.2])}
    for method, fn in (("chi2_contingency", D.chi2_contingency_test), ("chisquare", D.chisquare_gof), ("z", D.z_test)):
        col = D.detect_drift(cats, cur_cats, methods=method)["c"]
        assert (col.statistic, col.score) == fn(cats["c"], cur_cats["c"]) and col.drifted == (col.score < 0.05)


def test_detect_drift_identical_data_has_no_drift_and_profile_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    data = {"num": rng.normal(size=500), "cat": rng.choice(np.array(["a", "b", "c"]), 500)}
    prof = ReferenceProfile.from_data(data)
    path = prof.save(tmp_path / "ref.arrow")
    rep = D.detect_drift(ReferenceProfile.load(path), data, all_statistics=True)
    assert rep.number_drifted == 0 and not rep.dataset_drift
    assert rep["num"].method == "ks" and rep["num"].score == 1.0
    assert rep["cat"].method == "chisquare" and close(rep["cat"].score, 1.0)
    assert set(rep["num"].statistics) == {"ks", "wasserstein", "psi", "jensenshannon"}
    assert rep["num"].statistics["wasserstein"] == 0.0 and rep["num"].statistics["psi"] == 0.0
    json.dumps(rep.to_dict())  # the JSON twin is serialisable


def test_detect_drift_accepts_pandas_arrow_and_numpy():
    import pandas as pd
    import pyarrow as pa

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3))
    y = rng.normal(size=(300, 3))
    a = D.detect_drift(x, y)
    b = D.detect_drift(pd.DataFrame(x, columns=["f0", "f1", "f2"]), pa.table({f"f{j}": y[:, j] for j in range(3)}))
    assert [c.score for c in a.columns] == [c.score for c in b.columns]


def test_bad_input_is_named():
    x = {"a": np.arange(10.0)}
    with pytest.raises(InvalidInput, match="no column"):
        D.detect_drift(x, {"b": np.arange(10.0)})
    with pytest.raises(InvalidInput, match="unknown drift method"):
        D.detect_drift(x, x, methods="nope")
    with pytest.raises(InvalidInput, match="needs a numeric column"):
        D.detect_drift({"c": np.array(["u", "v"])}, {"c": np.array(["u", "v"])}, methods="ks")
    with pytest.raises(InvalidInput, match="different lengths"):
        D.detect_drift({"a": np.arange(3.0), "b": np.arange(4.0)}, x)
    with pytest.raises(InvalidInput, match="numeric in the reference"):
        D.detect_drift(x, {"a": np.array(["q"] * 10)})


EVIDENTLY_SCRIPT = r"""
import json, sys
import numpy as np, pandas as pd
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.calculations.stattests import (ks_stat_test, chi_stat_test, z_stat_test, psi_stat_test,
    wasserstein_stat_test, jensenshannon_stat_test)
from evidently.legacy.core import ColumnType
data = json.load(sys.stdin)
out = []
for case in data:
    ref, cur = pd.Series(case["ref"]), pd.Series(case["cur"])
    t = ColumnType.Numerical if case["kind"] == "numeric" else ColumnType.Categorical
    default = get_stattest(ref, cur, t, None)
    res = {"default": default.name, "default_score": float(default(ref, cur, t, None).drift_score)}
    for test in ([ks_stat_test, wasserstein_stat_test, psi_stat_test, jensenshannon_stat_test] if t == ColumnType.Numerical
                 else [chi_stat_test, z_stat_test, psi_stat_test, jensenshannon_stat_test]):
        if test is z_stat_test and len(set(case["ref"]) | set(case["cur"])) != 2:
            continue
        res[test.name] = float(test(ref, cur, t, None).drift_score)
    out.append(res)
print(json.dumps(out))
"""


@pytest.mark.skipif(not EVIDENTLY_PY.exists(), reason="Evidently venv absent (.cache/evidently-venv; needs pandas<3)")
def test_scores_equal_evidentlys_own_stattests():
    rng = np.random.default_rng(8)
    cases = [
        {"kind": "numeric", "ref": rng.normal(size=800).tolist(), "cur": rng.normal(0.2, 1, 700).tolist()},
        {"kind": "numeric", "ref": rng.normal(size=3000).tolist(), "cur": rng.normal(0.1, 1.2, 2000).tolist()},
        {
            "kind": "numeric",
            "ref": rng.integers(0, 4, 2000).astype(float).tolist(),
            "cur": rng.integers(0, 5, 1500).astype(float).tolist(),
        },
        {
            "kind": "categorical",
            "ref": rng.choice(list("abcde"), 900).tolist(),
            "cur": rng.choice(list("abcdf"), 400).tolist(),
        },
        {
            "kind": "categorical",
            "ref": rng.choice(list("xy"), 500, p=[0.7, 0.3]).tolist(),
            "cur": rng.choice(list("xy"), 300).tolist(),
        },
        {
            "kind": "categorical",
            "ref": rng.choice(list("pqrs"), 3000).tolist(),
            "cur": rng.choice(list("pqr"), 2500).tolist(),
        },
    ]
    proc = subprocess.run(
        [str(EVIDENTLY_PY), "-c", EVIDENTLY_SCRIPT],
        input=json.dumps(cases),
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, ev in zip(cases, want):
        ref = np.array(case["ref"]) if case["kind"] == "categorical" else np.array(case["ref"], dtype=float)
        cur = np.array(case["cur"]) if case["kind"] == "categorical" else np.array(case["cur"], dtype=float)
        rep = D.detect_drift({"c": ref}, {"c": cur}, all_statistics=True)
        col = rep["c"]
        assert col.method == ev["default"], (case["kind"], len(ref))
        assert close(col.score, ev["default_score"])
        for name, value in ev.items():
            if name in ("default", "default_score"):
                continue
            mine = (
                col.statistics[name]
                if name in col.statistics
                else D.detect_drift({"c": ref}, {"c": cur}, methods=name)["c"].score
            )
            assert close(mine, value), (name, mine, value)


def test_profile_from_feature_store_offline_rows():
    import pyarrow as pa

    from fastml.features import Feature, FeatureGroup, FeatureStore

    rng = np.random.default_rng(9)
    n = 400
    fs = FeatureStore()
    fs.register(
        FeatureGroup(
            "driver",
            entities=["driver_id"],
            features=[Feature("trips", "int64"), Feature("rating", "float32"), Feature("city", "string")],
        )
    )
    trips = rng.integers(0, 100, n)
    rating = rng.normal(4, 0.5, n).astype(np.float32)
    city = rng.choice(np.array(["a", "b", "c"]), n)
    fs.ingest(
        "driver",
        pa.table(
            {
                "driver_id": pa.array(np.arange(n), pa.int64()),
                "event_timestamp": pa.array(np.full(n, 1_700_000_000_000_000), pa.int64()).view(
                    pa.timestamp("us", tz="UTC")
                ),
                "trips": pa.array(trips),
                "rating": pa.array(rating),
                "city": pa.array(city.tolist(), pa.string()),
            }
        ),
    )
    prof = ReferenceProfile.from_feature_store("driver", store=fs)
    fs.close()
    assert set(prof.columns) == {"trips", "rating", "city"} and prof["city"].kind == "categorical"
    np.testing.assert_array_equal(prof["trips"].values, np.sort(trips.astype(float)))
    rep = D.detect_drift(prof, {"trips": trips + 30, "rating": rating, "city": city})
    want = D.detect_drift(
        {"trips": trips, "rating": rating, "city": city}, {"trips": trips + 30, "rating": rating, "city": city}
    )
    assert [c.score for c in rep.columns] == [c.score for c in want.columns]
    assert rep["trips"].drifted and not rep["rating"].drifted and not rep["city"].drifted
