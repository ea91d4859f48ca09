"""register.require: a model whose holdout metrics miss a bar is refused before the registry sees it."""

from __future__ import annotations

import pytest
from pipeline_data import cls_config, reg_config

from fastml.errors import InvalidInput, NotFound, PermissionDenied
from fastml.pipeline import train
from fastml.registry import Registry


def test_a_model_over_the_bar_registers(cls_csv):
    result = train(cls_config(cls_csv, register={"require": {"accuracy": 0.5}}, tune={"n_trials": 1}), progress=False)
    assert result.model_ref is not None and result.metrics["accuracy"] >= 0.5


def test_a_model_under_the_bar_is_refused(cls_csv, tmp_path):
    with pytest.raises(PermissionDenied, match=r"not registered: holdout accuracy [0-9.]+ is below the bar 1.01"):
        train(cls_config(cls_csv, register={"require": {"accuracy": 1.01}}, tune={"n_trials": 1}), progress=False)
    with Registry() as reg, pytest.raises(NotFound):
        reg.list_versions(cls_config(cls_csv)["name"])


def test_error_bars_are_ceilings(reg_parquet):
    cfg = reg_config(reg_parquet, register={"require": {"rmse": 0.0}}, tune={"n_trials": 1})
    with pytest.raises(PermissionDenied, match="holdout rmse [0-9.]+ is above the bar 0.0"):
        train(cfg, progress=False)


def test_unknown_metric_is_a_config_error(cls_csv):
    with pytest.raises(InvalidInput, match="register.require.rmse: not a classification metric"):
        train(cls_config(cls_csv, register={"require": {"rmse": 1.0}}), progress=False)
