"""Feature statistics computed at ingest: the reference profiles monitoring compares live traffic with.

Per feature of a group version, over every committed row of that version: count (non-null values),
null count and rate, and for numeric features mean, std, min, max, p50/p90/p99 and a 20-bin histogram;
for bool the true rate and counts; for categorical strings the number of distinct values and the top-k.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastml.features.groups import FeatureGroup

HISTOGRAM_BINS = 20
TOP_K = 10


def feature_stats(column: pa.Array | pa.ChunkedArray, dtype: str) -> dict:
    """Statistics of one column (see the module docstring)."""
    n = len(column)
    nulls = column.null_count
    out: dict = {
        "dtype": dtype,
        "rows": n,
        "count": n - nulls,
        "null_count": nulls,
        "null_rate": (nulls / n) if n else 0.0,
    }
    valid = pc.drop_null(column)
    if dtype in ("float32", "float64", "int64"):
        x = valid.to_numpy().astype(np.float64) if len(valid) else np.empty(0)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            out.update(
                {
                    "mean": None,
                    "std": None,
                    "min": None,
                    "max": None,
                    "p50": None,
                    "p90": None,
                    "p99": None,
                    "histogram": {"edges": [], "counts": []},
                }
            )
            return out
        p50, p90, p99 = np.quantile(x, [0.5, 0.9, 0.99])
        counts, edges = histogram(x)
        out.update(
            {
                "mean": float(x.mean()),
                "std": float(x.std()),
                "min": float(x.min()),
                "max": float(x.max()),
                "p50": float(p50),
                "p90": float(p90),
                "p99": float(p99),
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            }
        )
    elif dtype == "bool":
        trues = int(pc.sum(valid).as_py() or 0) if len(valid) else 0
        count = len(valid)
        out.update(
            {
                "true_count": trues,
                "false_count": count - trues,
                "mean": (trues / count) if count else None,
                "top_k": _top_k(valid),
            }
        )
    else:
        out.update({"distinct": int(pc.count_distinct(valid).as_py()) if len(valid) else 0, "top_k": _top_k(valid)})
    return out


def histogram(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of ``HISTOGRAM_BINS`` equal-width bins over the finite, non-empty ``x``.

    numpy's histogram refuses data whose range float64 cannot split into that many distinct edges: all
    values equal and large (one row of an int64 feature near 1e18), subnormals, or a range wider than the
    largest float. Stats run after an ingest commits, so such a refusal would report a committed ingest as
    failed and fail every later ingest of the version. There the edges are computed without overflow and
    equal ones merged (all values equal: one bin ``[v, v]``); the last bin is closed, like numpy's.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            counts, edges = np.histogram(x, bins=HISTOGRAM_BINS)
        if np.all(np.isfinite(edges)):
            return counts, edges
    except ValueError:
        pass  # numpy's "Too many bins for data range": the edges below are the fallback
    lo, hi = float(x.min()), float(x.max())
    f = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    with np.errstate(over="ignore"):
        # lo*(1-f) + hi*f never overflows where (hi - lo) would
        edges = np.unique(np.clip(lo * (1.0 - f) + hi * f, lo, hi))
    if len(edges) < 2:
        edges = np.array([lo, hi])
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(bins, minlength=len(edges) - 1), edges


def _top_k(valid) -> list[list]:
    if len(valid) == 0:
        return []
    vc = pc.value_counts(valid)
    values = vc.field("values").to_pylist()
    counts = vc.field("counts").to_numpy()
    order = np.lexsort((np.arange(len(counts)), -counts))[:TOP_K]
    return [[values[i], int(counts[i])] for i in order]


def group_stats(group: FeatureGroup, table: pa.Table) -> dict:
    """Statistics of every feature of ``group`` over ``table``."""
    return {
        "rows": table.num_rows,
        "features": {f.name: feature_stats(table.column(f.name), f.dtype) for f in group.features},
    }
