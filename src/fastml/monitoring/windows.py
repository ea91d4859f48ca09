"""Incremental summaries of one window of live traffic, per feature, against a fixed reference.

A window is fed batch by batch (arrays, never rows in Python) and summarised as it goes, so closing it costs
the drift statistics and not a pass over everything served. What each column keeps depends on its reference:

- **categorical** columns and **discrete numeric** ones (reference with at most 20 distinct values, where
  Evidently bins every value on its own): exact counts per distinct value. The window's values are exactly
  ``repeat(keys, counts)``, so every statistic (chi-square, z, PSI, Jensen-Shannon, KS, Wasserstein) equals
  :func:`fastml.monitoring.drift.detect_drift` on the same rows **exactly**.
- **continuous numeric** columns: counts on **fixed reference bins** (the reference's own Sturges edges, as
  :func:`fastml.monitoring.drift.sturges_edges` computes them from the reference's minimum, maximum and size,
  plus one open bin below and one above for values outside the reference range) for PSI and Jensen-Shannon,
  and a **reservoir sample** (Vitter's algorithm R, uniform without replacement) of ``reservoir_size``
  values for KS and Wasserstein.

  The binned statistics are the library's PSI (Evidently's zero replacement) and scipy's Jensen-Shannon on
  those shares, exactly. They differ from ``detect_drift``'s own PSI on purpose: the library cuts bins at
  the edges of reference *and* current together, which needs the window's values; the fixed bins do not.

  KS and Wasserstein come from the reservoir (KS only when it is the column's primary statistic: its exact
  p-value is the most expensive number of a window). While a window holds at most ``reservoir_size`` rows the
  reservoir *is* the window and both equal the library exactly. Beyond that, the stated bound: for a
  reservoir of k values, with probability at least ``1 - alpha`` the reservoir's empirical CDF is within
  ``eps = sqrt(ln(2 / alpha) / (2 k))`` of the window's everywhere (Dvoretzky-Kiefer-Wolfowitz; sampling
  without replacement only tightens it), so the KS statistic D is within ``eps`` of the exact one and the
  Wasserstein distance within ``eps * (max - min)`` of the window's range (divided by the reference std for
  the normed value the library reports). :func:`sketch_bound` computes ``eps``: 0.0215 for k = 8,192 and
  alpha = 0.001.

A window is "small" (:func:`is_small_window`) when it has fewer than 1,000 rows and fewer than a fifth of
its reference: default tests at that size fire on noise, and reports say so.
"""

from __future__ import annotations

import math

import numpy as np

from fastml.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    _column_drift,
    _is_drifted,
    _js_from_shares,
    _NumericPair,
    _psi_from_shares,
    sturges_edges,
)
from fastml.monitoring.profile import NUMERIC, ColumnProfile, categorical_values
from fastml.monitoring.store import FeatureDrift

DEFAULT_RESERVOIR_SIZE = 8192
# Evidently bins every distinct value of a reference with at most this many (drift.py, _NumericPair.shares).
DISCRETE_MAX_UNIQUE = 20
SMALL_WINDOW_ROWS = 1000
SMALL_WINDOW_FRACTION = 0.2


def sketch_bound(reservoir_size: int, alpha: float = 0.001) -> float:
    """DKW bound ``eps``: with probability >= 1 - alpha, sup |F_reservoir - F_window| <= eps."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * reservoir_size))


def is_small_window(n_rows: int, reference_rows: int) -> bool:
    """A window under 1,000 rows that is also under a fifth of its reference: flagged in the store and in
    reports (a 100-row window against a 5,000-row reference makes default tests fire on noise)."""
    return n_rows < SMALL_WINDOW_ROWS and n_rows < SMALL_WINDOW_FRACTION * reference_rows


def reference_edges(ref: ColumnProfile) -> np.ndarray:
    """Fixed bin edges of a continuous reference column: its Sturges edges with -inf and +inf added."""
    v = ref.values
    assert v is not None, "continuous reference columns are numeric and carry their values"
    inner = sturges_edges(float(v[0]), float(v[-1]), int(v.size))
    return np.concatenate(([-np.inf], inner, [np.inf]))


def reference_bins(ref: ColumnProfile) -> tuple[np.ndarray, np.ndarray]:
    """A continuous reference column's fixed bin edges and its own counts in them."""
    edges = reference_edges(ref)
    assert ref.values is not None, "continuous reference columns are numeric and carry their values"
    return edges, binned_counts(ref.values, edges)


def binned_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of finite ``values`` in the bins of ``edges`` (``[e_i, e_i+1)``; the last finite edge closes the
    reference range, as ``numpy.histogram`` closes its last bin; beyond it, the overflow bin)."""
    n_bins = edges.size - 1
    inner = edges[1:-1]
    idx = np.searchsorted(inner, values, side="right")  # 0: below the range .. n_inner: at/above its top
    # A value equal to the reference maximum belongs to the last closed bin, not the overflow bin.
    idx[values == inner[-1]] -= 1
    return np.bincount(idx, minlength=n_bins)[:n_bins]


class ColumnWindow:
    """Summary of one column over one window; see the module docstring for what each kind keeps."""

    def __init__(self, ref: ColumnProfile):
        self.ref = ref
        self.n = 0  # non-missing values seen

    def update(self, values: np.ndarray) -> None:
        raise NotImplementedError

    def current_values(self) -> np.ndarray:
        """The window's values (exact for counted columns; the reservoir for continuous ones)."""
        raise NotImplementedError

    def drift(self, feature: str, method: str | None = None, threshold: float | None = None) -> list[FeatureDrift]:
        """Every applicable statistic; the primary one is the library's default choice for this column."""
        cd = _column_drift(self.ref, self.current_values(), method, threshold, True)
        out = [FeatureDrift(feature, cd.method, cd.score, cd.threshold, cd.drifted, True)]
        for m, score in cd.statistics.items():
            if m != cd.method:
                thr = DEFAULT_THRESHOLDS[m]
                out.append(FeatureDrift(feature, m, float(score), thr, _is_drifted(m, score, thr), False))
        return out


class CountedWindow(ColumnWindow):
    """Exact counts per distinct value (categorical and discrete numeric columns)."""

    def __init__(self, ref: ColumnProfile):
        super().__init__(ref)
        self.numeric = ref.kind == NUMERIC
        self.keys = np.empty(0, np.float64 if self.numeric else str)
        self.counts = np.empty(0, np.int64)

    def update(self, values: np.ndarray) -> None:
        if self.numeric:
            v = np.asarray(values, dtype=np.float64).ravel()
            v = v[np.isfinite(v)]
        else:
            v = categorical_values(np.asarray(values).ravel())
        if v.size == 0:
            return
        k, c = np.unique(v, return_counts=True)
        if self.keys.size:
            keys = np.union1d(self.keys, k)
            counts = np.zeros(keys.size, np.int64)
            counts[np.searchsorted(keys, self.keys)] += self.counts
            counts[np.searchsorted(keys, k)] += c
            self.keys, self.counts = keys, counts
        else:
            self.keys, self.counts = k, c.astype(np.int64)
        self.n += int(v.size)

    def current_values(self) -> np.ndarray:
        return np.repeat(self.keys, self.counts)


class ContinuousWindow(ColumnWindow):
    """Counts on fixed reference bins plus a reservoir sample (continuous numeric columns)."""

    def __init__(
        self,
        ref: ColumnProfile,
        reservoir_size: int,
        rng: np.random.Generator,
        bins: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        super().__init__(ref)
        # The reference's bins and counts are the same for every window of a model: callers pass them once made.
        self.edges, self.ref_counts = bins if bins is not None else reference_bins(ref)
        self.counts = np.zeros(self.edges.size - 1, np.int64)
        self.capacity = int(reservoir_size)
        self.reservoir = np.empty(self.capacity, np.float64)
        self.rng = rng

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        m = v.size
        if m == 0:
            return
        self.counts += binned_counts(v, self.edges)
        n0 = self.n
        fill = min(max(self.capacity - n0, 0), m)
        if fill:
            self.reservoir[n0 : n0 + fill] = v[:fill]
        if fill < m:
            # Algorithm R, vectorised: the value at 0-based position i replaces slot j ~ U{0..i} when j < k.
            # Fancy assignment applies repeated slots in order, so later values win as in the sequential loop.
            pos = np.arange(n0 + fill, n0 + m, dtype=np.int64)
            j = (self.rng.random(pos.size) * (pos + 1)).astype(np.int64)
            keep = j < self.capacity
            self.reservoir[j[keep]] = v[fill:][keep]
        self.n = n0 + m

    def current_values(self) -> np.ndarray:
        return self.reservoir[: min(self.n, self.capacity)]

    @property
    def exact(self) -> bool:
        """True while the reservoir holds every value of the window."""
        return self.n <= self.capacity

    def binned_shares(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ref_counts / self.ref_counts.sum(), self.counts / max(self.counts.sum(), 1)

    def drift(self, feature: str, method: str | None = None, threshold: float | None = None) -> list[FeatureDrift]:
        # The primary statistic as the library computes it, plus Wasserstein (cheap) and the binned ones. KS is
        # computed only when it is the primary: its exact p-value costs ~13 ms per 5,000 x 5,000 column.
        values = self.current_values()
        cd = _column_drift(self.ref, values, method, threshold, False)
        out = [FeatureDrift(feature, cd.method, cd.score, cd.threshold, cd.drifted, True)]
        if cd.method != "wasserstein":
            assert self.ref.values is not None, "continuous reference columns are numeric and carry their values"
            w = _NumericPair(self.ref.values, np.sort(values), self.ref.std, self.ref.n_unique).wasserstein_normed()
            thr = DEFAULT_THRESHOLDS["wasserstein"]
            out.append(FeatureDrift(feature, "wasserstein", w, thr, _is_drifted("wasserstein", w, thr), False))
        ref_s, cur_s = self.binned_shares()
        for m, score in (("psi", _psi_from_shares(ref_s, cur_s)), ("jensenshannon", _js_from_shares(ref_s, cur_s))):
            if any(d.stattest == m for d in out):
                continue  # a primary method chosen by name keeps the library's value
            thr = DEFAULT_THRESHOLDS[m]
            out.append(FeatureDrift(feature, m, float(score), thr, _is_drifted(m, score, thr), False))
        return out


def column_window(
    ref: ColumnProfile, reservoir_size: int = DEFAULT_RESERVOIR_SIZE, rng=None, bins_cache: dict | None = None
) -> ColumnWindow:
    """The right summary for a reference column (see the module docstring). ``bins_cache`` (a dict the caller
    keeps per reference) saves recomputing a continuous reference's bins for every window."""
    if ref.kind == NUMERIC and ref.n_unique > DISCRETE_MAX_UNIQUE:
        bins = None
        if bins_cache is not None:
            bins = bins_cache.get(ref.name)
            if bins is None:
                bins = bins_cache[ref.name] = reference_bins(ref)
        return ContinuousWindow(ref, reservoir_size, rng if rng is not None else np.random.default_rng(), bins)
    return CountedWindow(ref)
