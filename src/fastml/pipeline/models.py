"""Model families: how to build each estimator and its default search space.

Imports of scikit-learn, XGBoost, LightGBM and torch happen inside ``build`` so that reading the
catalogue (config validation) stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def _spec(**kw):
    from fastml.pipeline.config import ParamSpec

    return ParamSpec(**kw)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    tasks: tuple[str, ...]
    scaled: bool
    """Whether "auto" scaling standardises inputs (linear models, MLPs) or leaves them (trees)."""
    factory: Callable[[str], Any]
    """task -> estimator class."""
    space: Callable[[str], dict]
    seed_param: str | None = "random_state"
    fixed: Callable[[str], dict] = lambda task: {}

    def default_space(self, task: str) -> dict:
        return self.space(task)

    def build(self, task: str, params: dict, seed: int):
        """A fresh, unfitted estimator with ``params`` over the family's fixed defaults."""
        cls = self.factory(task)
        kw = {**self.fixed(task), **params}
        if self.seed_param:
            kw.setdefault(self.seed_param, seed)
        return cls(**kw)

    def unknown_params(self, task: str, names: list[str]) -> list[str]:
        try:
            valid = set(self.factory(task)().get_params())
        except ImportError:
            return []
        return sorted(n for n in names if n not in valid)


def _logreg(task):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression


def _ridge(task):
    from sklearn.linear_model import Ridge

    return Ridge


def _rf(task):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    return RandomForestClassifier if task == "classification" else RandomForestRegressor


def _hgb(task):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor


def _xgb(task):
    from xgboost import XGBClassifier, XGBRegressor

    return XGBClassifier if task == "classification" else XGBRegressor


def _lgbm(task):
    from lightgbm import LGBMClassifier, LGBMRegressor

    return LGBMClassifier if task == "classification" else LGBMRegressor


def _mlp(task):
    from fastml.pipeline.torch_mlp import TorchMLPClassifier, TorchMLPRegressor

    return TorchMLPClassifier if task == "classification" else TorchMLPRegressor


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "logistic_regression",
            ("classification",),
            True,
            _logreg,
            lambda t: {"C": _spec(type="float", low=1e-3, high=1e2, log=True)},
            fixed=lambda t: {"max_iter": 1000},
        ),
        Family(
            "ridge",
            ("regression",),
            True,
            _ridge,
            lambda t: {"alpha": _spec(type="float", low=1e-3, high=1e2, log=True)},
        ),
        Family(
            "random_forest",
            ("classification", "regression"),
            False,
            _rf,
            lambda t: {
                "n_estimators": _spec(type="int", low=20, high=200, step=10),
                "max_depth": _spec(type="int", low=2, high=16),
                "min_samples_leaf": _spec(type="int", low=1, high=10),
            },
            fixed=lambda t: {"n_jobs": 1},
        ),
        Family(
            "hist_gradient_boosting",
            ("classification", "regression"),
            False,
            _hgb,
            lambda t: {
                "learning_rate": _spec(type="float", low=0.01, high=0.3, log=True),
                "max_iter": _spec(type="int", low=20, high=200, step=10),
                "max_leaf_nodes": _spec(type="int", low=8, high=64),
            },
        ),
        Family(
            "xgboost",
            ("classification", "regression"),
            False,
            _xgb,
            lambda t: {
                "n_estimators": _spec(type="int", low=20, high=200, step=10),
                "max_depth": _spec(type="int", low=2, high=8),
                "learning_rate": _spec(type="float", low=0.01, high=0.3, log=True),
            },
            fixed=lambda t: {"n_jobs": 1, "tree_method": "hist"},
        ),
        Family(
            "lightgbm",
            ("classification", "regression"),
            False,
            _lgbm,
            lambda t: {
                "n_estimators": _spec(type="int", low=20, high=200, step=10),
                "num_leaves": _spec(type="int", low=8, high=64),
                "learning_rate": _spec(type="float", low=0.01, high=0.3, log=True),
            },
            fixed=lambda t: {"n_jobs": 1, "verbose": -1},
        ),
        Family(
            "torch_mlp",
            ("classification", "regression"),
            True,
            _mlp,
            lambda t: {
                "hidden_units": _spec(type="int", low=16, high=128, step=16),
                "lr": _spec(type="float", low=1e-3, high=3e-2, log=True),
                "weight_decay": _spec(type="float", low=1e-6, high=1e-2, log=True),
            },
        ),
    ]
}
