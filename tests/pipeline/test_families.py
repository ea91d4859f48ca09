"""Every model family runs through the pipeline to a parity-checked ONNX graph."""

from __future__ import annotations

import json

import pytest
from pipeline_data import cls_config, reg_config

from fastml.pipeline import train


@pytest.mark.parametrize("family", ["xgboost", "lightgbm", "random_forest"])
def test_tree_families_classification(cls_csv, family):
    space = {"n_estimators": {"type": "int", "low": 10, "high": 20, "step": 10}}
    result = train(
        cls_config(
            cls_csv,
            folds=2,
            model={"family": family},
            tune={"n_trials": 2, "search_space": space},
            register={"enabled": False},
        )
    )
    parity = json.loads((result.run_dir / "09_export/parity.json").read_text())
    assert parity["onnx"]["ok"] and parity["optimized"]["ok"]
    assert result.metrics["roc_auc"] > 0.7
    # trees are not scaled under "auto" scaling (see docs/pipeline.md, parity tolerance)
    assert "StandardScaler" not in (result.run_dir / "03_features/preprocessor.txt").read_text()


@pytest.mark.parametrize("family", ["ridge", "lightgbm"])
def test_regression_families(reg_parquet, family):
    space = (
        {"alpha": {"type": "float", "low": 0.1, "high": 1.0}}
        if family == "ridge"
        else {"n_estimators": {"type": "int", "low": 20, "high": 40, "step": 20}}
    )
    result = train(
        reg_config(
            reg_parquet,
            folds=2,
            model={"family": family},
            metric="mae",
            tune={"n_trials": 2, "search_space": space},
            register={"enabled": False},
        )
    )
    assert result.state["stages"][4]["summary"]["metric"] == "mae"
    assert result.metrics["r2"] > 0.5
    assert json.loads((result.run_dir / "09_export/parity.json").read_text())["optimized"]["ok"]
