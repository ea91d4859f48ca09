"""Model performance over sliding windows: quality once labels arrive, latency and errors always.

Definitions (the tests compare them with scikit-learn):

- accuracy: share of predictions equal to the label.
- precision, recall, F1: for the ``positive`` class when the labels are binary; macro averages over the
  classes present (in labels or predictions) otherwise; 0 where a denominator is 0 (sklearn's
  ``zero_division=0``).
- ROC AUC (binary, from scores of the positive class): the Mann–Whitney statistic with average ranks for
  ties, equal to ``sklearn.metrics.roc_auc_score``; ``None`` when only one class is present.
- RMSE, MAE for regression.
- latency p50/p95/p99 (``numpy.percentile``, linear interpolation) in ms, throughput (requests per second
  over the window's time span) and error rate (failed / all requests).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastml.errors import InvalidInput


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def roc_auc(y_true: np.ndarray, scores: np.ndarray, positive: Any = 1) -> float | None:
    """Binary ROC AUC via average ranks (``None`` if a class is missing)."""
    from scipy.stats import rankdata

    y = np.asarray(y_true) == positive
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y_true: Sequence, y_pred: Sequence, scores: Sequence | None = None, positive: Any = 1
) -> dict[str, float | None]:
    """Accuracy, precision, recall, F1 and (binary, with ``scores``) ROC AUC."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if y.shape != p.shape:
        raise InvalidInput(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if y.size == 0:
        return {"accuracy": None, "precision": None, "recall": None, "f1": None, "roc_auc": None, "n": 0}
    classes = np.union1d(y, p)
    binary = classes.size <= 2 and (positive in classes or classes.size == 1)
    if binary:
        tp = float(np.sum((p == positive) & (y == positive)))
        fp = float(np.sum((p == positive) & (y != positive)))
        fn = float(np.sum((p != positive) & (y == positive)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = _f1(precision, recall)
    else:
        ps, rs, fs = [], [], []
        for c in classes:
            tp = float(np.sum((p == c) & (y == c)))
            pp, ap = float(np.sum(p == c)), float(np.sum(y == c))
            pr, rc = (tp / pp if pp else 0.0), (tp / ap if ap else 0.0)
            ps.append(pr)
            rs.append(rc)
            fs.append(_f1(pr, rc))
        precision, recall, f1 = float(np.mean(ps)), float(np.mean(rs)), float(np.mean(fs))
    if scores is not None and np.shape(scores) != y.shape:
        raise InvalidInput(f"labels {y.shape} and scores {np.shape(scores)} differ in shape")
    auc = roc_auc(y, scores, positive) if scores is not None and binary else None
    return {
        "accuracy": float(np.mean(y == p)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": auc,
        "n": int(y.size),
    }


def regression_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float | None]:
    """RMSE and MAE."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape:
        raise InvalidInput(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if y.size == 0:
        return {"rmse": None, "mae": None, "n": 0}
    err = p - y
    return {"rmse": float(math.sqrt(np.mean(err * err))), "mae": float(np.mean(np.abs(err))), "n": int(y.size)}


def latency_metrics(
    latency_us: Sequence[float], timestamps_s: Sequence[float] | None = None, errors: Sequence[bool] | None = None
) -> dict[str, float | None]:
    """Latency percentiles (ms), throughput (requests/s over the time span) and error rate."""
    lat = np.asarray(latency_us, dtype=np.float64)
    out: dict[str, float | None] = {"requests": int(lat.size)}
    if lat.size:
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) / 1000.0
        out.update(latency_p50_ms=float(p50), latency_p95_ms=float(p95), latency_p99_ms=float(p99))
    else:
        out.update(latency_p50_ms=None, latency_p95_ms=None, latency_p99_ms=None)
    if timestamps_s is not None and len(timestamps_s) > 1:
        ts = np.asarray(timestamps_s, dtype=np.float64)
        span = float(ts.max() - ts.min())
        out["throughput_rps"] = (ts.size - 1) / span if span > 0 else None
    else:
        out["throughput_rps"] = None
    if errors is not None:
        e = np.asarray(errors, dtype=bool)
        out["error_rate"] = float(e.mean()) if e.size else None
    return out


class PerformanceTracker:
    """Sliding-window performance of one model.

    The window holds the last ``window`` records, further limited to the last ``window_s`` seconds when
    given. Add outcomes as they arrive (labels may come much later than the request; they enter the
    window when recorded).

    Args:
        task: ``"classification"`` or ``"regression"``.
        window: most records kept per stream.
        window_s: optional age limit in seconds.
        positive: the positive class for binary precision/recall/F1/AUC.
    """

    def __init__(
        self, task: str = "classification", *, window: int = 1000, window_s: float | None = None, positive: Any = 1
    ):
        if task not in ("classification", "regression"):
            raise InvalidInput(f"task must be 'classification' or 'regression', got {task!r}")
        if window < 1:
            raise InvalidInput(f"window must be >= 1, got {window}")
        self.task, self.window, self.window_s, self.positive = task, window, window_s, positive
        self._outcomes: collections.deque = collections.deque(maxlen=window)  # (t, y, pred, score)
        self._requests: collections.deque = collections.deque(maxlen=window)  # (t, latency_us, error)

    def add_outcomes(
        self,
        y_true: Sequence,
        y_pred: Sequence,
        scores: Sequence | None = None,
        timestamps_s: Sequence[float] | float | None = None,
    ) -> None:
        """Record labelled predictions (``scores``: positive-class probability, for AUC).

        Raises:
            InvalidInput: labels, predictions, scores or timestamps of different lengths, or a NaN label
                (an outcome not known yet is left out, not recorded: it would count as a miss).
        """
        y, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
        if y.shape != p.shape:
            raise InvalidInput(f"labels {y.shape} and predictions {p.shape} differ in shape")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise InvalidInput(f"labels hold {int(np.isnan(y).sum())} NaN value(s): record only known outcomes")
        s = np.full(y.shape, np.nan) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            # zip() below would silently keep only the shorter run of outcomes.
            raise InvalidInput(f"labels {y.shape} and scores {s.shape} differ in shape")
        ts = _times(timestamps_s, y.size)
        self._outcomes.extend(zip(ts, y.tolist(), p.tolist(), s.tolist()))

    def add_requests(
        self,
        latency_us: Sequence[float] | float,
        errors: Sequence[bool] | bool = False,
        timestamps_s: Sequence[float] | float | None = None,
    ) -> None:
        """Record served requests: latency and whether each failed."""
        lat = np.atleast_1d(np.asarray(latency_us, dtype=np.float64))
        err = np.asarray(errors, dtype=bool)
        if err.size not in (1, lat.size):
            raise InvalidInput(f"{err.size} error flags for {lat.size} requests: give one for all or one each")
        err = np.broadcast_to(err.reshape(-1) if err.ndim else err, lat.shape)
        self._requests.extend(zip(_times(timestamps_s, lat.size), lat.tolist(), err.tolist()))

    def _recent(self, items, now: float | None):
        if self.window_s is None:
            return list(items)
        cutoff = (time.time() if now is None else now) - self.window_s
        return [r for r in items if r[0] >= cutoff]

    def metrics(self, now: float | None = None) -> dict[str, float | None]:
        """Current window's metrics (quality metrics are ``None`` before any label arrived)."""
        out: dict[str, float | None] = {}
        outcomes = self._recent(self._outcomes, now)
        if self.task == "classification":
            y = np.array([o[1] for o in outcomes])
            p = np.array([o[2] for o in outcomes])
            s = np.array([o[3] for o in outcomes], dtype=np.float64)
            scores = s if s.size and not np.isnan(s).any() else None
            out.update(classification_metrics(y, p, scores, self.positive))
        else:
            out.update(regression_metrics([o[1] for o in outcomes], [o[2] for o in outcomes]))
        out["labelled"] = out.pop("n")
        reqs = self._recent(self._requests, now)
        out.update(latency_metrics([r[1] for r in reqs], [r[0] for r in reqs], [r[2] for r in reqs]))
        return out


def _times(timestamps_s, n: int) -> list[float]:
    if timestamps_s is None:
        return [time.time()] * n
    ts = np.atleast_1d(np.asarray(timestamps_s, dtype=np.float64))
    if ts.shape not in ((1,), (n,)):
        raise InvalidInput(f"{ts.size} timestamps for {n} records: give one for all or one per record")
    return np.broadcast_to(ts, (n,)).tolist()


def windows_from_log(
    table,
    *,
    window_s: float = 60.0,
    task: str = "classification",
    prediction: str = "output.label",
    score: str | None = None,
    positive: Any = 1,
) -> list[dict]:
    """Metrics per consecutive time window of a prediction log (for reports and history).

    Returns one dict per non-empty window: ``start`` (Unix seconds), ``requests``, ``throughput_rps``
    (requests in the window / ``window_s``, so a partial last window reads low), the latency metrics (one
    latency per request) and, where labels were joined, the quality metrics of that window.
    """
    if table.num_rows == 0:
        return []
    import pyarrow.compute as pc

    ts = pc.cast(table["timestamp"], "int64").to_numpy() / 1e6
    start0 = math.floor(ts.min() / window_s) * window_s
    bucket = np.floor((ts - start0) / window_s).astype(np.int64)
    rows = table["row"].to_numpy()
    lat = table["latency_us"].to_numpy()
    has_label = "label" in table.column_names and prediction in table.column_names
    y = table["label"].to_numpy(zero_copy_only=False).astype(np.float64) if has_label else None
    p = table[prediction].to_numpy(zero_copy_only=False) if has_label else None
    sc = None
    if has_label and score is not None and score in table.column_names:
        col = table[score].combine_chunks()
        import pyarrow as pa

        if pa.types.is_fixed_size_list(col.type):
            sc = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)[:, int(positive)]
        else:
            sc = col.to_numpy(zero_copy_only=False)
    out = []
    for b in np.unique(bucket):
        m = bucket == b
        first_rows = m & (rows == 0)  # one latency per request
        rec = {"start": start0 + b * window_s}
        rec.update(latency_metrics(lat[first_rows], ts[first_rows]))
        rec["requests"] = int(first_rows.sum())
        rec["throughput_rps"] = rec["requests"] / window_s
        if has_label:
            lm = m & ~np.isnan(y)
            if lm.any():
                if task == "classification":
                    rec.update(
                        classification_metrics(
                            y[lm], p[lm].astype(np.float64), None if sc is None else sc[lm], float(positive)
                        )
                    )
                else:
                    rec.update(regression_metrics(y[lm], p[lm]))
        out.append(rec)
    return out
