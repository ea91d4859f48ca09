"""Group fairness metrics for binary classifiers, for any number of groups and their intersections.

Definitions follow fairlearn (``fairlearn.metrics``): a disparity over many groups is either the
spread *between groups* (``max - min`` for differences, ``min / max`` for ratios; the default) or the
worst distance *to the overall* value (``max |g - overall|``; ``min`` of ``g / overall`` folded below 1).
Equalized odds takes the worse of the TPR and FPR disparities; average odds takes their mean (fairlearn's
``agg="mean"``). Rates whose denominator is empty are 0, as scikit-learn's confusion matrix gives them.

For a named privileged / unprivileged pair the signed metrics use AIF360's conventions: every difference is
``unprivileged - privileged`` and disparate impact is ``unprivileged / privileged``, so a negative difference
(or a ratio below 1) means the unprivileged group is worse off.

Every metric is checked against a threshold (a ``min`` and/or ``max`` bound); the report says pass/fail per
metric and overall.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastml.errors import InvalidInput

METHODS = ("between_groups", "to_overall")

# metric -> bounds. Differences are magnitudes (>= 0); ratios are in [0, 1]. 0.1 and the four-fifths
# rule (0.8) are the customary defaults; pair bounds are AIF360's usual "fair" band around 0 and 1.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "demographic_parity_difference": {"max": 0.1},
    "demographic_parity_ratio": {"min": 0.8},
    "disparate_impact": {"min": 0.8},
    "equal_opportunity_difference": {"max": 0.1},
    "equal_opportunity_ratio": {"min": 0.8},
    "equalized_odds_difference": {"max": 0.1},
    "equalized_odds_ratio": {"min": 0.8},
    "average_odds_difference": {"max": 0.1},
    "accuracy_difference": {"max": 0.1},
    "pair.statistical_parity_difference": {"min": -0.1, "max": 0.1},
    "pair.disparate_impact": {"min": 0.8, "max": 1.25},
    "pair.equal_opportunity_difference": {"min": -0.1, "max": 0.1},
    "pair.average_odds_difference": {"min": -0.1, "max": 0.1},
    "pair.average_abs_odds_difference": {"max": 0.1},
    "pair.false_positive_rate_difference": {"min": -0.1, "max": 0.1},
    "pair.error_rate_difference": {"min": -0.1, "max": 0.1},
}


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """Per-group counts and rates. ``key`` holds one value per sensitive column."""

    key: tuple
    label: str
    count: int
    weight: float
    positives: float
    negatives: float
    selection_rate: float
    tpr: float
    fpr: float
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["key"] = [_plain(k) for k in self.key]
        return d


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric value checked against its bounds (``None`` = unbounded on that side)."""

    name: str
    value: float
    min: float | None
    max: float | None

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False  # an undefined disparity (e.g. every rate 0) is not evidence of fairness
        if self.min is not None and self.value < self.min:
            return False
        if self.max is not None and self.value > self.max:
            return False
        return True

    def describe_bound(self) -> str:
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f">= {self.min:g}"
        if self.max is not None:
            return f"<= {self.max:g}"
        return "unbounded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _num(self.value),
            "min": self.min,
            "max": self.max,
            "passed": self.passed,
            "threshold": self.describe_bound(),
        }


@dataclasses.dataclass(frozen=True)
class FairnessReport:
    """Everything :func:`assess_fairness` found; ``passed`` is true when every bounded metric passes."""

    sensitive_columns: tuple[str, ...]
    method: str
    overall: GroupStats
    groups: tuple[GroupStats, ...]
    metrics: dict[str, MetricResult]
    privileged: str | None = None
    unprivileged: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics.values())

    @property
    def failures(self) -> list[str]:
        """One readable line per failing metric."""
        return [
            f"{m.name} = {_fmt(m.value)} (required {m.describe_bound()})" for m in self.metrics.values() if not m.passed
        ]

    def value(self, name: str) -> float:
        return self.metrics[name].value

    def group(self, label_or_key) -> GroupStats:
        for g in self.groups:
            if g.label == label_or_key or g.key == label_or_key or g.key == (label_or_key,):
                return g
        raise InvalidInput(f"no group {label_or_key!r}; groups: {[g.label for g in self.groups]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensitive_columns": list(self.sensitive_columns),
            "method": self.method,
            "passed": self.passed,
            "overall": self.overall.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "privileged": self.privileged,
            "unprivileged": self.unprivileged,
            "warnings": list(self.warnings),
        }


def assess_fairness(
    y_true,
    y_pred,
    sensitive_features,
    *,
    method: str = "between_groups",
    thresholds: Mapping[str, Any] | None = None,
    privileged=None,
    unprivileged=None,
    sample_weight=None,
    pos_label=1,
) -> FairnessReport:
    """Compute per-group rates and disparity metrics, each checked against its threshold.

    Args:
        y_true: true labels, 1-D.
        y_pred: predicted labels, 1-D (hard decisions, not scores).
        sensitive_features: one column (1-D array-like), a mapping ``name -> column``, a pandas DataFrame
            or a 2-D array; several columns make intersectional groups (one group per observed
            combination).
        method: ``"between_groups"`` (default) or ``"to_overall"``, as in fairlearn.
        thresholds: overrides of :data:`DEFAULT_THRESHOLDS`: ``{"name": 0.05}`` replaces the default bound
            (``max`` for differences, ``min`` for ratios), ``{"name": {"min": .., "max": ..}}`` sets both,
            ``{"name": None}`` drops the check.
        privileged, unprivileged: the AIF360-style pair: a group value, a tuple of values (one per column)
            or a mapping ``column -> value``. Both or neither.
        sample_weight: optional weights per row.
        pos_label: the favourable label.

    Raises:
        InvalidInput: lengths differ, an unknown method/metric, an empty input, or a pair group that does
            not occur in the data.
    """
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {METHODS}, got {method!r}")
    yt = np.asarray(y_true).ravel()
    yp = np.asarray(y_pred).ravel()
    n = yt.shape[0]
    if n == 0:
        raise InvalidInput("y_true is empty")
    if yp.shape[0] != n:
        raise InvalidInput(f"y_pred has {yp.shape[0]} rows, y_true has {n}")
    names, columns = _sensitive_columns(sensitive_features, n)
    w = np.ones(n, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if w.shape[0] != n:
        raise InvalidInput(f"sample_weight has {w.shape[0]} rows, y_true has {n}")
    t = yt == pos_label
    p = yp == pos_label

    group_ids, keys = _group_ids(columns)
    warnings: list[str] = []
    overall = _stats((), "overall", t, p, w)
    groups = []
    for gid, key in enumerate(keys):
        mask = group_ids == gid
        label = _label(names, key)
        gs = _stats(key, label, t[mask], p[mask], w[mask])
        if gs.positives == 0:
            warnings.append(f"group {label} has no positive labels; its TPR is taken as 0")
        if gs.negatives == 0:
            warnings.append(f"group {label} has no negative labels; its FPR is taken as 0")
        groups.append(gs)
    if len(groups) < 2:
        warnings.append(f"only {len(groups)} group present; disparities are trivially 0")

    sel = np.array([g.selection_rate for g in groups])
    tpr = np.array([g.tpr for g in groups])
    fpr = np.array([g.fpr for g in groups])
    acc = np.array([g.accuracy for g in groups])

    values: dict[str, float] = {}
    values["demographic_parity_difference"] = _difference(sel, overall.selection_rate, method)
    values["demographic_parity_ratio"] = _ratio(sel, overall.selection_rate, method)
    # Disparate impact (four-fifths rule) is always measured against the most-favoured group.
    values["disparate_impact"] = _ratio(sel, overall.selection_rate, "between_groups")
    values["equal_opportunity_difference"] = _difference(tpr, overall.tpr, method)
    values["equal_opportunity_ratio"] = _ratio(tpr, overall.tpr, method)
    tpr_d, fpr_d = values["equal_opportunity_difference"], _difference(fpr, overall.fpr, method)
    values["equalized_odds_difference"] = max(tpr_d, fpr_d)
    values["equalized_odds_ratio"] = min(values["equal_opportunity_ratio"], _ratio(fpr, overall.fpr, method))
    values["average_odds_difference"] = (tpr_d + fpr_d) / 2.0
    values["accuracy_difference"] = _difference(acc, overall.accuracy, method)

    priv_label = unpriv_label = None
    if (privileged is None) != (unprivileged is None):
        raise InvalidInput("give both privileged and unprivileged, or neither")
    if privileged is not None:
        pg = _find_group(groups, names, privileged, "privileged")
        ug = _find_group(groups, names, unprivileged, "unprivileged")
        if pg is ug:
            raise InvalidInput("privileged and unprivileged name the same group")
        priv_label, unpriv_label = pg.label, ug.label
        values.update(pair_metrics(pg, ug))

    bounds = _merge_thresholds(thresholds)
    metrics = {name: MetricResult(name, float(v), *_bounds_of(bounds.get(name))) for name, v in values.items()}
    return FairnessReport(
        tuple(names), method, overall, tuple(groups), metrics, priv_label, unpriv_label, tuple(warnings)
    )


def pair_metrics(privileged: GroupStats, unprivileged: GroupStats) -> dict[str, float]:
    """AIF360's signed metrics for one pair: ``unprivileged - privileged`` (ratio: unpriv / priv)."""
    u, p = unprivileged, privileged
    di = u.selection_rate / p.selection_rate if p.selection_rate > 0 else math.nan
    return {
        "pair.statistical_parity_difference": u.selection_rate - p.selection_rate,
        "pair.disparate_impact": di,
        "pair.equal_opportunity_difference": u.tpr - p.tpr,
        "pair.average_odds_difference": ((u.fpr - p.fpr) + (u.tpr - p.tpr)) / 2.0,
        "pair.average_abs_odds_difference": (abs(u.fpr - p.fpr) + abs(u.tpr - p.tpr)) / 2.0,
        "pair.false_positive_rate_difference": u.fpr - p.fpr,
        "pair.error_rate_difference": (1.0 - u.accuracy) - (1.0 - p.accuracy),
    }


def check_values(values: Mapping[str, float], thresholds: Mapping[str, Any] | None = None) -> dict[str, MetricResult]:
    """Check already computed metric values (e.g. recorded with a model version) against thresholds.

    Only metrics that have a bound are returned; names not in ``values`` are skipped.
    """
    bounds = _merge_thresholds(thresholds)
    out = {}
    for name, value in values.items():
        if name in bounds and bounds[name] is not None:
            out[name] = MetricResult(name, float(value) if value is not None else math.nan, *_bounds_of(bounds[name]))
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _stats(key: tuple, label: str, t: np.ndarray, p: np.ndarray, w: np.ndarray) -> GroupStats:
    total = float(w.sum())
    pos = float(w[t].sum())
    neg = float(w[~t].sum())
    sel = float(w[p].sum()) / total if total > 0 else 0.0
    tpr = float(w[t & p].sum()) / pos if pos > 0 else 0.0
    fpr = float(w[~t & p].sum()) / neg if neg > 0 else 0.0
    acc = float(w[t == p].sum()) / total if total > 0 else 0.0
    return GroupStats(key, label, int(t.shape[0]), total, pos, neg, sel, tpr, fpr, acc)


def _difference(vals: np.ndarray, overall: float, method: str) -> float:
    if vals.size == 0:
        return math.nan
    if method == "between_groups":
        return float(vals.max() - vals.min())
    return float(np.abs(vals - overall).max())


def _ratio(vals: np.ndarray, overall: float, method: str) -> float:
    if vals.size == 0:
        return math.nan
    if method == "between_groups":
        hi = vals.max()
        return float(vals.min() / hi) if hi > 0 else math.nan
    if overall == 0:
        return math.nan
    r = vals / overall
    r = np.where(r > 1, 1.0 / np.where(r == 0, 1, r), r)  # fold above-overall ratios below 1, as fairlearn
    return float(r.min())


def _sensitive_columns(sf, n: int) -> tuple[list[str], list[np.ndarray]]:
    if sf is None:
        raise InvalidInput("sensitive_features is required")
    if hasattr(sf, "columns") and hasattr(sf, "__getitem__") and not isinstance(sf, np.ndarray):  # DataFrame
        names = [str(c) for c in sf.columns]
        cols = [np.asarray(sf[c]) for c in sf.columns]
    elif isinstance(sf, Mapping):
        names = [str(k) for k in sf]
        cols = [np.asarray(v) for v in sf.values()]
    else:
        arr = np.asarray(sf)
        if arr.ndim == 1:
            names = [str(getattr(sf, "name", None) or "group")]
            cols = [arr]
        elif arr.ndim == 2:
            names = [f"sf{i}" for i in range(arr.shape[1])]
            cols = [arr[:, i] for i in range(arr.shape[1])]
        else:
            raise InvalidInput(f"sensitive_features must be 1-D or 2-D, got {arr.ndim}-D")
    if not cols:
        raise InvalidInput("sensitive_features has no columns")
    for name, c in zip(names, cols):
        if c.ndim != 1 or c.shape[0] != n:
            raise InvalidInput(f"sensitive feature {name!r} has shape {c.shape}, expected ({n},)")
    return names, cols


def _group_ids(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
    """One integer id per row for its combination of values, and the sorted combinations (keys)."""
    uniques, codes = [], []
    for c in columns:
        try:
            u, inv = np.unique(c, return_inverse=True)
        except TypeError:  # mixed types (e.g. strings and None) cannot be ordered: group by their text
            u, inv = np.unique(c.astype(str), return_inverse=True)
        uniques.append(u)
        codes.append(inv.ravel())
    combined = np.ravel_multi_index(codes, [len(u) for u in uniques]) if len(codes) > 1 else codes[0]
    present, ids = np.unique(combined, return_inverse=True)
    keys = []
    for flat in present:
        idx = np.unravel_index(int(flat), [len(u) for u in uniques]) if len(codes) > 1 else (int(flat),)
        keys.append(tuple(_plain(uniques[i][j]) for i, j in enumerate(idx)))
    return ids.ravel(), keys


def _label(names: Sequence[str], key: tuple) -> str:
    if len(names) == 1:
        return str(key[0])
    return ", ".join(f"{n}={v}" for n, v in zip(names, key))


def _find_group(groups: Sequence[GroupStats], names: Sequence[str], spec, role: str) -> GroupStats:
    if isinstance(spec, Mapping):
        missing = [c for c in spec if c not in names]
        if missing or len(spec) != len(names):
            raise InvalidInput(f"{role} group {spec!r} must name every sensitive column {list(names)}")
        want = tuple(spec[c] for c in names)
    elif isinstance(spec, (tuple, list)):
        want = tuple(spec)
    else:
        want = (spec,)
    if len(want) != len(names):
        raise InvalidInput(f"{role} group {spec!r} needs {len(names)} value(s), one per column {list(names)}")
    for g in groups:
        if all(str(a) == str(b) for a, b in zip(g.key, want)):
            return g
    raise InvalidInput(f"{role} group {spec!r} does not occur; groups: {[g.label for g in groups]}")


def _merge_thresholds(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, float] | None]:
    bounds: dict[str, dict[str, float] | None] = {k: dict(v) for k, v in DEFAULT_THRESHOLDS.items()}
    for name, spec in (overrides or {}).items():
        if name not in DEFAULT_THRESHOLDS:
            raise InvalidInput(f"unknown fairness metric {name!r} in thresholds; known: {sorted(DEFAULT_THRESHOLDS)}")
        if spec is None:
            bounds[name] = None
        elif isinstance(spec, Mapping):
            extra = set(spec) - {"min", "max"}
            if extra:
                raise InvalidInput(f"threshold for {name!r} may only have 'min'/'max', got {sorted(extra)}")
            bounds[name] = {k: float(v) for k, v in spec.items() if v is not None}
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            # A bare number replaces the default's single bound (max for differences, min for ratios).
            default = DEFAULT_THRESHOLDS[name]
            if len(default) != 1:
                raise InvalidInput(f"threshold for {name!r} needs {{'min': .., 'max': ..}}, not a number")
            bounds[name] = {next(iter(default)): float(spec)}
        else:
            raise InvalidInput(f"threshold for {name!r} must be a number, a {{min,max}} table or null; got {spec!r}")
    return bounds


def _bounds_of(b: Mapping[str, float] | None) -> tuple[float | None, float | None]:
    if not b:
        return None, None
    return b.get("min"), b.get("max")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _num(v: float):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _fmt(v: float) -> str:
    return "undefined" if v is None or math.isnan(v) else f"{v:.4f}"
