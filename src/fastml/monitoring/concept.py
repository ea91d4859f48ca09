"""Concept drift: streaming detectors over an error or value stream, with river's definitions and defaults.

Each detector takes one value per :meth:`update` and exposes ``drift_detected`` (and, for DDM and EDDM,
``warning_detected``) for the value just seen; after a detection the next update starts from a fresh state,
as in river. The tests run river's own detectors on the same seeded streams and require the same
detection indices.

- :class:`DDM` (Gama et al. 2004) over a 0/1 error stream: error rate p and s = sqrt(p(1-p)/n); after
  ``warm_start`` values, warning when p + s > p_min + 2 s_min, drift when > p_min + 3 s_min.
- :class:`EDDM` (Baena-García et al. 2006) over a 0/1 error stream: mean and std of the distances between
  errors; level = (mean + 2 std) / max(mean + 2 std); warning below ``alpha`` (0.95), drift below
  ``beta`` (0.9), once more than ``warm_start`` errors were seen.
- :class:`ADWIN` (Bifet & Gavaldà 2007) over any bounded values: an adaptive window kept as an
  exponential histogram of buckets; every ``clock`` values each cut into two sub-windows is tested with
  the Hoeffding/Bernstein bound, and the older part is dropped while a cut differs.
- :class:`PageHinkley` (Page 1954) over any values: fading cumulative deviations from the running mean,
  drift when either one-sided statistic exceeds ``threshold`` after ``min_instances`` values.
- :class:`HDDM_A` (Frías-Blanco et al. 2014, "A-test") over a 0/1 error stream: the running mean is
  compared with the mean at the cut point where it was lowest (highest, two-sided) with Hoeffding's bound;
  drift at ``drift_confidence``, warning at ``warning_confidence``.
- :class:`KSWIN` (Raab et al. 2020) over any values: a sliding window of ``window_size`` values whose last
  ``stat_size`` are tested with the two-sample KS test against as many drawn (seeded) from the older part;
  drift when p <= ``alpha`` and the statistic exceeds 0.1.

:func:`error_stream` turns a prediction log with joined labels into the 0/1 stream DDM/EDDM/ADWIN watch,
so performance drift is detected as soon as labels arrive.

Every detector refuses a NaN or infinite value (InvalidInput) and keeps its state: fed on, a NaN would
silently switch detection off for the rest of the stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from fastml.errors import InvalidInput


class _Detector:
    drift_detected: bool = False
    warning_detected: bool = False

    def update(self, x: float) -> _Detector:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect(self, values: Iterable[float]) -> list[int]:
        """Feed ``values`` in order; return the indices at which drift was detected."""
        out = []
        for i, x in enumerate(values):
            self.update(float(x))
            if self.drift_detected:
                out.append(i)
        return out


def _finite(x: float) -> float:
    """``x`` as a float, refusing NaN and ±inf: one NaN makes every running mean NaN, and since NaN compares
    false with every bound the detector would never signal again (or, for DDM, fail with a TypeError)."""
    x = float(x)
    if not math.isfinite(x):
        raise InvalidInput(f"concept drift detectors need finite values, got {x}")
    return x


class _Mean:
    __slots__ = ("n", "mean")

    def __init__(self):
        self.n = 0.0
        self.mean = 0.0

    def update(self, x: float) -> None:
        self.n += 1.0
        self.mean += (1.0 / self.n) * (x - self.mean)


class _Var:
    """Welford's running variance (ddof=1), as river's ``stats.Var``."""

    __slots__ = ("m", "s")

    def __init__(self):
        self.m = _Mean()
        self.s = 0.0

    def update(self, x: float) -> None:
        old = self.m.mean
        self.m.update(x)
        self.s += (x - old) * (x - self.m.mean)

    def get(self) -> float:
        return self.s / (self.m.n - 1) if self.m.n > 1 else 0.0


class DDM(_Detector):
    """Drift Detection Method over a 0/1 error stream (1 = wrong prediction).

    Args:
        warm_start: values seen before any signal (30).
        warning_threshold: warning at p_min + this many s_min (2.0).
        drift_threshold: drift at p_min + this many s_min (3.0).
    """

    def __init__(self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0):
        self.warm_start, self.warning_threshold, self.drift_threshold = warm_start, warning_threshold, drift_threshold
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = self.warning_detected = False
        self._p = _Mean()
        self._p_min = None
        self._s_min = None
        self._ps_min = math.inf

    def update(self, x: float) -> DDM:
        x = _finite(x)
        if self.drift_detected:
            self._reset()
        self._p.update(x)
        p, n = self._p.mean, self._p.n
        s = math.sqrt(p * (1 - p) / n)
        if n > self.warm_start:
            if p + s <= self._ps_min:
                self._p_min, self._s_min = p, s
                self._ps_min = p + s
            self.warning_detected = p + s > self._p_min + self.warning_threshold * self._s_min
            if p + s > self._p_min + self.drift_threshold * self._s_min:
                self.drift_detected = True
                self.warning_detected = False
        return self


class EDDM(_Detector):
    """Early Drift Detection Method over a 0/1 error stream.

    Args:
        warm_start: values (and errors) seen before any signal (30).
        alpha: warning level (0.95).
        beta: drift level (0.9); must not exceed ``alpha``.
    """

    def __init__(self, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9):
        if alpha < beta:
            raise InvalidInput("EDDM: 'alpha' must be greater or equal to 'beta'")
        self.warm_start, self.alpha, self.beta = warm_start, alpha, beta
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = self.warning_detected = False
        self._distances = _Var()
        self._n = 0
        self._last_error = 0
        self._n_errors = 0
        self._p2s_max = -1.0

    def update(self, x: float) -> EDDM:
        x = _finite(x)
        if self.drift_detected:
            self._reset()
        self._n += 1
        if x == 1:
            self._n_errors += 1
            self._distances.update(self._n - self._last_error)
            if self._n > self.warm_start:
                p2s = self._distances.m.mean + 2 * self._distances.get() ** 0.5
                if p2s > self._p2s_max:
                    self._p2s_max = p2s
                elif self._n_errors > self.warm_start:
                    level = p2s / self._p2s_max
                    if level < self.beta:
                        self.drift_detected = True
                    elif level < self.alpha:
                        self.warning_detected = True
                    else:
                        self.warning_detected = False
            self._last_error = self._n
        return self


class PageHinkley(_Detector):
    """Page–Hinkley test for a change in the mean.

    Args:
        min_instances: values seen before any signal (30).
        delta: magnitude of changes tolerated (0.005).
        threshold: lambda, the detection threshold (50.0).
        alpha: forgetting factor of the cumulative sums (1 - 0.0001).
        mode: ``"up"``, ``"down"`` or ``"both"`` (default) directions of change.
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ):
        if mode not in ("up", "down", "both"):
            raise InvalidInput(f"PageHinkley: mode must be 'up', 'down' or 'both', got {mode!r}")
        self.min_instances, self.delta, self.threshold, self.alpha, self.mode = (
            min_instances,
            delta,
            threshold,
            alpha,
            mode,
        )
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self._mean = _Mean()
        self._sum_inc = 0.0
        self._sum_dec = 0.0
        self._min_inc = math.inf
        self._max_dec = -1.0

    def update(self, x: float) -> PageHinkley:
        x = _finite(x)
        if self.drift_detected:
            self._reset()
        self._mean.update(x)
        dev = x - self._mean.mean
        self._sum_inc = self.alpha * self._sum_inc + dev - self.delta
        self._sum_dec = self.alpha * self._sum_dec + dev + self.delta
        self._min_inc = min(self._min_inc, self._sum_inc)
        self._max_dec = max(self._max_dec, self._sum_dec)
        if self._mean.n >= self.min_instances:
            up = self._sum_inc - self._min_inc > self.threshold
            down = self._max_dec - self._sum_dec > self.threshold
            self.drift_detected = {"up": up, "down": down, "both": up or down}[self.mode]
        return self


class HDDM_A(_Detector):  # noqa: N801 - the algorithm's published name
    """Hoeffding's-bound drift detection with the moving-average test (HDDM_A), over a 0/1 error stream.

    Args:
        drift_confidence: drift when the mean rose by more than the bound at this confidence (0.001).
        warning_confidence: warning at this confidence (0.005).
        two_sided_test: also watch for a decrease of the mean (False: only more errors matter).
    """

    def __init__(
        self, drift_confidence: float = 0.001, warning_confidence: float = 0.005, two_sided_test: bool = False
    ):
        for name, v in (("drift_confidence", drift_confidence), ("warning_confidence", warning_confidence)):
            if not 0 < v < 1:
                raise InvalidInput(f"HDDM_A: {name} must be in (0, 1), got {v}")
        self.drift_confidence, self.warning_confidence = drift_confidence, warning_confidence
        self.two_sided_test = two_sided_test
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = self.warning_detected = False
        self._z_n, self._z_mean = 0.0, 0.0  # the whole stream since the last drift
        self._min_n, self._min_mean = 0.0, 0.0  # cut point where mean + bound was lowest
        self._max_n, self._max_mean = 0.0, 0.0  # cut point where mean - bound was highest

    def _bound(self, n: float) -> float:
        return math.sqrt(1.0 / (2 * n) * math.log(1.0 / self.drift_confidence))

    def update(self, x: float) -> HDDM_A:
        x = _finite(x)
        if self.drift_detected:
            self._reset()
        self._z_n += 1.0
        self._z_mean += (x - self._z_mean) / self._z_n
        if self._min_n == 0:
            self._min_n, self._min_mean = self._z_n, self._z_mean
        if self._max_n == 0:
            self._max_n, self._max_mean = self._z_n, self._z_mean
        eps_z = self._bound(self._z_n)
        if self._min_mean + self._bound(self._min_n) >= self._z_mean + eps_z:
            self._min_n, self._min_mean = self._z_n, self._z_mean
        if self._max_mean - self._bound(self._max_n) <= self._z_mean - eps_z:
            self._max_n, self._max_mean = self._z_n, self._z_mean
        if self._changed(self._min_n, self._z_mean - self._min_mean, self.drift_confidence):
            self.drift_detected, self.warning_detected = True, False
        else:
            self.drift_detected = False
            self.warning_detected = self._changed(self._min_n, self._z_mean - self._min_mean, self.warning_confidence)
        if self.two_sided_test:
            if self._changed(self._max_n, self._max_mean - self._z_mean, self.drift_confidence):
                self.drift_detected = True
            elif self._changed(self._max_n, self._max_mean - self._z_mean, self.warning_confidence):
                self.warning_detected = True
        return self

    def _changed(self, cut_n: float, rise: float, confidence: float) -> bool:
        """Whether the mean after the cut exceeds the mean up to it by more than the Hoeffding bound."""
        if cut_n == self._z_n:
            return False
        m = (self._z_n - cut_n) / cut_n * (1.0 / self._z_n)
        return rise >= math.sqrt(m / 2 * math.log(2.0 / confidence))


class KSWIN(_Detector):
    """Kolmogorov-Smirnov windowing: a change in the distribution of any value stream.

    Args:
        alpha: p-value at or below which the newest values differ (0.005).
        window_size: values in the sliding window (100).
        stat_size: newest values tested against as many drawn from the older part (30).
        seed: seed of the draws (same seed, same detections).
    """

    def __init__(self, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30, seed: int | None = None):
        if not 0 <= alpha <= 1:
            raise InvalidInput(f"KSWIN: alpha must be in [0, 1], got {alpha}")
        if stat_size < 1 or window_size < 2 * stat_size:
            # fewer older values than stat_size leave nothing to draw the comparison sample from
            raise InvalidInput(f"KSWIN: need 1 <= stat_size <= window_size / 2, got {stat_size} and {window_size}")
        self.alpha, self.window_size, self.stat_size, self.seed = alpha, window_size, stat_size, seed
        self._reset()

    def _reset(self) -> None:
        import collections
        import random

        self.drift_detected = False
        self.p_value = 1.0
        self.window: collections.deque = collections.deque(maxlen=self.window_size)
        self._rng = random.Random(self.seed)

    def update(self, x: float) -> KSWIN:
        x = _finite(x)
        if self.drift_detected:
            self._reset()  # as river: a detection starts a new, empty window
        self.window.append(x)
        self.drift_detected = False
        if len(self.window) < self.window_size:
            return self
        import warnings

        from scipy import stats

        older = self.window_size - self.stat_size
        drawn = [self.window[i] for i in self._rng.sample(range(older), self.stat_size)]
        newest = list(self.window)[older:]
        statistic = _ks_statistic(drawn, newest)
        # scipy's two-sided p-value depends only on the sample sizes and the statistic on the grid of
        # 1/(n1*n2), so it is computed once per grid point: the per-value cost stays a sort, not an exact test.
        key = (len(drawn), len(newest), round(statistic * len(drawn) * len(newest)))
        p_value = _KS_P.get(key)
        if p_value is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)  # "auto" may fall back to asymptotic
                p_value = float(stats.ks_2samp(drawn, newest, method="auto").pvalue)
            _KS_P[key] = p_value
        self.p_value = p_value
        self.drift_detected = bool(self.p_value <= self.alpha and statistic > 0.1)
        return self


_KS_P: dict[tuple[int, int, int], float] = {}  # (n1, n2, statistic * n1 * n2) -> two-sided p-value


def _ks_statistic(a: list[float], b: list[float]) -> float:
    """The two-sample KS statistic as scipy computes it (largest gap between the empirical CDFs)."""
    x, y = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    both = np.concatenate([x, y])
    diff = np.searchsorted(x, both, side="right") / x.size - np.searchsorted(y, both, side="right") / y.size
    return float(max(np.clip(-diff.min(), 0, 1), diff.max()))


class _Row:
    """Buckets of one size 2**level: up to max_buckets + 1 (total, variance) pairs, oldest first."""

    __slots__ = ("totals", "variances")

    def __init__(self):
        self.totals: list[float] = []
        self.variances: list[float] = []


class ADWIN(_Detector):
    """ADaptive WINdowing change detector.

    Args:
        delta: confidence of the cut test (0.002).
        clock: test for a cut every this many values (32).
        max_buckets: buckets of each size kept before two are merged (5).
        min_window_length: smallest sub-window a cut may leave (5).
        grace_period: values seen before any test (10).

    Attributes:
        width: values in the current window; ``estimation``: their mean; ``n_detections``.
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ):
        self.delta, self.clock, self.max_buckets = delta, clock, max_buckets
        self.min_window_length, self.grace_period = min_window_length, grace_period
        self.n_detections = 0
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self._rows: list[_Row] = [_Row()]  # row i holds buckets of 2**i values; row 0 the newest values
        self.width = 0.0
        self.total = 0.0
        self.variance = 0.0  # sum of squared deviations of the window (not divided by width)
        self._tick = 0

    @property
    def estimation(self) -> float:
        return self.total / self.width if self.width else 0.0

    def update(self, x: float) -> ADWIN:
        x = _finite(x)
        if self.drift_detected:
            self._reset()
        self._insert(x)
        self.drift_detected = self._detect()
        if self.drift_detected:
            self.n_detections += 1
        return self

    def _insert(self, x: float) -> None:
        row = self._rows[0]
        row.totals.append(x)
        row.variances.append(0.0)
        self.width += 1
        if self.width > 1:
            mean_before = self.total / (self.width - 1)
            self.variance += (self.width - 1) * (x - mean_before) * (x - mean_before) / self.width
        self.total += x
        self._compress()

    def _compress(self) -> None:
        level = 0
        while level < len(self._rows):
            row = self._rows[level]
            if len(row.totals) != self.max_buckets + 1:
                break
            if level + 1 == len(self._rows):
                self._rows.append(_Row())
            size = 2.0**level
            t0, t1 = row.totals[0], row.totals[1]
            mu0, mu1 = t0 / size, t1 / size
            merged_var = row.variances[0] + row.variances[1] + size * size * (mu0 - mu1) ** 2 / (2 * size)
            nxt = self._rows[level + 1]
            nxt.totals.append(t0 + t1)
            nxt.variances.append(merged_var)
            del row.totals[:2], row.variances[:2]
            if len(nxt.totals) <= self.max_buckets:
                break
            level += 1

    def _delete_oldest(self) -> float:
        level = len(self._rows) - 1
        row = self._rows[level]
        size = 2.0**level
        total, var = row.totals[0], row.variances[0]
        self.width -= size
        self.total -= total
        mu, mu_window = total / size, self.total / self.width
        self.variance -= var + size * self.width * (mu - mu_window) ** 2 / (size + self.width)
        del row.totals[0], row.variances[0]
        if not row.totals:
            self._rows.pop()
        return size

    def _cut_differs(self, n0: float, n1: float, delta_mean: float) -> bool:
        delta_prime = math.log(2 * math.log(self.width) / self.delta)
        m_recip = 1.0 / (n0 - self.min_window_length + 1) + 1.0 / (n1 - self.min_window_length + 1)
        epsilon = (
            math.sqrt(2 * m_recip * (self.variance / self.width) * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
        )
        return abs(delta_mean) > epsilon

    def _detect(self) -> bool:
        detected = False
        self._tick += 1
        if self._tick % self.clock != 0 or self.width <= self.grace_period:
            return False
        reduce = True
        while reduce:
            reduce = False
            stop = False
            n0, n1, u0, u1 = 0.0, self.width, 0.0, self.total
            # Walk the cuts from the oldest bucket to the newest; W0 is the older part.
            for level in range(len(self._rows) - 1, -1, -1):
                if stop:
                    break
                row = self._rows[level]
                size = 2.0**level
                for k in range(len(row.totals)):
                    n0 += size
                    n1 -= size
                    u0 += row.totals[k]
                    u1 -= row.totals[k]
                    if level == 0 and k == len(row.totals) - 1:
                        stop = True
                        break
                    if (
                        n1 >= self.min_window_length
                        and n0 >= self.min_window_length
                        and self._cut_differs(n0, n1, u0 / n0 - u1 / n1)
                    ):
                        reduce = detected = True
                        if self.width > 0:
                            self._delete_oldest()
                            stop = True
                            break
        return detected


def error_stream(table, *, prediction: str = "output.label", label: str = "label") -> np.ndarray:
    """0/1 errors (1 = prediction differs from the label) of the logged rows that have a label, in time order.

    Args:
        table: a table from :func:`fastml.monitoring.log.read_log` (labels joined).
        prediction: the column holding the predicted class.
        label: the ground-truth column.
    """
    for c in (prediction, label):
        if c not in table.column_names:
            raise InvalidInput(f"log has no column {c!r}; columns are {table.column_names}")
    y = table[label].to_numpy(zero_copy_only=False).astype(np.float64)
    p = table[prediction].to_numpy(zero_copy_only=False).astype(np.float64)
    have = ~np.isnan(y)
    return (p[have] != y[have]).astype(np.int8)


def performance_drift(
    table, detector: _Detector | None = None, *, prediction: str = "output.label", label: str = "label"
) -> list[dict]:
    """Run a detector (default :class:`DDM`) over the error stream of a labelled prediction log.

    Returns:
        One ``{"index", "timestamp_us", "request_id"}`` per detection, where ``index`` counts labelled rows.
    """
    import pyarrow.compute as pc

    detector = detector or DDM()
    errors = error_stream(table, prediction=prediction, label=label)
    y = table[label].to_numpy(zero_copy_only=False).astype(np.float64)
    labelled = np.flatnonzero(~np.isnan(y))
    ts = pc.cast(table["timestamp"], "int64").to_numpy()
    ids = table["request_id"]
    return [
        {"index": i, "timestamp_us": int(ts[labelled[i]]), "request_id": ids[int(labelled[i])].as_py()}
        for i in detector.detect(errors)
    ]
