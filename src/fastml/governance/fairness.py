"""Group fairness metrics for binary classifiers, for any number of groups and their intersections.

Definitions follow fairlearn (``fairlearn.metrics``): a disparity over many groups is either the
spread *between groups* (``max - min`` for differences, ``min / max`` for ratios; the default) or the
worst distance *to the overall* value (``max |g - overall|``; ``min`` of ``g / overall`` folded below 1).
Equalized odds takes the worse of the TPR and FPR disparities; average odds takes their mean (fairlearn's
``agg="mean"``).

A rate whose denominator is empty is *undefined* (``NaN``, ``null`` in JSON): the TPR of a group with no
positive labels, the FPR of a group with no negative labels, any rate of a group whose weights sum to 0.
fairlearn (like scikit-learn) reports such a rate as 0, which can make an unfair model look fair (or a fair one
unfair); here every disparity that needs an undefined rate is itself undefined, with a ``reason``, and an
undefined metric never passes. So is a disparity over fewer than two groups (nothing is compared) and a
ratio whose reference is 0 (``0 / 0``). Labels must be binary hard decisions: ``y_true`` and ``y_pred``
together may hold at most two values and must contain ``pos_label``, so scores or a mistyped label are an
error, not a report in which nobody is ever selected.

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

# Rates are ratios of counts, so a disparity that is exactly on a bound comes out a rounding error beside it
# (0.8 - 0.7 = 0.10000000000000009, 0.6 / 0.75 = 0.7999999999999999). A value within this distance of a bound
# is on it: a selection-rate gap of exactly 10 points meets "<= 0.1", a ratio of exactly 4/5 the four-fifths rule.
BOUND_TOLERANCE = 1e-9


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
        d = {k: _num(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}
        # A missing value in a numeric sensitive column is its own group with key NaN: JSON has no NaN, so the
        # key is written as null (the label keeps "nan"), else the report and recorded evidence cannot be written.
        d["key"] = [_num(_plain(k)) for k in self.key]
        return d


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric value checked against its bounds (``None`` = unbounded on that side)."""

    name: str
    value: float
    min: float | None
    max: float | None
    reason: str | None = None  # why the value is undefined (None when it is defined)

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False  # an undefined disparity (e.g. every rate 0) is not evidence of fairness
        if self.min is not None and self.value < self.min - BOUND_TOLERANCE:
            return False
        if self.max is not None and self.value > self.max + BOUND_TOLERANCE:
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
            "reason": self.reason,
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
            f"{m.name} = {_fmt(m.value)} (required {m.describe_bound()})" + (f": {m.reason}" if m.reason else "")
            for m in self.metrics.values()
            if not m.passed
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
        sample_weight: optional weights per row (finite, >= 0).
        pos_label: the favourable label.

    Raises:
        InvalidInput: lengths differ, an unknown method/metric, an empty input, labels that are not binary
            (more than two values, missing values, or no ``pos_label``), a negative or non-finite weight,
            or a pair group that does not occur in the data.
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
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        # A negative weight can cancel a group's errors and NaN turns every rate into NaN without saying why.
        raise InvalidInput("sample_weight must be finite and >= 0")
    _check_binary(yt, yp, pos_label)
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
        if gs.weight == 0:
            warnings.append(f"group {label} has total weight 0; all its rates are undefined")
        else:
            if gs.positives == 0:
                warnings.append(f"group {label} has no positive labels; its TPR is undefined")
            if gs.negatives == 0:
                warnings.append(f"group {label} has no negative labels; its FPR is undefined")
        groups.append(gs)
    if len(groups) < 2:
        warnings.append(f"only {len(groups)} group present; disparities are undefined")

    # name -> (value, reason it is undefined or None)
    results: dict[str, tuple[float, str | None]] = {}
    results["demographic_parity_difference"] = _disparity(groups, overall, "selection_rate", method, ratio=False)
    results["demographic_parity_ratio"] = _disparity(groups, overall, "selection_rate", method, ratio=True)
    # Disparate impact (four-fifths rule) is always measured against the most-favoured group.
    results["disparate_impact"] = _disparity(groups, overall, "selection_rate", "between_groups", ratio=True)
    results["equal_opportunity_difference"] = tpr_d = _disparity(groups, overall, "tpr", method, ratio=False)
    results["equal_opportunity_ratio"] = tpr_r = _disparity(groups, overall, "tpr", method, ratio=True)
    fpr_d = _disparity(groups, overall, "fpr", method, ratio=False)
    fpr_r = _disparity(groups, overall, "fpr", method, ratio=True)
    # Combined explicitly: Python's max()/min() silently skip a NaN that is not the first argument, which
    # would let a defined TPR disparity stand in for an undefined FPR one.
    results["equalized_odds_difference"] = _combine(max, tpr_d, fpr_d)
    # A side whose rate is defined and 0 in every group (a perfect classifier's FPR) is 0/0 as a ratio, yet
    # no group is treated differently there: it does not make the combined ratio undefined (as in fairlearn).
    results["equalized_odds_ratio"] = _combine(
        min, *[(1.0, None) if d[0] == 0 and math.isnan(r[0]) else r for d, r in ((tpr_d, tpr_r), (fpr_d, fpr_r))]
    )
    results["average_odds_difference"] = _combine(lambda a, b: (a + b) / 2.0, tpr_d, fpr_d)
    results["accuracy_difference"] = _disparity(groups, overall, "accuracy", method, ratio=False)

    priv_label = unpriv_label = None
    if (privileged is None) != (unprivileged is None):
        raise InvalidInput("give both privileged and unprivileged, or neither")
    if privileged is not None:
        pg = _find_group(groups, names, privileged, "privileged")
        ug = _find_group(groups, names, unprivileged, "unprivileged")
        if pg is ug:
            raise InvalidInput("privileged and unprivileged name the same group")
        priv_label, unpriv_label = pg.label, ug.label
        for name, v in pair_metrics(pg, ug).items():
            results[name] = (v, _pair_reason(name, pg, ug) if math.isnan(v) else None)

    bounds = _merge_thresholds(thresholds)
    metrics = {
        name: MetricResult(name, float(v), *_bounds_of(bounds.get(name)), reason=why)
        for name, (v, why) in results.items()
    }
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


def _check_binary(yt: np.ndarray, yp: np.ndarray, pos_label) -> None:
    """Reject labels the binary metrics would silently misread (every non-``pos_label`` value is "negative")."""
    values: set = set()
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise InvalidInput(f"{name} has missing (NaN) values")
        if arr.dtype.kind == "O" and any(v is None or (isinstance(v, float) and math.isnan(v)) for v in arr):
            raise InvalidInput(f"{name} has missing (None/NaN) values")
        try:
            values.update(_plain(v) for v in np.unique(arr))
        except TypeError:  # unorderable mixed types
            values.update(arr.tolist())
    if len(values) > 2:
        shown = sorted(map(repr, values))[:5]
        raise InvalidInput(
            f"fairness metrics need binary hard decisions, but y_true and y_pred hold {len(values)} distinct "
            f"values ({', '.join(shown)}{', ...' if len(values) > 5 else ''}); threshold scores first"
        )
    if pos_label not in values:
        raise InvalidInput(
            f"pos_label {pos_label!r} occurs in neither y_true nor y_pred (values: {', '.join(sorted(map(repr, values)))}); "
            "every row would count as unfavourable"
        )


def _stats(key: tuple, label: str, t: np.ndarray, p: np.ndarray, w: np.ndarray) -> GroupStats:
    total = float(w.sum())
    pos = float(w[t].sum())
    neg = float(w[~t].sum())
    # An empty denominator makes the rate undefined (NaN), not 0: 0 would read as a measured rate.
    sel = float(w[p].sum()) / total if total > 0 else math.nan
    tpr = float(w[t & p].sum()) / pos if pos > 0 else math.nan
    fpr = float(w[~t & p].sum()) / neg if neg > 0 else math.nan
    acc = float(w[t == p].sum()) / total if total > 0 else math.nan
    return GroupStats(key, label, int(t.shape[0]), total, pos, neg, sel, tpr, fpr, acc)


_RATE_NAMES = {"selection_rate": "selection rate", "tpr": "TPR", "fpr": "FPR", "accuracy": "accuracy"}


def _why_undefined(g: GroupStats, attr: str) -> str:
    if g.weight == 0:
        return "total weight 0"
    return {"tpr": "no positive labels", "fpr": "no negative labels"}.get(attr, "no samples")


def _disparity(
    groups: Sequence[GroupStats], overall: GroupStats, attr: str, method: str, *, ratio: bool
) -> tuple[float, str | None]:
    """One difference or ratio of the rate ``attr`` across groups, and why it is undefined (or None)."""
    rate = _RATE_NAMES[attr]
    if len(groups) < 2:
        return math.nan, f"only {len(groups)} group ({', '.join(g.label for g in groups)}): nothing to compare"
    undefined = [g for g in groups if math.isnan(getattr(g, attr))]
    if undefined:
        # Leaving such a group out (or counting its rate as 0) would judge fairness without it.
        listed = ", ".join(f"{g.label} ({_why_undefined(g, attr)})" for g in undefined)
        return math.nan, f"the {rate} is undefined for group(s) {listed}"
    vals = np.array([getattr(g, attr) for g in groups], dtype=np.float64)
    ref = getattr(overall, attr)
    if not ratio:
        return _difference(vals, ref, method), None
    value = _ratio(vals, ref, method)
    if math.isnan(value):
        if method == "between_groups":
            return value, f"the {rate} is 0 in every group, so the ratio is 0/0"
        return value, f"the overall {rate} is 0, so no ratio to it exists"
    return value, None


def _combine(op, a: tuple[float, str | None], b: tuple[float, str | None]) -> tuple[float, str | None]:
    """``op`` of two disparities; undefined when either is (with both reasons)."""
    if math.isnan(a[0]) or math.isnan(b[0]):
        reasons = list(dict.fromkeys(r for r in (a[1], b[1]) if r))
        return math.nan, "; ".join(reasons) or None
    return float(op(a[0], b[0])), None


def _pair_reason(name: str, pg: GroupStats, ug: GroupStats) -> str:
    if name == "pair.disparate_impact" and pg.selection_rate == 0:
        return f"the privileged group {pg.label}'s selection rate is 0"
    parts = [
        f"the {_RATE_NAMES[a]} of {g.label} is undefined ({_why_undefined(g, a)})"
        for g in (pg, ug)
        for a in _RATE_NAMES
        if math.isnan(getattr(g, a))
    ]
    return "; ".join(parts)


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
            bounds[name] = {k: _bound(name, k, v) for k, v in spec.items() if v is not None}
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            # A bare number replaces the default's single bound (max for differences, min for ratios).
            default = DEFAULT_THRESHOLDS[name]
            if len(default) != 1:
                raise InvalidInput(f"threshold for {name!r} needs {{'min': .., 'max': ..}}, not a number")
            side = next(iter(default))
            bounds[name] = {side: _bound(name, side, spec)}
        else:
            raise InvalidInput(f"threshold for {name!r} must be a number, a {{min,max}} table or null; got {spec!r}")
    return bounds


def _bound(name: str, side: str, value: Any) -> float:
    """One bound as a float. NaN is refused: every comparison with it is false, so it would pass any value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"threshold {side} for {name!r} must be a number, got {value!r}")
    try:
        bound = float(value)
    except ValueError:
        raise InvalidInput(f"threshold {side} for {name!r} must be a number, got {value!r}") from None
    if math.isnan(bound):
        raise InvalidInput(f"threshold {side} for {name!r} is NaN, which no value fails; use null to drop the check")
    return bound


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
