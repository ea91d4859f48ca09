"""Small data sets and configs for the pipeline tests (a few hundred rows, few trials, 3 folds)."""

from __future__ import annotations

import numpy as np


def make_classification_frame(n: int = 300, seed: int = 0):
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=5, n_informative=3, random_state=seed)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(5)])
    df["colour"] = np.where(X[:, 0] > 0.3, "red", np.where(X[:, 1] > 0, "green", "blue"))
    df.loc[::17, "x3"] = np.nan  # some missing values for the imputer
    df["label"] = y
    return df


def make_regression_frame(n: int = 300, seed: int = 0):
    import pandas as pd
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=n, n_features=4, noise=5.0, random_state=seed)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(4)])
    df["target"] = y
    return df


def cls_config(path, **over) -> dict:
    cfg = {
        "name": "clf",
        "task": "classification",
        "seed": 7,
        "folds": 3,
        "data": {"path": str(path), "target": "label"},
        "model": {"family": "logistic_regression"},
        "features": {"derived": [{"name": "x0_times_x1", "op": "mul", "inputs": ["x0", "x1"]}]},
        "tune": {"n_trials": 4},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def reg_config(path, **over) -> dict:
    cfg = {
        "name": "reg",
        "task": "regression",
        "seed": 3,
        "folds": 3,
        "data": {"path": str(path), "target": "target"},
        "model": {"family": "hist_gradient_boosting", "params": {"max_iter": 30}},
        "tune": {
            "n_trials": 3,
            "search_space": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True}},
        },
    }
    cfg.update(over)
    return cfg
