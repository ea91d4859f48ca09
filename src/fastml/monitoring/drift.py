"""Data drift: per-column statistical tests of current data against a reference profile.

Every statistic has exactly the definition its reference implementation uses, so numbers can be compared
one-for-one (the tests check them against scipy and, where installed, Evidently):

===================  ==========================================================================  ======
method               definition                                                                  drift
===================  ==========================================================================  ======
``ks``               two-sample Kolmogorov–Smirnov p-value, scipy ``ks_2samp`` default method     p <= t
                     (``"auto"``: exact when both samples have <= 10,000 values, else asymptotic)
``chisquare``        Evidently's chi-square goodness of fit: current counts against reference     p < t
                     proportions scaled to the current size, over the union of categories
``chi2_contingency`` alibi-detect's test: scipy ``chi2_contingency`` on the 2 x K table of          p < t
                     reference and current counts over the *reference* categories (no current
                     value in any reference category: statistic inf, p-value 0)
``z``                Evidently's two-proportion z-test (first category, in sorted order, vs       p < t
                     the rest), two-sided
``psi``              population stability index on Evidently's bins (below), empty shares         v >= t
                     replaced as Evidently does (0.0001, or min share / 1e6 when that is smaller)
``wasserstein``      scipy ``wasserstein_distance`` / max(population std of reference, 0.001)     v >= t
``jensenshannon``    scipy ``jensenshannon`` (natural log) on the same bins, no zero filling      v >= t
===================  ==========================================================================  ======

Bins (Evidently's ``get_binned_data``): a numeric column whose reference has more than 20 distinct values
is cut at ``numpy.histogram_bin_edges(reference + current, "sturges")``; otherwise every distinct value
is its own bin. Missing values and ±inf are dropped from both sides before any test. A float32 current
column (a served model's input, as its prediction log holds it) is compared with the reference's values
rounded to float32 (:func:`detect_drift`), so a float64 0.7 and its served 0.69999999 are one value.

Default method (Evidently's ``get_default_stattest``), with n_values the distinct values of reference
and current together: reference <= 1,000 rows: numeric with n_values > 5 -> ``ks``; otherwise
``chisquare`` when n_values > 2 else ``z``. Reference > 1,000 rows: numeric with n_values > 5 ->
``wasserstein``; otherwise ``jensenshannon``. Default thresholds: 0.05 for p-values, 0.1 for distances.
The dataset drifts when the share of drifted columns is >= ``drift_share`` (0.5).

Speed: a numeric column is sorted once (the reference once per profile); the two sorted runs are merged
by a stable sort whose order says which side each value came from, so both empirical CDFs at every
merged value are two cumulative counts (ties take the count at the end of their run, which is exactly
``searchsorted(side="right")``). KS, Wasserstein and the histogram all come from those sorted arrays —
no per-test re-sorting as in a loop over scipy calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastml.errors import InvalidInput
from fastml.monitoring.profile import (
    CATEGORICAL,
    NUMERIC,
    ColumnProfile,
    ReferenceProfile,
    as_columns,
    categorical_values,
    finite_sorted,
    n_unique_sorted,
)

P_VALUE_METHODS = ("ks", "chisquare", "chi2_contingency", "z")
DISTANCE_METHODS = ("psi", "wasserstein", "jensenshannon")
METHODS = P_VALUE_METHODS + DISTANCE_METHODS
DEFAULT_THRESHOLDS = {
    "ks": 0.05,
    "chisquare": 0.05,
    "chi2_contingency": 0.05,
    "z": 0.05,
    "psi": 0.1,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
}
NUMERIC_ONLY = ("ks", "wasserstein")

# scipy's ks_2samp 'auto' mode is exact up to this many values per sample.
_KS_MAX_AUTO_N = 10000


# --------------------------------------------------------------------------------------------- pairs
class _NumericPair:
    """Reference and current values of one numeric column, with lazily derived sorted structures."""

    def __init__(
        self,
        ref_sorted: np.ndarray,
        cur_sorted: np.ndarray,
        ref_std: float | None = None,
        ref_unique: int | None = None,
    ):
        if ref_sorted.size == 0 or cur_sorted.size == 0:
            raise InvalidInput("drift needs at least one finite value on each side")
        self.ref = ref_sorted
        self.cur = cur_sorted
        self.ref_std = float(np.std(ref_sorted)) if ref_std is None else ref_std
        self.ref_unique = n_unique_sorted(ref_sorted) if ref_unique is None else ref_unique
        self._merged = None
        self._cdfs = None

    def _build(self) -> None:
        both = np.concatenate((self.ref, self.cur))
        # Two sorted runs: the stable sort (timsort) merges them in linear time; the order tells which
        # side each merged value came from, so counting replaces two searchsorted passes (10x cheaper).
        order = np.argsort(both, kind="stable")
        merged = both[order]
        n = merged.size
        ref_le = np.cumsum(order < self.ref.size)
        cur_le = np.arange(1, n + 1) - ref_le
        last = np.empty(n, dtype=bool)
        last[:-1] = merged[1:] != merged[:-1]
        last[-1] = True
        if not last.all():
            # Ties: a right-continuous CDF takes the count at the end of each run of equal values.
            end = np.where(last, np.arange(n), n)
            end = np.minimum.accumulate(end[::-1])[::-1]
            ref_le, cur_le = ref_le[end], cur_le[end]
        self._merged = merged
        self._cdfs = (ref_le / self.ref.size, cur_le / self.cur.size)

    @property
    def merged(self) -> np.ndarray:
        if self._merged is None:
            self._build()
        return self._merged

    @property
    def cdfs(self) -> tuple[np.ndarray, np.ndarray]:
        """Right-continuous empirical CDFs of reference and current at every merged value (the same
        numbers as ``searchsorted(side="right") / n``)."""
        if self._cdfs is None:
            self._build()
        return self._cdfs

    def n_values(self) -> int:
        """Distinct values of reference and current together."""
        m = self.merged
        return int(np.count_nonzero(m[1:] != m[:-1])) + 1

    def ks(self) -> tuple[float, float]:
        c1, c2 = self.cdfs
        diff = c1 - c2
        max_s = float(diff.max())
        min_s = float(np.clip(-diff.min(), 0, 1))
        d = min_s if min_s > max_s else max_s
        return _ks_2samp_pvalue(self.ref.size, self.cur.size, d)

    def wasserstein(self) -> float:
        m = self.merged
        c1, c2 = self.cdfs
        # scipy integrates |U - V| between successive merged values, with the CDFs taken at the left end.
        # A plain reduction, not np.dot: BLAS may spin up threads for a 20k-element dot product, which
        # costs ten times the arithmetic on a shared machine.
        return float(np.add.reduce(np.abs(c1[:-1] - c2[:-1]) * np.diff(m)))

    def wasserstein_normed(self) -> float:
        return self.wasserstein() / max(self.ref_std, 0.001)

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        """Evidently's bins as shares of each side (before any zero filling)."""
        if self.ref_unique > 20:
            edges = sturges_edges(float(self.merged[0]), float(self.merged[-1]), self.merged.size)
            return (
                _sorted_histogram(self.ref, edges) / self.ref.size,
                _sorted_histogram(self.cur, edges) / self.cur.size,
            )
        return self.as_categories().shares()

    def as_categories(self) -> _CategoricalPair:
        ku, kc = np.unique(self.ref, return_counts=True)
        cu, cc = np.unique(self.cur, return_counts=True)
        keys = np.union1d(ku, cu)
        rc = np.zeros(keys.size, np.int64)
        rc[np.searchsorted(keys, ku)] = kc
        ccount = np.zeros(keys.size, np.int64)
        ccount[np.searchsorted(keys, cu)] = cc
        return _CategoricalPair(keys, rc, ccount, ref_keys=ku)


class _CategoricalPair:
    """Counts of reference and current over the union of categories (sorted)."""

    def __init__(self, keys: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray, ref_keys: np.ndarray):
        self.keys, self.ref_counts, self.cur_counts, self.ref_keys = keys, ref_counts, cur_counts, ref_keys
        self.n_ref = int(ref_counts.sum())
        self.n_cur = int(cur_counts.sum())
        if self.n_ref == 0 or self.n_cur == 0:
            raise InvalidInput("drift needs at least one non-missing value on each side")

    @classmethod
    def from_values(cls, ref_keys: np.ndarray, ref_counts: np.ndarray, cur_values: np.ndarray) -> _CategoricalPair:
        cu, cc = np.unique(cur_values, return_counts=True)
        keys = np.union1d(ref_keys, cu)
        rc = np.zeros(keys.size, np.int64)
        rc[np.searchsorted(keys, ref_keys)] = ref_counts
        ccount = np.zeros(keys.size, np.int64)
        ccount[np.searchsorted(keys, cu)] = cc
        return cls(keys, rc, ccount, ref_keys=ref_keys)

    def n_values(self) -> int:
        return int(self.keys.size)

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ref_counts / self.n_ref, self.cur_counts / self.n_cur

    def chisquare(self) -> tuple[float, float]:
        from scipy.stats import chisquare

        if self.keys.size < 2:
            # One value in both windows: nothing can differ, and scipy's 0 degrees of freedom give a NaN p-value
            # (Evidently reports that NaN; as JSON it is not even valid).
            return 0.0, 1.0
        f_exp = self.ref_counts * (self.n_cur / self.n_ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            res = chisquare(self.cur_counts.astype(np.float64), f_exp)
        return float(res[0]), float(res[1])

    def chi2_contingency(self) -> tuple[float, float]:
        from scipy.stats import chi2_contingency

        in_ref = np.isin(self.keys, self.ref_keys)
        table = np.vstack((self.ref_counts[in_ref], self.cur_counts[in_ref]))
        if not table[1].any():
            # Every current value is in a category the reference never saw: the windows are disjoint. scipy
            # refuses the all-zero row (a zero expected frequency), and with one reference category the
            # check below would call it "no drift"; the limit of the test is certain drift, as chisquare
            # reports for disjoint windows.
            return math.inf, 0.0
        if table.shape[1] < 2:
            return 0.0, 1.0  # a single reference category: nothing can differ in proportion
        res = chi2_contingency(table)
        return float(res[0]), float(res[1])

    def z(self) -> tuple[float, float]:
        from scipy.stats import norm

        ref_present = self.ref_counts > 0
        cur_present = self.cur_counts > 0
        if ref_present.sum() == 1 and cur_present.sum() == 1 and np.array_equal(ref_present, cur_present):
            return 0.0, 1.0
        # Evidently codes the first category (sorted) as 0 and every other as 1.
        p1 = float(self.n_ref - self.ref_counts[0]) / self.n_ref
        p2 = float(self.n_cur - self.cur_counts[0]) / self.n_cur
        p = float(p1 * self.n_ref + p2 * self.n_cur) / (self.n_ref + self.n_cur)
        z = (p1 - p2) / np.sqrt(p * (1 - p) * (1.0 / self.n_ref + 1.0 / self.n_cur))
        return float(z), float(2 * (1 - norm.cdf(np.abs(z))))


# ----------------------------------------------------------------------------------------- helpers
def sturges_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """``numpy.histogram_bin_edges(x, "sturges")`` for data with minimum ``lo``, maximum ``hi`` and
    ``n`` values, without needing the data (same arithmetic, so the same edges)."""
    first, last = lo, hi
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (hi - lo) / (np.log2(n) + 1.0)
    n_bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, n_bins + 1, endpoint=True, dtype=np.float64)


def _sorted_histogram(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``numpy.histogram(values, edges)[0]`` from sorted values: bins are [e_i, e_i+1), the last closed."""
    idx = np.searchsorted(sorted_values, edges, "left")
    idx[-1] = np.searchsorted(sorted_values, edges[-1], "right")
    return np.diff(idx)


def _fill_zeroes(shares: np.ndarray) -> np.ndarray:
    """Evidently's replacement of empty shares (so PSI's logarithm stays finite)."""
    nonzero = shares[shares != 0]
    if nonzero.size == shares.size or nonzero.size == 0:
        return shares
    smallest = nonzero.min()
    out = shares.copy()
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out


def _psi_from_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    ref, cur = _fill_zeroes(ref), _fill_zeroes(cur)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def _js_from_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(ref, cur))


try:  # scipy's own exact KS distribution; the tests compare every p-value with ks_2samp itself.
    from scipy.stats._stats_py import _attempt_exact_2kssamp
except ImportError:  # pragma: no cover - a future scipy moved it: fall back to the public function
    _attempt_exact_2kssamp = None


def _ks_2samp_pvalue(n1: int, n2: int, d: float) -> tuple[float, float]:
    """``(statistic, p_value)`` of ``ks_2samp(..., method="auto", alternative="two-sided")`` given the
    largest CDF difference ``d`` (the exact method rounds ``d`` to a multiple of 1/lcm, as scipy does)."""
    from scipy.stats import kstwo

    if _attempt_exact_2kssamp is not None and max(n1, n2) <= _KS_MAX_AUTO_N:
        g = math.gcd(n1, n2)
        ok, d_exact, prob = _attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if ok:
            return float(d_exact), float(np.clip(prob, 0, 1))
        d = d_exact  # scipy falls back to the asymptotic formula with the rounded statistic
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    return float(d), float(np.clip(kstwo.sf(d, np.round(en)), 0, 1))


def default_method(kind: str, n_reference: int, n_values: int) -> str:
    """Evidently's default test for a column (see the module docstring)."""
    if n_reference <= 1000:
        if kind == NUMERIC and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if kind == NUMERIC and n_values > 5:
        return "wasserstein"
    return "jensenshannon"


# --------------------------------------------------------------------------------- public functions
def _numeric_pair(reference, current) -> _NumericPair:
    return _NumericPair(finite_sorted(reference), finite_sorted(current))


def _any_pair(reference, current, kind: str | None):
    reference, current = np.asarray(reference), np.asarray(current)
    kind = kind or (NUMERIC if reference.dtype.kind in "iuf" else CATEGORICAL)
    if kind == NUMERIC:
        return _numeric_pair(reference, current)
    r = categorical_values(reference)
    ku, kc = np.unique(r, return_counts=True)
    _check_comparable(None, ku, current)
    return _CategoricalPair.from_values(ku, kc, categorical_values(current))


def _is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_comparable(column: str | None, ref_categories: np.ndarray, current: np.ndarray) -> None:
    """Refuse numbers in current against a reference of text categories only.

    A number's category is its decimal text ("1"), which never equals a category such as "north" or "True": every
    such comparison reported certain drift (disjoint windows) on data that may well match. It happens when a
    feature served from the online store (a string as its vocabulary code, a bool as 0/1: what the model saw and
    its prediction log holds) is compared with a reference of the offline store's strings and booleans.
    """
    if current.dtype.kind not in "iuf" or not ref_categories.size:
        return
    if any(_is_number_text(str(c)) for c in ref_categories):
        return
    where = f"column {column!r}" if column is not None else "current"
    shown = [str(c) for c in ref_categories[:5]]
    raise InvalidInput(
        f"{where}: the reference's categories are text ({shown}{' ...' if ref_categories.size > 5 else ''}) but "
        f"the current values are numbers ({current.dtype}), which can never match them; compare like with like "
        "(a string feature reaches a served model, and its prediction log, as its online vocabulary code and a "
        "bool as 0/1: decode them, or profile the reference from the same encoding)"
    )


def _as_categories(pair):
    return pair.as_categories() if isinstance(pair, _NumericPair) else pair


def ks_test(reference, current) -> tuple[float, float]:
    """Two-sample KS: ``(statistic, p_value)``, equal to ``scipy.stats.ks_2samp`` (default method)."""
    return _numeric_pair(reference, current).ks()


def wasserstein_normed(reference, current) -> float:
    """``scipy.stats.wasserstein_distance`` divided by max(population std of reference, 0.001)."""
    return _numeric_pair(reference, current).wasserstein_normed()


def psi(reference, current, *, kind: str | None = None) -> float:
    """Population stability index on Evidently's bins with Evidently's zero replacement."""
    return _psi_from_shares(*_any_pair(reference, current, kind).shares())


def jensen_shannon(reference, current, *, kind: str | None = None) -> float:
    """Jensen–Shannon distance (natural log) on Evidently's bins, no zero filling."""
    return _js_from_shares(*_any_pair(reference, current, kind).shares())


def chisquare_gof(reference, current) -> tuple[float, float]:
    """Evidently's chi-square goodness of fit: ``(statistic, p_value)``."""
    return _as_categories(_any_pair(reference, current, None)).chisquare()


def chi2_contingency_test(reference, current) -> tuple[float, float]:
    """alibi-detect's chi-square test of the 2 x K contingency table (reference categories):
    ``(statistic, p_value)``."""
    return _as_categories(_any_pair(reference, current, None)).chi2_contingency()


def z_test(reference, current) -> tuple[float, float]:
    """Evidently's two-proportion z-test: ``(z, p_value)``."""
    return _as_categories(_any_pair(reference, current, None)).z()


# ------------------------------------------------------------------------------------------ report
@dataclasses.dataclass
class ColumnDrift:
    """Drift result of one column.

    Attributes:
        column: column name.
        kind: ``"numeric"`` or ``"categorical"``.
        method: the test used (one of :data:`METHODS`).
        score: the p-value (for p-value tests) or the distance.
        statistic: the test statistic (KS D, chi-square, z) or the distance again.
        threshold: the threshold the score was compared with.
        drifted: whether the column drifted (p-values: below the threshold — ``<=`` for KS, as
            Evidently; distances: ``>=`` the threshold).
        n_reference, n_current: values compared on each side (missing dropped).
        statistics: with ``all_statistics=True``, every applicable method's score.
    """

    column: str
    kind: str
    method: str
    score: float
    statistic: float
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int
    statistics: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DriftReport:
    """Per-column results and the dataset verdict."""

    columns: list[ColumnDrift]
    drift_share: float

    @property
    def number_drifted(self) -> int:
        return sum(1 for c in self.columns if c.drifted)

    @property
    def share_drifted(self) -> float:
        return self.number_drifted / len(self.columns) if self.columns else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.columns) and self.share_drifted >= self.drift_share

    def __getitem__(self, column: str) -> ColumnDrift:
        for c in self.columns:
            if c.column == column:
                return c
        raise KeyError(column)

    def to_dict(self) -> dict:
        return {
            "dataset_drift": self.dataset_drift,
            "share_drifted": self.share_drifted,
            "number_drifted": self.number_drifted,
            "number_of_columns": len(self.columns),
            "drift_share": self.drift_share,
            "columns": [c.to_dict() for c in self.columns],
        }


def _per_column(option, column: str):
    if isinstance(option, Mapping):
        return option.get(column)
    return option


def _score(pair, method: str, kind: str, column: str) -> tuple[float, float]:
    """(score, statistic) of ``method`` for one column pair."""
    if method in NUMERIC_ONLY and not isinstance(pair, _NumericPair):
        raise InvalidInput(f"column {column!r}: method {method!r} needs a numeric column, this one is {kind}")
    if method == "ks":
        d, p = pair.ks()
        return p, d
    if method == "wasserstein":
        v = pair.wasserstein_normed()
        return v, v
    if method == "psi":
        v = _psi_from_shares(*pair.shares())
        return v, v
    if method == "jensenshannon":
        v = _js_from_shares(*pair.shares())
        return v, v
    cats = _as_categories(pair)
    if method == "chisquare":
        s, p = cats.chisquare()
    elif method == "chi2_contingency":
        s, p = cats.chi2_contingency()
    elif method == "z":
        s, p = cats.z()
    else:
        raise InvalidInput(f"column {column!r}: unknown drift method {method!r}; known: {list(METHODS)}")
    return p, s


def _is_drifted(method: str, score: float, threshold: float) -> bool:
    if method == "ks":
        return bool(score <= threshold)
    if method in P_VALUE_METHODS:
        return bool(score < threshold)
    return bool(score >= threshold)


def detect_drift(
    reference: Any,
    current: Any,
    *,
    columns: list[str] | None = None,
    methods: str | Mapping[str, str] | None = None,
    thresholds: float | Mapping[str, float] | None = None,
    drift_share: float = 0.5,
    kinds: Mapping[str, str] | None = None,
    all_statistics: bool = False,
) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column.

    Args:
        reference: a :class:`ReferenceProfile` or reference data (any input ``as_columns`` takes: mapping
            of arrays, pyarrow Table, pandas DataFrame, 2-D numpy array).
        current: the current data, same forms (not a profile).
        columns: columns to check; default all reference columns.
        methods: one method name for all columns, or ``{column: method}``; missing means Evidently's
            default choice (:func:`default_method`).
        thresholds: one threshold for all columns or ``{column: threshold}``; missing means the
            method's default (:data:`DEFAULT_THRESHOLDS`).
        drift_share: the dataset drifts when at least this share of columns drifted.
        kinds: override the numeric/categorical type of columns (when ``reference`` is data).
        all_statistics: also compute every applicable method for each column into
            ``ColumnDrift.statistics`` (KS, Wasserstein, PSI and JS for numeric columns; chisquare,
            chi2_contingency, z, PSI and JS for categorical ones).

    Returns:
        A :class:`DriftReport`.

    Raises:
        InvalidInput: unknown columns or methods, a method that does not fit the column type, an empty
            column, or a threshold/drift_share out of range.
    """
    if not 0.0 <= drift_share <= 1.0:
        raise InvalidInput(f"drift_share must be within [0, 1], got {drift_share}")
    if columns is not None and not len(columns):
        # An empty selection is a caller's mistake (a filter that kept nothing), not a request for every column.
        raise InvalidInput("columns is empty: name at least one column, or give None for every column")
    cur_cols = as_columns(current, name="current")
    if isinstance(reference, ReferenceProfile):
        profile = reference
        names = columns or list(profile.columns)
    else:
        ref_cols = as_columns(reference, name="reference")
        names = columns or list(ref_cols)
        missing = [c for c in names if c not in ref_cols]
        if missing:
            raise InvalidInput(f"reference: no column(s) {missing}; columns are {list(ref_cols)}")
        profile = None
    missing = [c for c in names if c not in cur_cols]
    if missing:
        raise InvalidInput(f"current: no column(s) {missing}; columns are {list(cur_cols)}")
    if isinstance(methods, str) and methods not in METHODS:
        raise InvalidInput(f"unknown drift method {methods!r}; known: {list(METHODS)}")

    results = []
    for name in names:
        if profile is not None:
            if name not in profile:
                raise InvalidInput(f"reference profile has no column {name!r}; columns are {list(profile.columns)}")
            ref_prof = profile[name]
        else:
            from fastml.monitoring.profile import profile_column

            ref_prof = profile_column(name, ref_cols[name], (kinds or {}).get(name))
        results.append(
            _column_drift(
                ref_prof, cur_cols[name], _per_column(methods, name), _per_column(thresholds, name), all_statistics
            )
        )
    return DriftReport(results, drift_share)


def _reference_at_precision_of(ref: ColumnProfile, cur: np.ndarray, dtype: np.dtype) -> _NumericPair:
    """The pair of ``ref``'s values and ``cur``, the reference rounded to float32 when current is float32.

    A served model takes float32, so its prediction log (and a feature-joined model's joined values) holds float32
    values, while a reference of training rows or of the offline store holds float64: 0.7 is served as 0.69999999.
    Compared as they are, a feature with a few distinct values had disjoint bins and shifted ties, so the same data
    was reported as certain drift (KS p ~1e-6, PSI ~15). The reference is compared at the current values' precision
    instead (float32 rounding keeps the sorted order); values beyond float32's range keep the exact comparison. The
    same holds for float64 values that are all float32 values (see _float32_values).
    """
    if dtype == np.float32 or _float32_values(cur):
        with np.errstate(over="ignore"):
            rounded = ref.values.astype(np.float32).astype(np.float64)
        if np.isfinite(rounded).all() and not np.array_equal(rounded, ref.values):
            return _NumericPair(rounded, cur)
    return _NumericPair(ref.values, cur, ref.std, ref.n_unique)


def _float32_values(values: np.ndarray) -> bool:
    """Whether every one of the (finite) ``values`` is a float32 value: a served model's inputs after a cast to
    float64 (the live monitor's windows keep float64). Rounding a reference to float32 for them only merges
    reference values closer than float32's precision, which such values cannot tell apart anyway."""
    if values.dtype != np.float64 or not values.size:
        return False
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float32).astype(np.float64), values))


def _column_drift(
    ref: ColumnProfile, current: np.ndarray, method: str | None, threshold: float | None, all_statistics: bool
) -> ColumnDrift:
    if ref.kind == NUMERIC:
        if current.dtype.kind == "O" and not categorical_values(current).size:
            # An empty or all-missing column reads as objects (Arrow's null type: a CSV with a header and no
            # rows, or an empty column), which is not text in a numeric column but a window with no values.
            current = np.empty(0)
        if current.dtype.kind not in "iufb":
            raise InvalidInput(f"column {ref.name!r} is numeric in the reference but {current.dtype} in current")
        cur = finite_sorted(current)
        if cur.size == 0:
            raise InvalidInput(f"column {ref.name!r}: no finite values in current")
        pair = _reference_at_precision_of(ref, cur, current.dtype)
        n_ref, n_cur = pair.ref.size, pair.cur.size
    else:
        values = categorical_values(current)
        if values.size == 0:
            raise InvalidInput(f"column {ref.name!r}: no non-missing values in current")
        _check_comparable(ref.name, ref.categories, current)
        pair = _CategoricalPair.from_values(ref.categories, ref.counts, values)
        n_ref, n_cur = pair.n_ref, pair.n_cur
    chosen = method or default_method(ref.kind, n_ref, pair.n_values())
    if chosen not in METHODS:
        raise InvalidInput(f"column {ref.name!r}: unknown drift method {chosen!r}; known: {list(METHODS)}")
    thr = DEFAULT_THRESHOLDS[chosen] if threshold is None else float(threshold)
    if not thr >= 0 or (chosen in P_VALUE_METHODS and thr > 1):  # "not >=" also refuses NaN
        raise InvalidInput(f"column {ref.name!r}: threshold {thr} out of range for {chosen!r}")
    score, statistic = _score(pair, chosen, ref.kind, ref.name)
    stats: dict[str, float] = {}
    if all_statistics:
        wanted = (
            ("ks", "wasserstein", "psi", "jensenshannon")
            if ref.kind == NUMERIC
            else ("chisquare", "chi2_contingency", "z", "psi", "jensenshannon")
        )
        for m in wanted:
            stats[m] = score if m == chosen else _score(pair, m, ref.kind, ref.name)[0]
    return ColumnDrift(
        ref.name,
        ref.kind,
        chosen,
        float(score),
        float(statistic),
        thr,
        _is_drifted(chosen, score, thr),
        int(n_ref),
        int(n_cur),
        stats,
    )
