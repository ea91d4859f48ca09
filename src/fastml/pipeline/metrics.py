"""Scores for tuning, cross-validation and holdout evaluation (scikit-learn's definitions)."""

from __future__ import annotations

import math

import numpy as np

CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION = ("rmse", "mae", "r2")


def score(metric: str, est, X, y) -> float:
    """``metric`` of fitted ``est`` on ``(X, y)``; larger or smaller is better per the metric."""
    from sklearn import metrics as m

    if metric in ("rmse", "mae", "r2"):
        pred = est.predict(X)
        if metric == "rmse":
            return math.sqrt(m.mean_squared_error(y, pred))
        return float(m.mean_absolute_error(y, pred) if metric == "mae" else m.r2_score(y, pred))
    classes = est.classes_
    binary = len(classes) == 2
    if metric in ("roc_auc", "log_loss"):
        proba = est.predict_proba(X)
        if metric == "log_loss":
            return float(m.log_loss(y, proba, labels=classes))
        if len(np.unique(y)) < 2:
            return float("nan")
        if binary:
            return float(m.roc_auc_score(y, proba[:, 1]))
        return float(m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    pred = est.predict(X)
    if metric == "accuracy":
        return float(m.accuracy_score(y, pred))
    avg = "binary" if binary else "macro"
    kw = {"average": avg, "zero_division": 0}
    if binary:
        kw["pos_label"] = classes[1]
    fn = {"precision": m.precision_score, "recall": m.recall_score, "f1": m.f1_score}[metric]
    return float(fn(y, pred, **kw))


def all_metrics(task: str, est, X, y) -> dict[str, float]:
    names = CLASSIFICATION if task == "classification" else REGRESSION
    return {n: score(n, est, X, y) for n in names}
